// face_conv.wgsl: one convolution for a batch of faces or frames, as an implicit matrix
// product, with the folded bias, the residual shortcut and the activation (ReLU or ReLU6)
// applied to each output before it is stored. The descriptor network, the face detector and
// the landmark network all run their full and 1x1 convolutions through it.
//
// Bindings (group 0):
//   0  input     storage, read        array<f32>, NHWC [faces, in_h, in_w, in_c]
//   1  filters   storage, read        array<f32>, [kernel, kernel, in_c, out_c] (c_out fastest),
//                                     bias and scale already folded in
//   2  bias      storage, read        array<vec4<f32>>, out_c / 4
//   3  shortcut  storage, read        array<vec4<f32>>, NHWC like output; read only when
//                                     params.flags has FLAG_SHORTCUT (added before the
//                                     activation)
//   4  output    storage, read_write  array<vec4<f32>>, NHWC [faces, out_h, out_w, out_c]
//   5  params    uniform              ConvParams
//
// The product is Y[P, out_c] = X[P, K] . W[K, out_c] with P output pixels of all faces and
// K = kernel * kernel * in_c; row p of X is the input window of pixel p, gathered on the fly
// (im2col without the copy). A workgroup computes a tile of FACE_TILE_PIXELS pixels by
// FACE_TILE_CHANNELS channels; it steps through K FACE_TILE_DEPTH at a time, staging the
// window values and the filter rows in workgroup memory, where each is read by every thread
// that needs it. Each thread accumulates 4 pixels by 4 channels, so a value fetched from
// workgroup memory feeds four multiply-adds.
//
// The dispatch is (ceil(P / FACE_TILE_PIXELS), out_c / FACE_TILE_CHANNELS, 1); out_c is a
// multiple of FACE_TILE_CHANNELS (checked on the host).

struct ConvParams {
    faces: u32,
    in_h: u32,
    in_w: u32,
    in_c: u32,
    out_h: u32,
    out_w: u32,
    out_c: u32,
    kernel: u32,
    stride: u32,
    pad: u32,
    flags: u32,
    unused: u32,
}

@group(0) @binding(0) var<storage, read> input: array<f32>;
@group(0) @binding(1) var<storage, read> filters: array<f32>;
@group(0) @binding(2) var<storage, read> bias: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> shortcut: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read_write> output: array<vec4<f32>>;
@group(0) @binding(5) var<uniform> params: ConvParams;

const FLAG_RELU: u32 = 1u;
const FLAG_SHORTCUT: u32 = 2u;
// min(max(0, x), 6), the detector's activation (TF's clipByValue(x, 0, 6)).
const FLAG_RELU6: u32 = 4u;

// Pixels of the tile each thread gathers window values for (one depth lane, every
// WG_SIZE / FACE_TILE_DEPTH-th pixel).
const GATHERS: u32 = FACE_TILE_PIXELS * FACE_TILE_DEPTH / WG_SIZE;
const PIXEL_STEP: u32 = WG_SIZE / FACE_TILE_DEPTH;
// Filter values each thread stages per step.
const FILTER_LOADS: u32 = FACE_TILE_CHANNELS * FACE_TILE_DEPTH / WG_SIZE;
const PIXEL_VECS: u32 = FACE_TILE_PIXELS / 4u;
// Row stride of window_tile, in vec4: one more than a row holds. The 16 threads that stage one
// pixel store 16 depths; with an unpadded stride of 128 words they would all hit one memory
// bank, with 132 at most two share one.
const WINDOW_STRIDE: u32 = PIXEL_VECS + 1u;
const CHANNEL_VECS: u32 = FACE_TILE_CHANNELS / 4u;

// [depth][pixel], four pixels per element, rows WINDOW_STRIDE apart.
var<workgroup> window_tile: array<vec4<f32>, FACE_TILE_DEPTH * WINDOW_STRIDE>;
// [depth][channel], four channels per element.
var<workgroup> filter_tile: array<vec4<f32>, FACE_TILE_DEPTH * FACE_TILE_CHANNELS / 4u>;

@compute @workgroup_size(WG_SIZE)
fn conv(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) group: vec3<u32>,
) {
    let out_plane = params.out_h * params.out_w;
    let pixels = params.faces * out_plane;
    let row_len = params.kernel * params.in_c;
    let k_len = params.kernel * row_len;
    let first_pixel = group.x * FACE_TILE_PIXELS;
    let first_channel = group.y * FACE_TILE_CHANNELS;

    // Where each gathered pixel's window starts, in input coordinates (may be negative under
    // SAME padding), and its face's first input value; face = -1 marks a pixel past the end.
    let lane = lid % FACE_TILE_DEPTH;
    var origin_y: array<i32, GATHERS>;
    var origin_x: array<i32, GATHERS>;
    var face_base: array<i32, GATHERS>;
    for (var g = 0u; g < GATHERS; g++) {
        let p = first_pixel + lid / FACE_TILE_DEPTH + g * PIXEL_STEP;
        let face = p / out_plane;
        let oy = (p % out_plane) / params.out_w;
        let ox = p % params.out_w;
        origin_y[g] = i32(oy * params.stride) - i32(params.pad);
        origin_x[g] = i32(ox * params.stride) - i32(params.pad);
        face_base[g] = select(-1, i32(face * params.in_h * params.in_w * params.in_c), p < pixels);
    }

    let tm = lid / CHANNEL_VECS;
    let tn = lid % CHANNEL_VECS;
    var acc: array<vec4<f32>, 4>;

    for (var k0 = 0u; k0 < k_len; k0 += FACE_TILE_DEPTH) {
        // Stage the window values: this thread's depth lane for each of its pixels.
        let k = k0 + lane;
        let ky = i32(k / row_len);
        let kx = i32((k % row_len) / params.in_c);
        let ci = k % params.in_c;
        for (var g = 0u; g < GATHERS; g++) {
            let iy = origin_y[g] + ky;
            let ix = origin_x[g] + kx;
            let inside = k < k_len && face_base[g] >= 0 && iy >= 0 && ix >= 0
                && iy < i32(params.in_h) && ix < i32(params.in_w);
            var value = 0.0;
            if inside {
                let at = u32(face_base[g]) + (u32(iy) * params.in_w + u32(ix)) * params.in_c + ci;
                value = input[at];
            }
            let p = lid / FACE_TILE_DEPTH + g * PIXEL_STEP;
            window_tile[lane * WINDOW_STRIDE + p / 4u][p % 4u] = value;
        }
        // Stage the filter rows k0 .. k0 + FACE_TILE_DEPTH of this tile's channels.
        for (var f = 0u; f < FILTER_LOADS; f++) {
            let e = lid + f * WG_SIZE;
            let d = e / FACE_TILE_CHANNELS;
            let c = e % FACE_TILE_CHANNELS;
            var value = 0.0;
            if k0 + d < k_len {
                value = filters[(k0 + d) * params.out_c + first_channel + c];
            }
            filter_tile[d * CHANNEL_VECS + c / 4u][c % 4u] = value;
        }
        workgroupBarrier();

        for (var d = 0u; d < FACE_TILE_DEPTH; d++) {
            let a = window_tile[d * WINDOW_STRIDE + tm];
            let b = filter_tile[d * CHANNEL_VECS + tn];
            acc[0] = fma(vec4<f32>(a.x), b, acc[0]);
            acc[1] = fma(vec4<f32>(a.y), b, acc[1]);
            acc[2] = fma(vec4<f32>(a.z), b, acc[2]);
            acc[3] = fma(vec4<f32>(a.w), b, acc[3]);
        }
        workgroupBarrier();
    }

    let c4 = (first_channel / 4u) + tn;
    let out_c4 = params.out_c / 4u;
    let b = bias[c4];
    for (var i = 0u; i < 4u; i++) {
        let p = first_pixel + tm * 4u + i;
        if p >= pixels {
            break;
        }
        let at = p * out_c4 + c4;
        var v = acc[i] + b;
        if (params.flags & FLAG_SHORTCUT) != 0u {
            v += shortcut[at];
        }
        if (params.flags & FLAG_RELU) != 0u {
            v = max(v, vec4<f32>(0.0));
        }
        if (params.flags & FLAG_RELU6) != 0u {
            v = clamp(v, vec4<f32>(0.0), vec4<f32>(6.0));
        }
        output[at] = v;
    }
}
