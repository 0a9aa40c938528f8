//! The appliance as a gate sees it: QUIC with mutual TLS on loopback, a real registry file.

mod common;

use std::time::Duration;

use common::*;
use gatematch::gate::GateClient;
use gatematch::pki;
use gatematch::proto::{self, Reason, request::Operation, response::Result as Answer};
use gatematch::server::tls;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_without_a_certificate_is_refused_in_the_handshake() {
    let site = Site::new(1);
    let appliance = site.start(&site.config());
    let config = tls::anonymous_client_config(&site.certs().join("ca.pem")).unwrap();
    let refused = match GateClient::connect_with(appliance.addr, "localhost", config).await {
        // TLS 1.3 lets the client finish its side before the server checks the client's
        // certificate, so the refusal may surface on the first request instead.
        Ok(gate) => gate.call(&enrol(1)).await.is_err(),
        Err(_) => true,
    };
    assert!(refused, "a gate without a certificate must not be served");
    appliance.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gate_certificate_from_another_ca_is_refused() {
    let site = Site::new(1);
    let other = Site::new(1);
    let appliance = site.start(&site.config());
    let stem = other.certs().join("gates").join(pki::gate_name(1));
    let outcome = GateClient::connect(
        appliance.addr,
        "localhost",
        // Trust our appliance, but present a certificate from the other PKI's CA.
        &site.certs().join("ca.pem"),
        &stem.with_extension("pem"),
        &stem.with_extension("key"),
    )
    .await;
    let refused = match outcome {
        Ok(gate) => gate.call(&enrol(1)).await.is_err(),
        Err(_) => true,
    };
    assert!(
        refused,
        "a certificate from a foreign CA must not be served"
    );
    let persons = appliance.appliance.gallery().read().unwrap().person_count();
    assert_eq!(
        persons, 0,
        "nothing from the refused peer reached the registry"
    );
    appliance.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enrol_verify_identify_erase() {
    let site = Site::new(2);
    let appliance = site.start(&site.config());
    let gate = site.gate(1, appliance.addr).await;
    let mut rng = ChaCha8Rng::seed_from_u64(5);

    for person in 0..20 {
        let response = gate.call(&enrol(person)).await.unwrap();
        assert_eq!(
            response.outcome,
            proto::Outcome::Ok as i32,
            "{}",
            response.detail
        );
        assert!(matches!(
            response.result,
            Some(Answer::Enrol(proto::EnrolResult {
                created: true,
                templates: 1,
                ..
            }))
        ));
    }

    let (genuine, _) = assert_genuine_and_impostor(&gate, 3, 4, &mut rng).await;
    assert_eq!(genuine.measure, proto::Measure::Cosine as i32);

    let found = assert_identified_first(&gate, 11, 3, &mut rng).await;
    assert!(found.candidates[0].score > found.candidates[1].score);

    // A second gate sees the first gate's enrolments at once.
    let other_gate = site.gate(2, appliance.addr).await;
    let erased = other_gate.call(&erase(11)).await.unwrap();
    assert!(matches!(
        erased.result,
        Some(Answer::Erase(proto::EraseResult {
            templates_removed: 1
        }))
    ));

    let after = gate
        .call(&verify(11, POPULATION.probe(11, &mut rng)))
        .await
        .unwrap();
    assert_eq!(refusal(&after), Reason::UnknownPerson);
    let found = identify_result(
        gate.call(&identify(POPULATION.probe(11, &mut rng), 20))
            .await
            .unwrap(),
    );
    assert_eq!(
        found.candidates.len(),
        19,
        "the erased person is gone from 1:N too"
    );
    assert!(
        found
            .candidates
            .iter()
            .all(|c| c.person_id != POPULATION.person_id(11))
    );
    assert_eq!(
        refusal(&gate.call(&erase(11)).await.unwrap()),
        Reason::UnknownPerson
    );

    let status = gate
        .call(&request(Operation::Status(proto::StatusRequest {})))
        .await
        .unwrap();
    let Some(Answer::Status(status)) = status.result else {
        panic!("status")
    };
    assert_eq!(status.persons, 19);
    assert_eq!(
        status.gate_id, "gate-0001",
        "the gate id comes from the certificate"
    );
    assert_eq!(status.site, "test-site");
    gate.close().await;
    other_gate.close().await;
    appliance.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_enrolment_survives_a_restart() {
    let site = Site::new(3);
    let config = site.config();
    let appliance = site.start(&config);
    let mut tasks = Vec::new();
    for g in 1..=3 {
        let gate = site.gate(g, appliance.addr).await;
        tasks.push(tokio::spawn(async move {
            let mut acknowledged = Vec::new();
            for i in 0..40 {
                let person = g as u64 * 1000 + i;
                let response = gate.call(&enrol(person)).await.unwrap();
                if response.outcome == proto::Outcome::Ok as i32 {
                    acknowledged.push(person);
                }
            }
            gate.close().await;
            acknowledged
        }));
    }
    let mut acknowledged = Vec::new();
    for t in tasks {
        acknowledged.extend(t.await.unwrap());
    }
    assert_eq!(acknowledged.len(), 120);
    appliance.stop().await;

    let appliance = site.start(&config);
    let gate = site.gate(1, appliance.addr).await;
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    for person in acknowledged {
        let v = verify_result(
            gate.call(&verify(person, POPULATION.probe(person, &mut rng)))
                .await
                .unwrap(),
        );
        assert_eq!(
            v.decision,
            proto::Decision::Match as i32,
            "person {person} after restart"
        );
    }
    gate.close().await;
    appliance.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_typed_refusal_and_other_gates_keep_being_served() {
    let site = Site::new(2);
    let mut config = site.config();
    config.server.max_message_bytes = 4096;
    config.server.read_timeout_ms = 300;
    let appliance = site.start(&config);
    let gate = site.gate(1, appliance.addr).await;
    let good_gate = site.gate(2, appliance.addr).await;
    gate.call(&enrol(1)).await.unwrap();

    // Not a protobuf message.
    let garbage = gate
        .call_raw(&[0xff, 0xff, 0xff, 0xff, 0x0f, 0x01])
        .await
        .unwrap();
    assert_eq!(refusal(&garbage), Reason::Malformed);
    // No operation.
    let empty = gate.call(&proto::Request::default()).await.unwrap();
    assert_eq!(refusal(&empty), Reason::Malformed);
    // Larger than the configured limit.
    let huge = gate.call(&verify(1, vec![0.5; 2000])).await.unwrap();
    assert_eq!(refusal(&huge), Reason::TooLarge);
    // A template of the wrong length, and one with NaN.
    assert_eq!(
        refusal(&gate.call(&verify(1, vec![0.5; 127])).await.unwrap()),
        Reason::WrongDimension
    );
    let mut nan = POPULATION.template(1);
    nan[5] = f32::NAN;
    assert_eq!(
        refusal(&gate.call(&verify(1, nan)).await.unwrap()),
        Reason::WrongDimension
    );
    // A model the appliance does not serve.
    let mut other_model = template(POPULATION.template(1));
    other_model.model_id = "finger-v9".into();
    let wrong_model = request(Operation::Identify(proto::IdentifyRequest {
        probe: Some(other_model),
        k: 1,
        ..Default::default()
    }));
    assert_eq!(
        refusal(&gate.call(&wrong_model).await.unwrap()),
        Reason::WrongModel
    );
    // Somebody never enrolled; an empty person id; k over the limit.
    assert_eq!(
        refusal(&gate.call(&verify(5, POPULATION.template(5))).await.unwrap()),
        Reason::UnknownPerson
    );
    let nobody = request(Operation::Erase(proto::EraseRequest {
        person_id: String::new(),
    }));
    assert_eq!(
        refusal(&gate.call(&nobody).await.unwrap()),
        Reason::Malformed
    );
    assert_eq!(
        refusal(
            &gate
                .call(&identify(POPULATION.template(1), 1000))
                .await
                .unwrap()
        ),
        Reason::Malformed
    );

    // A stream reset halfway through the request.
    let (mut send, _recv) = gate.connection().open_bi().await.unwrap();
    send.write_all(&[0x0a, 0x05, 0x01]).await.unwrap();
    send.reset(0u32.into()).unwrap();

    // A stream that is opened and never finished is answered within the read timeout.
    let (mut send, mut recv) = gate.connection().open_bi().await.unwrap();
    send.write_all(&[0x08]).await.unwrap();
    let answer = tokio::time::timeout(Duration::from_secs(5), recv.read_to_end(1 << 16))
        .await
        .expect("answered within the bound")
        .unwrap();
    let answer = <proto::Response as prost::Message>::decode(answer.as_slice()).unwrap();
    assert_eq!(refusal(&answer), Reason::Malformed);

    // Through all of that, both gates are still served normally.
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    for g in [&gate, &good_gate] {
        let v = verify_result(
            g.call(&verify(1, POPULATION.probe(1, &mut rng)))
                .await
                .unwrap(),
        );
        assert_eq!(v.decision, proto::Decision::Match as i32);
    }
    gate.close().await;
    good_gate.close().await;
    appliance.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gate_that_connects_and_sends_nothing_is_closed_after_the_idle_timeout() {
    let site = Site::new(1);
    let mut config = site.config();
    config.server.idle_timeout_ms = 400;
    let appliance = site.start(&config);
    // A client without keep-alives, standing in for a gate that went silent.
    let stem = site.certs().join("gates").join(pki::gate_name(1));
    let mut client_config = tls::client_config(
        &site.certs().join("ca.pem"),
        &stem.with_extension("pem"),
        &stem.with_extension("key"),
    )
    .unwrap();
    client_config.transport_config(std::sync::Arc::new(quinn::TransportConfig::default()));
    let gate = GateClient::connect_with(appliance.addr, "localhost", client_config)
        .await
        .unwrap();
    let closed = tokio::time::timeout(Duration::from_secs(5), gate.connection().closed()).await;
    assert!(
        closed.is_ok(),
        "an idle connection is closed within the bound"
    );
    appliance.stop().await;
}
