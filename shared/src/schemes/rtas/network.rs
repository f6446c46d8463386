//! The networks RTAS trains (§5): logistic regression and the paper's CNN, written once over
//! [`Arith`], so the very same code runs in the clear ([`Plain`], the reference) and through the
//! protocol ([`super::Party`]).
//!
//! Loss and optimiser follow §5.3: sigmoid outputs, mean squared error, plain SGD. Convolutions
//! run as matrix products of image patches (§4.1).

use serde::{Deserialize, Serialize};

use super::ring::{Element, Matrix, PlainMatrix, conv_output};
use super::wire::{Activation, RtasError};
use crate::data::ImageShape;

/// The arithmetic a network needs. Products come back at the sum of their operands' scales
/// ("untruncated"), so a product that feeds a non-linear function needs no truncation.
pub trait Arith {
    /// Ring elements (a share) or reals.
    type E: Element;
    /// a·b, untruncated.
    fn matmul(
        &mut self,
        a: &Matrix<Self::E>,
        b: &Matrix<Self::E>,
    ) -> Result<Matrix<Self::E>, RtasError>;
    /// a∘b, untruncated.
    fn hadamard(
        &mut self,
        a: &Matrix<Self::E>,
        b: &Matrix<Self::E>,
    ) -> Result<Matrix<Self::E>, RtasError>;
    /// Back to the working scale f.
    fn truncate(&mut self, m: &Matrix<Self::E>) -> Matrix<Self::E>;
    /// f(z) and, when asked, f'(z), at scale f.
    #[allow(clippy::type_complexity)]
    fn activate(
        &mut self,
        z: &Matrix<Self::E>,
        function: Activation,
        derivative: bool,
    ) -> Result<(Matrix<Self::E>, Option<Matrix<Self::E>>), RtasError>;
    /// a + b.
    fn add(&self, a: &Matrix<Self::E>, b: &Matrix<Self::E>) -> Matrix<Self::E>;
    /// a − b.
    fn sub(&self, a: &Matrix<Self::E>, b: &Matrix<Self::E>) -> Matrix<Self::E>;
    /// m with `row` added to every row.
    fn add_row(&self, m: &Matrix<Self::E>, row: &Matrix<Self::E>) -> Matrix<Self::E>;
    /// c·m for a public real c, at scale f.
    fn scale(&mut self, m: &Matrix<Self::E>, c: f64) -> Matrix<Self::E>;
}

/// (the matrix a layer multiplied by its weight, its pre-activation).
pub type Affine<E> = (Matrix<E>, Matrix<E>);

/// The computation in the clear, in f64: the reference the protocol is measured against.
#[derive(Debug, Clone, Copy, Default)]
pub struct Plain;

impl Arith for Plain {
    type E = f64;
    fn matmul(&mut self, a: &PlainMatrix, b: &PlainMatrix) -> Result<PlainMatrix, RtasError> {
        Ok(Matrix {
            frac: 0,
            ..a.matmul_raw(b)
        })
    }
    fn hadamard(&mut self, a: &PlainMatrix, b: &PlainMatrix) -> Result<PlainMatrix, RtasError> {
        Ok(a.zip_with(b, |x, y| x * y))
    }
    fn truncate(&mut self, m: &PlainMatrix) -> PlainMatrix {
        m.clone()
    }
    fn activate(
        &mut self,
        z: &PlainMatrix,
        function: Activation,
        derivative: bool,
    ) -> Result<(PlainMatrix, Option<PlainMatrix>), RtasError> {
        let value = z.map(|x| function.eval(x).0);
        Ok((value, derivative.then(|| z.map(|x| function.eval(x).1))))
    }
    fn add(&self, a: &PlainMatrix, b: &PlainMatrix) -> PlainMatrix {
        a.zip_with(b, |x, y| x + y)
    }
    fn sub(&self, a: &PlainMatrix, b: &PlainMatrix) -> PlainMatrix {
        a.zip_with(b, |x, y| x - y)
    }
    fn add_row(&self, m: &PlainMatrix, row: &PlainMatrix) -> PlainMatrix {
        m.add_row(row)
    }
    fn scale(&mut self, m: &PlainMatrix, c: f64) -> PlainMatrix {
        m.map(|x| x * c)
    }
}

/// One layer: an affine map (dense, or a valid convolution as a product of patches), then an
/// element-wise function.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LayerSpec {
    /// Dense, or a convolution of the layer's input image.
    pub kind: LayerKind,
    /// Output units (dense) or filters (convolution).
    pub outputs: usize,
    /// The element-wise function after it.
    pub activation: Activation,
}

/// The affine part of a layer.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum LayerKind {
    /// x·W + b.
    Dense,
    /// A valid convolution with square kernels; only as the first layer (it reads the image).
    Conv {
        /// Kernel side.
        kernel: usize,
        /// Stride.
        stride: usize,
    },
}

/// A network RTAS runs: public to every party (only its weights are shared).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NetworkSpec {
    /// The image shape of the input.
    pub input: ImageShape,
    /// The layers, first to last.
    pub layers: Vec<LayerSpec>,
}

/// Weights and biases of every layer: shares, or reals.
#[derive(Debug, Clone, PartialEq)]
pub struct Params<E> {
    /// Layer l's weight, (inputs × outputs); a convolution's is (channels·k·k × filters).
    pub weights: Vec<Matrix<E>>,
    /// Layer l's bias, 1 × outputs.
    pub biases: Vec<Matrix<E>>,
}

/// What a forward pass keeps for the backward pass.
struct Trace<E> {
    /// The matrix each layer multiplied by its weight (patches for a convolution).
    inputs: Vec<Matrix<E>>,
    /// f'(z) of each layer, in the shape of its pre-activation.
    slopes: Vec<Option<Matrix<E>>>,
    /// The last layer's output, batch × outputs.
    output: Matrix<E>,
}

/// An error in a network's description or use.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    /// A layer that cannot follow the previous one.
    #[error("layer {layer}: {reason}")]
    Layer {
        /// Index.
        layer: usize,
        /// Why.
        reason: String,
    },
    /// The protocol failed under the network.
    #[error(transparent)]
    Protocol(#[from] RtasError),
    /// A run of several parties failed: the first real cause (not a peer's closed link).
    #[error("{0}")]
    Run(String),
}

impl NetworkSpec {
    /// Logistic regression "is it a `positive`" (§5.3): one dense unit and a sigmoid.
    pub fn logistic(input: ImageShape) -> Self {
        Self {
            input,
            layers: vec![LayerSpec {
                kind: LayerKind::Dense,
                outputs: 1,
                activation: Activation::Sigmoid,
            }],
        }
    }

    /// The paper's CNN (§5.4): a 4×4 convolution of stride 2 with 5 filters and ReLU, dense 100
    /// with sigmoid, dense `classes` with sigmoid. Images under 16 pixels a side (the 8×8
    /// digits) get a 3×3 kernel of stride 1 instead, which leaves 6×6 positions.
    pub fn paper_cnn(input: ImageShape, classes: usize) -> Self {
        let (kernel, stride) = if input.height.min(input.width) >= 16 {
            (4, 2)
        } else {
            (3, 1)
        };
        Self {
            input,
            layers: vec![
                LayerSpec {
                    kind: LayerKind::Conv { kernel, stride },
                    outputs: 5,
                    activation: Activation::Relu,
                },
                LayerSpec {
                    kind: LayerKind::Dense,
                    outputs: 100,
                    activation: Activation::Sigmoid,
                },
                LayerSpec {
                    kind: LayerKind::Dense,
                    outputs: classes,
                    activation: Activation::Sigmoid,
                },
            ],
        }
    }

    /// Output units of the last layer.
    pub fn outputs(&self) -> usize {
        self.layers.last().map_or(0, |l| l.outputs)
    }

    /// For each layer: (rows of its weight, positions per image). A dense layer has 1 position.
    pub fn geometry(&self) -> Result<Vec<(usize, usize)>, NetworkError> {
        let mut width = self.input.len();
        let mut out = Vec::new();
        for (i, l) in self.layers.iter().enumerate() {
            match l.kind {
                LayerKind::Dense => {
                    out.push((width, 1));
                    width = l.outputs;
                }
                LayerKind::Conv { kernel, stride } => {
                    let s = self.input;
                    if i != 0 {
                        return Err(NetworkError::Layer {
                            layer: i,
                            reason: "a convolution can only read the image (layer 0)".into(),
                        });
                    }
                    if kernel == 0 || stride == 0 || kernel > s.height.min(s.width) {
                        return Err(NetworkError::Layer {
                            layer: i,
                            reason: format!(
                                "a {kernel}×{kernel} kernel of stride {stride} on {s} images"
                            ),
                        });
                    }
                    let (oh, ow) = conv_output(s, kernel, stride);
                    out.push((s.channels * kernel * kernel, oh * ow));
                    width = oh * ow * l.outputs;
                }
            }
        }
        Ok(out)
    }

    /// Width of layer `l`'s activation, per image.
    pub fn width(&self, l: usize) -> Result<usize, NetworkError> {
        Ok(self.geometry()?[l].1 * self.layers[l].outputs)
    }

    /// Initial weights, uniform in ±√(6/(fan_in + fan_out)) (Glorot), zero biases, from `seed`.
    pub fn init(&self, seed: u64) -> Result<Params<f64>, NetworkError> {
        use rand::{RngExt, SeedableRng};
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(seed);
        let mut params = Params {
            weights: vec![],
            biases: vec![],
        };
        for ((rows, _), l) in self.geometry()?.into_iter().zip(&self.layers) {
            let bound = (6.0 / (rows + l.outputs) as f64).sqrt();
            let w = (0..rows * l.outputs)
                .map(|_| rng.random_range(-bound..bound))
                .collect();
            params.weights.push(Matrix::from_vec(rows, l.outputs, 0, w));
            params.biases.push(Matrix::zeros(1, l.outputs, 0));
        }
        Ok(params)
    }

    /// The regression targets of `labels`: one-hot rows, or for one output 1[label = positive]
    /// (the helper of RTAS-fast receives labels already binarised, and uses positive = 1).
    pub fn targets(&self, labels: &[u32], positive: u32) -> PlainMatrix {
        let k = self.outputs();
        let mut t = Matrix::zeros(labels.len(), k, 0);
        for (row, &y) in t.data.chunks_mut(k).zip(labels) {
            if k == 1 {
                row[0] = (y == positive) as u8 as f64;
            } else if (y as usize) < k {
                row[y as usize] = 1.0;
            }
        }
        t
    }

    /// Layer `l`'s pre-activation from its input `a` (batch × width).
    fn affine<A: Arith>(
        &self,
        eng: &mut A,
        params: &Params<A::E>,
        l: usize,
        a: &Matrix<A::E>,
    ) -> Result<Affine<A::E>, NetworkError> {
        let input = match self.layers[l].kind {
            LayerKind::Dense => a.clone(),
            LayerKind::Conv { kernel, stride } => a.im2col(self.input, kernel, stride),
        };
        let z = eng.matmul(&input, &params.weights[l])?;
        let z = eng.add_row(&z, &params.biases[l]);
        Ok((input, z))
    }

    /// The pre-activation of layer 0 (what RTAS-fast reveals to the helper), batch × width₀,
    /// untruncated, with the matrix it multiplied by the weight.
    pub fn first_layer<A: Arith>(
        &self,
        eng: &mut A,
        params: &Params<A::E>,
        x: &Matrix<A::E>,
    ) -> Result<Affine<A::E>, NetworkError> {
        let (input, z) = self.affine(eng, params, 0, x)?;
        let width = self.width(0)?;
        Ok((input, z.reshape(x.rows, width)))
    }

    /// Forward through layers `from..`, starting from the *input* `a` of layer `from`.
    fn forward<A: Arith>(
        &self,
        eng: &mut A,
        params: &Params<A::E>,
        a: &Matrix<A::E>,
        from: usize,
        train: bool,
    ) -> Result<Trace<A::E>, NetworkError> {
        let batch = a.rows;
        let mut trace = Trace {
            inputs: vec![],
            slopes: vec![],
            output: a.clone(),
        };
        for l in from..self.layers.len() {
            let (input, z) = self.affine(eng, params, l, &trace.output)?;
            let (act, slope) = eng.activate(&z, self.layers[l].activation, train)?;
            trace.inputs.push(input);
            trace.slopes.push(slope);
            trace.output = act.reshape(batch, self.width(l)?);
        }
        Ok(trace)
    }

    /// The network's outputs (batch × outputs) on `x` (batch × pixels).
    pub fn predict<A: Arith>(
        &self,
        eng: &mut A,
        params: &Params<A::E>,
        x: &Matrix<A::E>,
    ) -> Result<Matrix<A::E>, NetworkError> {
        Ok(self.forward(eng, params, x, 0, false)?.output)
    }

    /// Backward through layers `from..` of `trace` for the squared error against `targets`,
    /// updating the weights with SGD of rate `lr`; returns ∂L/∂(input of layer `from`) times
    /// the batch size, when `input_gradient`.
    #[allow(clippy::too_many_arguments)]
    fn backward<A: Arith>(
        &self,
        eng: &mut A,
        params: &mut Params<A::E>,
        trace: Trace<A::E>,
        targets: &Matrix<A::E>,
        lr: f64,
        from: usize,
        input_gradient: bool,
    ) -> Result<Option<Matrix<A::E>>, NetworkError> {
        let batch = targets.rows;
        let rate = lr / batch as f64;
        let last = self.layers.len() - 1;
        let missing = || NetworkError::Layer {
            layer: last,
            reason: "the forward pass kept no derivative".into(),
        };
        let error = eng.sub(&trace.output, targets);
        let slope = trace.slopes[last - from].as_ref().ok_or_else(missing)?;
        let slope = slope.clone().reshape(error.rows, error.cols);
        let mut delta = eng.hadamard(&error, &slope)?;
        delta = eng.truncate(&delta);
        for l in (from..=last).rev() {
            let i = l - from;
            let input = &trace.inputs[i];
            // A convolution's delta has one row per (image, position).
            let delta_rows = delta.clone().reshape(input.rows, self.layers[l].outputs);
            let grad_w = eng.matmul(&input.transpose(), &delta_rows)?;
            let grad_w = eng.truncate(&grad_w);
            let grad_b = delta_rows.column_sums();
            let next = if l > from || input_gradient {
                let da = eng.matmul(&delta_rows, &params.weights[l].transpose())?;
                let da = eng.truncate(&da);
                if l > from {
                    let slope = trace.slopes[i - 1].as_ref().ok_or_else(missing)?;
                    let da = da.reshape(slope.rows, slope.cols);
                    let d = eng.hadamard(&da, slope)?;
                    Some(eng.truncate(&d))
                } else {
                    Some(da)
                }
            } else {
                None
            };
            let step_w = eng.scale(&grad_w, rate);
            let step_b = eng.scale(&grad_b, rate);
            params.weights[l] = eng.sub(&params.weights[l], &step_w);
            params.biases[l] = eng.sub(&params.biases[l], &step_b);
            match next {
                Some(d) if l > from => delta = d,
                other => return Ok(other),
            }
        }
        Ok(None)
    }

    /// One SGD step on a batch (`x`: batch × pixels, `targets`: batch × outputs); returns the
    /// outputs before the step.
    pub fn train_step<A: Arith>(
        &self,
        eng: &mut A,
        params: &mut Params<A::E>,
        x: &Matrix<A::E>,
        targets: &Matrix<A::E>,
        lr: f64,
    ) -> Result<Matrix<A::E>, NetworkError> {
        let trace = self.forward(eng, params, x, 0, true)?;
        let output = trace.output.clone();
        self.backward(eng, params, trace, targets, lr, 0, false)?;
        Ok(output)
    }
}

/// RTAS-fast's upper layers at the helper (§4.2.2), in the clear. `z` is layer 0's
/// pre-activation (batch × width₀). Training (`labels` given): one SGD step on layers 1.. and
/// the public ∂L/∂z·batch for the share holders. Inference: the predicted class of each image,
/// as a batch × 1 matrix.
pub fn train_upper(
    spec: &NetworkSpec,
    params: &mut Params<f64>,
    z: &PlainMatrix,
    labels: Option<&[u32]>,
    lr: f64,
) -> Result<PlainMatrix, NetworkError> {
    let eng = &mut Plain;
    let (a0, slope0) = eng.activate(z, spec.layers[0].activation, labels.is_some())?;
    if spec.layers.len() == 1 {
        // Logistic regression: the helper holds no layer, only the loss.
        let Some(labels) = labels else {
            return Ok(classes_of(&a0));
        };
        let error = eng.sub(&a0, &spec.targets(labels, 1));
        return eng
            .hadamard(&error, &slope0.expect("derivative asked"))
            .map_err(Into::into);
    }
    let trace = spec.forward(eng, params, &a0, 1, labels.is_some())?;
    let Some(labels) = labels else {
        return Ok(classes_of(&trace.output));
    };
    let targets = spec.targets(labels, 1);
    let da0 = spec
        .backward(eng, params, trace, &targets, lr, 1, true)?
        .expect("input gradient asked");
    Ok(da0.zip_with(&slope0.expect("derivative asked"), |a, b| a * b))
}

/// The class of each row: the largest output, or for one output whether it exceeds ½.
pub fn classes_of(outputs: &PlainMatrix) -> PlainMatrix {
    let k = outputs.cols;
    let data = outputs
        .data
        .chunks(k)
        .map(|row| {
            if k == 1 {
                (row[0] > 0.5) as u8 as f64
            } else {
                row.iter()
                    .enumerate()
                    .fold((0, f64::MIN), |b, (i, &v)| if v > b.1 { (i, v) } else { b })
                    .0 as f64
            }
        })
        .collect();
    Matrix::from_vec(outputs.rows, 1, 0, data)
}
