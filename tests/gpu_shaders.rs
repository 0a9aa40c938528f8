//! Every shader parsed and validated by naga on the CPU, no adapter needed: workgroup sizes
//! against `WORKGROUP_SIZE`, bindings against `Kernel::bindings` and the header tables. The
//! face network's kernels (`Kernel::FaceConv` and the rest) are among them.

use gatematch::engine::gpu::shaders::{Access, Kernel, WORKGROUP_SIZE};

fn parse(kernel: Kernel) -> naga::Module {
    let source = kernel.source();
    let module = naga::front::wgsl::parse_str(&source)
        .unwrap_or_else(|e| panic!("{}: {}", kernel.name(), e.emit_to_string(&source)));
    let flags = naga::valid::ValidationFlags::all();
    naga::valid::Validator::new(flags, naga::valid::Capabilities::all())
        .validate(&module)
        .unwrap_or_else(|e| panic!("{}: {}", kernel.name(), e.emit_to_string(&source)));
    module
}

#[test]
fn every_shader_validates_with_the_workgroup_size_constant() {
    for kernel in Kernel::ALL {
        let module = parse(kernel);
        assert_eq!(module.entry_points.len(), 1, "{}", kernel.name());
        let entry = &module.entry_points[0];
        assert_eq!(entry.name, kernel.entry_point());
        assert_eq!(entry.stage, naga::ShaderStage::Compute);
        assert_eq!(
            entry.workgroup_size,
            [WORKGROUP_SIZE, 1, 1],
            "{}",
            kernel.name()
        );
    }
}

#[test]
fn shader_bindings_match_the_rust_layouts() {
    for kernel in Kernel::ALL {
        let module = parse(kernel);
        let mut found: Vec<(u32, Access)> = module
            .global_variables
            .iter()
            .filter_map(|(_, var)| {
                let binding = var.binding.as_ref()?;
                assert_eq!(binding.group, 0, "{}", kernel.name());
                let access = match var.space {
                    naga::AddressSpace::Uniform => Access::Uniform,
                    naga::AddressSpace::Storage { access } => {
                        if access.contains(naga::StorageAccess::STORE) {
                            Access::StorageReadWrite
                        } else {
                            Access::StorageRead
                        }
                    }
                    other => panic!("{}: unexpected space {other:?}", kernel.name()),
                };
                Some((binding.binding, access))
            })
            .collect();
        found.sort_by_key(|(slot, _)| *slot);
        let expected: Vec<(u32, Access)> = kernel
            .bindings()
            .iter()
            .enumerate()
            .map(|(s, a)| (s as u32, *a))
            .collect();
        assert_eq!(found, expected, "{}", kernel.name());
    }
}

/// Rows of the header tables look like `//   4  partial  storage, read_write  ...`.
fn header_rows(source: &str) -> Vec<(u32, Access)> {
    source
        .lines()
        .filter_map(|line| {
            let mut words = line.strip_prefix("//")?.split_whitespace();
            let slot = words.next()?.parse().ok()?;
            let _name = words.next()?;
            let access = match (words.next()?, words.next()) {
                ("storage,", Some("read")) => Access::StorageRead,
                ("storage,", Some("read_write")) => Access::StorageReadWrite,
                ("uniform", _) => Access::Uniform,
                _ => return None,
            };
            Some((slot, access))
        })
        .collect()
}

#[test]
fn shader_header_tables_match_the_rust_layouts() {
    for kernel in Kernel::ALL {
        let rows = header_rows(&kernel.source());
        for (slot, access) in kernel.bindings().iter().enumerate() {
            let listed: Vec<_> = rows.iter().filter(|(s, _)| *s == slot as u32).collect();
            assert!(
                !listed.is_empty(),
                "{}: slot {slot} missing from header",
                kernel.name()
            );
            for (_, a) in listed {
                assert_eq!(
                    a,
                    access,
                    "{}: slot {slot} header says {a:?}",
                    kernel.name()
                );
            }
        }
        assert!(
            rows.iter()
                .all(|(s, _)| (*s as usize) < kernel.bindings().len())
        );
    }
}

#[test]
fn no_shader_file_spells_a_host_constant() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("shaders");
    let mut files = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "wgsl") {
            continue;
        }
        files += 1;
        let text = std::fs::read_to_string(&path).unwrap();
        for line in text.lines().filter(|l| l.contains("@workgroup_size")) {
            assert!(
                line.contains("@workgroup_size(WG_SIZE)"),
                "{}: {line}",
                path.display()
            );
        }
        for name in [
            "WG_SIZE",
            "LIST_LEN",
            "POOL_LEN",
            "NONE_SLOT",
            "FACE_TILE_PIXELS",
            "FACE_TILE_CHANNELS",
            "FACE_TILE_DEPTH",
            "FACE_HEAD_IN",
            "FACE_DESCRIPTOR_DIM",
        ] {
            let declared = format!("const {name}");
            assert!(
                !text.contains(&declared),
                "{} declares {name}",
                path.display()
            );
        }
    }
    assert_eq!(files, 13, "every kernel file was checked");
}

#[test]
fn face_kernels_get_their_tile_constants_and_the_scan_kernels_do_not() {
    for kernel in Kernel::ALL {
        let source = kernel.source();
        assert_eq!(
            source.contains("const FACE_TILE_PIXELS"),
            kernel.is_face(),
            "{}",
            kernel.name()
        );
    }
    let faces = Kernel::ALL.iter().filter(|k| k.is_face()).count();
    assert_eq!(faces, 6);
}
