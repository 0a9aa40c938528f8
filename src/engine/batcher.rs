//! The dynamic batcher between the server and the engine.
//!
//! The engine does three kinds of work, each with its own lane: [`Batcher`] scores probes
//! against the gallery, [`FindBatcher`] finds the faces in whole frames (detector, then
//! landmarks), [`FaceBatcher`] runs face crops through the descriptor network. In each,
//! requests from every gate go into one bounded queue; a worker thread takes the oldest,
//! gathers more until the batch is full or the oldest has waited its budget, and runs the
//! batch at once: every 1:N probe of a model in a single pass over that model's shard, every
//! frame in one detector pass (on a GPU; the CPU finder takes them in turn), every face in one
//! pass through the network. The queue never grows past its bound: a full queue
//! answers [`BatchError::Busy`] at once, and a request whose deadline passed while it waited
//! is answered [`BatchError::DeadlineExceeded`] without being computed.
//!
//! The lanes are separate because their costs are three orders apart (a face takes
//! milliseconds of network, a 1:1 score microseconds): a verify with a template must not wait
//! behind a batch of faces.
//!
//! The scoring worker reads the gallery under its read lock for the whole batch, so slots
//! resolve to the persons that owned them when they were scored.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, RwLock};
use std::thread;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::{Backend, Candidate, EngineError};
use crate::face::capture::{CaptureError, FindFaces};
use crate::face::detect::FoundFace;
use crate::face::preprocess::{FaceBatch, RgbImage};
use crate::face::{Descriptor, Embedder};
use crate::gallery::{Gallery, PersonIndex, Shard};
use crate::metrics;

/// How the batcher gathers and bounds its work.
#[derive(Clone, Debug)]
pub struct BatchConfig {
    /// Most probes in one batch.
    pub max_batch: usize,
    /// Longest the oldest request waits for company before its batch runs.
    pub max_wait: Duration,
    /// Requests queued at most; past this the answer is busy.
    pub queue_capacity: usize,
}

/// One unit of work for the engine.
#[derive(Debug)]
pub enum Job {
    /// 1:N: the `k` best persons for `probe` in shard `shard`.
    Identify {
        /// Index of the model's shard.
        shard: usize,
        /// The probe template.
        probe: Vec<f32>,
        /// Persons wanted.
        k: usize,
    },
    /// 1:1: the best score of `probe` over the person's templates in shard `shard`.
    Verify {
        /// Index of the model's shard.
        shard: usize,
        /// The probe template.
        probe: Vec<f32>,
        /// The claimed person.
        person_id: String,
    },
}

impl Job {
    fn shard(&self) -> usize {
        match self {
            Job::Identify { shard, .. } | Job::Verify { shard, .. } => *shard,
        }
    }
}

/// Persons best first, with their best score.
pub type Ranked = Vec<(Arc<str>, f32)>;

/// What a job produced.
#[derive(Clone, Debug, PartialEq)]
pub enum JobOutput {
    /// Persons best first, with their best score.
    Identify(Ranked),
    /// The person's best score.
    Verify(f32),
}

/// Why a job produced nothing.
#[derive(Clone, Debug, thiserror::Error, PartialEq)]
#[non_exhaustive]
pub enum BatchError {
    /// The queue is full.
    #[error("queue full ({capacity} requests)")]
    Busy {
        /// The configured bound.
        capacity: usize,
    },
    /// The deadline passed before the job ran.
    #[error("deadline passed after {waited_ms} ms in the queue")]
    DeadlineExceeded {
        /// How long the job waited.
        waited_ms: u64,
    },
    /// The claimed person has no template of the probe's model.
    #[error("no enrolled template of this model for the person")]
    UnknownPerson,
    /// The engine failed.
    #[error("engine failed: {0}")]
    Engine(String),
    /// The batcher has stopped.
    #[error("batcher stopped")]
    Stopped,
}

struct Work {
    job: Job,
    enqueued: Instant,
    deadline: Instant,
    reply: oneshot::Sender<Result<JobOutput, BatchError>>,
}

/// The handle gates' requests are submitted through.
#[derive(Clone)]
pub struct Batcher {
    lane: Lane<Work>,
}

impl Batcher {
    /// Starts the worker thread over `gallery` with `backend`.
    pub fn start(
        config: BatchConfig,
        gallery: Arc<RwLock<Gallery>>,
        backend: Arc<dyn Backend>,
    ) -> Self {
        let (queue, incoming) = mpsc::sync_channel(config.queue_capacity);
        let lane = Lane {
            queue,
            depth: Arc::new(AtomicUsize::new(0)),
            capacity: config.queue_capacity,
        };
        let worker = Worker {
            config,
            gallery,
            backend,
            depth: Arc::clone(&lane.depth),
        };
        thread::Builder::new()
            .name("gatematch-batcher".into())
            .spawn(move || worker.run(incoming))
            .expect("spawning the batcher thread at start-up");
        Batcher { lane }
    }

    /// Requests waiting now.
    pub fn queue_depth(&self) -> usize {
        self.lane.depth.load(Ordering::Relaxed)
    }

    /// Queues `job`, to be run before `deadline`; the answer comes through the receiver.
    pub fn submit(
        &self,
        job: Job,
        deadline: Instant,
    ) -> Result<oneshot::Receiver<Result<JobOutput, BatchError>>, BatchError> {
        let (reply, answer) = oneshot::channel();
        let work = Work {
            job,
            enqueued: Instant::now(),
            deadline,
            reply,
        };
        metrics::queue_depth(self.lane.push(work)?);
        Ok(answer)
    }

    /// Queues `job` and waits for its answer.
    pub async fn run(&self, job: Job, deadline: Instant) -> Result<JobOutput, BatchError> {
        let answer = self.submit(job, deadline)?;
        answer.await.unwrap_or(Err(BatchError::Stopped))
    }
}

struct Worker {
    config: BatchConfig,
    gallery: Arc<RwLock<Gallery>>,
    backend: Arc<dyn Backend>,
    depth: Arc<AtomicUsize>,
}

/// Takes the oldest waiting item and whatever else arrives until `max_batch` items are in hand
/// or the oldest has waited `max_wait`; `None` once every sender is gone.
fn gather<W>(
    incoming: &mpsc::Receiver<W>,
    config: &BatchConfig,
    enqueued: impl Fn(&W) -> Instant,
) -> Option<Vec<W>> {
    let first = incoming.recv().ok()?;
    let flush_at = enqueued(&first) + config.max_wait;
    let mut batch = vec![first];
    while batch.len() < config.max_batch {
        let now = Instant::now();
        let next = if now >= flush_at {
            incoming.try_recv().map_err(|_| RecvTimeoutError::Timeout)
        } else {
            incoming.recv_timeout(flush_at - now)
        };
        match next {
            Ok(work) => batch.push(work),
            Err(_) => break,
        }
    }
    Some(batch)
}

impl Worker {
    fn run(self, incoming: mpsc::Receiver<Work>) {
        while let Some(batch) = gather(&incoming, &self.config, |w| w.enqueued) {
            let left = self.depth.fetch_sub(batch.len(), Ordering::Relaxed) - batch.len();
            metrics::queue_depth(left);
            self.run_batch(batch);
        }
    }

    fn run_batch(&self, batch: Vec<Work>) {
        let started = Instant::now();
        let mut live = Vec::with_capacity(batch.len());
        for work in batch {
            metrics::queue_wait(started - work.enqueued);
            if started > work.deadline {
                let waited_ms = (started - work.enqueued).as_millis() as u64;
                let _ = work
                    .reply
                    .send(Err(BatchError::DeadlineExceeded { waited_ms }));
            } else {
                live.push(work);
            }
        }
        if live.is_empty() {
            return;
        }
        metrics::batch_size(live.len());
        let gallery = self
            .gallery
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        live.sort_by_key(|w| (w.job.shard(), matches!(w.job, Job::Verify { .. })));
        let mut rest = live.as_mut_slice();
        while !rest.is_empty() {
            let shard = rest[0].job.shard();
            let verify = matches!(rest[0].job, Job::Verify { .. });
            let same = rest
                .iter()
                .take_while(|w| {
                    w.job.shard() == shard && matches!(w.job, Job::Verify { .. }) == verify
                })
                .count();
            let (group, tail) = rest.split_at_mut(same);
            let outputs = if verify {
                verify_group(self.backend.as_ref(), &gallery, shard, group)
            } else {
                identify_group(self.backend.as_ref(), &gallery, shard, group)
            };
            metrics::compute(started.elapsed());
            for (work, output) in group.iter_mut().zip(outputs) {
                let reply = std::mem::replace(&mut work.reply, oneshot::channel().0);
                let _ = reply.send(output);
            }
            rest = tail;
        }
    }
}

/// Runs every 1:1 job of one shard.
fn verify_group(
    backend: &dyn Backend,
    gallery: &Gallery,
    shard_index: usize,
    group: &[Work],
) -> Vec<Result<JobOutput, BatchError>> {
    let shard = &gallery.shards()[shard_index];
    let mut probes = Vec::new();
    let mut slots = Vec::new();
    let mut asked = Vec::new();
    for work in group {
        let Job::Verify {
            probe, person_id, ..
        } = &work.job
        else {
            continue;
        };
        let owned: Vec<u32> = gallery
            .person_index(person_id)
            .map(|p| gallery.templates_of(p))
            .unwrap_or(&[])
            .iter()
            .filter(|t| t.shard == shard_index)
            .map(|t| t.slot)
            .collect();
        asked.push(!owned.is_empty());
        if !owned.is_empty() {
            probes.extend_from_slice(probe);
            slots.push(owned);
        }
    }
    let scores = match backend.verify(shard, &probes, &slots) {
        Ok(scores) => scores,
        Err(e) => return vec![Err(engine_error(e)); group.len()],
    };
    let measure = shard.measure();
    let mut scores = scores.into_iter();
    asked
        .into_iter()
        .map(|known| {
            if !known {
                return Err(BatchError::UnknownPerson);
            }
            let best =
                scores
                    .next()
                    .unwrap_or_default()
                    .into_iter()
                    .fold(measure.worst(), |best, s| {
                        if measure.is_better(s, best) { s } else { best }
                    });
            Ok(JobOutput::Verify(best))
        })
        .collect()
}

/// Runs every 1:N job of one shard in one scan, then widens the scan for the probes whose
/// best slots belong to fewer than `k` distinct persons (a person may hold many templates).
fn identify_group(
    backend: &dyn Backend,
    gallery: &Gallery,
    shard_index: usize,
    group: &[Work],
) -> Vec<Result<JobOutput, BatchError>> {
    let shard = &gallery.shards()[shard_index];
    let dim = shard.dimension();
    let wanted: Vec<usize> = group
        .iter()
        .map(|w| match w.job {
            Job::Identify { k, .. } => k,
            Job::Verify { .. } => 0,
        })
        .collect();
    let mut results: Vec<Option<Ranked>> = vec![None; group.len()];
    let mut pending: Vec<usize> = (0..group.len()).collect();
    let mut slots_asked = wanted.iter().copied().max().unwrap_or(0);
    while !pending.is_empty() {
        let mut probes = Vec::with_capacity(pending.len() * dim);
        for &i in &pending {
            if let Job::Identify { probe, .. } = &group[i].job {
                probes.extend_from_slice(probe);
            }
        }
        let found = match backend.identify(shard, &probes, slots_asked) {
            Ok(found) => found,
            Err(e) => return vec![Err(engine_error(e)); group.len()],
        };
        let exhausted = slots_asked >= shard.live_count();
        let mut still = Vec::new();
        for (&i, candidates) in pending.iter().zip(found) {
            let persons = distinct_persons(gallery, shard, &candidates, wanted[i]);
            if persons.len() < wanted[i] && !exhausted {
                still.push(i);
            } else {
                results[i] = Some(persons);
            }
        }
        pending = still;
        slots_asked = slots_asked.saturating_mul(4);
    }
    results
        .into_iter()
        .map(|r| Ok(JobOutput::Identify(r.unwrap_or_default())))
        .collect()
}

/// The first `k` distinct persons among candidates of one shard, ranked best first.
fn distinct_persons(
    gallery: &Gallery,
    shard: &Shard,
    candidates: &[Candidate],
    k: usize,
) -> Vec<(Arc<str>, f32)> {
    let mut seen: Vec<PersonIndex> = Vec::with_capacity(k);
    let mut persons = Vec::with_capacity(k);
    for c in candidates {
        if persons.len() == k {
            break;
        }
        let Some(owner) = shard.owner(c.slot) else {
            continue;
        };
        if seen.contains(&owner) {
            continue;
        }
        seen.push(owner);
        if let Some(id) = gallery.person_id(owner) {
            persons.push((Arc::clone(id), c.score));
        }
    }
    persons
}

fn engine_error(e: EngineError) -> BatchError {
    tracing::error!(error = %e, "engine failed on a batch");
    BatchError::Engine(e.to_string())
}

/// A bounded queue in front of a worker, with the depth it reports and the bound it enforces.
struct Lane<W> {
    queue: SyncSender<W>,
    depth: Arc<AtomicUsize>,
    capacity: usize,
}

impl<W> Clone for Lane<W> {
    fn clone(&self) -> Self {
        Lane {
            queue: self.queue.clone(),
            depth: Arc::clone(&self.depth),
            capacity: self.capacity,
        }
    }
}

impl<W> Lane<W> {
    /// Queues `work`, or refuses it at once when the queue is full.
    fn push(&self, work: W) -> Result<usize, BatchError> {
        let depth = self.depth.fetch_add(1, Ordering::Relaxed) + 1;
        self.queue.try_send(work).map(|()| depth).map_err(|e| {
            self.depth.fetch_sub(1, Ordering::Relaxed);
            match e {
                TrySendError::Full(_) => BatchError::Busy {
                    capacity: self.capacity,
                },
                TrySendError::Disconnected(_) => BatchError::Stopped,
            }
        })
    }
}

/// One face waiting for the network.
struct FaceWork {
    /// The normalised crop, [`crate::face::preprocess::crop::INPUT_LEN`] values.
    input: Vec<f32>,
    enqueued: Instant,
    deadline: Instant,
    reply: oneshot::Sender<Result<Descriptor, BatchError>>,
}

/// The handle face crops are submitted through, to be embedded in batches across gates.
#[derive(Clone)]
pub struct FaceBatcher {
    lane: Lane<FaceWork>,
    embedder: Arc<dyn Embedder>,
}

impl FaceBatcher {
    /// Starts the worker thread over `embedder`.
    pub fn start(config: BatchConfig, embedder: Arc<dyn Embedder>) -> Self {
        let (queue, incoming) = mpsc::sync_channel(config.queue_capacity);
        let lane = Lane {
            queue,
            depth: Arc::new(AtomicUsize::new(0)),
            capacity: config.queue_capacity,
        };
        let depth = Arc::clone(&lane.depth);
        let worker_embedder = Arc::clone(&embedder);
        thread::Builder::new()
            .name("gatematch-embed".into())
            .spawn(move || {
                let mut faces = FaceBatch::with_capacity(config.max_batch);
                while let Some(batch) = gather(&incoming, &config, |w: &FaceWork| w.enqueued) {
                    let left = depth.fetch_sub(batch.len(), Ordering::Relaxed) - batch.len();
                    metrics::embed_queue_depth(left);
                    embed_batch(worker_embedder.as_ref(), &mut faces, batch);
                }
            })
            .expect("spawning the embed thread at start-up");
        FaceBatcher { lane, embedder }
    }

    /// The name of the embedder the worker runs now ("cpu" or "gpu"; "cpu" after a failover).
    pub fn backend_name(&self) -> &'static str {
        self.embedder.name()
    }

    /// Faces waiting now.
    pub fn queue_depth(&self) -> usize {
        self.lane.depth.load(Ordering::Relaxed)
    }

    /// Queues one normalised crop (see [`FaceBatch::push_normalized`]) to be embedded before
    /// `deadline`; the descriptor comes through the receiver. Crops queued together (the faces
    /// of one enrolment) share a batch.
    pub fn submit(
        &self,
        input: Vec<f32>,
        deadline: Instant,
    ) -> Result<oneshot::Receiver<Result<Descriptor, BatchError>>, BatchError> {
        let (reply, answer) = oneshot::channel();
        let work = FaceWork {
            input,
            enqueued: Instant::now(),
            deadline,
            reply,
        };
        metrics::embed_queue_depth(self.lane.push(work)?);
        Ok(answer)
    }

    /// Queues one crop and waits for its descriptor.
    pub async fn embed(
        &self,
        input: Vec<f32>,
        deadline: Instant,
    ) -> Result<Descriptor, BatchError> {
        let answer = self.submit(input, deadline)?;
        answer.await.unwrap_or(Err(BatchError::Stopped))
    }
}

/// One frame waiting for the face detector.
struct FindWork {
    image: RgbImage,
    enqueued: Instant,
    reply: oneshot::Sender<Result<Vec<FoundFace>, CaptureError>>,
}

/// The face finder behind a lane: frames from every gate are gathered and found together
/// ([`FindFaces::find_batch`]), so that a GPU finder runs several gates' frames in one pass.
/// It is itself a [`FindFaces`]: a caller on a blocking thread hands it one frame and waits.
pub struct FindBatcher {
    lane: Lane<FindWork>,
}

impl std::fmt::Debug for FindBatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FindBatcher")
            .field("capacity", &self.lane.capacity)
            .finish_non_exhaustive()
    }
}

impl FindBatcher {
    /// Starts the worker thread over `finder`.
    pub fn start(config: BatchConfig, finder: Arc<dyn FindFaces>) -> Self {
        let (queue, incoming) = mpsc::sync_channel(config.queue_capacity);
        let lane = Lane {
            queue,
            depth: Arc::new(AtomicUsize::new(0)),
            capacity: config.queue_capacity,
        };
        let depth = Arc::clone(&lane.depth);
        thread::Builder::new()
            .name("gatematch-find".into())
            .spawn(move || {
                while let Some(batch) = gather(&incoming, &config, |w: &FindWork| w.enqueued) {
                    let left = depth.fetch_sub(batch.len(), Ordering::Relaxed) - batch.len();
                    metrics::find_queue_depth(left);
                    let started = Instant::now();
                    metrics::find_batch(batch.iter().map(|w| started - w.enqueued), batch.len());
                    find_batch(finder.as_ref(), batch);
                }
            })
            .expect("spawning the find thread at start-up");
        FindBatcher { lane }
    }

    /// Frames waiting now.
    pub fn queue_depth(&self) -> usize {
        self.lane.depth.load(Ordering::Relaxed)
    }
}

impl FindFaces for FindBatcher {
    /// Queues a copy of `image` and blocks until its faces are found. Call it from a thread
    /// that may block (the appliance calls it on tokio's blocking pool).
    fn find(&self, image: &RgbImage) -> Result<Vec<FoundFace>, CaptureError> {
        let (reply, answer) = oneshot::channel();
        let depth = self.lane.push(FindWork {
            image: image.clone(),
            enqueued: Instant::now(),
            reply,
        })?;
        metrics::find_queue_depth(depth);
        answer
            .blocking_recv()
            .unwrap_or(Err(CaptureError::Queue(BatchError::Stopped)))
    }
}

/// Finds the faces of one gathered batch of frames and answers each.
fn find_batch(finder: &dyn FindFaces, batch: Vec<FindWork>) {
    let images: Vec<&RgbImage> = batch.iter().map(|w| &w.image).collect();
    // A panic in the networks is a bug, but it must cost this batch only, not the lane: the
    // worker answers and goes on to the next batch.
    let found =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| finder.find_batch(&images)))
            .unwrap_or_else(|_| {
                Err(CaptureError::Queue(BatchError::Engine(
                    "the face finder panicked".into(),
                )))
            });
    match found {
        Ok(results) if results.len() == batch.len() => {
            for (work, result) in batch.into_iter().zip(results) {
                let _ = work.reply.send(result);
            }
        }
        Ok(results) => {
            tracing::error!(
                frames = batch.len(),
                answers = results.len(),
                "the face finder answered a different number of frames than it was given"
            );
            for work in batch {
                let reason = "face finder lost a frame".to_owned();
                let _ = work
                    .reply
                    .send(Err(CaptureError::Queue(BatchError::Engine(reason))));
            }
        }
        Err(e) => {
            // A failure of the whole batch (every device gone): each frame hears it.
            tracing::error!(error = %e, frames = batch.len(), "face finder failed on a batch");
            for work in batch {
                let reason = format!("face finder failed: {e}");
                let _ = work
                    .reply
                    .send(Err(CaptureError::Queue(BatchError::Engine(reason))));
            }
        }
    }
}

/// Runs one gathered batch of faces through `embedder` and answers each.
fn embed_batch(embedder: &dyn Embedder, faces: &mut FaceBatch, batch: Vec<FaceWork>) {
    let started = Instant::now();
    faces.clear();
    let mut live = Vec::with_capacity(batch.len());
    for work in batch {
        metrics::embed_queue_wait(started - work.enqueued);
        if started > work.deadline {
            let waited_ms = (started - work.enqueued).as_millis() as u64;
            let _ = work
                .reply
                .send(Err(BatchError::DeadlineExceeded { waited_ms }));
        } else if !faces.push_normalized(&work.input) {
            tracing::error!("a face crop of the wrong length reached the embed queue");
            let _ = work.reply.send(Err(BatchError::Engine(
                "face crop of the wrong length".into(),
            )));
        } else {
            live.push(work);
        }
    }
    if live.is_empty() {
        return;
    }
    let result = embedder.embed(faces);
    metrics::embed_batch(live.len(), started.elapsed());
    match result {
        Ok(descriptors) if descriptors.len() == live.len() => {
            for (work, descriptor) in live.into_iter().zip(descriptors) {
                let _ = work.reply.send(Ok(descriptor));
            }
        }
        Ok(descriptors) => {
            tracing::error!(
                faces = live.len(),
                descriptors = descriptors.len(),
                "the network returned another number of descriptors than faces"
            );
            for work in live {
                let _ = work
                    .reply
                    .send(Err(BatchError::Engine("descriptor count mismatch".into())));
            }
        }
        Err(e) => {
            tracing::error!(error = %e, "the face network failed on a batch");
            for work in live {
                let _ = work.reply.send(Err(BatchError::Engine(e.to_string())));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Barrier;

    use super::*;
    use crate::engine::cpu::CpuEngine;
    use crate::engine::{Candidate, Measure};
    use crate::gallery::ModelSpec;

    fn gallery() -> Arc<RwLock<Gallery>> {
        let spec = ModelSpec {
            id: "m".into(),
            dimension: 2,
            measure: Measure::Cosine,
            threshold: 0.5,
        };
        let mut g = Gallery::new(vec![spec]);
        // Alice holds three templates near (1, 0); Bob one at (0.9, 0.1); Carol one far away.
        for v in [[1.0, 0.0], [0.99, 0.01], [0.98, 0.02]] {
            g.add("alice", "m", &v).unwrap();
        }
        g.add("bob", "m", &[0.9, 0.1]).unwrap();
        g.add("carol", "m", &[-1.0, 0.2]).unwrap();
        Arc::new(RwLock::new(g))
    }

    fn config(queue_capacity: usize) -> BatchConfig {
        BatchConfig {
            max_batch: 8,
            max_wait: Duration::from_micros(100),
            queue_capacity,
        }
    }

    fn soon() -> Instant {
        Instant::now() + Duration::from_secs(5)
    }

    #[tokio::test]
    async fn identify_returns_distinct_persons_best_first() {
        let batcher = Batcher::start(config(16), gallery(), Arc::new(CpuEngine::new(1)));
        let job = Job::Identify {
            shard: 0,
            probe: vec![1.0, 0.0],
            k: 3,
        };
        let JobOutput::Identify(persons) = batcher.run(job, soon()).await.unwrap() else {
            panic!()
        };
        let names: Vec<&str> = persons.iter().map(|(p, _)| p.as_ref()).collect();
        assert_eq!(
            names,
            ["alice", "bob", "carol"],
            "alice's three templates count once"
        );
        assert!((persons[0].1 - 1.0).abs() < 1e-6);
    }

    #[tokio::test]
    async fn verify_takes_the_best_of_the_persons_templates() {
        let batcher = Batcher::start(config(16), gallery(), Arc::new(CpuEngine::new(1)));
        let job = Job::Verify {
            shard: 0,
            probe: vec![0.98, 0.02],
            person_id: "alice".into(),
        };
        assert_eq!(
            batcher.run(job, soon()).await.unwrap(),
            JobOutput::Verify(1.0)
        );
        let job = Job::Verify {
            shard: 0,
            probe: vec![1.0, 0.0],
            person_id: "nobody".into(),
        };
        assert_eq!(
            batcher.run(job, soon()).await,
            Err(BatchError::UnknownPerson)
        );
    }

    #[tokio::test]
    async fn a_job_past_its_deadline_is_not_computed() {
        let batcher = Batcher::start(config(16), gallery(), Arc::new(CpuEngine::new(1)));
        let job = Job::Identify {
            shard: 0,
            probe: vec![1.0, 0.0],
            k: 1,
        };
        let expired = Instant::now() - Duration::from_millis(1);
        assert!(matches!(
            batcher.run(job, expired).await,
            Err(BatchError::DeadlineExceeded { .. })
        ));
    }

    /// Holds every batch until the test lets it go, so the queue can be filled.
    struct Gated {
        inner: CpuEngine,
        entered: Arc<Barrier>,
        release: Arc<Barrier>,
    }

    impl Backend for Gated {
        fn name(&self) -> &'static str {
            "gated"
        }
        fn identify(
            &self,
            s: &Shard,
            p: &[f32],
            k: usize,
        ) -> Result<Vec<Vec<Candidate>>, EngineError> {
            self.entered.wait();
            self.release.wait();
            self.inner.identify(s, p, k)
        }
        fn verify(
            &self,
            s: &Shard,
            p: &[f32],
            slots: &[Vec<u32>],
        ) -> Result<Vec<Vec<f32>>, EngineError> {
            self.inner.verify(s, p, slots)
        }
    }

    /// Records the size of every batch; the descriptor of a face is its first input value.
    struct Recording(std::sync::Mutex<Vec<usize>>);

    impl Embedder for Recording {
        fn name(&self) -> &'static str {
            "recording"
        }
        fn embed(&self, batch: &FaceBatch) -> Result<Vec<Descriptor>, crate::face::EmbedError> {
            self.0.lock().unwrap().push(batch.len());
            let len = crate::face::preprocess::crop::INPUT_LEN;
            Ok(batch
                .as_slice()
                .chunks(len)
                .map(|face| Descriptor::new([face[0]; 128]))
                .collect())
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn faces_from_many_gates_share_a_batch_and_each_gets_its_own_descriptor() {
        let recording = Arc::new(Recording(Default::default()));
        let config = BatchConfig {
            max_batch: 16,
            max_wait: Duration::from_millis(200),
            queue_capacity: 64,
        };
        let faces = FaceBatcher::start(config, recording.clone());
        let len = crate::face::preprocess::crop::INPUT_LEN;
        let answers: Vec<_> = (0..6)
            .map(|i| faces.submit(vec![i as f32; len], soon()).unwrap())
            .collect();
        for (i, answer) in answers.into_iter().enumerate() {
            let descriptor = answer.await.unwrap().unwrap();
            assert_eq!(
                descriptor.as_slice()[0],
                i as f32,
                "face {i}'s own descriptor"
            );
        }
        assert_eq!(*recording.0.lock().unwrap(), [6], "one pass for all six");

        let expired = Instant::now() - Duration::from_millis(1);
        assert!(matches!(
            faces.embed(vec![0.0; len], expired).await,
            Err(BatchError::DeadlineExceeded { .. })
        ));
        assert!(matches!(
            faces.embed(vec![0.0; 3], soon()).await,
            Err(BatchError::Engine(_))
        ));
        assert_eq!(
            recording.0.lock().unwrap().len(),
            1,
            "nothing else was computed"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_full_queue_answers_busy_at_once() {
        let entered = Arc::new(Barrier::new(2));
        let release = Arc::new(Barrier::new(2));
        let backend = Gated {
            inner: CpuEngine::new(1),
            entered: Arc::clone(&entered),
            release: Arc::clone(&release),
        };
        let batcher = Batcher::start(config(2), gallery(), Arc::new(backend));
        let job = || Job::Identify {
            shard: 0,
            probe: vec![1.0, 0.0],
            k: 1,
        };
        let first = batcher.submit(job(), soon()).unwrap();
        tokio::task::spawn_blocking({
            let entered = Arc::clone(&entered);
            move || entered.wait()
        })
        .await
        .unwrap();
        // The worker is inside the first batch; two more fill the queue, the next is refused.
        let queued = [
            batcher.submit(job(), soon()).unwrap(),
            batcher.submit(job(), soon()).unwrap(),
        ];
        assert_eq!(
            batcher.submit(job(), soon()).unwrap_err(),
            BatchError::Busy { capacity: 2 }
        );
        assert_eq!(batcher.queue_depth(), 2);
        let release_all = tokio::task::spawn_blocking(move || {
            release.wait();
            entered.wait();
            release.wait();
        });
        assert!(first.await.unwrap().is_ok());
        for answer in queued {
            assert!(
                answer.await.unwrap().is_ok(),
                "queued work is answered, not dropped"
            );
        }
        release_all.await.unwrap();
    }

    use crate::face::capture::FoundBatch;

    /// Answers each frame by its width (an even width has no face, an odd one is refused, a
    /// width of 7 panics, as a bug would) and records how many frames each call was given.
    struct RecordingFinder(std::sync::Mutex<Vec<usize>>);

    impl FindFaces for RecordingFinder {
        fn find(&self, image: &RgbImage) -> Result<Vec<FoundFace>, CaptureError> {
            self.find_batch(&[image])?.remove(0)
        }

        fn find_batch(&self, images: &[&RgbImage]) -> Result<FoundBatch, CaptureError> {
            self.0.lock().unwrap().push(images.len());
            assert!(
                images.iter().all(|i| i.width() != 7),
                "a bug in the networks"
            );
            // Long enough that frames sent meanwhile gather behind this batch.
            thread::sleep(Duration::from_millis(50));
            Ok(images
                .iter()
                .map(|image| match image.width() % 2 {
                    0 => Ok(Vec::new()),
                    _ => Err(CaptureError::NoDetector),
                })
                .collect())
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn frames_from_many_gates_share_a_detector_pass_and_each_gets_its_own_faces() {
        let recording = Arc::new(RecordingFinder(Default::default()));
        let config = BatchConfig {
            max_batch: 4,
            max_wait: Duration::from_millis(200),
            queue_capacity: 64,
        };
        let finder = Arc::new(FindBatcher::start(config, recording.clone()));
        // A gate's frame, found from a blocking thread as the appliance does.
        let find = |width: u32| {
            let finder = Arc::clone(&finder);
            tokio::task::spawn_blocking(move || {
                let frame = RgbImage::from_raw(width, 1, vec![0; 3 * width as usize]).unwrap();
                finder.find(&frame)
            })
        };
        // Six gates send a frame each at once.
        let gates: Vec<_> = (1..=6u32).map(find).collect();
        for (i, gate) in gates.into_iter().enumerate() {
            let width = i + 1;
            match gate.await.unwrap() {
                Ok(faces) => assert!(width % 2 == 0 && faces.is_empty(), "frame {width}"),
                Err(CaptureError::NoDetector) => assert!(width % 2 == 1, "frame {width}"),
                Err(e) => panic!("frame {width}: {e}"),
            }
        }
        let passes = recording.0.lock().unwrap().clone();
        assert_eq!(
            passes.iter().sum::<usize>(),
            6,
            "every frame found once: {passes:?}"
        );
        assert!(passes.len() < 6, "frames shared passes: {passes:?}");
        assert!(
            passes.iter().all(|&n| n <= 4),
            "no pass over max_batch: {passes:?}"
        );
        assert_eq!(finder.queue_depth(), 0);

        // A panic in the finder fails its batch, not the lane.
        assert!(matches!(
            find(7).await.unwrap(),
            Err(CaptureError::Queue(BatchError::Engine(_)))
        ));
        assert!(
            find(8).await.unwrap().unwrap().is_empty(),
            "the lane still answers"
        );
    }
}
