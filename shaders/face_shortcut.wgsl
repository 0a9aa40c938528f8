// face_shortcut.wgsl: the tail of a residual-down block for a batch of faces:
// ReLU(conv path + shortcut), where the shortcut is a 2x2 stride-2 average pool of the
// block's input with zero channels appended, and the conv path counts as zero past its last
// row and column where it came out one smaller than the shortcut (MODEL.md).
//
// Bindings (group 0):
//   0  conv    storage, read        array<vec4<f32>>, NHWC [faces, conv_h, conv_w, out_c]
//   1  input   storage, read        array<vec4<f32>>, NHWC [faces, in_h, in_w, in_c]
//   2  output  storage, read_write  array<vec4<f32>>, NHWC [faces, out_h, out_w, out_c]
//   3  params  uniform              ShortcutParams
//
// One thread per four channels of one output pixel, over a 2-D grid of workgroups as in
// face_pool.wgsl. in_c and out_c are multiples of 4.

struct ShortcutParams {
    faces: u32,
    in_h: u32,
    in_w: u32,
    in_c: u32,
    conv_h: u32,
    conv_w: u32,
    out_h: u32,
    out_w: u32,
    out_c: u32,
    unused0: u32,
    unused1: u32,
    unused2: u32,
}

@group(0) @binding(0) var<storage, read> conv: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read> input: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> output: array<vec4<f32>>;
@group(0) @binding(3) var<uniform> params: ShortcutParams;

@compute @workgroup_size(WG_SIZE)
fn down_shortcut(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) group: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
) {
    let out_c4 = params.out_c / 4u;
    let index = (group.y * groups.x + group.x) * WG_SIZE + lid;
    if index >= params.faces * params.out_h * params.out_w * out_c4 {
        return;
    }
    let c = index % out_c4;
    let pixel = index / out_c4;
    let ox = pixel % params.out_w;
    let oy = (pixel / params.out_w) % params.out_h;
    let face = pixel / (params.out_w * params.out_h);

    var v = vec4<f32>(0.0);
    if oy < params.conv_h && ox < params.conv_w {
        v = conv[((face * params.conv_h + oy) * params.conv_w + ox) * out_c4 + c];
    }
    let in_c4 = params.in_c / 4u;
    if c < in_c4 {
        let top = (face * params.in_h + 2u * oy) * params.in_w + 2u * ox;
        let bottom = top + params.in_w;
        // Summed in the CPU path's order, then divided, as TF's average pool does.
        let sum = input[top * in_c4 + c] + input[(top + 1u) * in_c4 + c]
            + input[bottom * in_c4 + c] + input[(bottom + 1u) * in_c4 + c];
        v += sum / 4.0;
    }
    output[index] = max(v, vec4<f32>(0.0));
}
