// merge.wgsl: merges the per-stripe candidates of scan.wgsl into one top-kc list per probe.
//
// Bindings (group 0):
//   0  partial  storage, read        array<vec2<u32>>, [probe][per_probe] of (bitcast key, slot)
//   1  best     storage, read_write  array<vec2<u32>>, [probe][kc], sorted best first
//   2  params   uniform              MergeParams
//
// One workgroup per probe (workgroup_id.x); it runs the same selection as the scan over the
// candidate entries, skipping empty ones (slot NONE_SLOT).

struct MergeParams {
    per_probe: u32,
    kc: u32,
    pad0: u32,
    pad1: u32,
}

@group(0) @binding(0) var<storage, read> partial: array<vec2<u32>>;
@group(0) @binding(1) var<storage, read_write> best: array<vec2<u32>>;
@group(0) @binding(2) var<uniform> params: MergeParams;

@compute @workgroup_size(WG_SIZE)
fn merge(
    @builtin(local_invocation_id) local_id: vec3<u32>,
    @builtin(workgroup_id) group_id: vec3<u32>,
) {
    let lid = local_id.x;
    let probe = group_id.x;
    select_init(lid);

    let first = probe * params.per_probe;
    for (var base = 0u; base < params.per_probe; base += WG_SIZE) {
        let i = base + lid;
        if i < params.per_probe {
            let e = partial[first + i];
            if e.y != NONE_SLOT {
                select_offer(bitcast<f32>(e.x), e.y);
            }
        }
        select_round_end(lid, params.kc);
    }
    select_finish(lid, params.kc);

    for (var i = lid; i < params.kc; i += WG_SIZE) {
        best[probe * params.kc + i] = vec2<u32>(bitcast<u32>(pool_key[i]), pool_slot[i]);
    }
}
