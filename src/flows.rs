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
//!
//! A face image in a request becomes a template before anything else happens: on a blocking
//! thread it is decoded, its face located (the gate's landmarks, or the appliance's detector,
//! which takes the frames of every gate in shared passes through [`FindBatcher`]) and judged ([`crate::face::capture`]: a capture that would spoil matching is refused with
//! `POOR_CAPTURE` and the reasons, before anything is stored); its crop is batched with other
//! gates' faces through the descriptor network ([`FaceBatcher`]); and the descriptor then goes
//! the way a template sent by the gate would, as a template of the face model. What was
//! measured on each face goes back to the gate in the response, refused or not.

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::engine::Backend;
use crate::engine::Measure;
use crate::engine::batcher::{BatchError, Batcher, FaceBatcher, FindBatcher, Job, JobOutput};
use crate::face::capture::{self, Capture, CaptureError, FindFaces, Region};
use crate::face::preprocess::{DecodeLimits, FaceBatch, Point, decode_image};
use crate::face::quality::{CaptureIssue, QualityPolicy};
use crate::face::{Descriptor, Embedder, ImageError};
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

impl From<ImageError> for Refusal {
    fn from(e: ImageError) -> Self {
        let reason = match e {
            ImageError::InvalidLandmarks { .. }
            | ImageError::InvalidBox { .. }
            | ImageError::EmptyFaceBox { .. } => Reason::BadFaceRegion,
            _ => Reason::BadImage,
        };
        Refusal::new(reason, e.to_string())
    }
}

impl From<CaptureError> for Refusal {
    fn from(e: CaptureError) -> Self {
        match e {
            CaptureError::Image(e) => e.into(),
            CaptureError::NoDetector => Refusal::new(Reason::BadFaceRegion, e.to_string()),
            CaptureError::Detection(_) => Refusal::new(Reason::BadImage, e.to_string()),
            CaptureError::ThreadPool { .. } => {
                tracing::error!(error = %e, "face detector could not run");
                Refusal::new(Reason::Internal, "face detection failed")
            }
            CaptureError::Queue(e) => e.into(),
        }
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

/// The face networks an appliance serves face images with.
pub struct FaceNetworks {
    /// The descriptor network.
    pub embedder: Arc<dyn Embedder>,
    /// The detector and landmark network; without them a gate must send landmarks or a crop.
    pub finder: Option<Arc<dyn FindFaces>>,
}

/// Face images: the embed lane and what a face becomes.
struct Faces {
    batcher: FaceBatcher,
    finder: Option<Arc<dyn FindFaces>>,
    /// The model descriptors are templates of.
    model_id: String,
    limits: DecodeLimits,
    quality: Arc<QualityPolicy>,
}

/// The service: registry, gallery and engine behind one request handler.
pub struct Appliance {
    gallery: Arc<RwLock<Gallery>>,
    registry: Registry,
    batcher: Batcher,
    backend: Arc<dyn Backend>,
    faces: Option<Faces>,
    limits: Limits,
    started: Instant,
}

impl Appliance {
    /// Opens the registry named in `config`, loads the gallery from it and starts the batcher
    /// on `backend`; with a `[face]` section, also the embed lane on the `face` networks (face
    /// images are refused without them).
    pub fn open(
        config: &Config,
        backend: Arc<dyn Backend>,
        face: Option<FaceNetworks>,
    ) -> Result<Appliance, ApplianceError> {
        let gallery = Arc::new(RwLock::new(Gallery::new(config.model_specs())));
        let hook_gallery = Arc::clone(&gallery);
        let hook =
            Box::new(move |done: &[(Change, Receipt)]| apply_to_gallery(&hook_gallery, done));
        let (registry, reader) = Registry::open(&config.registry.path, Some(hook))?;
        load_gallery(&gallery, &reader)?;
        drop(reader);
        let batcher = Batcher::start(config.batch(), Arc::clone(&gallery), Arc::clone(&backend));
        let faces = config
            .face
            .as_ref()
            .zip(face)
            .map(|(config, networks)| Faces {
                batcher: FaceBatcher::start(config.batch(), networks.embedder),
                // Frames from every gate share the detector's passes, as crops share the
                // descriptor network's.
                finder: networks.finder.map(|finder| {
                    Arc::new(FindBatcher::start(config.batch(), finder)) as Arc<dyn FindFaces>
                }),
                model_id: config.model_id.clone(),
                limits: config.decode_limits(),
                quality: Arc::new(config.quality.clone()),
            });
        Ok(Appliance {
            gallery,
            registry,
            batcher,
            backend,
            faces,
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
        let mut captures = Vec::new();
        let (operation, result) = match request.operation {
            Some(Operation::Enrol(r)) => {
                ("enrol", self.enrol(gate, r, deadline, &mut captures).await)
            }
            Some(Operation::Verify(r)) => ("verify", self.verify(r, deadline, &mut captures).await),
            Some(Operation::Identify(r)) => {
                ("identify", self.identify(r, deadline, &mut captures).await)
            }
            Some(Operation::Erase(r)) => ("erase", self.erase(gate, r).await),
            Some(Operation::Status(_)) => ("status", Ok(self.status(gate))),
            None => (
                "none",
                Err(Refusal::malformed("the request names no operation")),
            ),
        };
        let mut response = respond(request.request_id, result);
        response.captures = captures;
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

    async fn enrol(
        &self,
        gate: &GateIdentity,
        r: proto::EnrolRequest,
        deadline: Instant,
        captures: &mut Vec<proto::CaptureQuality>,
    ) -> Result<Answer, Refusal> {
        check_person_id(&r.person_id)?;
        let count = r.templates.len() + r.faces.len();
        if count == 0 {
            return Err(Refusal::malformed("enrol carries no template and no face"));
        }
        if count > self.limits.max_templates_per_enrol {
            return Err(Refusal::new(
                Reason::TooLarge,
                format!(
                    "enrol carries {count} templates and faces; at most {} are accepted",
                    self.limits.max_templates_per_enrol
                ),
            ));
        }
        let mut templates = Vec::with_capacity(count);
        for t in r.templates {
            check_template(&self.gallery, &t)?;
            templates.push(NewTemplate {
                modality: t.modality,
                model_id: t.model_id,
                values: t.values,
            });
        }
        let face_model_id = if r.faces.is_empty() {
            String::new()
        } else {
            let faces = self.faces()?;
            for descriptor in self
                .describe_faces(faces, r.faces, deadline, captures)
                .await?
            {
                templates.push(NewTemplate {
                    modality: proto::Modality::Face as i32,
                    model_id: faces.model_id.clone(),
                    values: descriptor.as_slice().to_vec(),
                });
            }
            faces.model_id.clone()
        };
        let change = Change::Enrol {
            person_id: r.person_id,
            templates,
            origin: origin(gate),
        };
        match self.registry.apply(change).await? {
            Receipt::Enrolled { created, templates } => Ok(Answer::Enrol(proto::EnrolResult {
                created,
                templates,
                face_model_id,
            })),
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

    async fn verify(
        &self,
        r: proto::VerifyRequest,
        deadline: Instant,
        captures: &mut Vec<proto::CaptureQuality>,
    ) -> Result<Answer, Refusal> {
        check_person_id(&r.person_id)?;
        let probe = self
            .probe("verify", r.probe, r.face, deadline, captures)
            .await?;
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
            model_id: probe.model_id,
        }))
    }

    async fn identify(
        &self,
        r: proto::IdentifyRequest,
        deadline: Instant,
        captures: &mut Vec<proto::CaptureQuality>,
    ) -> Result<Answer, Refusal> {
        let k = r.k.max(1);
        if k > self.limits.max_k {
            return Err(Refusal::malformed(format!(
                "k = {k} is over the limit of {}",
                self.limits.max_k
            )));
        }
        let probe = self
            .probe("identify", r.probe, r.face, deadline, captures)
            .await?;
        let (shard, measure, threshold) = check_template(&self.gallery, &probe)?;
        let model_id = probe.model_id;
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
            model_id,
        }))
    }

    /// The face lane, or the refusal of a face image by an appliance without a face model.
    fn faces(&self) -> Result<&Faces, Refusal> {
        self.faces.as_ref().ok_or_else(|| {
            Refusal::new(
                Reason::WrongModel,
                "this appliance serves no face model; send templates instead of face images",
            )
        })
    }

    /// The probe of a verify or identify: the template sent, or the descriptor of the face
    /// sent, as a template of the face model.
    async fn probe(
        &self,
        operation: &str,
        template: Option<proto::Template>,
        face: Option<proto::FaceImage>,
        deadline: Instant,
        captures: &mut Vec<proto::CaptureQuality>,
    ) -> Result<proto::Template, Refusal> {
        match (template, face) {
            (Some(template), None) => Ok(template),
            (None, Some(face)) => {
                let faces = self.faces()?;
                let descriptor = self
                    .describe_faces(faces, vec![face], deadline, captures)
                    .await?;
                Ok(proto::Template {
                    modality: proto::Modality::Face as i32,
                    model_id: faces.model_id.clone(),
                    values: descriptor
                        .first()
                        .map(|d| d.as_slice().to_vec())
                        .unwrap_or_default(),
                })
            }
            (None, None) => Err(Refusal::malformed(format!(
                "{operation} carries neither a probe template nor a face"
            ))),
            (Some(_), Some(_)) => Err(Refusal::malformed(format!(
                "{operation} carries both a probe template and a face; send one"
            ))),
        }
    }

    /// Decodes, locates, judges and cuts every face on the blocking pool, then queues all of
    /// their crops at once so that they share a pass through the network. What was measured
    /// on each face is pushed to `captures`; if any capture has issues, none is described and
    /// the request is refused with `POOR_CAPTURE`.
    async fn describe_faces(
        &self,
        faces: &Faces,
        images: Vec<proto::FaceImage>,
        deadline: Instant,
        captures: &mut Vec<proto::CaptureQuality>,
    ) -> Result<Vec<Descriptor>, Refusal> {
        let limits = faces.limits;
        let finder = faces.finder.clone();
        let policy = Arc::clone(&faces.quality);
        let examined = tokio::task::spawn_blocking(move || {
            images
                .iter()
                .map(|face| face_crop(face, &limits, finder.as_ref(), &policy))
                .collect::<Result<Vec<_>, Refusal>>()
        })
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "face decoding task failed");
            Refusal::new(Reason::Internal, "face decoding failed")
        })??;
        let mut crops = Vec::with_capacity(examined.len());
        let mut issues = Vec::new();
        for (crop, capture) in examined {
            captures.push(capture_quality(&capture));
            issues.extend(capture.issues.iter().copied());
            crops.extend(crop);
        }
        if !issues.is_empty() {
            metrics::capture_refused(&issues);
            return Err(poor_capture(&issues));
        }
        let mut answers = Vec::with_capacity(crops.len());
        for crop in crops {
            answers.push(faces.batcher.submit(crop, deadline)?);
        }
        let mut descriptors = Vec::with_capacity(answers.len());
        for answer in answers {
            descriptors.push(answer.await.unwrap_or(Err(BatchError::Stopped))?);
        }
        Ok(descriptors)
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
            face_model_id: self
                .faces
                .as_ref()
                .map(|f| f.model_id.clone())
                .unwrap_or_default(),
            face_backend: self
                .faces
                .as_ref()
                .map(|f| f.batcher.backend_name().to_owned())
                .unwrap_or_default(),
        })
    }
}

/// Landmark values in a face image: 68 points, x then y.
const LANDMARK_VALUES: usize = 2 * crate::face::preprocess::crop::LANDMARK_COUNT;

/// Decodes a gate's face image within `limits`, locates and judges its face, and cuts the
/// network's input from it when the capture is good (`None` when it is not).
fn face_crop(
    face: &proto::FaceImage,
    limits: &DecodeLimits,
    finder: Option<&Arc<dyn FindFaces>>,
    policy: &QualityPolicy,
) -> Result<(Option<Vec<f32>>, Capture), Refusal> {
    let started = Instant::now();
    let image = decode_image(&face.image, limits)?;
    let frame = |given: u32, whole: u32| if given == 0 { whole } else { given };
    let region = match (face.landmarks.len(), face.ready_crop) {
        (0, true) => Region::ReadyCrop,
        (LANDMARK_VALUES, false) => Region::Landmarks {
            points: face
                .landmarks
                .chunks_exact(2)
                .map(|p| Point { x: p[0], y: p[1] })
                .collect(),
            frame_width: frame(face.landmarks_frame_width, image.width()),
            frame_height: frame(face.landmarks_frame_height, image.height()),
        },
        (0, false) => Region::Find,
        (_, true) => {
            return Err(Refusal::malformed(
                "face image has both landmarks and ready_crop; send one",
            ));
        }
        (n, false) => {
            return Err(Refusal::new(
                Reason::BadFaceRegion,
                format!("face image has {n} landmark values; 136 (68 points, x then y) are needed"),
            ));
        }
    };
    let capture = capture::examine(&image, region, finder, policy)?;
    let crop = match capture.face_box {
        Some(face_box) if capture.issues.is_empty() => {
            let mut batch = FaceBatch::with_capacity(1);
            batch.push_face(&image, face_box)?;
            Some(batch.as_slice().to_vec())
        }
        _ => None,
    };
    metrics::face_decode(started.elapsed());
    Ok((crop, capture))
}

/// What the gate is told of one examined capture.
fn capture_quality(capture: &Capture) -> proto::CaptureQuality {
    let found = capture.found.as_ref();
    proto::CaptureQuality {
        faces_found: capture.faces_found as u32,
        detection: found.map(|f| proto::FaceRegion {
            x: f.detection.x,
            y: f.detection.y,
            width: f.detection.width,
            height: f.detection.height,
        }),
        detection_score: found.map_or(0.0, |f| f.detection.score),
        checks: capture
            .checks
            .iter()
            .map(|c| proto::QualityCheck {
                issue: wire_issue(c.issue) as i32,
                value: c.value,
                threshold: c.threshold,
                passed: c.passed,
            })
            .collect(),
        issues: capture
            .issues
            .iter()
            .map(|&i| wire_issue(i) as i32)
            .collect(),
    }
}

/// The refusal of a request whose captures have `issues`: the advice for each, in words.
fn poor_capture(issues: &[CaptureIssue]) -> Refusal {
    let mut advice: Vec<&str> = issues.iter().map(|i| i.advice()).collect();
    advice.dedup();
    Refusal::new(
        Reason::PoorCapture,
        format!("the face capture cannot be used: {}", advice.join("; ")),
    )
}

fn wire_issue(issue: CaptureIssue) -> proto::CaptureIssue {
    use proto::CaptureIssue as Wire;
    match issue {
        CaptureIssue::NoFace => Wire::NoFace,
        CaptureIssue::SeveralFaces => Wire::SeveralFaces,
        CaptureIssue::FaceTooSmall => Wire::FaceTooSmall,
        CaptureIssue::HeadPose => Wire::HeadPose,
        CaptureIssue::Blurred => Wire::Blurred,
        CaptureIssue::TooDark => Wire::TooDark,
        CaptureIssue::TooBright => Wire::TooBright,
        CaptureIssue::LowContrast => Wire::LowContrast,
        CaptureIssue::EyesClosed => Wire::EyesClosed,
        CaptureIssue::EyesCovered => Wire::EyesCovered,
        CaptureIssue::LowerFaceCovered => Wire::LowerFaceCovered,
        CaptureIssue::ForeheadCovered => Wire::ForeheadCovered,
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
            captures: Vec::new(),
        },
        Err(refusal) => proto::Response {
            request_id,
            outcome: Outcome::Refused as i32,
            reason: refusal.reason as i32,
            detail: refusal.detail,
            result: None,
            captures: Vec::new(),
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
        Reason::BadImage => "bad_image",
        Reason::BadFaceRegion => "bad_face_region",
        Reason::PoorCapture => "poor_capture",
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
