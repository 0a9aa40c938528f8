// face_depthwise.wgsl: a 3x3 depthwise convolution with TF "SAME" padding for a batch of
// frames or faces, as the face detector and the landmark network use it: each channel
// convolved with its own 3x3 filter, then the per-channel bias (a folded batch norm, or zeros)
// and the activation.
//
// Bindings (group 0):
//   0  input    storage, read        array<vec4<f32>>, NHWC [images, in_h, in_w, channels]
//   1  filters  storage, read        array<vec4<f32>>, [3, 3, channels] (channels fastest),
//                                    batch norm already folded in
//   2  bias     storage, read        array<vec4<f32>>, channels / 4
//   3  output   storage, read_write  array<vec4<f32>>, NHWC [images, out_h, out_w, channels]
//   4  params   uniform              DepthwiseParams
//
// One thread per four channels of one output pixel, over a 2-D grid of workgroups as in
// face_pool.wgsl. channels is a multiple of 4 (checked on the host). The taps are summed in
// the CPU path's order (row by row, left to right), then the bias is added.

struct DepthwiseParams {
    images: u32,
    in_h: u32,
    in_w: u32,
    channels: u32,
    out_h: u32,
    out_w: u32,
    stride: u32,
    // Zeros before the first input row and column (TF SAME splits the odd one after).
    pad: u32,
    flags: u32,
    unused0: u32,
    unused1: u32,
    unused2: u32,
}

@group(0) @binding(0) var<storage, read> input: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read> filters: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> bias: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> output: array<vec4<f32>>;
@group(0) @binding(4) var<uniform> params: DepthwiseParams;

// The same bits as face_conv.wgsl's, so one set of host constants serves both.
const FLAG_RELU: u32 = 1u;
const FLAG_RELU6: u32 = 4u;
// ReLU of each input value as it is read: the landmark network's dense blocks feed each
// convolution the ReLU of a sum that is kept un-clipped for the next sum.
const FLAG_RELU_INPUT: u32 = 8u;

@compute @workgroup_size(WG_SIZE)
fn depthwise(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) group: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
) {
    let c4 = params.channels / 4u;
    let index = (group.y * groups.x + group.x) * WG_SIZE + lid;
    if index >= params.images * params.out_h * params.out_w * c4 {
        return;
    }
    let c = index % c4;
    let pixel = index / c4;
    let ox = pixel % params.out_w;
    let oy = (pixel / params.out_w) % params.out_h;
    let image = pixel / (params.out_w * params.out_h);

    var acc = vec4<f32>(0.0);
    for (var ky = 0u; ky < 3u; ky++) {
        let iy = i32(oy * params.stride + ky) - i32(params.pad);
        if iy < 0 || iy >= i32(params.in_h) {
            continue;
        }
        let row = (image * params.in_h + u32(iy)) * params.in_w;
        for (var kx = 0u; kx < 3u; kx++) {
            let ix = i32(ox * params.stride + kx) - i32(params.pad);
            if ix < 0 || ix >= i32(params.in_w) {
                continue;
            }
            var v = input[(row + u32(ix)) * c4 + c];
            if (params.flags & FLAG_RELU_INPUT) != 0u {
                v = max(v, vec4<f32>(0.0));
            }
            acc += v * filters[(ky * 3u + kx) * c4 + c];
        }
    }
    var y = acc + bias[c];
    if (params.flags & FLAG_RELU) != 0u {
        y = max(y, vec4<f32>(0.0));
    }
    if (params.flags & FLAG_RELU6) != 0u {
        y = clamp(y, vec4<f32>(0.0), vec4<f32>(6.0));
    }
    output[index] = y;
}
