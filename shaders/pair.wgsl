// pair.wgsl: 1:1 scores of probe i against template i, in f32, by the final formulas.
//
// Bindings (group 0):
//   0  probes     storage, read        array<vec4<f32>>, [count][dim4]
//   1  templates  storage, read        array<vec4<f32>>, [count][dim4]
//   2  scores     storage, read_write  array<f32>, [count]
//   3  params     uniform              PairParams
//
// cosine = p.g / (|p| |g|), higher is better; Euclidean = sqrt(sum (p - g)^2), lower is
// better. Euclidean sums the squared differences directly rather than expanding them, so
// near-identical vectors do not lose their distance to cancellation.

struct PairParams {
    count: u32,
    dim4: u32,
    measure: u32,
    pad0: u32,
}

@group(0) @binding(0) var<storage, read> probes: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read> templates: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> scores: array<f32>;
@group(0) @binding(3) var<uniform> params: PairParams;

const MEASURE_COSINE: u32 = 0u;

@compute @workgroup_size(WG_SIZE)
fn pair(@builtin(global_invocation_id) global_id: vec3<u32>) {
    let i = global_id.x;
    if i >= params.count {
        return;
    }
    let first = i * params.dim4;
    var pg = 0.0;
    var pp = 0.0;
    var gg = 0.0;
    var diff = 0.0;
    for (var d = 0u; d < params.dim4; d++) {
        let p = probes[first + d];
        let g = templates[first + d];
        let e = p - g;
        pg += dot(p, g);
        pp += dot(p, p);
        gg += dot(g, g);
        diff += dot(e, e);
    }
    if params.measure == MEASURE_COSINE {
        scores[i] = pg / (sqrt(pp) * sqrt(gg));
    } else {
        scores[i] = sqrt(diff);
    }
}
