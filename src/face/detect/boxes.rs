//! The SSD's output stage as the reference computes it: anchor-relative box encodings decoded
//! into corner boxes (`outputLayer.ts`), sigmoid scores, and face-api's own greedy non-max
//! suppression (`nonMaxSuppression.ts`, not TF's).
//!
//! Boxes are `[ymin, xmin, ymax, xmax]` in the padded square input's unit coordinates. TF.js
//! runs the decoding as a chain of f32 tensor operations; each step here rounds to f32 the
//! same way (one correctly rounded f32 operation, or an f64 `exp` rounded once, as JavaScript's
//! `Math.exp` into a Float32Array).

/// A box as `[ymin, xmin, ymax, xmax]`, unit coordinates of the network input.
pub type UnitBox = [f32; 4];

/// Decodes one box encoding `[ty, tx, th, tw]` against its anchor (given as corners, as the
/// weights' `Output/extra_dim` holds them): centre offsets scaled by 1/10, log sizes by 1/5.
pub fn decode_box(anchor: UnitBox, encoding: [f32; 4]) -> UnitBox {
    let [a0, a1, a2, a3] = anchor;
    let [p0, p1, p2, p3] = encoding;
    let (size0, size1) = (a2 - a0, a3 - a1);
    let (centre0, centre1) = (a0 + size0 / 2.0, a1 + size1 / 2.0);
    let exp = |v: f32| f64::from(v).exp() as f32;
    let half0 = exp(p2 / 5.0) * size0 / 2.0;
    let mid0 = p0 / 10.0 * size0 + centre0;
    let half1 = exp(p3 / 5.0) * size1 / 2.0;
    let mid1 = p1 / 10.0 * size1 + centre1;
    [mid0 - half0, mid1 - half1, mid0 + half0, mid1 + half1]
}

/// TF.js's CPU sigmoid: `1 / (1 + exp(-x))` in f64, stored as f32.
pub fn sigmoid(x: f32) -> f32 {
    (1.0 / (1.0 + (-f64::from(x)).exp())) as f32
}

/// Intersection over union of two boxes, 0 when either has no area (corners may come in any
/// order; they are sorted first, as the reference does).
pub fn iou(a: UnitBox, b: UnitBox) -> f64 {
    let sorted = |r: UnitBox| {
        let [y0, x0, y1, x1] = r.map(f64::from);
        (y0.min(y1), x0.min(x1), y0.max(y1), x0.max(x1))
    };
    let (ay0, ax0, ay1, ax1) = sorted(a);
    let (by0, bx0, by1, bx1) = sorted(b);
    let area_a = (ay1 - ay0) * (ax1 - ax0);
    let area_b = (by1 - by0) * (bx1 - bx0);
    if area_a <= 0.0 || area_b <= 0.0 {
        return 0.0;
    }
    let h = (ay1.min(by1) - ay0.max(by0)).max(0.0);
    let w = (ax1.min(bx1) - ax0.max(bx0)).max(0.0);
    let inter = h * w;
    inter / (area_a + area_b - inter)
}

/// face-api's greedy non-max suppression: candidates above `score_threshold` in descending
/// score order (ties in index order), each kept unless it overlaps an already kept box by
/// more than `iou_threshold`; at most `max_output` indices, in the order kept.
pub fn non_max_suppression(
    boxes: &[UnitBox],
    scores: &[f32],
    max_output: usize,
    iou_threshold: f64,
    score_threshold: f64,
) -> Vec<usize> {
    let max_output = max_output.min(boxes.len());
    let mut candidates: Vec<usize> = (0..scores.len().min(boxes.len()))
        .filter(|&i| f64::from(scores[i]) > score_threshold)
        .collect();
    // A stable sort, as JavaScript's Array.prototype.sort is; NaN scores were filtered out.
    candidates.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));

    let mut selected: Vec<usize> = Vec::new();
    for candidate in candidates {
        if selected.len() >= max_output {
            break;
        }
        // The reference multiplies the score by 0 on an overlap above the threshold and keeps
        // the box only if the score is unchanged; it checks the most recently kept first.
        // A NaN overlap suppresses, as `x <= threshold ? 1 : 0` does there.
        let suppressed = selected.iter().rev().any(|&kept| {
            let overlap = iou(boxes[candidate], boxes[kept]);
            overlap.is_nan() || overlap > iou_threshold
        });
        if !suppressed {
            selected.push(candidate);
        }
    }
    selected
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_encoding_gives_the_anchor_back() {
        let anchor = [0.25, 0.125, 0.75, 0.625];
        assert_eq!(decode_box(anchor, [0.0; 4]), anchor);
    }

    #[test]
    fn encodings_shift_by_a_tenth_and_scale_by_exp_of_a_fifth() {
        let anchor = [0.0, 0.0, 0.5, 0.25];
        // ty = 10: the centre moves down by one anchor height; tw = 5 ln 2: twice as wide.
        let b = decode_box(anchor, [10.0, 0.0, 0.0, 5.0 * std::f32::consts::LN_2]);
        let expected = [0.5, -0.125, 1.0, 0.375];
        for (got, want) in b.iter().zip(expected) {
            assert!((got - want).abs() < 1e-6, "{b:?}");
        }
    }

    #[test]
    fn sigmoid_is_one_half_at_zero() {
        assert_eq!(sigmoid(0.0), 0.5);
        assert!(sigmoid(20.0) > 0.999_999);
        assert!(sigmoid(-20.0) < 1e-6);
    }

    #[test]
    fn iou_of_known_boxes() {
        let a = [0.0, 0.0, 1.0, 1.0];
        assert_eq!(iou(a, a), 1.0);
        assert_eq!(iou(a, [0.0, 0.5, 1.0, 1.5]), 1.0 / 3.0);
        assert_eq!(iou(a, [2.0, 2.0, 3.0, 3.0]), 0.0);
        // Corners given in reverse order are the same box.
        assert_eq!(iou(a, [1.0, 1.0, 0.0, 0.0]), 1.0);
        // No area, no overlap.
        assert_eq!(iou(a, [0.5, 0.5, 0.5, 0.9]), 0.0);
    }

    #[test]
    fn nms_keeps_the_best_of_each_cluster_in_score_order() {
        let boxes = [
            [0.0, 0.0, 1.0, 1.0],
            [0.0, 0.1, 1.0, 1.1], // IoU 0.82 with box 0
            [2.0, 2.0, 3.0, 3.0],
            [0.0, 0.5, 1.0, 1.5], // IoU 1/3 with box 0: kept
            [5.0, 5.0, 6.0, 6.0], // below the score threshold
        ];
        let scores = [0.9, 0.95, 0.7, 0.8, 0.4];
        assert_eq!(
            non_max_suppression(&boxes, &scores, 100, 0.5, 0.5),
            [1, 3, 2]
        );
        assert_eq!(non_max_suppression(&boxes, &scores, 2, 0.5, 0.5), [1, 3]);
        assert!(non_max_suppression(&boxes, &scores, 100, 0.5, 0.99).is_empty());
    }

    #[test]
    fn nms_threshold_is_inclusive_and_ties_keep_index_order() {
        // IoU exactly 0.5 is not suppressed (the reference suppresses above it only).
        let boxes = [
            [0.0, 0.0, 1.0, 3.0],
            [0.0, 1.0, 1.0, 4.0],
            [0.0, 0.0, 1.0, 3.0],
        ];
        assert_eq!(iou(boxes[0], boxes[1]), 0.5);
        let scores = [0.6, 0.6, 0.6];
        assert_eq!(non_max_suppression(&boxes, &scores, 10, 0.5, 0.5), [0, 1]);
        // Score exactly at the threshold is not a candidate; NaN never is.
        assert!(non_max_suppression(&boxes[..2], &[0.5, f32::NAN], 10, 0.5, 0.5).is_empty());
    }
}
