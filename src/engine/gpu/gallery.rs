//! One shard's templates resident on the GPU: chunked, tiled, written in place.
//!
//! Capacity grows by whole chunks (the last one grows by a copy on the device while it is
//! smaller than a full chunk); a row that is already on the device is never sent again unless
//! its slot changed. Which slots changed comes from the shard's change log (see
//! [`crate::gallery`]): [`GpuGallery::sync`] runs at the start of every call, under the
//! gallery's read lock, so the scan always sees the shard the caller holds. Within a chunk
//! rows are tiled by [`WORKGROUP_SIZE`] so the scan reads coalesced memory (see the header of
//! `shaders/scan.wgsl`).
//!
//! The device holds only the scan format. The f32 rows used for re-scoring and 1:1 are the
//! shard's own canonical block, borrowed for the length of a call: f16 and int8 thus buy 2x
//! and 4x the templates per GPU, and nothing on the host is held twice.

use half::f16;

use super::context::GpuContext;
use super::error::GpuError;
use super::shaders::WORKGROUP_SIZE;
use super::{MAX_DIM, StorageFormat};
use crate::engine::Measure;
use crate::gallery::{Shard, ShardId};

const WG: usize = WORKGROUP_SIZE as usize;

/// Bytes of one row's metadata: `vec2<f32>` (key factor, scale).
const META_BYTES: usize = 8;

/// Above this many changed slots in one sync, whole tiles go up instead of single rows.
const ROW_WRITES_MAX: usize = 32;

/// One GPU buffer pair holding up to `rows` rows.
#[derive(Debug)]
pub(crate) struct Chunk {
    pub(crate) data: wgpu::Buffer,
    pub(crate) meta: wgpu::Buffer,
    /// Rows the buffers hold; `chunk_rows` for every chunk but the last.
    pub(crate) rows: usize,
}

/// The GPU copy of one [`Shard`].
#[derive(Debug)]
pub(crate) struct GpuGallery {
    pub(crate) ctx: GpuContext,
    pub(crate) shard: ShardId,
    pub(crate) dim: usize,
    pub(crate) measure: Measure,
    pub(crate) format: StorageFormat,
    pub(crate) chunk_rows: usize,
    pub(crate) chunks: Vec<Chunk>,
    /// The shard generation the device holds; `None` before the first copy.
    synced: Option<u64>,
    /// Slots the scan covers: the shard's slot count at the last sync.
    pub(crate) high_water: usize,
}

impl GpuGallery {
    /// An empty copy of `shard` (filled by the first [`Self::sync`]). `chunk_rows` (rounded up
    /// to a multiple of [`WORKGROUP_SIZE`]) sets the rows per GPU buffer; `None` picks the most
    /// that fit one storage binding. Fails for a dimension that is zero, not a multiple of 4,
    /// or above [`MAX_DIM`], for f16 on an adapter without SHADER_F16, and for a chunk that
    /// cannot be bound.
    pub(crate) fn new(
        ctx: &GpuContext,
        shard: &Shard,
        format: StorageFormat,
        chunk_rows: Option<usize>,
    ) -> Result<Self, GpuError> {
        let dim = shard.dimension();
        if !dimension_supported(dim) {
            return Err(GpuError::UnsupportedDim { dim, max: MAX_DIM });
        }
        if format == StorageFormat::F16 && !ctx.supports_f16() {
            return Err(GpuError::UnsupportedFormat { format });
        }
        let limits = ctx.limits();
        let limit = limits
            .max_storage_buffer_binding_size
            .min(limits.max_buffer_size);
        let row_bytes = (dim / 4 * format.unit_bytes()) as u64;
        let fit_rows = (limit / row_bytes) as usize / WG * WG;
        let chunk_rows = match chunk_rows {
            Some(rows) => rows.max(1).next_multiple_of(WG),
            None => fit_rows.min(1 << 24),
        };
        let bytes = chunk_rows as u64 * row_bytes;
        if chunk_rows == 0 || bytes > limit {
            return Err(GpuError::ChunkTooLarge { bytes, limit });
        }
        ctx.check()?;
        Ok(Self {
            ctx: ctx.clone(),
            shard: shard.id(),
            dim,
            measure: shard.measure(),
            format,
            chunk_rows,
            chunks: Vec::new(),
            synced: None,
            high_water: 0,
        })
    }

    /// Bytes of the scan format on the GPU per template (data only, metadata excluded).
    pub(crate) fn row_bytes(&self) -> usize {
        self.dim / 4 * self.format.unit_bytes()
    }

    /// Device memory the buffers take.
    pub(crate) fn device_bytes(&self) -> u64 {
        self.chunks
            .iter()
            .map(|c| c.data.size() + c.meta.size())
            .sum()
    }

    /// Slots the buffers hold.
    fn capacity(&self) -> usize {
        self.chunks.iter().map(|c| c.rows).sum()
    }

    /// Brings the device copy up to `shard`'s generation: the changed slots when the change
    /// log reaches back to the last sync, every slot otherwise.
    pub(crate) fn sync(&mut self, shard: &Shard) -> Result<(), GpuError> {
        debug_assert_eq!(shard.id(), self.shard);
        self.ctx.check()?;
        let slots = shard.slot_count();
        if u32::try_from(slots).is_err() {
            return Err(GpuError::SlotOutOfRange {
                slot: u32::MAX,
                slots,
            });
        }
        self.grow(slots)?;
        let changed = self.synced.and_then(|g| shard.changes_since(g));
        match changed {
            Some([]) => {}
            Some(changed) if changed.len() <= ROW_WRITES_MAX => {
                for &slot in changed {
                    self.upload_row(shard, slot as usize);
                }
            }
            Some(changed) => {
                let mut tiles: Vec<usize> = changed.iter().map(|&s| s as usize / WG).collect();
                tiles.sort_unstable();
                tiles.dedup();
                for tile in tiles {
                    let first = tile * WG;
                    self.upload_tiles(shard, first, (first + WG).min(slots));
                }
            }
            None => self.upload_tiles(shard, 0, slots),
        }
        self.high_water = slots;
        self.synced = Some(shard.generation());
        self.ctx.check()
    }

    /// Adds or enlarges chunks until `rows` slots exist. Rows already on the device stay
    /// where they are; enlarging the last chunk copies it on the device.
    fn grow(&mut self, rows: usize) -> Result<(), GpuError> {
        while self.capacity() < rows {
            let full = self.chunks.len().saturating_sub(1) * self.chunk_rows;
            let (index, base) = match self.chunks.last() {
                Some(last) if last.rows < self.chunk_rows => (self.chunks.len() - 1, full),
                _ => (self.chunks.len(), self.capacity()),
            };
            // Double while small, so that a gallery of a few rows takes a few KiB, not a
            // whole binding's worth, and a growing one is copied O(log n) times.
            let wanted = (rows - base).min(self.chunk_rows);
            let chunk_rows = wanted
                .next_power_of_two()
                .max(WG)
                .min(self.chunk_rows)
                .next_multiple_of(WG);
            let chunk = self.new_chunk(chunk_rows, self.chunks.get(index))?;
            if index < self.chunks.len() {
                self.chunks[index] = chunk;
            } else {
                self.chunks.push(chunk);
            }
        }
        Ok(())
    }

    /// Buffers for `rows` rows, holding a copy of `old` when given. New buffers are zeroed
    /// by wgpu: metadata (0, 0) is a dead row, so unwritten slots never score.
    fn new_chunk(&self, rows: usize, old: Option<&Chunk>) -> Result<Chunk, GpuError> {
        let usage = wgpu::BufferUsages::STORAGE
            | wgpu::BufferUsages::COPY_DST
            | wgpu::BufferUsages::COPY_SRC;
        let data_bytes = (rows * self.row_bytes()) as u64;
        let meta_bytes = (rows * META_BYTES) as u64;
        let data = self.ctx.buffer("gallery chunk", data_bytes, usage)?;
        let meta = self.ctx.buffer("gallery meta", meta_bytes, usage)?;
        if let Some(old) = old {
            // The tiled layout is tile-major, so the old rows are a prefix of the new buffer.
            let mut encoder = self
                .ctx
                .device()
                .create_command_encoder(&Default::default());
            encoder.copy_buffer_to_buffer(&old.data, 0, &data, 0, old.data.size());
            encoder.copy_buffer_to_buffer(&old.meta, 0, &meta, 0, old.meta.size());
            self.ctx.submit(encoder)?;
        }
        Ok(Chunk { data, meta, rows })
    }

    /// One row: one small copy per unit (they are `WORKGROUP_SIZE` units apart).
    fn upload_row(&self, shard: &Shard, slot: usize) {
        let (chunk, row) = (slot / self.chunk_rows, slot % self.chunk_rows);
        let (units, _) = self.encode_row(shard, slot);
        let unit_bytes = self.format.unit_bytes();
        let queue = self.ctx.queue();
        for (d, unit) in units.chunks_exact(unit_bytes).enumerate() {
            let offset = (tile_unit_index(row, d, self.dim / 4) * unit_bytes) as u64;
            queue.write_buffer(&self.chunks[chunk].data, offset, unit);
        }
        self.upload_meta(shard, slot, slot + 1);
    }

    /// Rows `[first, end)`: the whole tiles covering them, one copy per tile, re-encoded
    /// from the shard.
    fn upload_tiles(&self, shard: &Shard, first: usize, end: usize) {
        let unit_bytes = self.format.unit_bytes();
        let dim4 = self.dim / 4;
        let slots = shard.slot_count();
        let first = first / WG * WG;
        let end = end.next_multiple_of(WG).min(slots);
        let mut tile = first;
        while tile < end {
            let (chunk, row0) = (tile / self.chunk_rows, tile % self.chunk_rows);
            // Chunks hold whole tiles; lanes past the shard's last slot are encoded as zeros.
            let mut bytes = vec![0u8; WG * self.row_bytes()];
            for lane in 0..WG.min(slots - tile) {
                let (units, _) = self.encode_row(shard, tile + lane);
                for (d, unit) in units.chunks_exact(unit_bytes).enumerate() {
                    let at = (d * WG + lane) * unit_bytes;
                    bytes[at..at + unit_bytes].copy_from_slice(unit);
                }
            }
            let offset = (tile_unit_index(row0, 0, dim4) * unit_bytes) as u64;
            self.ctx
                .queue()
                .write_buffer(&self.chunks[chunk].data, offset, &bytes);
            tile += WG;
        }
        self.upload_meta(shard, first, end);
    }

    /// Metadata of rows `[first, end)`, one copy per chunk touched.
    fn upload_meta(&self, shard: &Shard, first: usize, end: usize) {
        let mut row = first;
        while row < end {
            let chunk = row / self.chunk_rows;
            let stop = end.min((chunk + 1) * self.chunk_rows);
            let meta: Vec<f32> = (row..stop)
                .flat_map(|slot| self.row_meta(shard, slot))
                .collect();
            let offset = ((row % self.chunk_rows) * META_BYTES) as u64;
            self.ctx.queue().write_buffer(
                &self.chunks[chunk].meta,
                offset,
                bytemuck::cast_slice(&meta),
            );
            row = stop;
        }
    }

    /// `(key factor, scale)` of a row: `(1/|g|, s)` for cosine (0 for a zero row, whose key
    /// is then 0 as on the CPU), `(|g|², s)` for Euclidean; `(0, 0)` for a dead row.
    fn row_meta(&self, shard: &Shard, slot: usize) -> [f32; 2] {
        if !shard.is_live(slot as u32) {
            return [0.0, 0.0];
        }
        let row = shard.row(slot as u32);
        let norm_sq: f64 = row.iter().map(|&v| f64::from(v) * f64::from(v)).sum();
        let factor = match self.measure {
            Measure::Cosine if norm_sq > 0.0 => (1.0 / norm_sq.sqrt()) as f32,
            Measure::Cosine => 0.0,
            Measure::Euclidean => norm_sq as f32,
        };
        [factor, self.encode_row(shard, slot).1]
    }

    /// The row's units in the storage format, and its dequantisation scale (> 0).
    fn encode_row(&self, shard: &Shard, slot: usize) -> (Vec<u8>, f32) {
        if !shard.is_live(slot as u32) {
            // A free slot holds a stale template; zeros say plainly that it is dead.
            return (vec![0; self.row_bytes()], 1.0);
        }
        encode(self.format, shard.row(slot as u32))
    }
}

/// Whether the GPU path takes templates of `dim` values.
pub(crate) fn dimension_supported(dim: usize) -> bool {
    dim != 0 && dim.is_multiple_of(4) && dim <= MAX_DIM
}

/// Units of `row` in `format`, and the scale that turns them back into f32 (> 0).
pub(crate) fn encode(format: StorageFormat, row: &[f32]) -> (Vec<u8>, f32) {
    match format {
        StorageFormat::F32 => (bytemuck::cast_slice(row).to_vec(), 1.0),
        StorageFormat::F16 => {
            let halves: Vec<f16> = row.iter().map(|&v| f16::from_f32(v)).collect();
            (bytemuck::cast_slice(&halves).to_vec(), 1.0)
        }
        StorageFormat::Int8 => {
            let max_abs = row.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            // A zero row still needs a positive scale: scale 0 marks a dead row.
            let scale = if max_abs > 0.0 { max_abs / 127.0 } else { 1.0 };
            let bytes = row
                .iter()
                .map(|&v| (v / scale).round().clamp(-127.0, 127.0) as i8 as u8);
            (bytes.collect(), scale)
        }
    }
}

/// Index, in units, of unit `d` of `row` within its chunk's tiled layout.
fn tile_unit_index(row: usize, d: usize, dim4: usize) -> usize {
    (row / WG * dim4 + d) * WG + row % WG
}
