//! Training in the engine, on burn with autodiff: a model defined once, trained on burn's
//! pure-Rust CPU backend natively and in wasm32, with its parameters read out as one flat
//! vector and written back — what decentralized averaging ([`crate::all_reduce`]) exchanges.
//!
//! - [`digits`]: the handwritten digits scikit-learn ships (`data/`).
//! - [`Classifier`]: a two-layer perceptron over 8×8 images.
//! - [`Trainer`]: minibatch Adam on a shard of the data, deterministic for a seed.

pub mod digits;

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::nn::loss::CrossEntropyLossConfig;
use burn::nn::{Linear, LinearConfig, Relu};
use burn::optim::{AdamConfig, GradientsParams, ModuleOptimizer};
use burn::tensor::{Device, Int, Tensor, TensorData};

use digits::{CLASSES, Digits, PIXELS};

/// A two-layer perceptron: pixels → hidden (ReLU) → class logits.
#[derive(Module, Debug)]
pub struct Classifier {
    hidden: Linear,
    act: Relu,
    out: Linear,
}

impl Classifier {
    /// A classifier with `hidden` units, initialised on `device` (seed the device first for a
    /// reproducible start).
    pub fn new(device: &Device, hidden: usize) -> Self {
        Self {
            hidden: LinearConfig::new(PIXELS, hidden).init(device),
            act: Relu::new(),
            out: LinearConfig::new(hidden, CLASSES).init(device),
        }
    }

    /// Class logits for a batch of images `[batch, PIXELS]`.
    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        self.out.forward(self.act.forward(self.hidden.forward(x)))
    }
}

/// Reads every float parameter, in the module's order, into one vector.
struct Flatten(Vec<f32>);

impl ModuleVisitor for Flatten {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let data = param.val().into_data();
        match data.try_to_vec::<f32>() {
            Ok(v) => self.0.extend(v),
            Err(e) => tracing::error!(error = ?e, "a parameter is not f32"),
        }
    }
}

/// Writes a flat vector back into the parameters, in the same order.
struct Unflatten<'a> {
    values: &'a [f32],
    at: usize,
}

impl ModuleMapper for Unflatten<'_> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let values = self.values;
        let at = &mut self.at;
        param.map(|t| {
            let shape = t.shape();
            let n = shape.num_elements();
            let slice = values.get(*at..*at + n).unwrap_or_default();
            *at += n;
            if slice.len() != n {
                return t;
            }
            let grad = t.is_require_grad();
            let fresh = Tensor::<D>::from_data(TensorData::new(slice.to_vec(), shape), &t.device());
            if grad { fresh.require_grad() } else { fresh }
        })
    }
}

/// Redraws each float parameter uniformly in ±1/√fan-in (the range of burn's default
/// initialiser for a linear layer; a bias takes its weight's) from a xorshift generator.
struct Redraw {
    state: u64,
    fan_in: usize,
}

impl ModuleMapper for Redraw {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        param.map(|t| {
            let shape = t.shape();
            if D == 2 {
                self.fan_in = shape.dims::<D>()[0];
            }
            let bound = 1.0 / (self.fan_in.max(1) as f32).sqrt();
            let state = &mut self.state;
            let values: Vec<f32> = (0..shape.num_elements())
                .map(|_| {
                    *state ^= *state << 13;
                    *state ^= *state >> 7;
                    *state ^= *state << 17;
                    ((*state >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * bound
                })
                .collect();
            let grad = t.is_require_grad();
            let fresh = Tensor::<D>::from_data(TensorData::new(values, shape), &t.device());
            if grad { fresh.require_grad() } else { fresh }
        })
    }
}

/// Why parameters cannot be loaded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{got} values for a model of {expected} parameters")]
pub struct ShapeError {
    /// Values given.
    pub got: usize,
    /// Parameters of the model.
    pub expected: usize,
}

/// Minibatch training of a [`Classifier`] with Adam on one shard of the data.
pub struct Trainer {
    model: Classifier,
    optim: ModuleOptimizer,
    device: Device,
    /// Learning rate.
    pub lr: f64,
    /// Images per step.
    pub batch: usize,
    data: Digits,
    order: Vec<usize>,
    at: usize,
    rng: u64,
    /// Images trained on since [`Trainer::take_samples`] last ran.
    samples: u64,
}

impl std::fmt::Debug for Trainer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trainer")
            .field("images", &self.data.len())
            .field("lr", &self.lr)
            .field("batch", &self.batch)
            .finish_non_exhaustive()
    }
}

impl Trainer {
    /// A trainer on `data`, its model initialised from `seed` (equal seeds, equal models, on
    /// any machine) on burn's CPU backend with autodiff; `shuffle` orders its minibatches.
    pub fn new(data: Digits, hidden: usize, seed: u64, shuffle: u64) -> Self {
        let device = Device::flex().autodiff();
        // burn's initialisers draw from its own generator; redraw every parameter from ours,
        // in the range burn's initialiser uses.
        let model = Classifier::new(&device, hidden).map(&mut Redraw {
            state: seed | 1,
            fan_in: PIXELS,
        });
        let order = (0..data.len()).collect();
        let mut t = Self {
            model,
            optim: AdamConfig::new().init(),
            device,
            lr: 1e-2,
            batch: 32,
            data,
            order,
            at: 0,
            rng: shuffle | 1,
            samples: 0,
        };
        t.shuffle();
        t
    }

    fn shuffle(&mut self) {
        for i in (1..self.order.len()).rev() {
            self.rng ^= self.rng << 13;
            self.rng ^= self.rng >> 7;
            self.rng ^= self.rng << 17;
            self.order.swap(i, (self.rng % (i as u64 + 1)) as usize);
        }
        self.at = 0;
    }

    /// One minibatch step; its loss (NaN when the trainer has no data).
    pub fn step(&mut self) -> f32 {
        if self.data.is_empty() {
            return f32::NAN;
        }
        if self.at + self.batch > self.order.len() {
            self.shuffle();
        }
        let end = (self.at + self.batch).min(self.order.len());
        let idx: Vec<usize> = self.order[self.at..end].to_vec();
        self.at = end;
        let (x, y) = Trainer::batch_of(&self.data, &idx, &self.device);
        let loss = CrossEntropyLossConfig::new()
            .init(&self.device)
            .forward(self.model.forward(x), y);
        let value = loss.clone().into_scalar::<f32>();
        let grads = GradientsParams::from_grads(loss.backward(), &self.model);
        let model = self.model.clone();
        self.model = self.optim.step(self.lr, model, grads);
        self.samples += idx.len() as u64;
        value
    }

    /// Images trained on since the last call (the weight of this member's next average).
    pub fn take_samples(&mut self) -> u64 {
        std::mem::take(&mut self.samples)
    }

    /// The model's parameters, as one vector.
    pub fn params(&self) -> Vec<f32> {
        let mut f = Flatten(Vec::with_capacity(self.model.num_params()));
        self.model.visit(&mut f);
        f.0
    }

    /// Replaces the model's parameters (the optimizer keeps its moments).
    pub fn set_params(&mut self, values: &[f32]) -> Result<(), ShapeError> {
        let expected = self.model.num_params();
        if values.len() != expected {
            return Err(ShapeError {
                got: values.len(),
                expected,
            });
        }
        let model = self.model.clone();
        self.model = model.map(&mut Unflatten { values, at: 0 });
        Ok(())
    }

    /// Mean loss and accuracy on `data`.
    pub fn evaluate(&self, data: &Digits) -> (f32, f32) {
        if data.is_empty() {
            return (f32::NAN, f32::NAN);
        }
        let model = self.model.valid();
        let device = Device::flex();
        let idx: Vec<usize> = (0..data.len()).collect();
        let eval = Trainer::batch_of(data, &idx, &device);
        let logits = model.forward(eval.0);
        let loss = CrossEntropyLossConfig::new()
            .init(&device)
            .forward(logits.clone(), eval.1.clone())
            .into_scalar::<f32>();
        let right = logits
            .argmax(1)
            .squeeze_dim::<1>(1)
            .equal(eval.1)
            .int()
            .sum()
            .into_scalar::<i64>();
        (loss, right as f32 / data.len() as f32)
    }

    fn batch_of(data: &Digits, idx: &[usize], device: &Device) -> (Tensor<2>, Tensor<1, Int>) {
        let mut px = Vec::with_capacity(idx.len() * PIXELS);
        let mut ys = Vec::with_capacity(idx.len());
        for &i in idx {
            px.extend_from_slice(&data.pixels[i * PIXELS..(i + 1) * PIXELS]);
            ys.push(data.labels[i] as i64);
        }
        let x = Tensor::<2>::from_data(TensorData::new(px, [idx.len(), PIXELS]), device);
        let y = Tensor::<1, Int>::from_data(TensorData::new(ys, [idx.len()]), device);
        (x, y)
    }
}
