//! The appliance on `backend = "gpu"` as a gate sees it: QUIC with mutual TLS on loopback,
//! a real registry, and the gallery on the GPU (lavapipe in CI), restarted from the registry.

mod common;

use common::gpu::{no_adapter, own_context};
use common::*;
use gatematch::app;
use gatematch::config::BackendChoice;
use gatematch::engine::gpu::{GpuContext, StorageFormat};
use gatematch::proto::{self, Reason, request::Operation, response::Result as Answer};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

async fn status(gate: &gatematch::gate::GateClient) -> proto::StatusResult {
    let response = gate
        .call(&request(Operation::Status(proto::StatusRequest {})))
        .await
        .unwrap();
    match response.result {
        Some(Answer::Status(status)) => status,
        other => panic!("expected a status, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enrol_verify_identify_erase_on_the_gpu() {
    let site = Site::new(1);
    let mut config = site.config();
    config.engine.backend = BackendChoice::Gpu;
    config.engine.gpu_format = StorageFormat::Int8;
    let appliance = match app::start(&config) {
        Ok(appliance) => appliance,
        Err(e) => return no_adapter(&e.to_string()),
    };
    assert_eq!(appliance.appliance.backend_name(), "gpu");
    let gate = site.gate(1, appliance.addr).await;
    let mut rng = ChaCha8Rng::seed_from_u64(8);

    for person in 0..30 {
        enrol_ok(&gate, person).await;
    }
    assert_genuine_and_impostor(&gate, 3, 4, &mut rng).await;
    assert_identified_first(&gate, 11, 3, &mut rng).await;

    // Erasure reaches the GPU's copy before the next scan.
    let erased = gate.call(&erase(11)).await.unwrap();
    assert_eq!(
        erased.outcome,
        proto::Outcome::Ok as i32,
        "{}",
        erased.detail
    );
    let found = identify_result(
        gate.call(&identify(POPULATION.probe(11, &mut rng), 30))
            .await
            .unwrap(),
    );
    assert_eq!(found.candidates.len(), 29);
    assert!(
        found
            .candidates
            .iter()
            .all(|c| c.person_id != POPULATION.person_id(11))
    );
    assert_eq!(
        refusal(
            &gate
                .call(&verify(11, POPULATION.probe(11, &mut rng)))
                .await
                .unwrap()
        ),
        Reason::UnknownPerson
    );
    assert_eq!(status(&gate).await.backend, "gpu");
    gate.close().await;
    appliance.stop().await;

    // A restart loads the gallery from the registry and copies it to the GPU whole.
    let appliance = app::start(&config).expect("restarts on the same adapter");
    let gate = site.gate(1, appliance.addr).await;
    let found = identify_result(
        gate.call(&identify(POPULATION.probe(12, &mut rng), 1))
            .await
            .unwrap(),
    );
    assert_eq!(found.candidates[0].person_id, POPULATION.person_id(12));
    let status = status(&gate).await;
    assert_eq!((status.backend.as_str(), status.persons), ("gpu", 29));
    gate.close().await;
    appliance.stop().await;
}

#[test]
fn auto_takes_a_hardware_gpu_or_the_cpu_never_a_software_one() {
    let Some(any) = own_context() else { return };
    let site = Site::new(1);
    let config = site.config();
    assert_eq!(
        config.engine.backend,
        BackendChoice::Auto,
        "auto is the default"
    );
    let chosen = app::backend(&config).expect("auto always finds a backend");
    match GpuContext::new(false) {
        Ok(hardware) => {
            eprintln!("hardware adapter {}", hardware.adapter_info().name);
            assert_eq!(chosen.name(), "gpu");
        }
        Err(e) => {
            eprintln!("only a software adapter ({}): {e}", any.adapter_info().name);
            assert!(any.is_software());
            assert_eq!(chosen.name(), "cpu");
        }
    }
}
