//! One training and inference run of a network, from a share holder's side: the same loop for
//! P0 (who owns the images and labels), P1 (who knows only their number) and the plaintext
//! reference ([`Plain`]). [`simulate`] runs all four parties in one process.

use std::time::{Duration, Instant};

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha20Rng;
use serde::{Deserialize, Serialize};

use super::network::{Arith, NetworkError, NetworkSpec, Params, Plain, classes_of};
use super::party::{Dealer, Helper, HelperReport, HelperView, Party, PartyStats};
use super::ring::{FixedPoint, Matrix, PlainMatrix, RingMatrix};
use super::wire::{
    Channel, Message, Role, RtasError, RunId, Traffic, Transport, in_memory_network,
};
use crate::data::ImageDataset;

/// RTAS, or RTAS-fast (§4.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Mode {
    /// Every layer on shares; only non-linear functions go to the helper, permuted.
    Rtas,
    /// Layer 0 on shares; the helper receives its output and runs the rest in the clear.
    RtasFast,
}

/// Everything the parties agree on before a run (public).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunConfig {
    /// The network.
    pub spec: NetworkSpec,
    /// The fixed-point encoding.
    pub fixed_point: FixedPoint,
    /// SGD learning rate.
    pub lr: f64,
    /// Passes over the training set.
    pub epochs: usize,
    /// Training batch size (the paper: 32).
    pub batch_size: usize,
    /// Inference batch size (the paper: 8192).
    pub inference_batch: usize,
    /// Seed of the initial weights (P0's; the plaintext reference uses the same).
    pub init_seed: u64,
    /// Seed of P0's batch order.
    pub order_seed: u64,
    /// For logistic regression: the class that counts as positive.
    pub positive: u32,
    /// RTAS or RTAS-fast.
    pub mode: Mode,
    /// After the timed inference, classify the test set once more in batches of this size (the
    /// helper-view attacks read what the helper sees then); no effect on the predictions.
    #[serde(default)]
    pub view_batch: Option<usize>,
}

/// The sizes P1 knows: how many training and test images, never which.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sizes {
    /// Training images.
    pub train: usize,
    /// Test images.
    pub test: usize,
}

/// Progress of a run, for a bar or a log line.
#[derive(Debug, Clone, Copy)]
pub enum Progress {
    /// A training batch finished.
    Trained {
        /// Epoch, from 0.
        epoch: usize,
        /// Images trained on so far in this epoch.
        done: usize,
        /// Images in an epoch.
        total: usize,
    },
    /// An inference batch finished.
    Inferred {
        /// Images classified so far.
        done: usize,
        /// Images to classify.
        total: usize,
    },
}

/// What a share holder (or the plaintext reference) measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HolderOutcome {
    /// Predicted classes of the test set (P0 and the reference; empty for P1).
    pub predictions: Vec<u32>,
    /// Wall time of every training batch, in seconds.
    pub train_batch_seconds: Vec<f64>,
    /// Wall time of every inference batch, in seconds.
    pub inference_batch_seconds: Vec<f64>,
    /// Bytes per link after training (before inference).
    pub traffic_after_training: Traffic,
    /// Bytes per link after the timed inference (before any view pass).
    pub traffic_after_inference: Traffic,
    /// Bytes per link at the end.
    pub traffic: Traffic,
    /// Triples and helper calls.
    pub stats: PartyStats,
}

/// What a share holder needs beyond [`Arith`]: bringing P0's values in, and opening results.
pub trait Holder: Arith {
    /// Whether this holder keeps every layer even in RTAS-fast (the plaintext reference, which
    /// plays the helper's upper layers too).
    const ALL_LAYERS: bool = false;
    /// P0's private matrix (Some on P0), as this party's share.
    fn input(
        &mut self,
        values: Option<&PlainMatrix>,
        rows: usize,
        cols: usize,
    ) -> Result<Matrix<Self::E>, NetworkError>;
    /// Opens `m` to P0 (None elsewhere).
    fn output(&mut self, m: &Matrix<Self::E>) -> Result<Option<PlainMatrix>, NetworkError>;
    /// One RTAS-fast training step on layer 0 (the helper trains the rest).
    fn fast_train(
        &mut self,
        spec: &NetworkSpec,
        params: &mut Params<Self::E>,
        x: &Matrix<Self::E>,
        labels: Option<&[u32]>,
        lr: f64,
    ) -> Result<(), NetworkError>;
    /// RTAS-fast inference: P0 gets the predicted classes.
    fn fast_predict(
        &mut self,
        spec: &NetworkSpec,
        params: &Params<Self::E>,
        x: &Matrix<Self::E>,
    ) -> Result<Option<PlainMatrix>, NetworkError>;
    /// Bytes per link.
    fn traffic(&self) -> Traffic;
    /// Triples and helper calls.
    fn stats(&self) -> PartyStats;
}

impl Holder for Plain {
    const ALL_LAYERS: bool = true;
    fn input(
        &mut self,
        values: Option<&PlainMatrix>,
        _: usize,
        _: usize,
    ) -> Result<PlainMatrix, NetworkError> {
        Ok(values
            .expect("the plaintext reference holds the data")
            .clone())
    }
    fn output(&mut self, m: &PlainMatrix) -> Result<Option<PlainMatrix>, NetworkError> {
        Ok(Some(m.clone()))
    }
    fn fast_train(
        &mut self,
        spec: &NetworkSpec,
        params: &mut Params<f64>,
        x: &PlainMatrix,
        labels: Option<&[u32]>,
        lr: f64,
    ) -> Result<(), NetworkError> {
        let labels = labels.expect("the plaintext reference holds the labels");
        spec.train_step(self, params, x, &spec.targets(labels, 1), lr)?;
        Ok(())
    }
    fn fast_predict(
        &mut self,
        spec: &NetworkSpec,
        params: &Params<f64>,
        x: &PlainMatrix,
    ) -> Result<Option<PlainMatrix>, NetworkError> {
        Ok(Some(classes_of(&spec.predict(self, params, x)?)))
    }
    fn traffic(&self) -> Traffic {
        Traffic::default()
    }
    fn stats(&self) -> PartyStats {
        PartyStats::default()
    }
}

impl<T: Transport> Holder for Party<T> {
    fn input(
        &mut self,
        values: Option<&PlainMatrix>,
        rows: usize,
        cols: usize,
    ) -> Result<RingMatrix, NetworkError> {
        Ok(self.share_private(values, rows, cols)?)
    }
    fn output(&mut self, m: &RingMatrix) -> Result<Option<PlainMatrix>, NetworkError> {
        Ok(self.reveal_to_p0(m)?)
    }
    /// Layer 0 on shares; the helper answers with the public ∂L/∂Z₀, and each holder updates
    /// its share of W₀ locally (patchesᵀ · ∂L/∂Z₀ needs no triple, one factor being public).
    fn fast_train(
        &mut self,
        spec: &NetworkSpec,
        params: &mut Params<u64>,
        x: &RingMatrix,
        labels: Option<&[u32]>,
        lr: f64,
    ) -> Result<(), NetworkError> {
        let (input, z) = spec.first_layer(self, params, x)?;
        let dz = self
            .fast_forward(&z, labels, true)?
            .expect("the helper answers a training step");
        let dz = dz.reshape(input.rows, spec.layers[0].outputs);
        let rate = lr / x.rows as f64;
        let grad_w = self.matmul_public(&input.transpose(), &dz);
        let step_w = self.scale(&grad_w, rate);
        params.weights[0] = params.weights[0].sub(&step_w);
        let step_b = dz.column_sums().map(|g| g * rate);
        params.biases[0] = self.sub_public(&params.biases[0], &step_b);
        Ok(())
    }
    fn fast_predict(
        &mut self,
        spec: &NetworkSpec,
        params: &Params<u64>,
        x: &RingMatrix,
    ) -> Result<Option<PlainMatrix>, NetworkError> {
        let (_, z) = spec.first_layer(self, params, x)?;
        Ok(self.fast_forward(&z, None, false)?)
    }
    fn traffic(&self) -> Traffic {
        Party::traffic(self)
    }
    fn stats(&self) -> PartyStats {
        Party::stats(self)
    }
}

/// P0's order of the training images in `epoch`.
pub fn epoch_order(n: usize, seed: u64, epoch: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(&mut ChaCha20Rng::seed_from_u64(
        seed ^ ((epoch as u64) << 32),
    ));
    order
}

/// The images of `indices` as a batch × pixels matrix, and their labels.
pub fn batch_of(data: &ImageDataset, indices: &[usize]) -> (PlainMatrix, Vec<u32>) {
    let d = data.shape.len();
    let mut x = Vec::with_capacity(indices.len() * d);
    for &i in indices {
        x.extend(data.image(i).iter().map(|&p| p as f64));
    }
    let labels = indices.iter().map(|&i| data.labels[i]).collect();
    (Matrix::from_vec(indices.len(), d, 0, x), labels)
}

/// Trains and evaluates `config.spec` as one share holder (or in the clear with [`Plain`]).
/// `owner` is P0's data (None on P1, which knows only `sizes`).
pub fn run_holder<H: Holder>(
    holder: &mut H,
    config: &RunConfig,
    owner: Option<(&ImageDataset, &ImageDataset)>,
    sizes: Sizes,
    progress: &mut dyn FnMut(Progress),
) -> Result<HolderOutcome, NetworkError> {
    let spec = &config.spec;
    let initial = spec.init(config.init_seed)?;
    let fast = config.mode == Mode::RtasFast;
    // Every layer's weights on shares (RTAS), or layer 0's only (RTAS-fast: the helper holds
    // the rest, so the other layers here are never used).
    let shared_layers = if fast && !H::ALL_LAYERS {
        1
    } else {
        spec.layers.len()
    };
    let mut params = Params {
        weights: vec![],
        biases: vec![],
    };
    for l in 0..shared_layers {
        for (m, out) in [
            (&initial.weights[l], &mut params.weights),
            (&initial.biases[l], &mut params.biases),
        ] {
            out.push(holder.input(owner.map(|_| m), m.rows, m.cols)?);
        }
    }
    let binarise = |labels: Vec<u32>| -> Vec<u32> {
        if spec.outputs() == 1 {
            labels
                .into_iter()
                .map(|y| (y == config.positive) as u32)
                .collect()
        } else {
            labels
        }
    };
    let d = spec.input.len();
    let mut outcome = HolderOutcome {
        predictions: vec![],
        train_batch_seconds: vec![],
        inference_batch_seconds: vec![],
        traffic_after_training: Traffic::default(),
        traffic_after_inference: Traffic::default(),
        traffic: Traffic::default(),
        stats: PartyStats::default(),
    };
    for epoch in 0..config.epochs {
        let order = epoch_order(sizes.train, config.order_seed, epoch);
        let mut done = 0;
        for chunk in order.chunks(config.batch_size.max(1)) {
            let started = Instant::now();
            let batch = owner.map(|(train, _)| batch_of(train, chunk));
            let (x, labels) = match batch {
                Some((x, labels)) => (Some(x), Some(binarise(labels))),
                None => (None, None),
            };
            let xs = holder.input(x.as_ref(), chunk.len(), d)?;
            if fast {
                holder.fast_train(spec, &mut params, &xs, labels.as_deref(), config.lr)?;
            } else {
                let t = labels.map(|l| spec.targets(&l, 1));
                let ts = holder.input(t.as_ref(), chunk.len(), spec.outputs())?;
                spec.train_step(holder, &mut params, &xs, &ts, config.lr)?;
            }
            outcome
                .train_batch_seconds
                .push(started.elapsed().as_secs_f64());
            done += chunk.len();
            progress(Progress::Trained {
                epoch,
                done,
                total: sizes.train,
            });
        }
    }
    outcome.traffic_after_training = holder.traffic();
    let all: Vec<usize> = (0..sizes.test).collect();
    let classify = |holder: &mut H, chunk: &[usize]| -> Result<Option<PlainMatrix>, NetworkError> {
        let x = owner.map(|(_, test)| batch_of(test, chunk).0);
        let xs = holder.input(x.as_ref(), chunk.len(), d)?;
        if fast {
            holder.fast_predict(spec, &params, &xs)
        } else {
            let out = spec.predict(holder, &params, &xs)?;
            Ok(holder.output(&out)?.map(|o| classes_of(&o)))
        }
    };
    for chunk in all.chunks(config.inference_batch.max(1)) {
        let started = Instant::now();
        if let Some(c) = classify(holder, chunk)? {
            outcome.predictions.extend(c.data.iter().map(|&v| v as u32));
        }
        outcome
            .inference_batch_seconds
            .push(started.elapsed().as_secs_f64());
        progress(Progress::Inferred {
            done: chunk.last().map_or(0, |&i| i + 1),
            total: sizes.test,
        });
    }
    outcome.traffic_after_inference = holder.traffic();
    if let Some(b) = config.view_batch {
        for chunk in all.chunks(b.max(1)) {
            classify(holder, chunk)?;
        }
    }
    outcome.traffic = holder.traffic();
    outcome.stats = holder.stats();
    Ok(outcome)
}

/// The labels `run_holder` scores predictions against (binarised for logistic regression).
pub fn truth(config: &RunConfig, labels: &[u32]) -> Vec<u32> {
    if config.spec.outputs() == 1 {
        labels
            .iter()
            .map(|&y| (y == config.positive) as u32)
            .collect()
    } else {
        labels.to_vec()
    }
}

/// A peer's closed link or silence: how a party sees another one fail, not a cause.
pub fn is_symptom(e: &NetworkError) -> bool {
    matches!(
        e,
        NetworkError::Protocol(RtasError::Disconnected { .. } | RtasError::Timeout { .. })
    )
}

/// Everything one in-process run of the four parties measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Simulation {
    /// P0's outcome (predictions, timings, traffic).
    pub p0: HolderOutcome,
    /// P1's outcome (timings, traffic).
    pub p1: HolderOutcome,
    /// Triples the dealer dealt, and its traffic.
    pub dealer: (u64, Traffic),
    /// The helper's report.
    pub helper: HelperReport,
}

/// Keys of one run's parties: each draws its own randomness (P0: masks and the permutation
/// seed; the dealer: triples; the helper: re-sharing masks).
pub fn party_rng(key: &crate::crypto::keys::MasterKey, role: Role, run: RunId) -> ChaCha20Rng {
    key.subkey(
        crate::crypto::keys::Scheme::Rtas,
        &format!("{}/{run}", role.name()),
    )
    .rng()
}

/// The public set-up P0 sends to P1 and the helper before a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunSetup {
    /// The run's configuration.
    pub config: RunConfig,
    /// How many training and test images.
    pub sizes: Sizes,
}

fn recv_setup<T: Transport>(chan: &mut Channel<T>) -> Result<RunSetup, NetworkError> {
    match chan.recv(Role::P0)? {
        Message::Config(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
            NetworkError::Protocol(RtasError::Malformed {
                peer: Role::P0,
                reason: format!("the run's set-up does not parse: {e}"),
            })
        }),
        m => Err(NetworkError::Protocol(RtasError::Unexpected {
            peer: Role::P0,
            expected: "Config",
            got: m.name(),
        })),
    }
}

/// P0's whole run: sends the set-up, trains and classifies `test`, and ends the protocol.
pub fn run_p0<T: Transport>(
    mut chan: Channel<T>,
    config: &RunConfig,
    train: &ImageDataset,
    test: &ImageDataset,
    rng: ChaCha20Rng,
    progress: &mut dyn FnMut(Progress),
) -> Result<HolderOutcome, NetworkError> {
    let sizes = Sizes {
        train: train.len(),
        test: test.len(),
    };
    let setup = serde_json::to_vec(&RunSetup {
        config: config.clone(),
        sizes,
    })
    .expect("a run set-up serialises");
    chan.send(Role::P1, &Message::Config(setup.clone()))?;
    chan.send(Role::Helper, &Message::Config(setup))?;
    let mut p = Party::connect(chan, config.fixed_point, rng)?;
    let out = run_holder(&mut p, config, Some((train, test)), sizes, progress)?;
    p.finish()?;
    Ok(HolderOutcome {
        traffic: p.traffic(),
        ..out
    })
}

/// P1's whole run: learns the set-up from P0, then holds its shares to the end.
pub fn run_p1<T: Transport>(
    mut chan: Channel<T>,
    rng: ChaCha20Rng,
) -> Result<HolderOutcome, NetworkError> {
    let setup = recv_setup(&mut chan)?;
    let mut p = Party::connect(chan, setup.config.fixed_point, rng)?;
    run_holder(&mut p, &setup.config, None, setup.sizes, &mut |_| {})
}

/// The helper's whole run: learns the set-up from P0 (and for RTAS-fast the upper layers'
/// initial weights), then serves until P0 is done.
pub fn run_helper<T: Transport>(
    mut chan: Channel<T>,
    rng: ChaCha20Rng,
    observer: Option<&mut (dyn FnMut(HelperView<'_>) + Send)>,
) -> Result<HelperReport, NetworkError> {
    let setup = recv_setup(&mut chan)?;
    let config = setup.config;
    let mut h = Helper::new(chan, config.fixed_point, rng);
    if config.mode == Mode::RtasFast {
        let init = config.spec.init(config.init_seed)?;
        h = h.with_upper_layers(config.spec.clone(), init, config.lr);
    }
    if let Some(o) = observer {
        h = h.observe(o);
    }
    Ok(h.serve()?.0)
}

/// The dealer's whole run.
pub fn run_dealer<T: Transport>(
    chan: Channel<T>,
    rng: ChaCha20Rng,
) -> Result<(u64, Traffic), NetworkError> {
    Ok(Dealer::new(chan, rng).serve()?)
}

/// Runs all four parties of `config` in this process, over in-memory channels, each on its own
/// thread. `observer` sees what the helper reconstructs.
pub fn simulate(
    config: &RunConfig,
    train: &ImageDataset,
    test: &ImageDataset,
    key: &crate::crypto::keys::MasterKey,
    timeout: Duration,
    observer: Option<&mut (dyn FnMut(HelperView<'_>) + Send)>,
    progress: &mut (dyn FnMut(Progress) + Send),
) -> Result<Simulation, NetworkError> {
    let mut run = [0u8; 16];
    let mut rng = party_rng(key, Role::P0, RunId([0; 16]));
    rand::Rng::fill_bytes(&mut rng, &mut run);
    let run = RunId(run);
    let [t0, t1, td, th] = in_memory_network(timeout);
    let chan = |t, role| Channel::new(t, role, run);
    std::thread::scope(|s| {
        let dealer =
            s.spawn(|| run_dealer(chan(td, Role::Dealer), party_rng(key, Role::Dealer, run)));
        let helper = s.spawn(|| {
            run_helper(
                chan(th, Role::Helper),
                party_rng(key, Role::Helper, run),
                observer,
            )
        });
        let p1 = s.spawn(|| run_p1(chan(t1, Role::P1), party_rng(key, Role::P1, run)));
        let p0 = run_p0(
            chan(t0, Role::P0),
            config,
            train,
            test,
            party_rng(key, Role::P0, run),
            progress,
        );
        let p1 = p1.join().expect("P1 thread");
        let dealer = dealer.join().expect("dealer thread");
        let helper = helper.join().expect("helper thread");
        // A party that fails makes its peers see a closed link or a timeout: report the cause.
        let cause = [
            p0.as_ref().err().map(|e| (is_symptom(e), e.to_string())),
            p1.as_ref().err().map(|e| (is_symptom(e), e.to_string())),
            dealer
                .as_ref()
                .err()
                .map(|e| (is_symptom(e), e.to_string())),
            helper
                .as_ref()
                .err()
                .map(|e| (is_symptom(e), e.to_string())),
        ]
        .into_iter()
        .flatten()
        .min_by_key(|(symptom, _)| *symptom);
        match (p0, p1, dealer, helper) {
            (Ok(p0), Ok(p1), Ok(dealer), Ok(helper)) => Ok(Simulation {
                p0,
                p1,
                dealer,
                helper,
            }),
            _ => Err(NetworkError::Run(
                cause.map_or_else(|| "a party failed".into(), |c| c.1),
            )),
        }
    })
}
