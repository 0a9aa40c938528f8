// scan_int8.wgsl: int8 storage for scan.wgsl, per-template and per-probe scales.
//
// Bindings (group 0), the format-specific half of scan.wgsl's table:
//   0  gallery  storage, read  array<u32>, tiled: 4 signed 8-bit dims of one row per element
//   2  probes   storage, read  array<u32>, probe-major, 4 signed 8-bit dims per element
//
// The integer dot product is exact (|sum| <= 127 * 127 * dim fits i32 for dim < 133,000);
// scan.wgsl multiplies it by both scales.

@group(0) @binding(0) var<storage, read> gallery: array<u32>;
@group(0) @binding(2) var<storage, read> probes: array<u32>;

fn row_dot(row: u32, probe: u32) -> f32 {
    var g = tile_index(row);
    var p = probe * params.dim4;
    var acc = 0i;
    for (var d = 0u; d < params.dim4; d++) {
        acc += dot4I8Packed(gallery[g], probes[p]);
        g += WG_SIZE;
        p += 1u;
    }
    return f32(acc);
}
