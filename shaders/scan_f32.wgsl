// scan_f32.wgsl: f32 storage for scan.wgsl.
//
// Bindings (group 0), the format-specific half of scan.wgsl's table:
//   0  gallery  storage, read  array<vec4<f32>>, tiled: 4 dims of one row per element
//   2  probes   storage, read  array<vec4<f32>>, probe-major

@group(0) @binding(0) var<storage, read> gallery: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> probes: array<vec4<f32>>;

fn row_dot(row: u32, probe: u32) -> f32 {
    var g = tile_index(row);
    var p = probe * params.dim4;
    var acc = 0.0;
    for (var d = 0u; d < params.dim4; d++) {
        acc += dot(gallery[g], probes[p]);
        g += WG_SIZE;
        p += 1u;
    }
    return acc;
}
