// face_head.wgsl: the face network's head for a batch of faces: the mean over height and
// width, then the fully connected layer [FACE_HEAD_IN, FACE_DESCRIPTOR_DIM] (no bias).
//
// Bindings (group 0):
//   0  input        storage, read        array<f32>, NHWC [faces, pixels, FACE_HEAD_IN]
//   1  fc           storage, read        array<f32>, [FACE_HEAD_IN, FACE_DESCRIPTOR_DIM]
//   2  descriptors  storage, read_write  array<f32>, [faces, FACE_DESCRIPTOR_DIM]
//   3  params       uniform              HeadParams
//
// One workgroup per face, over a 2-D grid of workgroups as in face_pool.wgsl: the threads
// first share the channel means through workgroup memory, then each computes one output.

struct HeadParams {
    faces: u32,
    pixels: u32,
    unused0: u32,
    unused1: u32,
}

@group(0) @binding(0) var<storage, read> input: array<f32>;
@group(0) @binding(1) var<storage, read> fc: array<f32>;
@group(0) @binding(2) var<storage, read_write> descriptors: array<f32>;
@group(0) @binding(3) var<uniform> params: HeadParams;

var<workgroup> means: array<f32, FACE_HEAD_IN>;

@compute @workgroup_size(WG_SIZE)
fn head(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) group: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
) {
    // Workgroups past the last face still reach the barrier; they only skip the memory.
    let face = group.y * groups.x + group.x;
    let live = face < params.faces;
    for (var c = lid; c < FACE_HEAD_IN; c += WG_SIZE) {
        var sum = 0.0;
        if live {
            let base = face * params.pixels * FACE_HEAD_IN + c;
            for (var p = 0u; p < params.pixels; p++) {
                sum += input[base + p * FACE_HEAD_IN];
            }
        }
        means[c] = sum / f32(params.pixels);
    }
    workgroupBarrier();

    if !live {
        return;
    }
    for (var o = lid; o < FACE_DESCRIPTOR_DIM; o += WG_SIZE) {
        var acc = 0.0;
        for (var c = 0u; c < FACE_HEAD_IN; c++) {
            acc += means[c] * fc[c * FACE_DESCRIPTOR_DIM + o];
        }
        descriptors[face * FACE_DESCRIPTOR_DIM + o] = acc;
    }
}
