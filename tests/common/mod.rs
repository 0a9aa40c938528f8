//! What the integration tests share: a development PKI, an appliance on loopback, gates.

#![allow(dead_code)]

pub mod gpu;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use gatematch::app::{self, RunningAppliance};
use gatematch::config::{Config, SYNTHETIC_MODEL};
use gatematch::gate::GateClient;
use gatematch::gate::travellers::Population;
use gatematch::pki;
use gatematch::proto::{self, request::Operation, response::Result as Answer};

/// A folder with a development PKI of `gates` gates, removed when dropped.
pub struct Site {
    pub dir: tempfile::TempDir,
}

impl Site {
    pub fn new(gates: usize) -> Site {
        let dir = tempfile::tempdir().expect("temporary folder");
        pki::write_development_pki(&dir.path().join("certs"), gates, "test-site", &[])
            .expect("development PKI");
        Site { dir }
    }

    pub fn certs(&self) -> PathBuf {
        self.dir.path().join("certs")
    }

    pub fn registry(&self) -> PathBuf {
        self.dir.path().join("registry.db")
    }

    /// A configuration on a free loopback port with this site's PKI and registry.
    pub fn config(&self) -> Config {
        Config::development(
            &self.certs(),
            &self.registry(),
            SocketAddr::from(([127, 0, 0, 1], 0)),
        )
    }

    pub fn start(&self, config: &Config) -> RunningAppliance {
        app::start(config).expect("appliance starts")
    }

    /// Gate `n` (1-based) connected to `addr`.
    pub async fn gate(&self, n: usize, addr: SocketAddr) -> GateClient {
        let stem = self.certs().join("gates").join(pki::gate_name(n));
        GateClient::connect(
            addr,
            "localhost",
            &self.certs().join("ca.pem"),
            &stem.with_extension("pem"),
            &stem.with_extension("key"),
        )
        .await
        .expect("gate connects")
    }
}

pub const POPULATION: Population = Population {
    seed: 99,
    dimension: 128,
};

pub fn template(values: Vec<f32>) -> proto::Template {
    proto::Template {
        modality: proto::Modality::Face as i32,
        model_id: SYNTHETIC_MODEL.into(),
        values,
    }
}

pub fn request(operation: Operation) -> proto::Request {
    proto::Request {
        request_id: 7,
        deadline_ms: 5_000,
        operation: Some(operation),
    }
}

pub fn enrol(person: u64) -> proto::Request {
    request(Operation::Enrol(proto::EnrolRequest {
        person_id: POPULATION.person_id(person),
        templates: vec![template(POPULATION.template(person))],
        ..Default::default()
    }))
}

pub fn verify(claimed: u64, probe: Vec<f32>) -> proto::Request {
    request(Operation::Verify(proto::VerifyRequest {
        person_id: POPULATION.person_id(claimed),
        probe: Some(template(probe)),
        ..Default::default()
    }))
}

pub fn identify(probe: Vec<f32>, k: u32) -> proto::Request {
    request(Operation::Identify(proto::IdentifyRequest {
        probe: Some(template(probe)),
        k,
        ..Default::default()
    }))
}

pub fn erase(person: u64) -> proto::Request {
    request(Operation::Erase(proto::EraseRequest {
        person_id: POPULATION.person_id(person),
    }))
}

pub fn refusal(response: &proto::Response) -> proto::Reason {
    assert_eq!(
        response.outcome,
        proto::Outcome::Refused as i32,
        "expected a refusal: {response:?}"
    );
    response.reason()
}

pub fn verify_result(response: proto::Response) -> proto::VerifyResult {
    match response.result {
        Some(Answer::Verify(v)) => v,
        other => panic!(
            "expected a verify result, got {other:?} ({})",
            response.detail
        ),
    }
}

pub fn identify_result(response: proto::Response) -> proto::IdentifyResult {
    match response.result {
        Some(Answer::Identify(v)) => v,
        other => panic!(
            "expected an identify result, got {other:?} ({})",
            response.detail
        ),
    }
}

pub fn exists(path: &Path) -> bool {
    path.exists()
}

/// Enrols `person` through `gate` and asserts the appliance said "enrolled".
pub async fn enrol_ok(gate: &GateClient, person: u64) -> proto::Response {
    let response = gate.call(&enrol(person)).await.unwrap();
    assert_eq!(
        response.outcome,
        proto::Outcome::Ok as i32,
        "{}",
        response.detail
    );
    response
}

/// Verifies `claimed` with a genuine probe and with `other`'s probe, asserting a match and a
/// non-match; returns both results.
pub async fn assert_genuine_and_impostor(
    gate: &GateClient,
    claimed: u64,
    other: u64,
    rng: &mut impl rand::Rng,
) -> (proto::VerifyResult, proto::VerifyResult) {
    let genuine = verify_result(
        gate.call(&verify(claimed, POPULATION.probe(claimed, rng)))
            .await
            .unwrap(),
    );
    assert_eq!(
        genuine.decision,
        proto::Decision::Match as i32,
        "score {}",
        genuine.score
    );
    let impostor = verify_result(
        gate.call(&verify(claimed, POPULATION.probe(other, rng)))
            .await
            .unwrap(),
    );
    assert_eq!(
        impostor.decision,
        proto::Decision::NoMatch as i32,
        "score {}",
        impostor.score
    );
    (genuine, impostor)
}

/// Identifies with a probe of `person` and asserts `person` ranks first among `k`.
pub async fn assert_identified_first(
    gate: &GateClient,
    person: u64,
    k: u32,
    rng: &mut impl rand::Rng,
) -> proto::IdentifyResult {
    let found = identify_result(
        gate.call(&identify(POPULATION.probe(person, rng), k))
            .await
            .unwrap(),
    );
    assert_eq!(found.candidates.len(), k as usize);
    assert_eq!(found.candidates[0].person_id, POPULATION.person_id(person));
    found
}
