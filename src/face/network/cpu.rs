//! The production CPU path: folded, pre-packed weights, Winograd and im2col convolutions
//! ([`super::conv`]), a private thread pool of a chosen size.

use crate::face::model::{
    ARCHITECTURE, BlockKind, DESCRIPTOR_DIM, FaceModel, INPUT_SIZE, conv_specs,
};
use crate::face::preprocess::FaceBatch;
use crate::face::preprocess::crop::INPUT_LEN;

use super::conv::{Epilogue, FoldedConv};
use super::tensor::FeatureMap;
use super::{Descriptor, EmbedError};

/// Faces run through the network together at most; larger batches are cut into passes of this
/// size, which bounds the activation memory (about 0.7 MB per face at the widest layer).
pub const MAX_FACES_PER_PASS: usize = 32;

/// The descriptor network, ready to run on the CPU with its own worker threads.
pub struct CpuNetwork {
    stem: FoldedConv,
    blocks: Vec<(BlockKind, FoldedConv, FoldedConv)>,
    /// `[256, 128]`, row-major.
    fc: Vec<f32>,
    pool: rayon::ThreadPool,
    threads: usize,
}

impl std::fmt::Debug for CpuNetwork {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CpuNetwork")
            .field("threads", &self.threads)
            .finish_non_exhaustive()
    }
}

impl CpuNetwork {
    /// Prepares `model` for inference on `threads` worker threads (at least 1).
    pub fn new(model: &FaceModel, threads: usize) -> Result<Self, EmbedError> {
        if threads == 0 {
            return Err(EmbedError::ZeroThreads);
        }
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("face-cpu-{i}"))
            .build()
            .map_err(|source| EmbedError::ThreadPool { threads, source })?;
        let mut specs = conv_specs().into_iter();
        let mut next = || FoldedConv::new(model, specs.next().unwrap_or_else(|| unreachable!()));
        let stem = next();
        let blocks = ARCHITECTURE
            .iter()
            .map(|b| (b.kind, next(), next()))
            .collect();
        Ok(Self {
            stem,
            blocks,
            fc: model.expect_tensor("fc").data.clone(),
            pool,
            threads,
        })
    }

    /// Worker threads in use.
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Descriptors of every face in `batch`, in order.
    pub fn describe(&self, batch: &FaceBatch) -> Vec<Descriptor> {
        batch
            .as_slice()
            .chunks(MAX_FACES_PER_PASS * INPUT_LEN)
            .flat_map(|pass| self.pool.install(|| self.forward(pass)))
            .collect()
    }

    fn forward(&self, inputs: &[f32]) -> Vec<Descriptor> {
        let n = inputs.len() / INPUT_LEN;
        let input = FeatureMap {
            n,
            h: INPUT_SIZE,
            w: INPUT_SIZE,
            c: 3,
            data: inputs.to_vec(),
        };
        let plain = |relu| Epilogue {
            shortcut: None,
            relu,
        };

        let mut x = self
            .stem
            .forward(&input, plain(true), self.threads)
            .max_pool(3, 2);
        for (kind, conv1, conv2) in &self.blocks {
            let y = conv1.forward(&x, plain(true), self.threads);
            x = match kind {
                BlockKind::Residual => {
                    let shortcut = Epilogue {
                        shortcut: Some(&x),
                        relu: true,
                    };
                    conv2.forward(&y, shortcut, self.threads)
                }
                BlockKind::Down => conv2
                    .forward(&y, plain(false), self.threads)
                    .add_pooled_shortcut_relu(&x),
            };
        }

        x.spatial_mean()
            .chunks_exact(x.c)
            .map(|features| self.head(features))
            .collect()
    }

    /// The fully connected layer: `features[256] · fc[256, 128]`.
    fn head(&self, features: &[f32]) -> Descriptor {
        let mut out = [0.0f32; DESCRIPTOR_DIM];
        for (i, &f) in features.iter().enumerate() {
            let row = &self.fc[i * DESCRIPTOR_DIM..(i + 1) * DESCRIPTOR_DIM];
            for (o, &w) in out.iter_mut().zip(row) {
                *o += f * w;
            }
        }
        Descriptor::new(out)
    }
}
