// face_pool.wgsl: the face network's max pool (square window, VALID) for a batch of faces.
//
// Bindings (group 0):
//   0  input   storage, read        array<vec4<f32>>, NHWC [faces, in_h, in_w, channels]
//   1  output  storage, read_write  array<vec4<f32>>, NHWC [faces, out_h, out_w, channels]
//   2  params  uniform              PoolParams
//
// One thread per four channels of one output pixel. The dispatch is a 2-D grid of workgroups
// (x * y >= the outputs / WG_SIZE) so that large batches stay within the per-dimension limit.

struct PoolParams {
    faces: u32,
    in_h: u32,
    in_w: u32,
    channels: u32,
    out_h: u32,
    out_w: u32,
    window: u32,
    stride: u32,
}

@group(0) @binding(0) var<storage, read> input: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read_write> output: array<vec4<f32>>;
@group(0) @binding(2) var<uniform> params: PoolParams;

@compute @workgroup_size(WG_SIZE)
fn max_pool(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) group: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
) {
    let c4 = params.channels / 4u;
    let index = (group.y * groups.x + group.x) * WG_SIZE + lid;
    if index >= params.faces * params.out_h * params.out_w * c4 {
        return;
    }
    let c = index % c4;
    let pixel = index / c4;
    let ox = pixel % params.out_w;
    let oy = (pixel / params.out_w) % params.out_h;
    let face = pixel / (params.out_w * params.out_h);

    var best = vec4<f32>(-3.40282347e38);
    for (var ky = 0u; ky < params.window; ky++) {
        let row = (face * params.in_h + oy * params.stride + ky) * params.in_w;
        for (var kx = 0u; kx < params.window; kx++) {
            best = max(best, input[(row + ox * params.stride + kx) * c4 + c]);
        }
    }
    output[index] = best;
}
