//! Every Prometheus series the appliance exports, named in one place.
//!
//! Names follow `gatematch_<what>_<unit>`. Durations are histograms in seconds with explicit
//! buckets (without buckets the exporter would publish summaries, which cannot be aggregated
//! across appliances). Counters are monotonic and reset only when the process restarts.
//! Nothing here ever carries biometric data: labels are operations, outcomes, reasons, model
//! ids and gate ids.

use std::net::SocketAddr;
use std::time::Duration;

use metrics::{
    Unit, counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram,
};
use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder, PrometheusHandle};

/// Requests answered, by `operation`, `outcome` and `reason` (counter).
pub const REQUESTS: &str = "gatematch_requests_total";
/// Whole-request latency from the stream's arrival to the answer, by `operation` (seconds).
pub const REQUEST_SECONDS: &str = "gatematch_request_duration_seconds";
/// Time a job waited in the batcher's queue (seconds).
pub const QUEUE_WAIT_SECONDS: &str = "gatematch_queue_wait_seconds";
/// Time the engine spent on one batch (seconds).
pub const COMPUTE_SECONDS: &str = "gatematch_compute_seconds";
/// Jobs per batch run by the engine (histogram of counts).
pub const BATCH_SIZE: &str = "gatematch_batch_size";
/// Jobs waiting in the batcher's queue (gauge).
pub const QUEUE_DEPTH: &str = "gatematch_queue_depth";
/// Live templates in the gallery, by `model` (gauge).
pub const GALLERY_TEMPLATES: &str = "gatematch_gallery_templates";
/// Gates holding a connection now (gauge).
pub const CONNECTED_GATES: &str = "gatematch_connected_gates";
/// Handshakes refused, by `reason` (counter).
pub const HANDSHAKES_REFUSED: &str = "gatematch_handshakes_refused_total";
/// Records committed to the registry per transaction (histogram of counts).
pub const COMMIT_SIZE: &str = "gatematch_registry_commit_size";
/// Time one registry transaction took, fsync included (seconds).
pub const COMMIT_SECONDS: &str = "gatematch_registry_commit_seconds";
/// The backend, as labels `backend` ("cpu", "gpu") and `adapter` (the GPU's name, "none"
/// for the CPU): 1 for the one in use, 0 for one given up (gauge).
pub const BACKEND: &str = "gatematch_backend_info";
/// Times the engine moved from one backend to another after a failure, by `from` and `to`
/// (counter). A GPU engine fails over at most once per process.
pub const BACKEND_FAILOVERS: &str = "gatematch_backend_failovers_total";
/// Device memory the GPU engine holds for gallery copies, scan format and row metadata
/// (gauge, bytes); 0 after a failover.
pub const GPU_GALLERY_BYTES: &str = "gatematch_gpu_gallery_bytes";

/// Latency buckets, in seconds: 50 µs to 5 s, dense around the milliseconds gates care about.
const SECONDS_BUCKETS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02,
    0.03, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// Count buckets for batch and commit sizes.
const COUNT_BUCKETS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
];

/// Time to decode one face image and cut the network's input from it.
pub const DECODE_SECONDS: &str = "gatematch_face_decode_seconds";
/// Network time for one batch of faces.
pub const EMBED_SECONDS: &str = "gatematch_embed_seconds";
/// Faces per network batch.
pub const EMBED_BATCH_SIZE: &str = "gatematch_embed_batch_size";
/// Time a face waited in the embed queue.
pub const EMBED_QUEUE_WAIT_SECONDS: &str = "gatematch_embed_queue_wait_seconds";
/// Faces waiting in the embed queue.
pub const EMBED_QUEUE_DEPTH: &str = "gatematch_embed_queue_depth";
/// Time to find the faces in one image and place their landmarks.
pub const DETECT_SECONDS: &str = "gatematch_face_detect_seconds";
/// Frames per detector batch.
pub const FIND_BATCH_SIZE: &str = "gatematch_find_batch_size";
/// Time a frame waited in the find queue.
pub const FIND_QUEUE_WAIT_SECONDS: &str = "gatematch_find_queue_wait_seconds";
/// Frames waiting in the find queue.
pub const FIND_QUEUE_DEPTH: &str = "gatematch_find_queue_depth";
/// Face captures refused, by what the traveller should fix.
pub const CAPTURES_REFUSED: &str = "gatematch_captures_refused_total";

/// Installs the global recorder and, when `listen` is given, its HTTP `/metrics` listener;
/// returns a handle that renders the same text the listener serves. Must run inside a Tokio
/// runtime, once per process.
pub fn install(listen: Option<SocketAddr>) -> Result<PrometheusHandle, BuildError> {
    let mut builder = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)?
        .set_buckets_for_metric(Matcher::Full(BATCH_SIZE.into()), COUNT_BUCKETS)?
        .set_buckets_for_metric(Matcher::Full(EMBED_BATCH_SIZE.into()), COUNT_BUCKETS)?
        .set_buckets_for_metric(Matcher::Full(FIND_BATCH_SIZE.into()), COUNT_BUCKETS)?
        .set_buckets_for_metric(Matcher::Full(COMMIT_SIZE.into()), COUNT_BUCKETS)?;
    let handle = match listen {
        Some(addr) => {
            builder = builder.with_http_listener(addr);
            let (recorder, exporter) = builder.build()?;
            let handle = recorder.handle();
            metrics::set_global_recorder(recorder)?;
            tokio::spawn(async move {
                if let Err(error) = exporter.await {
                    tracing::error!(?error, "metrics listener stopped");
                }
            });
            handle
        }
        None => builder.install_recorder()?,
    };
    describe();
    Ok(handle)
}

fn describe() {
    describe_counter!(
        REQUESTS,
        "Requests answered, by operation, outcome and reason"
    );
    describe_histogram!(
        REQUEST_SECONDS,
        Unit::Seconds,
        "Whole-request latency, by operation"
    );
    describe_histogram!(
        QUEUE_WAIT_SECONDS,
        Unit::Seconds,
        "Time a job waited in the queue"
    );
    describe_histogram!(COMPUTE_SECONDS, Unit::Seconds, "Engine time for one batch");
    describe_histogram!(BATCH_SIZE, Unit::Count, "Jobs per engine batch");
    describe_gauge!(
        QUEUE_DEPTH,
        Unit::Count,
        "Jobs waiting in the batcher's queue"
    );
    describe_gauge!(
        GALLERY_TEMPLATES,
        Unit::Count,
        "Live templates in the gallery, by model"
    );
    describe_gauge!(CONNECTED_GATES, Unit::Count, "Gates connected now");
    describe_counter!(HANDSHAKES_REFUSED, "Handshakes refused, by reason");
    describe_histogram!(COMMIT_SIZE, Unit::Count, "Records per registry transaction");
    describe_histogram!(
        COMMIT_SECONDS,
        Unit::Seconds,
        "Registry transaction time, fsync included"
    );
    describe_gauge!(
        BACKEND,
        "The engine backend (labels backend, adapter): 1 in use, 0 given up"
    );
    describe_gauge!(
        GPU_GALLERY_BYTES,
        Unit::Bytes,
        "Device memory held for gallery copies"
    );
    describe_histogram!(
        DECODE_SECONDS,
        Unit::Seconds,
        "Decoding one face image and cutting its crop"
    );
    describe_histogram!(
        EMBED_SECONDS,
        Unit::Seconds,
        "Network time for one batch of faces"
    );
    describe_histogram!(EMBED_BATCH_SIZE, Unit::Count, "Faces per network batch");
    describe_histogram!(
        EMBED_QUEUE_WAIT_SECONDS,
        Unit::Seconds,
        "Time a face waited in the embed queue"
    );
    describe_gauge!(
        EMBED_QUEUE_DEPTH,
        Unit::Count,
        "Faces waiting in the embed queue"
    );
    describe_histogram!(
        DETECT_SECONDS,
        Unit::Seconds,
        "Finding the faces in one image and placing their landmarks"
    );
    describe_histogram!(FIND_BATCH_SIZE, Unit::Count, "Frames per detector batch");
    describe_histogram!(
        FIND_QUEUE_WAIT_SECONDS,
        Unit::Seconds,
        "Time a frame waited in the find queue"
    );
    describe_gauge!(
        FIND_QUEUE_DEPTH,
        Unit::Count,
        "Frames waiting in the find queue"
    );
    describe_counter!(
        CAPTURES_REFUSED,
        "Face captures refused, by issue (a capture with two issues counts under both)"
    );
    describe_counter!(
        BACKEND_FAILOVERS,
        "Moves of the engine to another backend after a failure, by from and to"
    );
}

/// Counts one answered request.
pub fn request(
    operation: &'static str,
    outcome: &'static str,
    reason: &'static str,
    took: Duration,
) {
    counter!(REQUESTS, "operation" => operation, "outcome" => outcome, "reason" => reason)
        .increment(1);
    histogram!(REQUEST_SECONDS, "operation" => operation).record(took.as_secs_f64());
}

/// Records how long a job waited in the queue.
pub fn queue_wait(waited: Duration) {
    histogram!(QUEUE_WAIT_SECONDS).record(waited.as_secs_f64());
}

/// Records the engine time of one batch.
pub fn compute(took: Duration) {
    histogram!(COMPUTE_SECONDS).record(took.as_secs_f64());
}

/// Records the size of one batch.
pub fn batch_size(jobs: usize) {
    histogram!(BATCH_SIZE).record(jobs as f64);
}

/// Sets the queue depth.
pub fn queue_depth(jobs: usize) {
    gauge!(QUEUE_DEPTH).set(jobs as f64);
}

/// Sets the live template count of `model`.
pub fn gallery_templates(model: &str, templates: usize) {
    gauge!(GALLERY_TEMPLATES, "model" => model.to_owned()).set(templates as f64);
}

/// Moves the connected-gates gauge by one.
pub fn gate_connected(connected: bool) {
    if connected {
        gauge!(CONNECTED_GATES).increment(1.0);
    } else {
        gauge!(CONNECTED_GATES).decrement(1.0);
    }
}

/// Counts one refused handshake.
pub fn handshake_refused(reason: &'static str) {
    counter!(HANDSHAKES_REFUSED, "reason" => reason).increment(1);
}

/// Records one registry transaction.
pub fn commit(records: usize, took: Duration) {
    histogram!(COMMIT_SIZE).record(records as f64);
    histogram!(COMMIT_SECONDS).record(took.as_secs_f64());
}

/// The `adapter` label of the CPU backend.
pub const NO_ADAPTER: &str = "none";

/// Marks the backend in use, on `adapter` ([`NO_ADAPTER`] for the CPU).
pub fn backend(name: &'static str, adapter: &str) {
    gauge!(BACKEND, "backend" => name, "adapter" => adapter.to_owned()).set(1.0);
}

/// Counts a failover from `from` (on `adapter`) to `to`, and moves the backend gauge.
pub fn backend_failover(from: &'static str, to: &'static str, adapter: &str) {
    counter!(BACKEND_FAILOVERS, "from" => from, "to" => to).increment(1);
    gauge!(BACKEND, "backend" => from, "adapter" => adapter.to_owned()).set(0.0);
    backend(to, NO_ADAPTER);
}

/// Sets the device memory held for gallery copies.
pub fn gpu_gallery_bytes(bytes: u64) {
    gauge!(GPU_GALLERY_BYTES).set(bytes as f64);
}

/// Records the decoding and cutting of one face image.
pub fn face_decode(took: Duration) {
    histogram!(DECODE_SECONDS).record(took.as_secs_f64());
}

/// Records the detector and landmark network's time for one image.
pub fn face_detect(took: Duration) {
    histogram!(DETECT_SECONDS).record(took.as_secs_f64());
}

/// Records one batch of frames through the detector, and how long each waited for it.
pub fn find_batch(waits: impl Iterator<Item = Duration>, frames: usize) {
    histogram!(FIND_BATCH_SIZE).record(frames as f64);
    for waited in waits {
        histogram!(FIND_QUEUE_WAIT_SECONDS).record(waited.as_secs_f64());
    }
}

/// Sets the find queue's depth.
pub fn find_queue_depth(frames: usize) {
    gauge!(FIND_QUEUE_DEPTH).set(frames as f64);
}

/// Counts a refused capture under each of its `issues`.
pub fn capture_refused(issues: &[crate::face::quality::CaptureIssue]) {
    for issue in issues {
        counter!(CAPTURES_REFUSED, "issue" => issue.label()).increment(1);
    }
}

/// Records one batch of faces through the network.
pub fn embed_batch(faces: usize, took: Duration) {
    histogram!(EMBED_BATCH_SIZE).record(faces as f64);
    histogram!(EMBED_SECONDS).record(took.as_secs_f64());
}

/// Records how long a face waited for its batch.
pub fn embed_queue_wait(waited: Duration) {
    histogram!(EMBED_QUEUE_WAIT_SECONDS).record(waited.as_secs_f64());
}

/// Sets the embed queue's depth.
pub fn embed_queue_depth(faces: usize) {
    gauge!(EMBED_QUEUE_DEPTH).set(faces as f64);
}
