//! The trainer: microGPT's recipe (Adam, linear decay, N(0, 0.08) init) over the op list, with
//! backprop written by hand ([`backward`]), minibatches spread over threads, deterministic for a
//! seed whatever the thread count.

pub mod backward;

use backward::Backprop;
use microgpt_model::{Shape, char_token};
use microgpt_runtime::reference::Reference;
use microgpt_weights::Weights;
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

/// Names per unit of parallel work. Fixed, so that gradients are summed in the same order for
/// any number of threads.
const CHUNK: usize = 8;

/// A corpus of names as token ids (no BOS).
#[derive(Clone, Debug)]
pub struct Dataset {
    shape: Shape,
    names: Vec<Vec<usize>>,
}

impl Dataset {
    /// One name per line; blank lines are skipped. Every character needs a token of `shape`
    /// (`a..z` for ids `0..26`); `label` names the source in errors.
    pub fn parse(text: &str, shape: &Shape, label: &str) -> Result<Dataset, String> {
        let mut names = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            let tokens = line
                .chars()
                .map(|c| {
                    char_token(shape, c).ok_or_else(|| {
                        format!(
                            "{label}:{}: character {c:?} has no token (vocab {} covers `a` to `{}`)",
                            i + 1,
                            shape.vocab,
                            microgpt_model::token_char(shape, shape.bos().saturating_sub(1).min(25))
                                .unwrap_or('a')
                        )
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            names.push(tokens);
        }
        if names.is_empty() {
            return Err(format!("{label}: no names"));
        }
        Ok(Dataset { shape: *shape, names })
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    pub fn shape(&self) -> &Shape {
        &self.shape
    }

    /// The name wrapped in BOS, `[BOS, c1, …, cn, BOS]`, cut to `block` predictions: returns
    /// (inputs, targets), both of length `min(block, n + 1)`.
    pub fn sequence(&self, index: usize) -> (Vec<usize>, Vec<usize>) {
        let bos = self.shape.bos();
        let mut tokens = Vec::with_capacity(self.names[index].len() + 2);
        tokens.push(bos);
        tokens.extend_from_slice(&self.names[index]);
        tokens.push(bos);
        let n = self.shape.block.min(tokens.len() - 1);
        (tokens[..n].to_vec(), tokens[1..=n].to_vec())
    }

    /// Predicted tokens over the whole corpus.
    pub fn predictions(&self) -> usize {
        (0..self.len())
            .map(|i| self.shape.block.min(self.names[i].len() + 1))
            .sum()
    }
}

/// A named training schedule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Recipe {
    /// Karpathy's microgpt.py: one name per step, 1,000 steps, lr 0.01 decayed linearly.
    Microgpt,
    /// This project's default: minibatches of 128 names, 20,000 steps, lr 0.01 decayed linearly.
    Default,
}

/// Every hyper-parameter of a run.
#[derive(Clone, Debug, PartialEq)]
pub struct TrainConfig {
    pub steps: usize,
    /// Names per step; the loss is averaged over every predicted token of the batch.
    pub batch: usize,
    /// Peak learning rate, decayed linearly to 0 over `steps`.
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    /// Standard deviation of the N(0, σ) initialisation.
    pub init_std: f32,
    pub seed: u64,
}

impl TrainConfig {
    pub fn recipe(recipe: Recipe) -> TrainConfig {
        let microgpt = TrainConfig {
            steps: 1000,
            batch: 1,
            lr: 0.01,
            beta1: 0.85,
            beta2: 0.99,
            eps: 1e-8,
            init_std: 0.08,
            seed: 42,
        };
        match recipe {
            Recipe::Microgpt => microgpt,
            Recipe::Default => TrainConfig {
                steps: 20_000,
                batch: 128,
                ..microgpt
            },
        }
    }
}

/// What the trainer reports after each step.
#[derive(Clone, Copy, Debug)]
pub struct StepReport {
    /// 1-based.
    pub step: usize,
    /// Mean loss per predicted token of this step's batch.
    pub loss: f64,
    pub lr: f32,
}

/// Gradients and loss of a set of names (one unit of parallel work).
struct Partial {
    grads: Vec<f32>,
    loss: f64,
}

/// Trains from a seeded initialisation; `on_step` sees every step.
pub fn train(data: &Dataset, cfg: &TrainConfig, on_step: &mut dyn FnMut(&StepReport)) -> Weights {
    let shape = *data.shape();
    let mut weights = Weights::random(shape, cfg.seed, cfg.init_std);
    let n = weights.data().len();
    let (mut m, mut v) = (vec![0.0f32; n], vec![0.0f32; n]);

    let mut order_rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    order_rng.set_stream(1);
    let mut order: Vec<usize> = (0..data.len()).collect();
    order.shuffle(&mut order_rng);
    let mut cursor = 0;

    let batch_size = cfg.batch.max(1);
    let mut batch = Vec::with_capacity(batch_size);
    for step in 0..cfg.steps {
        batch.clear();
        while batch.len() < batch_size {
            if cursor == order.len() {
                order.shuffle(&mut order_rng);
                cursor = 0;
            }
            batch.push(order[cursor]);
            cursor += 1;
        }
        let tokens: usize = batch.iter().map(|&i| data.sequence(i).0.len()).sum();
        let scale = 1.0 / tokens as f32;
        let current = &weights;
        let partials: Vec<Partial> = batch
            .par_chunks(CHUNK)
            .map_init(
                || Worker::new(current),
                |worker, chunk| worker.gradients(current, data, chunk, scale),
            )
            .collect();
        let mut grads = vec![0.0f32; n];
        let mut loss = 0.0;
        for p in &partials {
            for (g, &x) in grads.iter_mut().zip(&p.grads) {
                *g += x;
            }
            loss += p.loss;
        }

        let lr = cfg.lr * (1.0 - step as f32 / cfg.steps as f32);
        let t = (step + 1) as i32;
        let (c1, c2) = (1.0 - cfg.beta1.powi(t), 1.0 - cfg.beta2.powi(t));
        for (((w, g), m), v) in weights.data_mut().iter_mut().zip(&grads).zip(&mut m).zip(&mut v) {
            *m = cfg.beta1 * *m + (1.0 - cfg.beta1) * g;
            *v = cfg.beta2 * *v + (1.0 - cfg.beta2) * g * g;
            *w -= lr * (*m / c1) / ((*v / c2).sqrt() + cfg.eps);
        }
        on_step(&StepReport {
            step: step + 1,
            loss: loss / tokens as f64,
            lr,
        });
    }
    weights
}

/// A thread's engine and scratch.
struct Worker {
    engine: Reference<f32>,
    backprop: Backprop<f32>,
}

impl Worker {
    fn new(weights: &Weights) -> Worker {
        let engine = Reference::new(weights);
        let backprop = Backprop::new(&engine);
        Worker { engine, backprop }
    }

    fn gradients(&mut self, weights: &Weights, data: &Dataset, names: &[usize], scale: f32) -> Partial {
        self.engine.set_weights(weights.data());
        let mut grads = vec![0.0f32; weights.data().len()];
        let mut loss = 0.0;
        for &i in names {
            let (inputs, targets) = data.sequence(i);
            loss += self
                .backprop
                .sequence(&mut self.engine, &inputs, &targets, scale, &mut grads);
        }
        Partial { grads, loss }
    }
}

/// The NLL (docs/spec.md#nll): mean nats per predicted token over every name, each scored as BOS + chars +
/// BOS, cut to `block` predictions (computed in f64, summed in a fixed order).
pub fn nll(weights: &Weights, data: &Dataset) -> f64 {
    let indices: Vec<usize> = (0..data.len()).collect();
    let sums: Vec<f64> = indices
        .par_chunks(256)
        .map_init(
            || Reference::<f64>::new(weights),
            |engine, chunk| {
                let mut sum = 0.0;
                let mut probs = vec![0.0f64; weights.shape().vocab];
                for &i in chunk {
                    let (inputs, targets) = data.sequence(i);
                    for (pos, (&tok, &target)) in inputs.iter().zip(&targets).enumerate() {
                        probs.copy_from_slice(engine.forward(tok, pos));
                        microgpt_runtime::reference::math::softmax(&mut probs);
                        sum -= probs[target].ln();
                    }
                }
                sum
            },
        )
        .collect();
    sums.iter().sum::<f64>() / data.predictions() as f64
}
