//! The decisions of the service, as plain functions over the other parts.
//!
//! [`Appliance`] owns the registry, the gallery and the batcher, and turns one decoded
//! [`proto::Request`] from a known gate into one [`proto::Response`]. It has no sockets, so
//! the whole service tests in memory; [`crate::server`] only moves bytes between gates and
//! [`Appliance::handle`].
//!
//! Order of effects: an enrolment or erasure is committed to the registry first; the registry's
//! commit hook then applies it to the gallery in commit order; only then is the gate answered.
//! So "enrolled" means durable and already matchable, and "erased" means gone from both.

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::engine::Backend;
use crate::engine::Measure;
use crate::engine::batcher::{BatchError, Batcher, Job, JobOutput};
use crate::gallery::{Gallery, GalleryError};
use crate::metrics;
use crate::pki::GateIdentity;
use crate::proto::{self, Outcome, Reason, request::Operation, response::Result as Answer};
use crate::registry::{self, Change, NewTemplate, Origin, Receipt, Registry, RegistryError};

/// Longest person id accepted, in bytes.
pub const MAX_PERSON_ID_BYTES: usize = 128;

/// What can stop the appliance from starting.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApplianceError {
    /// The registry could not be opened or read.
    #[error(transparent)]
    Registry(#[from] RegistryError),
}

/// A refusal: the reason code for the gate and a plain-language detail.
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    /// The code a gate acts on.
    pub reason: Reason,
    /// English detail, free of biometric data.
    pub detail: String,
}

impl Refusal {
    fn new(reason: Reason, detail: impl Into<String>) -> Self {
        Refusal {
            reason,
            detail: detail.into(),
        }
    }

    /// A request that could not be decoded or is missing a field.
    pub fn malformed(detail: impl Into<String>) -> Self {
        Refusal::new(Reason::Malformed, detail)
    }
}

impl From<GalleryError> for Refusal {
    fn from(e: GalleryError) -> Self {
        let reason = match e {
            GalleryError::UnknownModel { .. } => Reason::WrongModel,
            _ => Reason::WrongDimension,
        };
        Refusal::new(reason, e.to_string())
    }
}

impl From<BatchError> for Refusal {
    fn from(e: BatchError) -> Self {
        let reason = match e {
            BatchError::Busy { .. } => Reason::Busy,
            BatchError::DeadlineExceeded { .. } => Reason::DeadlineExceeded,
            BatchError::UnknownPerson => Reason::UnknownPerson,
            _ => Reason::Internal,
        };
        Refusal::new(reason, e.to_string())
    }
}

impl From<RegistryError> for Refusal {
    fn from(e: RegistryError) -> Self {
        tracing::error!(error = %e, "registry write failed");
        Refusal::new(Reason::Internal, "the registry could not store the change")
    }
}

/// Per-request limits, from the configuration.
#[derive(Clone, Debug)]
struct Limits {
    max_k: u32,
    max_templates_per_enrol: usize,
    default_deadline: Duration,
    max_deadline: Duration,
}

/// The service: registry, gallery and engine behind one request handler.
pub struct Appliance {
    gallery: Arc<RwLock<Gallery>>,
    registry: Registry,
    batcher: Batcher,
    backend: Arc<dyn Backend>,
    limits: Limits,
    started: Instant,
}

impl Appliance {
    /// Opens the registry named in `config`, loads the gallery from it and starts the batcher
    /// on `backend`.
    pub fn open(config: &Config, backend: Arc<dyn Backend>) -> Result<Appliance, ApplianceError> {
        let gallery = Arc::new(RwLock::new(Gallery::new(config.model_specs())));
        let hook_gallery = Arc::clone(&gallery);
        let hook =
            Box::new(move |done: &[(Change, Receipt)]| apply_to_gallery(&hook_gallery, done));
        let (registry, reader) = Registry::open(&config.registry.path, Some(hook))?;
        load_gallery(&gallery, &reader)?;
        drop(reader);
        let batcher = Batcher::start(config.batch(), Arc::clone(&gallery), Arc::clone(&backend));
        Ok(Appliance {
            gallery,
            registry,
            batcher,
            backend,
            limits: Limits {
                max_k: config.engine.max_k,
                max_templates_per_enrol: config.engine.max_templates_per_enrol,
                default_deadline: Duration::from_millis(config.server.default_deadline_ms.into()),
                max_deadline: Duration::from_millis(config.server.max_deadline_ms.into()),
            },
            started: Instant::now(),
        })
    }

    /// The shared gallery (read it; change it only through the registry).
    pub fn gallery(&self) -> &Arc<RwLock<Gallery>> {
        &self.gallery
    }

    /// The name of the backend scoring now ("gpu", or "cpu" also after a GPU failover).
    pub fn backend_name(&self) -> &'static str {
        self.backend.name()
    }

    /// Answers one request from `gate`, received at `received`.
    pub async fn handle(
        &self,
        gate: &GateIdentity,
        request: proto::Request,
        received: Instant,
    ) -> proto::Response {
        let asked = if request.deadline_ms == 0 {
            self.limits.default_deadline
        } else {
            Duration::from_millis(request.deadline_ms.into()).min(self.limits.max_deadline)
        };
        let deadline = received + asked;
        let (operation, result) = match request.operation {
            Some(Operation::Enrol(r)) => ("enrol", self.enrol(gate, r).await),
            Some(Operation::Verify(r)) => ("verify", self.verify(r, deadline).await),
            Some(Operation::Identify(r)) => ("identify", self.identify(r, deadline).await),
            Some(Operation::Erase(r)) => ("erase", self.erase(gate, r).await),
            Some(Operation::Status(_)) => ("status", Ok(self.status(gate))),
            None => (
                "none",
                Err(Refusal::malformed("the request names no operation")),
            ),
        };
        let response = respond(request.request_id, result);
        let outcome = if response.outcome == Outcome::Ok as i32 {
            "ok"
        } else {
            "refused"
        };
        metrics::request(
            operation,
            outcome,
            reason_label(response.reason()),
            received.elapsed(),
        );
        tracing::debug!(
            gate = %gate.gate_id,
            operation,
            outcome,
            reason = reason_label(response.reason()),
            "answered"
        );
        response
    }

    async fn enrol(&self, gate: &GateIdentity, r: proto::EnrolRequest) -> Result<Answer, Refusal> {
        check_person_id(&r.person_id)?;
        if r.templates.is_empty() {
            return Err(Refusal::malformed("enrol carries no template"));
        }
        if r.templates.len() > self.limits.max_templates_per_enrol {
            return Err(Refusal::new(
                Reason::TooLarge,
                format!(
                    "enrol carries {} templates; at most {} are accepted",
                    r.templates.len(),
                    self.limits.max_templates_per_enrol
                ),
            ));
        }
        let mut templates = Vec::with_capacity(r.templates.len());
        for t in r.templates {
            check_template(&self.gallery, &t)?;
            templates.push(NewTemplate {
                modality: t.modality,
                model_id: t.model_id,
                values: t.values,
            });
        }
        let change = Change::Enrol {
            person_id: r.person_id,
            templates,
            origin: origin(gate),
        };
        match self.registry.apply(change).await? {
            Receipt::Enrolled { created, templates } => {
                Ok(Answer::Enrol(proto::EnrolResult { created, templates }))
            }
            other => {
                tracing::error!(
                    ?other,
                    "registry answered an enrolment with another receipt"
                );
                Err(Refusal::new(
                    Reason::Internal,
                    "unexpected registry receipt",
                ))
            }
        }
    }

    async fn verify(&self, r: proto::VerifyRequest, deadline: Instant) -> Result<Answer, Refusal> {
        check_person_id(&r.person_id)?;
        let probe = r
            .probe
            .ok_or_else(|| Refusal::malformed("verify carries no probe"))?;
        let (shard, measure, threshold) = check_template(&self.gallery, &probe)?;
        let job = Job::Verify {
            shard,
            probe: probe.values,
            person_id: r.person_id,
        };
        let score = match self.batcher.run(job, deadline).await? {
            JobOutput::Verify(score) => score,
            JobOutput::Identify(_) => return Err(Refusal::new(Reason::Internal, "mismatched job")),
        };
        let decision = if measure.is_match(score, threshold) {
            proto::Decision::Match
        } else {
            proto::Decision::NoMatch
        };
        Ok(Answer::Verify(proto::VerifyResult {
            decision: decision as i32,
            score,
            measure: wire_measure(measure) as i32,
            threshold,
        }))
    }

    async fn identify(
        &self,
        r: proto::IdentifyRequest,
        deadline: Instant,
    ) -> Result<Answer, Refusal> {
        let probe = r
            .probe
            .ok_or_else(|| Refusal::malformed("identify carries no probe"))?;
        let k = r.k.max(1);
        if k > self.limits.max_k {
            return Err(Refusal::malformed(format!(
                "k = {k} is over the limit of {}",
                self.limits.max_k
            )));
        }
        let (shard, measure, threshold) = check_template(&self.gallery, &probe)?;
        let job = Job::Identify {
            shard,
            probe: probe.values,
            k: k as usize,
        };
        let persons = match self.batcher.run(job, deadline).await? {
            JobOutput::Identify(persons) => persons,
            JobOutput::Verify(_) => return Err(Refusal::new(Reason::Internal, "mismatched job")),
        };
        Ok(Answer::Identify(proto::IdentifyResult {
            candidates: persons
                .into_iter()
                .map(|(id, score)| proto::Candidate {
                    person_id: id.to_string(),
                    score,
                })
                .collect(),
            measure: wire_measure(measure) as i32,
            threshold,
        }))
    }

    async fn erase(&self, gate: &GateIdentity, r: proto::EraseRequest) -> Result<Answer, Refusal> {
        check_person_id(&r.person_id)?;
        let change = Change::Erase {
            person_id: r.person_id,
            origin: origin(gate),
        };
        match self.registry.apply(change).await? {
            Receipt::Erased { templates: 0 } => Err(Refusal::new(
                Reason::UnknownPerson,
                "no person with that id is enrolled",
            )),
            Receipt::Erased { templates } => Ok(Answer::Erase(proto::EraseResult {
                templates_removed: templates,
            })),
            other => {
                tracing::error!(?other, "registry answered an erasure with another receipt");
                Err(Refusal::new(
                    Reason::Internal,
                    "unexpected registry receipt",
                ))
            }
        }
    }

    fn status(&self, gate: &GateIdentity) -> Answer {
        let gallery = self.gallery.read().unwrap_or_else(|p| p.into_inner());
        Answer::Status(proto::StatusResult {
            version: env!("CARGO_PKG_VERSION").into(),
            backend: self.backend.name().into(),
            persons: gallery.person_count() as u64,
            models: gallery
                .shards()
                .iter()
                .map(|s| proto::ModelStatus {
                    model_id: s.spec().id.clone(),
                    dimension: s.dimension() as u32,
                    measure: wire_measure(s.measure()) as i32,
                    threshold: s.spec().threshold,
                    templates: s.live_count() as u64,
                })
                .collect(),
            queue_depth: self.batcher.queue_depth() as u32,
            uptime_s: self.started.elapsed().as_secs(),
            gate_id: gate.gate_id.clone(),
            site: gate.site.clone(),
        })
    }
}

/// Builds the response for a result.
pub fn respond(request_id: u64, result: Result<Answer, Refusal>) -> proto::Response {
    match result {
        Ok(answer) => proto::Response {
            request_id,
            outcome: Outcome::Ok as i32,
            reason: Reason::Unspecified as i32,
            detail: String::new(),
            result: Some(answer),
        },
        Err(refusal) => proto::Response {
            request_id,
            outcome: Outcome::Refused as i32,
            reason: refusal.reason as i32,
            detail: refusal.detail,
            result: None,
        },
    }
}

/// The metric label of a reason.
pub fn reason_label(reason: Reason) -> &'static str {
    match reason {
        Reason::Unspecified => "none",
        Reason::UnknownPerson => "unknown_person",
        Reason::WrongModel => "wrong_model",
        Reason::WrongDimension => "wrong_dimension",
        Reason::Busy => "busy",
        Reason::DeadlineExceeded => "deadline_exceeded",
        Reason::Malformed => "malformed",
        Reason::TooLarge => "too_large",
        Reason::NotPermitted => "not_permitted",
        Reason::Internal => "internal",
    }
}

fn wire_measure(measure: Measure) -> proto::Measure {
    match measure {
        Measure::Cosine => proto::Measure::Cosine,
        Measure::Euclidean => proto::Measure::Euclidean,
    }
}

fn origin(gate: &GateIdentity) -> Origin {
    Origin {
        gate_id: gate.gate_id.clone(),
        site: gate.site.clone(),
    }
}

fn check_person_id(person_id: &str) -> Result<(), Refusal> {
    if person_id.is_empty() {
        return Err(Refusal::malformed("person id is empty"));
    }
    if person_id.len() > MAX_PERSON_ID_BYTES {
        return Err(Refusal::malformed(format!(
            "person id of {} bytes is over the limit of {MAX_PERSON_ID_BYTES}",
            person_id.len()
        )));
    }
    if person_id.chars().any(char::is_control) {
        return Err(Refusal::malformed("person id holds control characters"));
    }
    Ok(())
}

/// Checks a template against the served models; returns its shard, measure and threshold.
fn check_template(
    gallery: &RwLock<Gallery>,
    template: &proto::Template,
) -> Result<(usize, Measure, f32), Refusal> {
    if template.modality == proto::Modality::Unspecified as i32
        || proto::Modality::try_from(template.modality).is_err()
    {
        return Err(Refusal::malformed(
            "template modality is missing or unknown",
        ));
    }
    let gallery = gallery.read().unwrap_or_else(|p| p.into_inner());
    let shard = gallery.check_template(&template.model_id, &template.values)?;
    let spec = gallery.shards()[shard].spec();
    Ok((shard, spec.measure, spec.threshold))
}

/// The registry's commit hook: applies committed changes to the gallery, in order.
fn apply_to_gallery(gallery: &RwLock<Gallery>, done: &[(Change, Receipt)]) {
    let mut gallery = gallery.write().unwrap_or_else(|p| p.into_inner());
    for (change, _) in done {
        match change {
            Change::Enrol {
                person_id,
                templates,
                ..
            } => {
                for t in templates {
                    if let Err(e) = gallery.add(person_id, &t.model_id, &t.values) {
                        // Templates were checked before they were committed; a model cannot
                        // vanish while the appliance runs.
                        tracing::error!(error = %e, "committed template does not fit the gallery");
                    }
                }
            }
            Change::Erase { person_id, .. } => {
                gallery.remove_person(person_id);
            }
        }
    }
    for shard in gallery.shards() {
        metrics::gallery_templates(&shard.spec().id, shard.live_count());
    }
}

/// Fills the gallery from the registry at start-up.
fn load_gallery(
    gallery: &RwLock<Gallery>,
    reader: &rusqlite::Connection,
) -> Result<(), RegistryError> {
    let started = Instant::now();
    let mut gallery = gallery.write().unwrap_or_else(|p| p.into_inner());
    let mut skipped = 0usize;
    let loaded = registry::for_each_template(reader, None, |t| {
        if gallery.add(&t.person_id, &t.model_id, &t.values).is_err() {
            skipped += 1;
        }
    })?;
    if skipped > 0 {
        tracing::warn!(
            skipped,
            "registry holds templates of models this configuration does not serve"
        );
    }
    for shard in gallery.shards() {
        metrics::gallery_templates(&shard.spec().id, shard.live_count());
    }
    tracing::info!(
        templates = loaded - skipped,
        persons = gallery.person_count(),
        took_ms = started.elapsed().as_millis() as u64,
        "gallery loaded from the registry"
    );
    Ok(())
}
