//! The gallery: every enrolled template in memory, laid out for scanning.
//!
//! The gallery is derived data. At start-up it is loaded from the [registry](crate::registry),
//! which stays the system of record; enrol and erase change it in place (a slot write or a
//! tombstone, with freed slots reused), so a change is seen by the next request without a
//! rebuild. It is written to and read from HDF5 snapshots by [`snapshot`].
//!
//! Each model id has its own [`Shard`]: one contiguous block of f32 rows of the model's
//! dimension, the rows' squared norms, and a per-slot *rank key* `key = dot · scale + bias`
//! that turns a raw dot product into an ordering of either measure:
//!
//! * cosine: `scale = 1/|g|`, `bias = 0` (the probe's own norm does not change the order);
//! * Euclidean: `scale = 1`, `bias = −|g|²/2`, since `|p − g|² = |p|² − 2 (p·g − |g|²/2)`;
//! * a free slot: `scale = 0`, `bias = −∞`, so it never ranks.
//!
//! Higher keys are better for both measures, which keeps one scan loop for both.
//!
//! Beside the canonical f32 rows each shard keeps an f16 copy (IEEE half precision, half the
//! bytes). A scan of few probes is bound by memory bandwidth, so it reads the f16 copy and
//! re-scores its candidates from the f32 rows; [`Shard::f16_key_error`] bounds what the
//! rounding can do to a key, which lets the engine prove its ranking exact or fall back to f32.
//!
//! # Keeping device copies in step
//!
//! A backend that keeps its own copy of a shard (the GPU keeps one in device memory) must see
//! every change before it next scans. Each shard therefore records the slots it writes and
//! frees in a short change log, numbered by a *generation* ([`Shard::generation`]). A backend
//! remembers the generation it copied and, at the start of its next call (under the same read
//! lock as the scan), asks [`Shard::changes_since`] for the slots to refresh. The log is
//! bounded by the shard's size: when it is trimmed, a backend that fell behind is told to copy
//! the whole shard again. Nothing has to be registered, so a copy can never miss a change, and
//! enrolment under the write lock costs one `push`.

pub mod snapshot;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::engine::Measure;

/// A model the appliance serves: which vectors it accepts and how it compares them.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelSpec {
    /// The model id gates name in their templates.
    pub id: String,
    /// Values per template.
    pub dimension: usize,
    /// How templates compare.
    pub measure: Measure,
    /// The decision threshold, in the measure's unit.
    pub threshold: f32,
}

/// Identifies one [`Shard`] for the life of the process, so that a backend can tell the
/// shards it keeps copies of apart (two galleries may serve the same model id).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ShardId(u64);

/// The change log holds at least this many entries before it is trimmed.
const CHANGE_LOG_MIN: usize = 4096;

/// The templates of one model, in scan order.
#[derive(Debug)]
pub struct Shard {
    id: ShardId,
    spec: ModelSpec,
    /// Slots written or freed since generation `change_base`, oldest first.
    changes: Vec<u32>,
    change_base: u64,
    rows: Vec<f32>,
    rows_f16: Vec<u16>,
    max_norm: f32,
    min_norm: f32,
    f16_in_range: bool,
    norms_sq: Vec<f32>,
    key_scale: Vec<f32>,
    key_bias: Vec<f32>,
    owners: Vec<Option<PersonIndex>>,
    free_slots: Vec<u32>,
    live: usize,
}

/// A dense number for a person, valid while the person is enrolled.
pub type PersonIndex = u32;

impl Shard {
    /// An empty shard for `spec`.
    pub fn new(spec: ModelSpec) -> Self {
        static NEXT_ID: AtomicU64 = AtomicU64::new(0);
        Shard {
            id: ShardId(NEXT_ID.fetch_add(1, Ordering::Relaxed)),
            spec,
            changes: Vec::new(),
            change_base: 0,
            rows: Vec::new(),
            rows_f16: Vec::new(),
            max_norm: 0.0,
            min_norm: f32::INFINITY,
            f16_in_range: true,
            norms_sq: Vec::new(),
            key_scale: Vec::new(),
            key_bias: Vec::new(),
            owners: Vec::new(),
            free_slots: Vec::new(),
            live: 0,
        }
    }

    /// This shard's identity, unique in the process.
    pub fn id(&self) -> ShardId {
        self.id
    }

    /// How many slot writes and frees this shard has seen; grows with every change.
    pub fn generation(&self) -> u64 {
        self.change_base + self.changes.len() as u64
    }

    /// The slots written or freed since `generation` (oldest first, possibly repeated), or
    /// `None` when the log no longer reaches back that far (or `generation` is from the
    /// future): then copy the whole shard.
    pub fn changes_since(&self, generation: u64) -> Option<&[u32]> {
        let from = generation.checked_sub(self.change_base)?;
        self.changes.get(usize::try_from(from).ok()?..)
    }

    /// Logs a change of `slot`, trimming the log once it is longer than the shard.
    fn record_change(&mut self, slot: u32) {
        if self.changes.len() >= CHANGE_LOG_MIN.max(self.owners.len()) {
            self.change_base += self.changes.len() as u64;
            self.changes.clear();
        }
        self.changes.push(slot);
    }

    /// The model this shard holds.
    pub fn spec(&self) -> &ModelSpec {
        &self.spec
    }

    /// Values per template.
    pub fn dimension(&self) -> usize {
        self.spec.dimension
    }

    /// The measure scores are in.
    pub fn measure(&self) -> Measure {
        self.spec.measure
    }

    /// Slots allocated, live or free; scans cover `0..slot_count()`.
    pub fn slot_count(&self) -> usize {
        self.owners.len()
    }

    /// Live templates.
    pub fn live_count(&self) -> usize {
        self.live
    }

    /// The row-major block of all slots (free slots hold stale values; their key never ranks).
    pub fn rows(&self) -> &[f32] {
        &self.rows
    }

    /// The f16 copy of [`Shard::rows`], as raw IEEE half-precision bits.
    pub fn rows_f16(&self) -> &[u16] {
        &self.rows_f16
    }

    /// Whether every stored value fits f16's range, so the f16 copy can stand in for a scan.
    pub fn f16_usable(&self) -> bool {
        self.f16_in_range
    }

    /// An upper bound on how far a rank key computed from the f16 copy can be from the key
    /// computed exactly, for a probe with Euclidean norm `probe_norm`.
    ///
    /// Rounding to f16 moves each value by at most 2⁻¹¹ of itself (or 2⁻²⁵ absolute below
    /// f16's normal range), so by Cauchy–Schwarz the dot product moves by at most
    /// `2⁻¹¹ |p| |g| + 2⁻²⁵ |p|₁`; the key scale is `1/|g|` (cosine) or 1 (Euclidean). A
    /// further `dim · 2⁻²³ |p| |g|` covers the f32 accumulation; norms are bounded by the
    /// largest (and, for cosine, smallest non-zero) ever stored in the shard.
    pub fn f16_key_error(&self, probe_norm: f32, probe_l1: f32) -> f32 {
        let scale_times_norm = match self.spec.measure {
            Measure::Cosine => 1.0,
            Measure::Euclidean => self.max_norm,
        };
        // Values below f16's normal range round to an absolute 2⁻²⁵; under cosine the key
        // divides that by |g|, bounded by the smallest norm ever stored.
        let tiny = match self.spec.measure {
            Measure::Cosine => probe_l1 * 2f32.powi(-25) / self.min_norm,
            Measure::Euclidean => probe_l1 * 2f32.powi(-25),
        };
        2.0 * (probe_norm * scale_times_norm * 2f32.powi(-11) + tiny)
            + probe_norm * scale_times_norm * self.spec.dimension as f32 * 2f32.powi(-23)
    }

    /// The template in `slot`.
    pub fn row(&self, slot: u32) -> &[f32] {
        let d = self.spec.dimension;
        let start = slot as usize * d;
        &self.rows[start..start + d]
    }

    /// Squared norms, one per slot.
    pub fn norms_sq(&self) -> &[f32] {
        &self.norms_sq
    }

    /// Rank-key scales, one per slot (see the module docs).
    pub fn key_scale(&self) -> &[f32] {
        &self.key_scale
    }

    /// Rank-key biases, one per slot (see the module docs).
    pub fn key_bias(&self) -> &[f32] {
        &self.key_bias
    }

    /// Whether `slot` holds a live template.
    pub fn is_live(&self, slot: u32) -> bool {
        self.owners.get(slot as usize).is_some_and(Option::is_some)
    }

    /// The person that owns `slot`, if it is live.
    pub fn owner(&self, slot: u32) -> Option<PersonIndex> {
        self.owners.get(slot as usize).copied().flatten()
    }

    /// Stores `template` for `owner`, reusing a free slot when there is one.
    fn insert(&mut self, owner: PersonIndex, template: &[f32]) -> u32 {
        debug_assert_eq!(template.len(), self.spec.dimension);
        let slot = match self.free_slots.pop() {
            Some(slot) => slot,
            None => {
                let slot = self.owners.len() as u32;
                self.rows.resize(self.rows.len() + self.spec.dimension, 0.0);
                self.rows_f16
                    .resize(self.rows_f16.len() + self.spec.dimension, 0);
                self.norms_sq.push(0.0);
                self.key_scale.push(0.0);
                self.key_bias.push(f32::NEG_INFINITY);
                self.owners.push(None);
                slot
            }
        };
        let i = slot as usize;
        let d = self.spec.dimension;
        self.rows[i * d..(i + 1) * d].copy_from_slice(template);
        for (half, &v) in self.rows_f16[i * d..(i + 1) * d].iter_mut().zip(template) {
            *half = half::f16::from_f32(v).to_bits();
        }
        if template.iter().any(|v| v.abs() > f32::from(half::f16::MAX)) {
            self.f16_in_range = false;
        }
        let norm_sq: f32 = template.iter().map(|v| v * v).sum();
        self.max_norm = self.max_norm.max(norm_sq.sqrt());
        if norm_sq > 0.0 {
            self.min_norm = self.min_norm.min(norm_sq.sqrt());
        }
        self.norms_sq[i] = norm_sq;
        (self.key_scale[i], self.key_bias[i]) = match self.spec.measure {
            Measure::Cosine if norm_sq > 0.0 => (1.0 / norm_sq.sqrt(), 0.0),
            Measure::Cosine => (0.0, 0.0),
            Measure::Euclidean => (1.0, -0.5 * norm_sq),
        };
        self.owners[i] = Some(owner);
        self.live += 1;
        self.record_change(slot);
        slot
    }

    /// Frees `slot`; its template never ranks again and the slot is reused by a later insert.
    fn remove(&mut self, slot: u32) {
        let i = slot as usize;
        if self.owners[i].take().is_some() {
            self.key_scale[i] = 0.0;
            self.key_bias[i] = f32::NEG_INFINITY;
            self.free_slots.push(slot);
            self.live -= 1;
            self.record_change(slot);
        }
    }
}

/// Where one template of a person lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TemplateRef {
    /// Index of the shard (model) in [`Gallery::shards`].
    pub shard: usize,
    /// Slot in that shard.
    pub slot: u32,
}

#[derive(Debug)]
struct PersonEntry {
    id: Arc<str>,
    templates: Vec<TemplateRef>,
}

/// Why a template could not be placed in the gallery.
#[derive(Debug, thiserror::Error, PartialEq)]
#[non_exhaustive]
pub enum GalleryError {
    /// No shard serves that model id.
    #[error("model {model_id:?} is not served")]
    UnknownModel {
        /// The model id asked for.
        model_id: String,
    },
    /// The template's length is not the model's dimension.
    #[error("template of {actual} values for model {model_id:?} of dimension {expected}")]
    WrongDimension {
        /// The model id.
        model_id: String,
        /// The model's dimension.
        expected: usize,
        /// Values received.
        actual: usize,
    },
    /// The template holds NaN or an infinity.
    #[error("template for model {model_id:?} holds a value that is not finite")]
    NotFinite {
        /// The model id.
        model_id: String,
    },
}

/// All shards, and the persons that own their slots.
#[derive(Debug)]
pub struct Gallery {
    shards: Vec<Shard>,
    persons: Vec<Option<PersonEntry>>,
    free_persons: Vec<PersonIndex>,
    by_id: HashMap<Arc<str>, PersonIndex>,
}

impl Gallery {
    /// An empty gallery serving `models`.
    pub fn new(models: Vec<ModelSpec>) -> Self {
        Gallery {
            shards: models.into_iter().map(Shard::new).collect(),
            persons: Vec::new(),
            free_persons: Vec::new(),
            by_id: HashMap::new(),
        }
    }

    /// The shards, one per model.
    pub fn shards(&self) -> &[Shard] {
        &self.shards
    }

    /// The shard serving `model_id`, with its index.
    pub fn shard_for(&self, model_id: &str) -> Option<(usize, &Shard)> {
        self.shards
            .iter()
            .enumerate()
            .find(|(_, s)| s.spec.id == model_id)
    }

    /// Checks that `template` fits the model `model_id`, and returns the shard's index.
    pub fn check_template(&self, model_id: &str, template: &[f32]) -> Result<usize, GalleryError> {
        let (index, shard) =
            self.shard_for(model_id)
                .ok_or_else(|| GalleryError::UnknownModel {
                    model_id: model_id.to_owned(),
                })?;
        if template.len() != shard.spec.dimension {
            return Err(GalleryError::WrongDimension {
                model_id: model_id.to_owned(),
                expected: shard.spec.dimension,
                actual: template.len(),
            });
        }
        if !template.iter().all(|v| v.is_finite()) {
            return Err(GalleryError::NotFinite {
                model_id: model_id.to_owned(),
            });
        }
        Ok(index)
    }

    /// Persons enrolled.
    pub fn person_count(&self) -> usize {
        self.by_id.len()
    }

    /// The index of the person `person_id`, if enrolled.
    pub fn person_index(&self, person_id: &str) -> Option<PersonIndex> {
        self.by_id.get(person_id).copied()
    }

    /// The id of the person at `index`.
    pub fn person_id(&self, index: PersonIndex) -> Option<&Arc<str>> {
        self.persons.get(index as usize)?.as_ref().map(|p| &p.id)
    }

    /// The templates of the person at `index`.
    pub fn templates_of(&self, index: PersonIndex) -> &[TemplateRef] {
        match self.persons.get(index as usize) {
            Some(Some(entry)) => &entry.templates,
            _ => &[],
        }
    }

    /// Adds a template to `person_id` (creating the person), after [`Gallery::check_template`].
    pub fn add(
        &mut self,
        person_id: &str,
        model_id: &str,
        template: &[f32],
    ) -> Result<TemplateRef, GalleryError> {
        let shard = self.check_template(model_id, template)?;
        let person = self.person_or_insert(person_id);
        let slot = self.shards[shard].insert(person, template);
        let reference = TemplateRef { shard, slot };
        if let Some(Some(entry)) = self.persons.get_mut(person as usize) {
            entry.templates.push(reference);
        }
        Ok(reference)
    }

    /// Removes a person and all of their templates; returns how many templates went.
    pub fn remove_person(&mut self, person_id: &str) -> usize {
        let Some(index) = self.by_id.remove(person_id) else {
            return 0;
        };
        let Some(entry) = self.persons[index as usize].take() else {
            return 0;
        };
        for t in &entry.templates {
            self.shards[t.shard].remove(t.slot);
        }
        self.free_persons.push(index);
        entry.templates.len()
    }

    fn person_or_insert(&mut self, person_id: &str) -> PersonIndex {
        if let Some(&index) = self.by_id.get(person_id) {
            return index;
        }
        let id: Arc<str> = Arc::from(person_id);
        let entry = PersonEntry {
            id: Arc::clone(&id),
            templates: Vec::new(),
        };
        let index = match self.free_persons.pop() {
            Some(index) => {
                self.persons[index as usize] = Some(entry);
                index
            }
            None => {
                self.persons.push(Some(entry));
                (self.persons.len() - 1) as PersonIndex
            }
        };
        self.by_id.insert(id, index);
        index
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(dimension: usize) -> ModelSpec {
        ModelSpec {
            id: "m".into(),
            dimension,
            measure: Measure::Cosine,
            threshold: 0.5,
        }
    }

    #[test]
    fn erased_slots_are_reused_and_never_rank() {
        let mut g = Gallery::new(vec![spec(2)]);
        let a = g.add("alice", "m", &[1.0, 0.0]).unwrap();
        g.add("bob", "m", &[0.0, 1.0]).unwrap();
        assert_eq!(g.remove_person("alice"), 1);
        assert!(!g.shards()[0].is_live(a.slot));
        assert_eq!(g.shards()[0].key_bias()[a.slot as usize], f32::NEG_INFINITY);
        let c = g.add("carol", "m", &[1.0, 1.0]).unwrap();
        assert_eq!(
            c.slot, a.slot,
            "a freed slot is reused before the block grows"
        );
        assert_eq!(g.shards()[0].slot_count(), 2);
        assert_eq!(g.shards()[0].live_count(), 2);
        assert_eq!(g.person_count(), 2);
    }

    #[test]
    fn the_change_log_names_every_written_and_freed_slot() {
        let mut g = Gallery::new(vec![spec(2)]);
        let start = g.shards()[0].generation();
        let a = g.add("alice", "m", &[1.0, 0.0]).unwrap();
        let b = g.add("bob", "m", &[0.0, 1.0]).unwrap();
        let seen = g.shards()[0].generation();
        g.remove_person("alice");
        g.remove_person("nobody");
        let shard = &g.shards()[0];
        assert_eq!(
            shard.changes_since(start),
            Some(&[a.slot, b.slot, a.slot][..])
        );
        assert_eq!(shard.changes_since(seen), Some(&[a.slot][..]));
        assert_eq!(shard.changes_since(shard.generation()), Some(&[][..]));
        assert_eq!(shard.changes_since(shard.generation() + 1), None);
        assert_ne!(shard.id(), Gallery::new(vec![spec(2)]).shards()[0].id());
    }

    #[test]
    fn a_trimmed_change_log_asks_for_a_full_copy() {
        let mut g = Gallery::new(vec![spec(1)]);
        g.add("kept", "m", &[1.0]).unwrap();
        // Churn on one slot: the log outgrows the shard and is trimmed.
        for _ in 0..CHANGE_LOG_MIN {
            g.add("churn", "m", &[2.0]).unwrap();
            g.remove_person("churn");
        }
        let shard = &g.shards()[0];
        assert_eq!(shard.generation(), 1 + 2 * CHANGE_LOG_MIN as u64);
        assert_eq!(shard.changes_since(0), None);
        let last = shard.changes_since(shard.generation() - 1);
        assert_eq!(last, Some(&[1][..]));
    }

    #[test]
    fn templates_are_checked_against_the_model() {
        let g = Gallery::new(vec![spec(2)]);
        assert!(matches!(
            g.check_template("x", &[0.0; 2]),
            Err(GalleryError::UnknownModel { .. })
        ));
        assert!(matches!(
            g.check_template("m", &[0.0; 3]),
            Err(GalleryError::WrongDimension {
                expected: 2,
                actual: 3,
                ..
            })
        ));
        assert!(matches!(
            g.check_template("m", &[f32::NAN, 0.0]),
            Err(GalleryError::NotFinite { .. })
        ));
    }
}
