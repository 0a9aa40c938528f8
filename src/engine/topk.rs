//! Keeping the best few of a long stream of (key, slot) pairs.
//!
//! A scan offers every slot; after the first few hundred almost none beat the current worst
//! kept, so the hot path is one comparison against [`TopK::floor`]. The kept entries sit in a
//! small array sorted best first: an insertion moves at most `capacity` entries, and the
//! expected number of insertions over `n` random keys is only about `k · ln(n / k)`.

/// The best `capacity` entries seen, by key (higher is better), ties to the lower slot.
#[derive(Clone, Debug)]
pub struct TopK {
    capacity: usize,
    entries: Vec<(f32, u32)>,
    floor: f32,
}

impl TopK {
    /// Keeps at most `capacity` entries.
    pub fn new(capacity: usize) -> Self {
        TopK {
            capacity,
            entries: Vec::with_capacity(capacity + 1),
            floor: f32::NEG_INFINITY,
        }
    }

    /// Keys at or below this cannot enter once the structure is full (ties are rare and are
    /// settled in [`TopK::offer`]).
    #[inline(always)]
    pub fn floor(&self) -> f32 {
        self.floor
    }

    /// Offers one entry. Keys of `-∞` (free slots) and NaN never enter.
    #[inline]
    pub fn offer(&mut self, key: f32, slot: u32) {
        if key < self.floor || key.is_nan() || key == f32::NEG_INFINITY || self.capacity == 0 {
            return;
        }
        let better = |a: (f32, u32), b: (f32, u32)| a.0 > b.0 || (a.0 == b.0 && a.1 < b.1);
        if self.entries.len() == self.capacity {
            let worst = self.entries[self.capacity - 1];
            if !better((key, slot), worst) {
                return;
            }
            self.entries.pop();
        }
        let at = self.entries.partition_point(|&e| better(e, (key, slot)));
        self.entries.insert(at, (key, slot));
        if self.entries.len() == self.capacity {
            self.floor = self.entries[self.capacity - 1].0;
        }
    }

    /// Folds another set of kept entries into this one.
    pub fn merge(&mut self, other: &TopK) {
        for &(key, slot) in &other.entries {
            self.offer(key, slot);
        }
    }

    /// The kept entries, best first.
    pub fn entries(&self) -> &[(f32, u32)] {
        &self.entries
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_best_in_order_with_ties_to_the_lower_slot() {
        let mut top = TopK::new(3);
        for (slot, key) in [0.1, 0.9, 0.5, 0.9, f32::NEG_INFINITY, 0.7, f32::NAN]
            .iter()
            .enumerate()
        {
            top.offer(*key, slot as u32);
        }
        assert_eq!(top.entries(), &[(0.9, 1), (0.9, 3), (0.7, 5)]);
    }

    #[test]
    fn zero_capacity_keeps_nothing() {
        let mut top = TopK::new(0);
        top.offer(1.0, 0);
        assert!(top.entries().is_empty());
    }
}
