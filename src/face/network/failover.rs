//! A GPU network with the CPU network behind it: the first failure of the GPU (a lost device,
//! a failed submission) moves every later batch to the CPU, and the batch that failed is run
//! there too, so no gate sees the GPU's failure.

use std::sync::atomic::{AtomicBool, Ordering};

use super::{CpuNetwork, Descriptor, EmbedError, Embedder};
use crate::face::preprocess::FaceBatch;

/// Runs on `primary` until it fails once, then on `fallback` for good.
pub struct FailoverEmbedder {
    primary: Box<dyn Embedder>,
    fallback: CpuNetwork,
    failed: AtomicBool,
}

impl FailoverEmbedder {
    /// `primary` first, `fallback` after its first failure.
    pub fn new(primary: Box<dyn Embedder>, fallback: CpuNetwork) -> Self {
        Self {
            primary,
            fallback,
            failed: AtomicBool::new(false),
        }
    }

    /// Whether the primary has failed and the CPU runs every batch now.
    pub fn has_failed_over(&self) -> bool {
        self.failed.load(Ordering::Relaxed)
    }
}

impl Embedder for FailoverEmbedder {
    fn name(&self) -> &'static str {
        if self.has_failed_over() {
            self.fallback.name()
        } else {
            self.primary.name()
        }
    }

    fn embed(&self, batch: &FaceBatch) -> Result<Vec<Descriptor>, EmbedError> {
        if !self.has_failed_over() {
            match self.primary.embed(batch) {
                Ok(descriptors) => return Ok(descriptors),
                Err(e) => {
                    if !self.failed.swap(true, Ordering::Relaxed) {
                        tracing::error!(
                            error = %e,
                            from = self.primary.name(),
                            "face network failed; moving it to the CPU for good"
                        );
                        crate::metrics::backend_failover(self.primary.name(), "cpu", "face");
                    }
                }
            }
        }
        Ok(self.fallback.describe(batch))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use super::*;

    /// Fails from its second call on.
    struct Flaky(AtomicUsize);

    impl Embedder for Flaky {
        fn name(&self) -> &'static str {
            "gpu"
        }
        fn embed(&self, batch: &FaceBatch) -> Result<Vec<Descriptor>, EmbedError> {
            if self.0.fetch_add(1, Ordering::Relaxed) == 0 {
                Ok(vec![Descriptor::new([1.0; 128]); batch.len()])
            } else {
                Err(EmbedError::Gpu {
                    source: crate::engine::gpu::GpuError::DeviceLost {
                        reason: "test".into(),
                    },
                })
            }
        }
    }

    #[test]
    fn the_failed_batch_and_every_later_one_run_on_the_cpu() {
        use crate::face::model::{FaceModel, ModelInfo, Tensor, tensor_specs};
        let zeros = tensor_specs()
            .into_iter()
            .map(|(name, shape)| {
                let data = vec![0.0; shape.iter().product()];
                (name, Tensor { shape, data })
            })
            .collect();
        let model = FaceModel::from_tensors(ModelInfo::default(), zeros).unwrap();
        let embedder = FailoverEmbedder::new(
            Box::new(Flaky(AtomicUsize::new(0))),
            CpuNetwork::new(&model, 1).unwrap(),
        );
        let mut batch = FaceBatch::default();
        assert!(batch.push_normalized(&vec![0.0; crate::face::preprocess::crop::INPUT_LEN]));
        assert_eq!(embedder.name(), "gpu");
        assert_eq!(embedder.embed(&batch).unwrap()[0].as_slice()[0], 1.0);
        // The second call fails on the primary; the CPU answers (all-zero weights give zeros).
        let from_cpu = embedder.embed(&batch).unwrap();
        assert_eq!(from_cpu.len(), 1);
        assert_eq!(from_cpu[0].as_slice()[0], 0.0);
        assert!(embedder.has_failed_over());
        assert_eq!(embedder.name(), "cpu");
    }
}
