//! Synthetic travellers: seeded random templates, and probes made from them.
//!
//! Traveller `i` of a population has a fixed unit-length template drawn from a normal
//! distribution with a seed derived from the population's seed and `i`, so the gate simulator,
//! `gatematch gallery synth` and the tests all agree on it without sharing state. A genuine
//! probe is that template plus Gaussian noise scaled so that its cosine similarity with the
//! template is about [`GENUINE_COSINE`]; an impostor probe is a genuine probe of somebody else.
//! Random unit vectors in 128 dimensions have cosine similarities of about ±0.09 with each
//! other, so a threshold of 0.5 separates the two by a wide margin.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;

/// The cosine similarity a genuine probe has with its template, on average.
pub const GENUINE_COSINE: f32 = 0.8;

/// A seeded population of synthetic travellers.
#[derive(Clone, Copy, Debug)]
pub struct Population {
    /// The population's seed.
    pub seed: u64,
    /// Values per template.
    pub dimension: usize,
}

impl Population {
    /// The person id of traveller `index`.
    pub fn person_id(&self, index: u64) -> String {
        format!("SYN-{:x}-{index:09}", self.seed)
    }

    /// The enrolled template of traveller `index`.
    pub fn template(&self, index: u64) -> Vec<f32> {
        let mut rng =
            ChaCha8Rng::seed_from_u64(self.seed ^ index.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let mut v: Vec<f32> = (0..self.dimension)
            .map(|_| rng.sample(StandardNormal))
            .collect();
        normalise(&mut v);
        v
    }

    /// A live capture of traveller `index`: the template plus noise, drawn from `rng`.
    pub fn probe(&self, index: u64, rng: &mut impl Rng) -> Vec<f32> {
        let mut v = self.template(index);
        // With unit template t and noise n of per-value deviation s, |n|² ≈ s²·d and
        // cos(t, t + n) ≈ 1 / sqrt(1 + s²·d); solve for s.
        let ratio = 1.0 / (GENUINE_COSINE * GENUINE_COSINE) - 1.0;
        let sigma = (ratio / self.dimension as f32).sqrt();
        for x in &mut v {
            let noise: f32 = rng.sample(StandardNormal);
            *x += sigma * noise;
        }
        normalise(&mut v);
        v
    }
}

fn normalise(v: &mut [f32]) {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        for x in v {
            *x /= norm;
        }
    }
}

/// A random gallery block of `rows` unit vectors of `dimension` values (for benches).
pub fn random_block(rows: usize, dimension: usize, seed: u64) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut block: Vec<f32> = (0..rows * dimension)
        .map(|_| rng.sample(StandardNormal))
        .collect();
    for row in block.chunks_exact_mut(dimension.max(1)) {
        normalise(row);
    }
    block
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::Measure;

    #[test]
    fn genuine_probes_are_close_and_impostors_far() {
        let population = Population {
            seed: 7,
            dimension: 128,
        };
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        for i in 0..50 {
            let genuine =
                Measure::Cosine.score(&population.probe(i, &mut rng), &population.template(i));
            let impostor = Measure::Cosine.score(
                &population.probe(i + 1000, &mut rng),
                &population.template(i),
            );
            assert!((genuine - GENUINE_COSINE).abs() < 0.1, "genuine {genuine}");
            assert!(impostor.abs() < 0.4, "impostor {impostor}");
        }
        assert_eq!(population.template(3), population.template(3));
    }
}
