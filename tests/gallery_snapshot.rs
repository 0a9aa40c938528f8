//! `gatematch gallery export` and `import` through the real binary: a round trip is exact, and
//! import refuses to run while an appliance holds the registry.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;
use gatematch::gallery::snapshot;
use gatematch::registry::{Change, NewTemplate, Origin, Registry};

fn gatematch(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_gatematch"))
        .args(args)
        .output()
        .expect("binary runs")
}

#[test]
fn export_import_export_is_bit_exact() {
    let dir = tempfile::tempdir().unwrap();
    let first = dir.path().join("first.db");
    {
        let (registry, _) = Registry::open(&first, None).unwrap();
        for person in 0..50u64 {
            let mut values = POPULATION.template(person);
            values[0] = f32::from_bits(values[0].to_bits() ^ 1); // bits a text format would lose
            registry
                .apply_blocking(Change::Enrol {
                    person_id: POPULATION.person_id(person),
                    templates: vec![NewTemplate {
                        modality: 1,
                        model_id: "synthetic-128".into(),
                        values,
                    }],
                    origin: Origin {
                        gate_id: "gate-0001".into(),
                        site: "s".into(),
                    },
                })
                .unwrap();
        }
    }
    let a = dir.path().join("a.h5");
    gallery_ok("export", &a, &first);
    let second = dir.path().join("second.db");
    gallery_ok("import", &a, &second);
    let b = dir.path().join("b.h5");
    gallery_ok("export", &b, &second);

    let (a, b) = (snapshot::read(&a).unwrap(), snapshot::read(&b).unwrap());
    assert_eq!(a.len(), 50);
    assert_eq!(a.dimension, 128);
    assert_eq!(a.person_ids, b.person_ids);
    let bits = |s: &snapshot::Snapshot| s.templates.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&a), bits(&b));
    let mut person_0 = POPULATION.template(0);
    person_0[0] = f32::from_bits(person_0[0].to_bits() ^ 1);
    assert_eq!(a.person_ids[0], POPULATION.person_id(0));
    assert_eq!(
        bits(&a)[..128],
        person_0.iter().map(|v| v.to_bits()).collect::<Vec<_>>()[..]
    );
}

#[test]
fn import_refuses_while_an_appliance_holds_the_registry() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("held.db");
    let file = dir.path().join("synth.h5");
    let out = gatematch(&[
        "gallery",
        "synth",
        file.to_str().unwrap(),
        "--persons",
        "10",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let (held, _) = Registry::open(&db, None).unwrap();
    let out = gatematch(&[
        "gallery",
        "import",
        file.to_str().unwrap(),
        "--registry",
        db.to_str().unwrap(),
    ]);
    assert!(
        !out.status.success(),
        "import must refuse while the registry is held"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("held by another process"));
    drop(held);

    let out = gallery_ok("import", &file, &db);
    assert!(String::from_utf8_lossy(&out.stdout).contains("imported 10 templates"));
}

/// Runs `gatematch gallery VERB FILE --registry DB` and asserts it succeeded.
fn gallery_ok(verb: &str, file: &Path, registry: &Path) -> std::process::Output {
    let out = gatematch(&[
        "gallery",
        verb,
        file.to_str().unwrap(),
        "--registry",
        registry.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}
