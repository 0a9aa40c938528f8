//! Failover: a lost device moves the engine to the CPU, and no caller sees an error.
//!
//! Each test opens a device of its own, since it destroys it.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use common::gpu::{engine, own_context};
use gatematch::engine::batcher::{BatchConfig, Batcher, Job, JobOutput};
use gatematch::engine::cpu::{CpuEngine, reference_identify};
use gatematch::engine::gpu::StorageFormat;
use gatematch::engine::{Backend, Measure};
use gatematch::gallery::{Gallery, ModelSpec};
use gatematch::gate::travellers::random_block;

fn gallery(rows: usize, dim: usize) -> Gallery {
    let spec = ModelSpec {
        id: "m".into(),
        dimension: dim,
        measure: Measure::Cosine,
        threshold: 0.5,
    };
    let mut g = Gallery::new(vec![spec]);
    for (i, row) in random_block(rows, dim, 5).chunks_exact(dim).enumerate() {
        g.add(&format!("p{i}"), "m", row).unwrap();
    }
    g
}

#[test]
fn a_lost_device_moves_this_and_every_later_call_to_the_cpu() {
    let Some(ctx) = own_context() else { return };
    let engine = engine(&ctx, StorageFormat::F32, None);
    let g = gallery(600, 64);
    let shard = &g.shards()[0];
    let probes = random_block(3, 64, 6);
    let want: Vec<_> = probes
        .chunks_exact(64)
        .map(|p| reference_identify(shard, p, 5))
        .collect();
    assert_eq!(engine.identify(shard, &probes, 5).unwrap(), want);
    assert_eq!(engine.name(), "gpu");

    engine.destroy_device();

    assert_eq!(engine.identify(shard, &probes, 5).unwrap(), want);
    assert!(engine.has_failed_over());
    assert_eq!(engine.name(), "cpu");
    let slots = vec![vec![0, 1], vec![2], vec![]];
    let scores = engine.verify(shard, &probes, &slots).unwrap();
    assert_eq!(
        scores,
        CpuEngine::new(1).verify(shard, &probes, &slots).unwrap()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_the_device_mid_run_through_the_batcher_loses_no_answer() {
    let Some(ctx) = own_context() else { return };
    let dim = 128;
    let shared = Arc::new(RwLock::new(gallery(4096, dim)));
    let config = BatchConfig {
        max_batch: 16,
        max_wait: Duration::from_micros(200),
        queue_capacity: 1024,
    };
    let gpu = Arc::new(engine(&ctx, StorageFormat::Int8, None));
    let on_gpu = Batcher::start(config.clone(), Arc::clone(&shared), gpu.clone());
    let on_cpu = Batcher::start(config, Arc::clone(&shared), Arc::new(CpuEngine::new(1)));
    let probes = random_block(240, dim, 7);
    let job = |i: usize| Job::Identify {
        shard: 0,
        probe: probes[i * dim..(i + 1) * dim].to_vec(),
        k: 3,
    };
    let deadline = Instant::now() + Duration::from_secs(120);

    // Destroy the device from another thread once a third of the answers are in, while
    // the batcher keeps submitting work to it.
    let answered = Arc::new(AtomicUsize::new(0));
    let saboteur = std::thread::spawn({
        let (gpu, answered) = (Arc::clone(&gpu), Arc::clone(&answered));
        move || {
            while answered.load(Ordering::Acquire) < 80 {
                std::thread::sleep(Duration::from_millis(1));
            }
            gpu.destroy_device();
        }
    });
    let mut pending = Vec::new();
    for i in 0..240 {
        pending.push((i, on_gpu.submit(job(i), deadline).unwrap()));
        if i % 16 == 15 {
            for (i, answer) in pending.drain(..) {
                let got = answer.await.unwrap().expect("no gate sees an error");
                let want = on_cpu.run(job(i), deadline).await.unwrap();
                assert_eq!(got, want, "probe {i}");
                answered.fetch_add(1, Ordering::AcqRel);
            }
        }
    }
    saboteur.join().unwrap();
    assert!(gpu.has_failed_over(), "the device was destroyed mid-run");
    assert_eq!(gpu.name(), "cpu");
    let JobOutput::Identify(last) = on_gpu.run(job(0), deadline).await.unwrap() else {
        panic!("an identify job answers with persons")
    };
    assert_eq!(last.len(), 3);
}
