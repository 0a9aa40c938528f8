//! Kill -9 the appliance while gates enrol; every enrolment answered "enrolled" must be there
//! after the restart. Runs the real binary as a child process on loopback.

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::*;
use gatematch::gate::GateClient;
use gatematch::pki;
use gatematch::proto;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn write_config(site: &Site, path: &Path) {
    let certs = site.certs();
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\ncertificate = \"{}\"\nprivate_key = \"{}\"\n\
         gate_ca = \"{}\"\n\n[registry]\npath = \"{}\"\n\n[metrics]\nenabled = false\n",
        certs.join("server.pem").display(),
        certs.join("server.key").display(),
        certs.join("ca.pem").display(),
        site.registry().display()
    );
    std::fs::write(path, text).unwrap();
}

fn spawn_appliance(config: &Path, addr: SocketAddr) -> Child {
    Command::new(env!("CARGO_BIN_EXE_gatematch"))
        .args(["serve", "--config"])
        .arg(config)
        .args(["--listen", &addr.to_string()])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("the gatematch binary starts")
}

async fn connect_when_ready(site: &Site, n: usize, addr: SocketAddr) -> GateClient {
    let stem = site.certs().join("gates").join(pki::gate_name(n));
    let (ca, cert, key) = (
        site.certs().join("ca.pem"),
        stem.with_extension("pem"),
        stem.with_extension("key"),
    );
    let started = Instant::now();
    loop {
        let attempt = GateClient::connect(addr, "localhost", &ca, &cert, &key);
        match tokio::time::timeout(Duration::from_secs(2), attempt).await {
            Ok(Ok(gate)) => return gate,
            _ if started.elapsed() < Duration::from_secs(30) => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            _ => panic!("the appliance did not come up on {addr}"),
        }
    }
}

/// Verifies every person with a genuine probe, many requests in flight at once.
async fn assert_all_enrolled(checker: GateClient, persons: &[u64], round: u64) {
    let checker = Arc::new(checker);
    for chunk in persons.chunks(256) {
        let mut set = tokio::task::JoinSet::new();
        for &person in chunk {
            let checker = Arc::clone(&checker);
            set.spawn(async move {
                let mut rng = ChaCha8Rng::seed_from_u64(person);
                let request = verify(person, POPULATION.probe(person, &mut rng));
                (person, verify_result(checker.call(&request).await.unwrap()))
            });
        }
        while let Some(done) = set.join_next().await {
            let (person, v) = done.unwrap();
            assert_eq!(
                v.decision,
                proto::Decision::Match as i32,
                "round {round}: person {person} lost"
            );
        }
    }
    eprintln!(
        "round {round}: all {} acknowledged enrolments found",
        persons.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_acknowledged_enrolment_is_lost_to_kill_9() {
    let site = Site::new(4);
    let config = site.dir.path().join("gatematch.toml");
    write_config(&site, &config);
    let addr: SocketAddr = ([127, 0, 0, 1], free_udp_port()).into();
    let mut acknowledged: Vec<u64> = Vec::new();

    for round in 0..3u64 {
        let mut child = spawn_appliance(&config, addr);
        // Every enrolment acknowledged so far is there after the restart.
        let checker = connect_when_ready(&site, 1, addr).await;
        assert_all_enrolled(checker, &acknowledged, round).await;

        // Four gates enrol as fast as they can until the appliance is killed under them.
        let stop = Arc::new(AtomicBool::new(false));
        let mut gates = Vec::new();
        for g in 1..=4usize {
            let gate = connect_when_ready(&site, g, addr).await;
            let stop = Arc::clone(&stop);
            gates.push(tokio::spawn(async move {
                let mut mine = Vec::new();
                for i in 0u64.. {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let person = round * 1_000_000 + g as u64 * 10_000 + i;
                    let request = enrol(person);
                    let call = tokio::time::timeout(Duration::from_secs(2), gate.call(&request));
                    match call.await {
                        Ok(Ok(r)) if r.outcome == proto::Outcome::Ok as i32 => mine.push(person),
                        Ok(Ok(_)) => {}
                        _ => break,
                    }
                }
                mine
            }));
        }
        tokio::time::sleep(Duration::from_millis(1500)).await;
        child.kill().expect("SIGKILL");
        let _ = child.wait();
        stop.store(true, Ordering::Relaxed);
        let before = acknowledged.len();
        for g in gates {
            acknowledged.extend(g.await.unwrap());
        }
        assert!(
            acknowledged.len() > before,
            "round {round}: some enrolments were acknowledged"
        );
    }

    let mut child = spawn_appliance(&config, addr);
    let checker = connect_when_ready(&site, 1, addr).await;
    assert_all_enrolled(checker, &acknowledged, 3).await;
    child.kill().unwrap();
    let _ = child.wait();
}
