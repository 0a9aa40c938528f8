// landmark_head.wgsl: the landmark network's head for a batch of faces: the mean over the
// last feature map (its 7x7 average pool), then the fully connected layer with its bias.
//
// Bindings (group 0):
//   0  input    storage, read        array<f32>, NHWC [faces, pixels, features]
//   1  fc       storage, read        array<f32>, [features, outputs]
//   2  bias     storage, read        array<f32>, outputs
//   3  output   storage, read_write  array<f32>, [faces, outputs]
//   4  params   uniform              LandmarkHeadParams
//
// One workgroup per face, over a 2-D grid of workgroups as in face_pool.wgsl: the threads
// first share the feature means through workgroup memory, then each computes outputs.
// features is at most WG_SIZE (checked on the host). Sums run in the CPU path's order.

struct LandmarkHeadParams {
    faces: u32,
    pixels: u32,
    features: u32,
    outputs: u32,
}

@group(0) @binding(0) var<storage, read> input: array<f32>;
@group(0) @binding(1) var<storage, read> fc: array<f32>;
@group(0) @binding(2) var<storage, read> bias: array<f32>;
@group(0) @binding(3) var<storage, read_write> output: array<f32>;
@group(0) @binding(4) var<uniform> params: LandmarkHeadParams;

var<workgroup> means: array<f32, WG_SIZE>;

@compute @workgroup_size(WG_SIZE)
fn landmark_head(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) group: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
) {
    // Workgroups past the last face still reach the barrier; they only skip the memory.
    let face = group.y * groups.x + group.x;
    let live = face < params.faces;
    var sum = 0.0;
    if live && lid < params.features {
        let base = face * params.pixels * params.features + lid;
        for (var p = 0u; p < params.pixels; p++) {
            sum += input[base + p * params.features];
        }
    }
    means[lid] = sum / f32(params.pixels);
    workgroupBarrier();

    if !live {
        return;
    }
    for (var o = lid; o < params.outputs; o += WG_SIZE) {
        var acc = 0.0;
        for (var f = 0u; f < params.features; f++) {
            acc += means[f] * fc[f * params.outputs + o];
        }
        output[face * params.outputs + o] = acc + bias[o];
    }
}
