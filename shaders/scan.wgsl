// scan.wgsl: 1:N scan of one gallery chunk for a group of probes, top-kc per stripe.
//
// Bindings (group 0); slots 0 and 2 are declared by the format file (scan_f32.wgsl,
// scan_f16.wgsl, scan_int8.wgsl), the rest here:
//   0  gallery     storage, read        format-specific array, tiled layout (see below)
//   1  row_meta    storage, read        array<vec2<f32>>, one per chunk row:
//                                       x = 1/|g| (cosine) or |g|^2 (Euclidean),
//                                       y = dequantisation scale; y == 0 marks a dead row
//   2  probes      storage, read        format-specific array, probe-major, dim/4 units each
//   3  probe_meta  storage, read        array<vec2<f32>>, one per probe: x = scale
//   4  partial     storage, read_write  array<vec2<u32>>, [probe][stripe][kc] of
//                                       (bitcast key, slot)
//   5  params      uniform              ScanParams
//
// Tiled layout: rows are grouped in tiles of WG_SIZE; within a tile the unit d (4 dims) of
// every row is contiguous, so the threads of a workgroup read consecutive addresses (one
// coalesced load per unit) instead of striding by a whole row.
//
// Rank keys (smaller is better): cosine -(p.g)/|g|, Euclidean |g|^2 - 2 p.g.

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

@group(0) @binding(1) var<storage, read> row_meta: array<vec2<f32>>;
@group(0) @binding(3) var<storage, read> probe_meta: array<vec2<f32>>;
@group(0) @binding(4) var<storage, read_write> partial: array<vec2<u32>>;
@group(0) @binding(5) var<uniform> params: ScanParams;

const MEASURE_COSINE: u32 = 0u;

@compute @workgroup_size(WG_SIZE)
fn scan(
    @builtin(local_invocation_id) local_id: vec3<u32>,
    @builtin(workgroup_id) group_id: vec3<u32>,
) {
    let lid = local_id.x;
    let stripe = group_id.x;
    let probe = group_id.y;
    select_init(lid);

    // Stripes start on tile boundaries (rows_per_stripe is a multiple of WG_SIZE), so a
    // thread's lane in the tile is its local id.
    let start = stripe * params.rows_per_stripe;
    let end = min(start + params.rows_per_stripe, params.rows);
    let probe_scale = probe_meta[probe].x;
    for (var base = start; base < end; base += WG_SIZE) {
        let row = base + lid;
        if row < end {
            let m = row_meta[row];
            if m.y > 0.0 {
                let d = row_dot(row, probe) * m.y * probe_scale;
                var key = m.x - 2.0 * d;
                if params.measure == MEASURE_COSINE {
                    key = -d * m.x;
                }
                select_offer(key, params.base_slot + row);
            }
        }
        select_round_end(lid, params.kc);
    }
    select_finish(lid, params.kc);

    let out = (probe * params.stripes_per_probe + params.first_stripe + stripe) * params.kc;
    for (var i = lid; i < params.kc; i += WG_SIZE) {
        partial[out + i] = vec2<u32>(bitcast<u32>(pool_key[i]), pool_slot[i]);
    }
}

// Index of unit 0 of `row` in the tiled gallery; unit d is WG_SIZE further per step.
fn tile_index(row: u32) -> u32 {
    return (row / WG_SIZE) * params.dim4 * WG_SIZE + row % WG_SIZE;
}
