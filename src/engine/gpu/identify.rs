//! 1:N identify and 1:1 verify on a [`GpuGallery`]: input checks, dispatch, read-back and
//! re-scoring.
//!
//! Identify scans the device copy and merges per-stripe lists into `kc` candidates per probe;
//! only those come back, and the host re-scores them from the shard's f32 rows with
//! [`Measure::score`], so the final scores are the CPU engine's to the bit.

use bytemuck::{Pod, Zeroable};

use super::error::GpuError;
use super::gallery::{GpuGallery, encode};
use super::shaders::{Kernel, LIST_LEN, NONE_SLOT, WORKGROUP_SIZE};
use super::{MAX_BATCH, MAX_K, StorageFormat, measure_code};
use crate::engine::{Candidate, Measure};
use crate::gallery::Shard;

/// Workgroups worth launching per scan: a few waves on a large GPU (an H200 holds about a
/// thousand 256-thread workgroups at once). Fewer starve it; more only lengthen the merge.
const TARGET_WORKGROUPS: usize = 2048;

/// Pre-fill of every output word; a kernel that skips an entry leaves it for the checks.
const SENTINEL: u32 = 0xDEAD_BEEF;

/// Pre-fill of verify's scores: a NaN no arithmetic produces.
const SCORE_SENTINEL: u32 = 0x7FC0_DEAD;

/// `ScanParams` of scan.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct ScanParams {
    rows: u32,
    dim4: u32,
    base_slot: u32,
    rows_per_stripe: u32,
    kc: u32,
    stripes_per_probe: u32,
    first_stripe: u32,
    measure: u32,
}

/// `MergeParams` of merge.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct MergeParams {
    per_probe: u32,
    kc: u32,
    pad: [u32; 2],
}

/// `PairParams` of pair.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct PairParams {
    count: u32,
    dim4: u32,
    measure: u32,
    pad: u32,
}

/// How one group of probes is split over the gallery.
struct Plan {
    stripes_per_chunk: usize,
    rows_per_stripe: usize,
}

const STORAGE_IN: wgpu::BufferUsages = wgpu::BufferUsages::STORAGE;
const UNIFORM: wgpu::BufferUsages = wgpu::BufferUsages::UNIFORM;

impl GpuGallery {
    /// The best `k` live slots of `shard` for each probe (`probes` is B × dim, row-major),
    /// best first, ties to the lower slot, with exact scores. Fewer than `k` come back when
    /// fewer are live. Takes `k` up to [`MAX_K`]; batches of any size go up in groups of at
    /// most [`MAX_BATCH`]. The caller has synced the copy to `shard`.
    pub(crate) fn identify(
        &self,
        shard: &Shard,
        probes: &[f32],
        k: usize,
    ) -> Result<Vec<Vec<Candidate>>, GpuError> {
        self.ctx.check()?;
        let batch = self.check_probes(probes)?;
        if k > MAX_K {
            return Err(GpuError::KTooLarge { k, max: MAX_K });
        }
        if batch == 0 || k == 0 || self.chunks.is_empty() || shard.live_count() == 0 {
            return Ok(vec![Vec::new(); batch]);
        }

        let kc = (k + k.max(16)).min(LIST_LEN as usize);
        let group = self.probe_group(batch, kc);
        let mut results = Vec::with_capacity(batch);
        for first in (0..batch).step_by(group) {
            let count = group.min(batch - first);
            let rows = &probes[first * self.dim..(first + count) * self.dim];
            let keys = self.select(rows, count, kc)?;
            for (i, list) in keys.chunks_exact(kc).enumerate() {
                let probe = &rows[i * self.dim..(i + 1) * self.dim];
                results.push(rescore(shard, probe, list, k, (first + i) * kc)?);
            }
        }
        Ok(results)
    }

    /// 1:1 scores of probe i against each slot of `slots[i]`, computed on the GPU in f32 by
    /// the final formulas, from the shard's f32 rows (the device copy may be f16 or int8).
    pub(crate) fn verify(
        &self,
        shard: &Shard,
        probes: &[f32],
        slots: &[Vec<u32>],
    ) -> Result<Vec<Vec<f32>>, GpuError> {
        self.ctx.check()?;
        let batch = self.check_probes(probes)?;
        if slots.len() != batch {
            return Err(GpuError::BadLength {
                len: slots.len(),
                expected: batch,
            });
        }
        let mut pairs = Vec::new();
        for (p, wanted) in slots.iter().enumerate() {
            for &slot in wanted {
                if slot as usize >= shard.slot_count() {
                    let slots = shard.slot_count();
                    return Err(GpuError::SlotOutOfRange { slot, slots });
                }
                pairs.push((p, slot));
            }
        }
        let mut scores = Vec::with_capacity(pairs.len());
        for group in pairs.chunks(self.pair_group()) {
            scores.extend(self.score_pairs(shard, probes, group)?);
        }
        let mut scores = scores.into_iter();
        Ok(slots
            .iter()
            .map(|wanted| scores.by_ref().take(wanted.len()).collect())
            .collect())
    }

    /// Pairs per dispatch of the pair kernel: inputs within one binding, workgroups within
    /// the per-dimension limit.
    fn pair_group(&self) -> usize {
        let limits = self.ctx.limits();
        let by_bytes = limits.max_storage_buffer_binding_size / (self.dim as u64 * 4);
        let by_groups =
            u64::from(limits.max_compute_workgroups_per_dimension) * WORKGROUP_SIZE as u64;
        by_bytes.min(by_groups).max(1) as usize
    }

    /// Scores `(probe index, slot)` pairs with the pair kernel.
    fn score_pairs(
        &self,
        shard: &Shard,
        probes: &[f32],
        pairs: &[(usize, u32)],
    ) -> Result<Vec<f32>, GpuError> {
        let count = pairs.len();
        if count == 0 {
            return Ok(Vec::new());
        }
        let dim = self.dim;
        let mut left = Vec::with_capacity(count * dim);
        let mut right = Vec::with_capacity(count * dim);
        for &(p, slot) in pairs {
            left.extend_from_slice(&probes[p * dim..(p + 1) * dim]);
            right.extend_from_slice(shard.row(slot));
        }
        let ctx = &self.ctx;
        let pipeline = ctx.pipeline(Kernel::Pair)?;
        let probe_buf =
            ctx.buffer_with("verify probes", bytemuck::cast_slice(&left), STORAGE_IN)?;
        let template_buf =
            ctx.buffer_with("verify templates", bytemuck::cast_slice(&right), STORAGE_IN)?;
        let sentinel = vec![SCORE_SENTINEL; count];
        let scores = ctx.buffer_with(
            "verify scores",
            bytemuck::cast_slice(&sentinel),
            wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
        )?;
        let params = PairParams {
            count: count as u32,
            dim4: (dim / 4) as u32,
            measure: measure_code(self.measure),
            pad: 0,
        };
        let params = ctx.buffer_with("pair params", bytemuck::bytes_of(&params), UNIFORM)?;
        let bind_group = self.bind_group(
            &pipeline.layout,
            "pair",
            &[&probe_buf, &template_buf, &scores, &params],
        );

        let mut encoder = ctx.device().create_command_encoder(&Default::default());
        {
            let mut pass = encoder.begin_compute_pass(&Default::default());
            pass.set_pipeline(&pipeline.pipeline);
            pass.set_bind_group(0, &bind_group, &[]);
            pass.dispatch_workgroups(count.div_ceil(WORKGROUP_SIZE as usize) as u32, 1, 1);
        }
        let bytes = self.read_back(encoder, &scores, (count * 4) as u64)?;
        let words: Vec<u32> = bytemuck::pod_collect_to_vec(&bytes);
        if let Some(index) = words.iter().position(|&w| w == SCORE_SENTINEL) {
            return Err(GpuError::BadOutput {
                kernel: "pair",
                index,
            });
        }
        Ok(words.into_iter().map(f32::from_bits).collect())
    }

    /// Batch size of `probes`, after checking length and values.
    fn check_probes(&self, probes: &[f32]) -> Result<usize, GpuError> {
        if !probes.len().is_multiple_of(self.dim) {
            return Err(GpuError::BadLength {
                len: probes.len(),
                expected: self.dim,
            });
        }
        if let Some(at) = probes.iter().position(|v| !v.is_finite()) {
            return Err(GpuError::BadValue { row: at / self.dim });
        }
        Ok(probes.len() / self.dim)
    }

    /// Probes per submission: at most [`MAX_BATCH`], and few enough that the per-stripe
    /// candidates of one group fit a binding.
    fn probe_group(&self, batch: usize, kc: usize) -> usize {
        let limit = self.ctx.limits().max_storage_buffer_binding_size;
        let mut group = batch.min(MAX_BATCH);
        while group > 1 {
            let plan = self.plan(group);
            let stripes = (group * self.chunks.len() * plan.stripes_per_chunk) as u64;
            if stripes * kc as u64 * 8 <= limit {
                break;
            }
            group = group.div_ceil(2);
        }
        group
    }

    fn plan(&self, group: usize) -> Plan {
        let wg = WORKGROUP_SIZE as usize;
        // Tiles in use in the fullest chunk: stripes over never-written rows would be empty
        // dispatches and empty lists for the merge to read.
        let tiles = self.chunk_rows.min(self.high_water).div_ceil(wg).max(1);
        let wanted = TARGET_WORKGROUPS.div_ceil(group * self.chunks.len());
        let max_x = self.ctx.limits().max_compute_workgroups_per_dimension as usize;
        let stripes = wanted.clamp(1, tiles.min(max_x));
        let tiles_per_stripe = tiles.div_ceil(stripes);
        Plan {
            stripes_per_chunk: tiles.div_ceil(tiles_per_stripe),
            rows_per_stripe: tiles_per_stripe * wg,
        }
    }

    /// Runs scan and merge for `count` probes; returns `count × kc` (key bits, slot) words.
    fn select(&self, probes: &[f32], count: usize, kc: usize) -> Result<Vec<[u32; 2]>, GpuError> {
        let ctx = &self.ctx;
        let plan = self.plan(count);
        let scan = ctx.pipeline(Kernel::scan(self.format))?;
        let merge = ctx.pipeline(Kernel::Merge)?;

        let (probe_bytes, probe_meta) = self.encode_probes(probes);
        let probe_buf = ctx.buffer_with("probes", &probe_bytes, STORAGE_IN)?;
        let probe_meta =
            ctx.buffer_with("probe meta", bytemuck::cast_slice(&probe_meta), STORAGE_IN)?;
        let per_probe = self.chunks.len() * plan.stripes_per_chunk * kc;
        let partial = ctx.buffer_with(
            "partial",
            bytemuck::cast_slice(&vec![SENTINEL; count * per_probe * 2]),
            wgpu::BufferUsages::STORAGE,
        )?;
        let best_bytes = (count * kc * 8) as u64;
        let best = ctx.buffer_with(
            "best",
            bytemuck::cast_slice(&vec![SENTINEL; count * kc * 2]),
            wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
        )?;

        let mut scan_groups = Vec::with_capacity(self.chunks.len());
        for (index, chunk) in self.chunks.iter().enumerate() {
            let base = index * self.chunk_rows;
            let params = ScanParams {
                rows: self.high_water.saturating_sub(base).min(self.chunk_rows) as u32,
                dim4: (self.dim / 4) as u32,
                base_slot: base as u32,
                rows_per_stripe: plan.rows_per_stripe as u32,
                kc: kc as u32,
                stripes_per_probe: (self.chunks.len() * plan.stripes_per_chunk) as u32,
                first_stripe: (index * plan.stripes_per_chunk) as u32,
                measure: measure_code(self.measure),
            };
            let params = ctx.buffer_with("scan params", bytemuck::bytes_of(&params), UNIFORM)?;
            let buffers = [
                &chunk.data,
                &chunk.meta,
                &probe_buf,
                &probe_meta,
                &partial,
                &params,
            ];
            scan_groups.push(self.bind_group(&scan.layout, "scan", &buffers));
        }
        let params = MergeParams {
            per_probe: per_probe as u32,
            kc: kc as u32,
            pad: [0; 2],
        };
        let params = ctx.buffer_with("merge params", bytemuck::bytes_of(&params), UNIFORM)?;
        let merge_group = self.bind_group(&merge.layout, "merge", &[&partial, &best, &params]);

        let mut encoder = ctx.device().create_command_encoder(&Default::default());
        {
            let mut pass = encoder.begin_compute_pass(&Default::default());
            pass.set_pipeline(&scan.pipeline);
            for group in &scan_groups {
                pass.set_bind_group(0, group, &[]);
                pass.dispatch_workgroups(plan.stripes_per_chunk as u32, count as u32, 1);
            }
            pass.set_pipeline(&merge.pipeline);
            pass.set_bind_group(0, &merge_group, &[]);
            pass.dispatch_workgroups(count as u32, 1, 1);
        }
        let bytes = self.read_back(encoder, &best, best_bytes)?;
        let words: Vec<u32> = bytemuck::pod_collect_to_vec(&bytes);
        Ok(words.chunks_exact(2).map(|w| [w[0], w[1]]).collect())
    }

    /// Probe units in the scan format's probe layout, and per-probe `(scale, 0)`.
    fn encode_probes(&self, probes: &[f32]) -> (Vec<u8>, Vec<[f32; 2]>) {
        match self.format {
            StorageFormat::F32 | StorageFormat::F16 => {
                let meta = vec![[1.0, 0.0]; probes.len() / self.dim];
                (bytemuck::cast_slice(probes).to_vec(), meta)
            }
            StorageFormat::Int8 => {
                let mut bytes = Vec::with_capacity(probes.len());
                let mut meta = Vec::new();
                for probe in probes.chunks_exact(self.dim) {
                    let (units, scale) = encode(StorageFormat::Int8, probe);
                    bytes.extend_from_slice(&units);
                    meta.push([scale, 0.0]);
                }
                (bytes, meta)
            }
        }
    }

    fn bind_group(
        &self,
        layout: &wgpu::BindGroupLayout,
        label: &str,
        buffers: &[&wgpu::Buffer],
    ) -> wgpu::BindGroup {
        let entries: Vec<wgpu::BindGroupEntry> = buffers
            .iter()
            .enumerate()
            .map(|(slot, buffer)| wgpu::BindGroupEntry {
                binding: slot as u32,
                resource: buffer.as_entire_binding(),
            })
            .collect();
        self.ctx
            .device()
            .create_bind_group(&wgpu::BindGroupDescriptor {
                label: Some(label),
                layout,
                entries: &entries,
            })
    }

    /// Copies `bytes` of `source` into a mappable buffer after `encoder`'s work, submits and
    /// waits.
    fn read_back(
        &self,
        mut encoder: wgpu::CommandEncoder,
        source: &wgpu::Buffer,
        bytes: u64,
    ) -> Result<Vec<u8>, GpuError> {
        let usage = wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST;
        let readback = self.ctx.buffer("readback", bytes, usage)?;
        encoder.copy_buffer_to_buffer(source, 0, &readback, 0, bytes);
        self.ctx.submit_and_read(encoder, &readback)
    }
}

/// Exact scores of one probe's candidates from the shard's rows, ranked and cut to `k`.
/// `offset` locates the list in the kernel output, for error reports.
fn rescore(
    shard: &Shard,
    probe: &[f32],
    list: &[[u32; 2]],
    k: usize,
    offset: usize,
) -> Result<Vec<Candidate>, GpuError> {
    let measure: Measure = shard.measure();
    let mut out = Vec::with_capacity(list.len());
    for (i, &[_, slot]) in list.iter().enumerate() {
        if slot == NONE_SLOT {
            continue;
        }
        if !shard.is_live(slot) {
            return Err(GpuError::BadOutput {
                kernel: "merge",
                index: offset + i,
            });
        }
        let score = measure.score(probe, shard.row(slot));
        out.push(Candidate { slot, score });
    }
    out.sort_by(|a, b| measure.rank(a, b));
    out.truncate(k);
    Ok(out)
}
