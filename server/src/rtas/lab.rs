//! The RTAS teaching lab: the server starts the four parties of RTAS (P0, P1, the dealer and the
//! helper) as threads that talk over TCP on loopback, trains the paper's network on the UCI
//! digits through the protocol, classifies the digits the visitor picked, and streams what
//! crosses every link: the bytes as they flow, and for the inference the first message of each
//! kind, i.e. exactly what each party sees (its shares, the masked values x − u of every Beaver
//! product, and the helper's permuted vector).
//!
//! Here the server plays **every** party, P0 (the data owner) included, on public demo digits: it
//! shows what each party would see, not a deployment. In real use P0 runs on the owner's side
//! (`veil party --role p0`) and never gives its images to anyone.
//!
//! Why this file is over 600 lines: one lab: the four parties' threads, the wiretap and the event
//! stream, which only make sense together; the protocol itself is in `veil::schemes::rtas`.

use std::collections::{BTreeMap, HashSet};
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, Sse};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::Stream;
use serde::{Deserialize, Serialize};
use veil::crypto::keys::MasterKey;
use veil::data::{ImageDataset, ImageShape, digits};
use veil::schemes::rtas::run::{
    Progress, Sizes, party_rng, run_dealer, run_helper, run_holder, run_p0, run_p1,
};
use veil::schemes::rtas::wire::decode_frame;
use veil::schemes::rtas::{
    Channel, FixedPoint, HelperView, Message, Mode, NetworkError, NetworkSpec, Plain, RingMatrix,
    Role, RtasError, RunConfig, RunId, Transport,
};

use super::tcp::TcpTransport;
use crate::events::{EventLog, Run, RunEvent, Runs};
use crate::factory::owners::Caller;
use crate::{AppError, AppState};

/// Most demo runs at once (each keeps both cores of a small server busy for a few seconds).
pub const MAX_CONCURRENT: usize = 1;
/// Most passes over the training set one run may ask for.
pub const MAX_EPOCHS: usize = 5;
/// Most digits one run may classify.
pub const MAX_IMAGES: usize = 8;
/// Finished runs kept for late readers.
const KEEP: usize = 16;
/// How long a party waits for a peer before it reports the peer as silent.
const PARTY_TIMEOUT: Duration = Duration::from_secs(30);
/// Values of a captured matrix that reach the page.
const PREVIEW: usize = 256;
/// Values of the helper's vector that reach the page.
const HELPER_PREVIEW: usize = 4096;
/// How often the byte counters are reported.
const TRAFFIC_EVERY: Duration = Duration::from_millis(150);
/// Test digits of each class the page offers.
const PER_CLASS: usize = 2;
/// Seed of the demo's split, initial weights and batch order (public).
const SEED: u64 = 7;

/// What the committed digits experiment (`docs/results/rtas.json`, `veil experiment rtas`)
/// measured about the helper: the page quotes it beside the demo.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MeasuredHelper {
    /// Values the helper sees per image (the first layer's pre-activations).
    pub values_per_image: usize,
    /// The paper's reconstructive privacy for one image's vector: log10(n!).
    pub claimed_log10_factorial: f64,
    /// Class accuracy of a nearest-neighbour attack on the sorted view of one image (RTAS).
    pub rtas_class_accuracy: f64,
    /// The best constant guess (the largest class share).
    pub chance: f64,
    /// PSNR of the attack's nearest known image against the true one (dB).
    pub rtas_nearest_psnr: f64,
    /// PSNR of the mean image against the true one (dB): what knowing nothing gives.
    pub mean_image_psnr: f64,
    /// Class accuracy from RTAS-fast's unpermuted first-layer outputs.
    pub fast_class_accuracy: f64,
    /// PSNR of inverting RTAS-fast's first layer from known pairs (dB).
    pub fast_inversion_psnr: f64,
}

#[derive(Deserialize)]
struct CommittedResults {
    helper: MeasuredHelper,
}

/// The committed digits results the lab quotes.
const RESULTS_JSON: &str = include_str!("../../../docs/results/rtas.json");

/// The helper figures of `docs/results/rtas.json`.
pub fn measured_helper() -> Result<MeasuredHelper, serde_json::Error> {
    serde_json::from_str::<CommittedResults>(RESULTS_JSON).map(|r| r.helper)
}

/// A test digit the visitor may classify.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    /// Its number in [`RtasLabInfo::samples`].
    pub id: usize,
    /// Its true class.
    pub label: u32,
    /// Its pixels, `[8, 8]` in [0, 1].
    pub image: Vec<f32>,
}

/// `GET /api/rtas`: what the lab offers.
#[derive(Debug, Clone, Serialize)]
pub struct RtasLabInfo {
    /// Image shape.
    pub shape: ImageShape,
    /// The digits on offer (from the test split; never trained on).
    pub samples: Vec<Sample>,
    /// Images P0 trains on.
    pub train_images: usize,
    /// The networks: `cnn` (the paper's) and `logistic` ("is it a 0").
    pub models: Vec<&'static str>,
    /// `rtas` or `fast` (RTAS-fast, §4.3).
    pub modes: Vec<&'static str>,
    /// Most epochs.
    pub max_epochs: usize,
    /// Most digits per run.
    pub max_images: usize,
    /// Fractional bits of the fixed-point encoding.
    pub fixed_point_bits: u32,
    /// Runs at once.
    pub max_concurrent: usize,
    /// What the committed experiment measured about the helper.
    pub measured: MeasuredHelper,
}

fn default_model() -> String {
    "cnn".into()
}
fn default_mode() -> String {
    "rtas".into()
}
fn default_epochs() -> usize {
    2
}

/// `POST /api/rtas/runs`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RtasRequest {
    /// `cnn` or `logistic`.
    #[serde(default = "default_model")]
    pub model: String,
    /// `rtas` or `fast`.
    #[serde(default = "default_mode")]
    pub mode: String,
    /// Passes over the training set, 1 to [`MAX_EPOCHS`].
    #[serde(default = "default_epochs")]
    pub epochs: usize,
    /// The digits to classify ([`Sample::id`]s), 1 to [`MAX_IMAGES`].
    pub samples: Vec<usize>,
}

/// One matrix of a captured message.
#[derive(Debug, Clone, Serialize)]
pub struct Part {
    /// Its name in the message (`share`, `u`, `e`, `values`, …).
    pub name: &'static str,
    /// Rows.
    pub rows: usize,
    /// Columns.
    pub cols: usize,
    /// Fractional bits of the value it stands for.
    pub frac: u32,
    /// Its first elements as fractions of the ring, `v / 2⁶⁴` in [0, 1): how uniform it looks.
    pub uniform: Vec<f32>,
    /// Its first elements decoded as signed fixed-point numbers.
    pub decoded: Vec<f64>,
}

impl Part {
    fn of(name: &'static str, m: &RingMatrix) -> Self {
        let head = &m.data[..m.data.len().min(PREVIEW)];
        Self {
            name,
            rows: m.rows,
            cols: m.cols,
            frac: m.frac,
            uniform: head.iter().map(|&v| uniform(v)).collect(),
            decoded: head
                .iter()
                .map(|&v| FixedPoint::decode_at(v, m.frac))
                .collect(),
        }
    }
}

fn uniform(v: u64) -> f32 {
    (v as f64 / 2f64.powi(64)) as f32
}

/// The first message of one kind on one link during the inference: what its receiver sees.
#[derive(Debug, Clone, Serialize)]
pub struct Capture {
    /// Sender.
    pub from: &'static str,
    /// Receiver.
    pub to: &'static str,
    /// The message (`Share`, `Triple`, `Opened`, `Permuted`, `Activated`, …).
    pub message: &'static str,
    /// Its frame's size.
    pub bytes: usize,
    /// Its matrices.
    pub parts: Vec<Part>,
}

impl Capture {
    fn of(from: Role, to: Role, message: &Message, bytes: usize) -> Self {
        let parts = match message {
            Message::Share(m) => vec![Part::of("share", m)],
            Message::Triple { u, v, w } => {
                vec![Part::of("u", u), Part::of("v", v), Part::of("w", w)]
            }
            Message::Opened { e, f } => vec![Part::of("e", e), Part::of("f", f)],
            Message::Permuted { values, .. } => vec![Part::of("values", values)],
            Message::Activated { value, derivative } => {
                let mut p = vec![Part::of("value", value)];
                p.extend(derivative.as_ref().map(|d| Part::of("derivative", d)));
                p
            }
            Message::FastForward { z, .. } => vec![Part::of("z", z)],
            Message::Public(m) => vec![Part::of("public", m)],
            _ => vec![],
        };
        Self {
            from: from.name(),
            to: to.name(),
            message: message.name(),
            bytes,
            parts,
        }
    }
}

/// Bytes sent so far on every link, `bytes[from][to]` by [`Role::index`].
#[derive(Debug, Clone, Serialize)]
pub struct TrafficReport {
    /// `training`, `inference` or `finished`.
    pub phase: &'static str,
    /// Images trained on so far, over all epochs.
    pub trained: usize,
    /// Images to train on, over all epochs.
    pub to_train: usize,
    /// Bytes per link.
    pub bytes: [[u64; 4]; 4],
    /// Seconds since the parties connected.
    pub seconds: f64,
}

/// What the helper reconstructed first during the inference.
#[derive(Debug, Clone, Serialize)]
pub struct HelperSaw {
    /// The function asked for (`None`: RTAS-fast's first-layer output, which it sees in order).
    pub function: Option<String>,
    /// Whether the vector reached it permuted (RTAS) or in order (RTAS-fast).
    pub permuted: bool,
    /// Rows × columns of what it received.
    pub rows: usize,
    /// Columns.
    pub cols: usize,
    /// The values, in the order it saw them (the first [`HELPER_PREVIEW`]).
    pub values: Vec<f64>,
    /// log10(n!) for the n values: the paper's reconstructive privacy of this vector.
    pub log10_factorial: f64,
}

/// A finished run.
#[derive(Debug, Clone, Serialize)]
pub struct RtasOutcome {
    /// The classes P0 opened, one per chosen digit (for logistic regression: 1 = "a 0").
    pub predictions: Vec<u32>,
    /// The same network trained and run in the clear, on the same data and seeds.
    pub plaintext_predictions: Vec<u32>,
    /// The true answers (binarised for logistic regression).
    pub truth: Vec<u32>,
    /// Bytes per link at the end, `bytes[from][to]`.
    pub bytes: [[u64; 4]; 4],
    /// Bytes per link the inference alone sent.
    pub inference_bytes: [[u64; 4]; 4],
    /// Triples the dealer dealt.
    pub triples: u64,
    /// Vectors the helper evaluated.
    pub helper_calls: u64,
    /// Values the helper saw that were too large to be real (a truncation failure): 0 expected.
    pub implausible: u64,
    /// Wall time of the protocol run.
    pub seconds: f64,
}

/// An event of a run's stream (`event:` is the variant's name).
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum RtasEvent {
    /// The parties are listening.
    Started {
        /// The protocol run's id.
        run: String,
        /// Each party's loopback address, by role name.
        addresses: BTreeMap<&'static str, String>,
    },
    /// Byte counters.
    Traffic(TrafficReport),
    /// A message of the inference, as its receiver got it.
    Captured(Capture),
    /// The opened masked values `x − u` and `y − v` of the inference's first Beaver product,
    /// which both holders learn.
    Opened {
        /// `x − u`, as fractions of the ring.
        e: Vec<f32>,
        /// `y − v`, as fractions of the ring.
        f: Vec<f32>,
    },
    /// What the helper reconstructed first during the inference.
    Helper(HelperSaw),
    /// Finished.
    Done(RtasOutcome),
    /// Failed (a party's error, or the server stopping).
    Failed {
        /// Why.
        error: String,
    },
}

impl RunEvent for RtasEvent {
    fn name(&self) -> &'static str {
        match self {
            RtasEvent::Started { .. } => "started",
            RtasEvent::Traffic(_) => "traffic",
            RtasEvent::Captured(_) => "captured",
            RtasEvent::Opened { .. } => "opened",
            RtasEvent::Helper(_) => "helper",
            RtasEvent::Done(_) => "done",
            RtasEvent::Failed { .. } => "failed",
        }
    }
    fn is_terminal(&self) -> bool {
        matches!(self, RtasEvent::Done(_) | RtasEvent::Failed { .. })
    }
}

/// `GET /api/rtas/runs/{id}`.
#[derive(Debug, Clone, Serialize)]
pub struct RtasRunView {
    /// `rtas-` and 16 hex digits.
    pub id: String,
    /// `running`, `done` or `failed`.
    pub state: &'static str,
    /// What was asked.
    pub request: RtasRequest,
    /// The outcome, once done.
    pub result: Option<RtasOutcome>,
    /// Why it failed.
    pub error: Option<String>,
    /// Its event stream.
    pub events_url: String,
}

/// One holder's shares `(e, f)` of an opening (their first elements).
type OpenedShares = (Vec<u64>, Vec<u64>);

/// What every party's tap shares: the byte counters, the phase, and what was captured.
struct Wiretap {
    bytes: [[AtomicU64; 4]; 4],
    inference: AtomicBool,
    cancel: AtomicBool,
    captured: Mutex<HashSet<(Role, Role, &'static str)>>,
    /// The first opened shares `(e, f)` of the inference, by sender, to add up once both came.
    opened: Mutex<[Option<OpenedShares>; 2]>,
    helper_seen: AtomicBool,
    log: Arc<EventLog<RtasEvent>>,
}

impl Wiretap {
    fn bytes(&self) -> [[u64; 4]; 4] {
        std::array::from_fn(|i| std::array::from_fn(|j| self.bytes[i][j].load(Ordering::SeqCst)))
    }

    /// Records a frame `from` sends `to`. A message sent after P0 finished training belongs to
    /// the inference: every such message is caused by P0's first inference share, which P0 sends
    /// after raising the flag.
    fn sent(&self, from: Role, to: Role, frame: &[u8]) {
        self.bytes[from.index()][to.index()].fetch_add(frame.len() as u64, Ordering::SeqCst);
        if !self.inference.load(Ordering::SeqCst) {
            return;
        }
        let Ok((_, _, _, message)) = decode_frame(frame) else {
            return;
        };
        let fresh = self
            .captured
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert((from, to, message.name()));
        if !fresh {
            return;
        }
        self.log.push(RtasEvent::Captured(Capture::of(
            from,
            to,
            &message,
            frame.len(),
        )));
        if let (Message::Opened { e, f }, Some(side @ 0..=1)) = (
            &message,
            [Role::P0, Role::P1]
                .iter()
                .position(|&r| r == from && to != Role::Helper),
        ) {
            let head = |m: &RingMatrix| m.data[..m.data.len().min(PREVIEW)].to_vec();
            let mut opened = self.opened.lock().unwrap_or_else(|p| p.into_inner());
            opened[side] = Some((head(e), head(f)));
            if let [Some((e0, f0)), Some((e1, f1))] = &*opened {
                let sum = |a: &[u64], b: &[u64]| {
                    a.iter()
                        .zip(b)
                        .map(|(&x, &y)| uniform(x.wrapping_add(y)))
                        .collect()
                };
                self.log.push(RtasEvent::Opened {
                    e: sum(e0, e1),
                    f: sum(f0, f1),
                });
            }
        }
    }

    fn helper_saw(&self, view: HelperView<'_>) {
        if !self.inference.load(Ordering::SeqCst) || self.helper_seen.swap(true, Ordering::SeqCst) {
            return;
        }
        let n = view.values.len();
        self.log.push(RtasEvent::Helper(HelperSaw {
            function: view.function.map(|f| format!("{f:?}").to_lowercase()),
            permuted: view.function.is_some(),
            rows: view.shape.0,
            cols: view.shape.1,
            values: view.values[..n.min(HELPER_PREVIEW)].to_vec(),
            log10_factorial: (1..=n).map(|i| (i as f64).log10()).sum(),
        }));
    }
}

/// A party's transport with the wiretap on its sends.
struct Tapped<T> {
    inner: T,
    me: Role,
    tap: Arc<Wiretap>,
}

impl<T: Transport> Transport for Tapped<T> {
    fn send(&mut self, to: Role, frame: Vec<u8>) -> Result<(), RtasError> {
        if self.tap.cancel.load(Ordering::SeqCst) {
            return Err(RtasError::Protocol("the demo was cancelled".into()));
        }
        self.tap.sent(self.me, to, &frame);
        self.inner.send(to, frame)
    }
    fn recv(&mut self, from: Role) -> Result<Vec<u8>, RtasError> {
        self.inner.recv(from)
    }
}

type DemoRun = Run<RtasRequest, RtasEvent>;

impl DemoRun {
    fn view(&self) -> RtasRunView {
        let (state, result, error) = self.log.with(|events| match events.last() {
            Some(RtasEvent::Done(r)) => ("done", Some(r.clone()), None),
            Some(RtasEvent::Failed { error }) => ("failed", None, Some(error.clone())),
            _ => ("running", None, None),
        });
        RtasRunView {
            events_url: format!("/api/rtas/runs/{}/events", self.id),
            id: self.id.clone(),
            state,
            request: self.request.clone(),
            result,
            error,
        }
    }
}

/// A validated request.
struct Plan {
    config: RunConfig,
    train: Arc<ImageDataset>,
    test: ImageDataset,
}

/// The lab: the demo data, running and recent runs.
pub struct RtasLab {
    info: RtasLabInfo,
    train: Arc<ImageDataset>,
    offered: ImageDataset,
    runs: Runs<DemoRun>,
}

impl std::fmt::Debug for RtasLab {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RtasLab")
            .field("train", &self.train.len())
            .field("running", &self.runs.running())
            .finish()
    }
}

impl RtasLab {
    /// The lab on the UCI digits: P0 trains on the experiment's training split, and the visitor
    /// picks digits from its test split.
    pub fn new() -> anyhow::Result<Self> {
        let data = digits();
        let (train, test) = data.split(0.25, SEED);
        let mut picked = Vec::new();
        for class in 0..test.num_classes() as u32 {
            picked.extend(test.class_indices(class).into_iter().take(PER_CLASS));
        }
        let offered = test.subset(&picked);
        let samples = (0..offered.len())
            .map(|i| Sample {
                id: i,
                label: offered.labels[i],
                image: offered.image(i).to_vec(),
            })
            .collect();
        Ok(Self {
            info: RtasLabInfo {
                shape: data.shape,
                samples,
                train_images: train.len(),
                models: vec!["cnn", "logistic"],
                modes: vec!["rtas", "fast"],
                max_epochs: MAX_EPOCHS,
                max_images: MAX_IMAGES,
                fixed_point_bits: FixedPoint::default().frac_bits,
                max_concurrent: MAX_CONCURRENT,
                measured: measured_helper()?,
            },
            train: Arc::new(train),
            offered,
            runs: Runs::new(MAX_CONCURRENT, KEEP, "RTAS demos"),
        })
    }

    /// What the lab offers.
    pub fn info(&self) -> &RtasLabInfo {
        &self.info
    }

    /// Stops every run and ends every event stream.
    pub fn begin_shutdown(&self) {
        self.runs.begin_shutdown();
    }

    fn plan(&self, r: &RtasRequest) -> Result<Plan, AppError> {
        let shape = self.info.shape;
        let (spec, lr) = match r.model.as_str() {
            "cnn" => (NetworkSpec::paper_cnn(shape, self.train.num_classes()), 1.0),
            "logistic" => (NetworkSpec::logistic(shape), 1.0),
            m => {
                return Err(AppError::BadRequest(format!(
                    "unknown model {m:?}; use \"cnn\" or \"logistic\""
                )));
            }
        };
        let mode = match r.mode.as_str() {
            "rtas" => Mode::Rtas,
            "fast" => Mode::RtasFast,
            m => {
                return Err(AppError::BadRequest(format!(
                    "unknown mode {m:?}; use \"rtas\" or \"fast\""
                )));
            }
        };
        if !(1..=MAX_EPOCHS).contains(&r.epochs) {
            return Err(AppError::BadRequest(format!(
                "epochs must be 1 to {MAX_EPOCHS}, not {}",
                r.epochs
            )));
        }
        if r.samples.is_empty() || r.samples.len() > MAX_IMAGES {
            return Err(AppError::BadRequest(format!(
                "pick 1 to {MAX_IMAGES} digits, not {}",
                r.samples.len()
            )));
        }
        if let Some(bad) = r.samples.iter().find(|&&s| s >= self.offered.len()) {
            return Err(AppError::BadRequest(format!(
                "there is no sample {bad}; the lab offers 0 to {}",
                self.offered.len() - 1
            )));
        }
        Ok(Plan {
            config: RunConfig {
                spec,
                fixed_point: FixedPoint::default(),
                lr,
                epochs: r.epochs,
                batch_size: 32,
                inference_batch: MAX_IMAGES,
                init_seed: SEED,
                order_seed: SEED ^ 0x5eed,
                positive: 0,
                mode,
                view_batch: None,
            },
            train: self.train.clone(),
            test: self.offered.subset(&r.samples),
        })
    }

    /// Validates and starts a demo run. `admit` (the caller's attack quota) is asked once the request is known to be valid, so
    /// a refused request costs nothing.
    pub fn start(
        &self,
        request: RtasRequest,
        admit: impl FnOnce() -> Result<(), AppError>,
    ) -> Result<RtasRunView, AppError> {
        let plan = self.plan(&request)?;
        admit()?;
        let slot = self.runs.reserve()?;
        let run = Arc::new(DemoRun::new("rtas", request)?);
        self.runs.insert(run.clone());
        let view = run.view();
        let (log, cancel, failed) = (run.log.clone(), run.cancel.clone(), run.log.clone());
        self.runs.spawn(
            format!("rtas-{}", &run.id[5..13]),
            slot,
            move || {
                let event = match plan.execute(log.clone(), cancel) {
                    Ok(outcome) => RtasEvent::Done(outcome),
                    Err(error) => RtasEvent::Failed { error },
                };
                log.push(event);
            },
            move || {
                failed.push(RtasEvent::Failed {
                    error: "internal error".into(),
                })
            },
        )?;
        Ok(view)
    }
}

/// `n` listeners on loopback, and their addresses.
fn loopback(n: usize) -> std::io::Result<Vec<(TcpListener, SocketAddr)>> {
    (0..n)
        .map(|_| {
            let l = TcpListener::bind("127.0.0.1:0")?;
            let a = l.local_addr()?;
            Ok((l, a))
        })
        .collect()
}

impl Plan {
    /// Runs the four parties on loopback, then the same network in the clear.
    fn execute(
        self,
        log: Arc<EventLog<RtasEvent>>,
        cancel: Arc<AtomicBool>,
    ) -> Result<RtasOutcome, String> {
        let mut id = [0u8; 16];
        veil::crypto::keys::secure_random(&mut id).map_err(|e| e.to_string())?;
        let run = RunId(id);
        // The demo's parties draw fresh randomness every run; the key never leaves this thread.
        let key = MasterKey::generate().map_err(|e| e.to_string())?;
        let listeners = loopback(4).map_err(|e| format!("opening loopback ports: {e}"))?;
        let peers: BTreeMap<Role, SocketAddr> = Role::ALL
            .into_iter()
            .zip(listeners.iter().map(|(_, a)| *a))
            .collect();
        log.push(RtasEvent::Started {
            run: run.to_string(),
            addresses: peers
                .iter()
                .map(|(r, a)| (r.name(), a.to_string()))
                .collect(),
        });
        let tap = Arc::new(Wiretap {
            bytes: Default::default(),
            inference: AtomicBool::new(false),
            cancel: AtomicBool::new(false),
            captured: Mutex::default(),
            opened: Mutex::default(),
            helper_seen: AtomicBool::new(false),
            log: log.clone(),
        });
        let to_train = self.config.epochs * self.train.len();
        let trained = AtomicUsize::new(0);
        let finished = AtomicBool::new(false);
        let started = Instant::now();
        let mut inference_from = [[0u64; 4]; 4];
        let report = |phase| {
            RtasEvent::Traffic(TrafficReport {
                phase,
                trained: trained.load(Ordering::SeqCst),
                to_train,
                bytes: tap.bytes(),
                seconds: started.elapsed().as_secs_f64(),
            })
        };
        let connect = |role: Role, listener: &TcpListener| -> Result<_, NetworkError> {
            let t = TcpTransport::connect(role, listener, &peers, run, PARTY_TIMEOUT)
                .map_err(|e| NetworkError::Run(format!("{role} could not connect: {e:#}")))?;
            Ok(Channel::new(
                Tapped {
                    inner: t,
                    me: role,
                    tap: tap.clone(),
                },
                role,
                run,
            ))
        };
        let outcome = std::thread::scope(|s| {
            let [(l0, _), (l1, _), (ld, _), (lh, _)] = &listeners[..] else {
                unreachable!("four listeners")
            };
            let dealer = s.spawn(|| {
                run_dealer(
                    connect(Role::Dealer, ld)?,
                    party_rng(&key, Role::Dealer, run),
                )
            });
            let helper = s.spawn(|| {
                let mut observe = |v: HelperView<'_>| tap.helper_saw(v);
                run_helper(
                    connect(Role::Helper, lh)?,
                    party_rng(&key, Role::Helper, run),
                    Some(&mut observe),
                )
            });
            let p1 = s.spawn(|| run_p1(connect(Role::P1, l1)?, party_rng(&key, Role::P1, run)));
            let watcher = s.spawn(|| {
                while !finished.load(Ordering::SeqCst) {
                    if cancel.load(Ordering::SeqCst) {
                        tap.cancel.store(true, Ordering::SeqCst);
                    }
                    let phase = if tap.inference.load(Ordering::SeqCst) {
                        "inference"
                    } else {
                        "training"
                    };
                    log.push(report(phase));
                    std::thread::sleep(TRAFFIC_EVERY);
                }
            });
            let p0 = (|| {
                let chan = connect(Role::P0, l0)?;
                let mut progress = |p: Progress| {
                    if let Progress::Trained { epoch, done, total } = p {
                        trained.store(epoch * total + done, Ordering::SeqCst);
                        if epoch + 1 == self.config.epochs && done == total {
                            inference_from = tap.bytes();
                            tap.inference.store(true, Ordering::SeqCst);
                        }
                    }
                };
                run_p0(
                    chan,
                    &self.config,
                    &self.train,
                    &self.test,
                    party_rng(&key, Role::P0, run),
                    &mut progress,
                )
            })();
            if p0.is_err() {
                // P0 stopping closes its links, which ends the others within their timeout.
                tap.cancel.store(true, Ordering::SeqCst);
            }
            let dealer = dealer.join().map_err(|_| "the dealer panicked")?;
            let helper = helper.join().map_err(|_| "the helper panicked")?;
            let p1 = p1.join().map_err(|_| "P1 panicked")?;
            finished.store(true, Ordering::SeqCst);
            let _ = watcher.join();
            match (p0, p1, dealer, helper) {
                (Ok(p0), Ok(p1), Ok(dealer), Ok(helper)) => Ok((p0, p1, dealer, helper)),
                (p0, p1, dealer, helper) => Err(root_cause([
                    (Role::P0, p0.err()),
                    (Role::P1, p1.err()),
                    (Role::Dealer, dealer.err()),
                    (Role::Helper, helper.err()),
                ])),
            }
        });
        finished.store(true, Ordering::SeqCst);
        let (p0, _p1, (triples, _), helper) = outcome?;
        let seconds = started.elapsed().as_secs_f64();
        log.push(report("finished"));
        let bytes = tap.bytes();
        let inference_bytes =
            std::array::from_fn(|i| std::array::from_fn(|j| bytes[i][j] - inference_from[i][j]));
        let sizes = Sizes {
            train: self.train.len(),
            test: self.test.len(),
        };
        let plain = run_holder(
            &mut Plain,
            &self.config,
            Some((&self.train, &self.test)),
            sizes,
            &mut |_| {},
        )
        .map_err(|e| e.to_string())?;
        Ok(RtasOutcome {
            predictions: p0.predictions,
            plaintext_predictions: plain.predictions,
            truth: veil::schemes::rtas::run::truth(&self.config, &self.test.labels),
            bytes,
            inference_bytes,
            triples,
            helper_calls: helper.calls,
            implausible: helper.implausible,
            seconds,
        })
    }
}

/// The error that explains a failed run: the first party's that is not just a peer's silence
/// or closed link (how the others see the failing party).
fn root_cause(errors: [(Role, Option<NetworkError>); 4]) -> String {
    let failed = || {
        errors
            .iter()
            .filter_map(|(r, e)| e.as_ref().map(|e| (r, e)))
    };
    failed()
        .find(|(_, e)| !veil::schemes::rtas::run::is_symptom(e))
        .or_else(|| failed().next())
        .map_or_else(|| "the run failed".into(), |(r, e)| format!("{r}: {e}"))
}

fn lab(state: &AppState) -> &Arc<RtasLab> {
    &state.rtas
}

/// The lab's routes.
pub(crate) fn router() -> Router<AppState> {
    Router::new()
        .route("/api/rtas", get(info))
        .route(
            "/api/rtas/runs",
            post(start).layer(DefaultBodyLimit::max(4 * 1024)),
        )
        .route("/api/rtas/runs/{id}", get(view))
        .route("/api/rtas/runs/{id}/events", get(events))
}

async fn info(State(state): State<AppState>) -> Json<RtasLabInfo> {
    Json(lab(&state).info().clone())
}

async fn start(
    caller: Caller,
    State(state): State<AppState>,
    body: Result<Json<RtasRequest>, JsonRejection>,
) -> Result<(StatusCode, Json<RtasRunView>), AppError> {
    let Json(request) = body?;
    let view = lab(&state).start(request, || state.factory.rates().attack(&caller))?;
    Ok((StatusCode::CREATED, Json(view)))
}

async fn view(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<RtasRunView>, AppError> {
    Ok(Json(lab(&state).runs.find(&id)?.view()))
}

/// `text/event-stream`: `started`, then `traffic` every 150 ms with `captured`, `opened` and
/// `helper` during the inference, then `done` or `failed`; then the stream ends.
async fn events(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Sse<impl Stream<Item = Result<Event, std::convert::Infallible>>>, AppError> {
    let lab = lab(&state).clone();
    let run = lab.runs.find(&id)?;
    Ok(run.log.clone().stream(lab.runs.stopped()))
}
