//! The gradient-leakage lab of the teaching portal: the server plays a federated-learning
//! aggregator that receives one client's gradient and attacks it (DLG, iDLG, Inverting
//! Gradients, or the analytic first-layer attack), streaming the reconstruction as it converges.
//!
//! The "client" here is simulated by the server, on demo samples of the UCI digits: either the
//! plaintext digit, or its flow-rotation ciphertext made with the shipped digits flows and a
//! **demo key that the server holds for this demo only** (a real data owner's key never reaches
//! the server). The flow-rotation paper's §5.3 and §6.3 make the point this lab measures: a
//! gradient of encrypted data leaks the ciphertext, not the plaintext.
//!
//! Attacks run on their own threads, at most [`MAX_CONCURRENT`] at a time (503 past it); each
//! keeps its whole event history, so a late subscriber sees the full curve.
//!
//! Why this file is over 600 lines: one lab: its routes, its runs and the attack thread, which only
//! make sense together; the attacks themselves are in `veil::attacks::leakage`.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, Sse};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::Stream;
use serde::{Deserialize, Serialize};
use veil::attacks::leakage::metrics::{psnr, ssim};
use veil::attacks::leakage::{
    AttackConfig, AttackedArch, AttackedNet, AttackedNetConfig, GradientAttack, Method,
    analytic_first_layer, victim_gradient,
};
use veil::burn::tensor::Device;
use veil::crypto::keys::MasterKey;
use veil::data::{ImageShape, digits};

use crate::events::{Run, RunEvent, Runs};
use crate::factory::owners::Caller;
use crate::{AppError, AppState};

/// Most attacks running at once.
pub const MAX_CONCURRENT: usize = 2;
/// Most iterations one attack may ask for.
pub const MAX_ITERATIONS: usize = 3000;
/// Finished attacks kept for late readers.
const KEEP: usize = 32;
/// Progress events per attack (about).
const PROGRESS_EVENTS: usize = 60;
/// Seed of the attacked networks' weights (the attacker knows them).
pub const NET_SEED: u64 = 7;
/// The demo samples: this many training digits of each class.
const PER_CLASS: usize = 2;

/// The label the demo key is derived from; anyone can recompute it, which is the point: it
/// protects nothing and is used for nothing else.
const DEMO_KEY_LABEL: &[u8] = b"veil gradient-leakage demo key (public; for the demo only)";

/// A demo training sample.
#[derive(Debug, Clone, Serialize)]
pub struct LabSample {
    /// Its number in [`LabInfo::samples`].
    pub id: usize,
    /// Its true class.
    pub label: u32,
    /// The plaintext digit, `[1, 8, 8]` in [0, 1].
    pub plaintext: Vec<f32>,
    /// Its flow-rotation ciphertext under the demo key (its class's flow, route a), clamped to
    /// [0, 1]: what an encrypted client trains on.
    pub ciphertext: Vec<f32>,
    /// PSNR of the ciphertext against the plaintext (dB): how much the ciphertext alone shows.
    pub ciphertext_psnr: f64,
}

/// `GET /api/leakage`: what the lab offers.
#[derive(Debug, Clone, Serialize)]
pub struct LabInfo {
    /// Image shape of the samples.
    pub shape: ImageShape,
    /// The demo samples.
    pub samples: Vec<LabSample>,
    /// Attacked networks (`lenet`, `mlp`) and their parameter counts.
    pub archs: Vec<(String, usize)>,
    /// Methods (`dlg`, `idlg`, `inverting-gradients`, `analytic`; `analytic` needs `mlp`).
    pub methods: Vec<String>,
    /// Limits.
    pub max_iterations: usize,
    /// Limits.
    pub max_concurrent: usize,
    /// Fingerprint of the demo key that made the ciphertexts.
    pub demo_key_fingerprint: String,
}

/// What the client trained on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Training {
    /// The plaintext digit.
    #[default]
    Plain,
    /// Its flow-rotation ciphertext.
    Encrypted,
}

/// `POST /api/leakage/attacks`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttackRequest {
    /// A sample id from `GET /api/leakage`.
    pub sample: usize,
    /// Plain or encrypted training.
    #[serde(default)]
    pub training: Training,
    /// `dlg`, `idlg` (default), `inverting-gradients` or `analytic`.
    #[serde(default = "default_method")]
    pub method: String,
    /// `lenet` (default) or `mlp`.
    #[serde(default = "default_arch")]
    pub arch: String,
    /// Optimisation steps (default 300, at most [`MAX_ITERATIONS`]).
    #[serde(default = "default_iterations")]
    pub iterations: usize,
    /// Seed of the dummy.
    #[serde(default)]
    pub seed: u64,
}

fn default_method() -> String {
    "idlg".into()
}
fn default_arch() -> String {
    "lenet".into()
}
fn default_iterations() -> usize {
    300
}

/// One point of the curve.
#[derive(Debug, Clone, Serialize)]
pub struct Progress {
    /// Steps done.
    pub iteration: usize,
    /// Steps asked for.
    pub iterations: usize,
    /// Gradient-matching loss.
    pub loss: f32,
    /// PSNR of the reconstruction against what the client trained on (dB).
    pub psnr_vs_input: f64,
    /// PSNR of the reconstruction against the plaintext digit (dB).
    pub psnr_vs_plaintext: f64,
    /// The reconstruction, `[1, 8, 8]`.
    pub image: Vec<f32>,
}

/// The end of a finished attack.
#[derive(Debug, Clone, Serialize)]
pub struct AttackResult {
    /// The last point.
    #[serde(flatten)]
    pub last: Progress,
    /// SSIM of the reconstruction against the training input.
    pub ssim_vs_input: f64,
    /// The recovered label.
    pub label: usize,
    /// Whether it is the true class.
    pub label_correct: bool,
    /// PSNR of the training input against the plaintext (100 for plain training).
    pub input_psnr_vs_plaintext: f64,
    /// Relative gradient residual `‖g(x̂) − g*‖²/‖g*‖²`.
    pub residual: f32,
    /// Wall time.
    pub seconds: f64,
}

/// An event of an attack's stream (`event:` is the variant's name).
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum LabEvent {
    /// A point of the curve.
    Progress(Progress),
    /// Finished.
    Done(AttackResult),
    /// Stopped by a cancel (or the server stopping).
    Cancelled {
        /// Steps done.
        iteration: usize,
    },
    /// Failed (the loss stopped being finite, …).
    Failed {
        /// Why.
        error: String,
    },
}

impl RunEvent for LabEvent {
    fn name(&self) -> &'static str {
        match self {
            LabEvent::Progress(_) => "progress",
            LabEvent::Done(_) => "done",
            LabEvent::Cancelled { .. } => "cancelled",
            LabEvent::Failed { .. } => "failed",
        }
    }

    fn is_terminal(&self) -> bool {
        !matches!(self, LabEvent::Progress(_))
    }
}

type AttackRun = Run<AttackRequest, LabEvent>;

impl AttackRun {
    fn view(&self) -> AttackView {
        self.log.with(|events| self.view_of(events))
    }

    fn view_of(&self, events: &[LabEvent]) -> AttackView {
        let (state, last, result, error) = match events.last() {
            None => ("running", None, None, None),
            Some(LabEvent::Progress(p)) => ("running", Some(p.clone()), None, None),
            Some(LabEvent::Done(r)) => ("done", Some(r.last.clone()), Some(r.clone()), None),
            Some(LabEvent::Cancelled { .. }) => ("cancelled", last_progress(events), None, None),
            Some(LabEvent::Failed { error }) => {
                ("failed", last_progress(events), None, Some(error.clone()))
            }
        };
        AttackView {
            events_url: format!("/api/leakage/attacks/{}/events", self.id),
            id: self.id.clone(),
            state,
            request: self.request.clone(),
            last,
            result,
            error,
        }
    }
}

fn last_progress(events: &[LabEvent]) -> Option<Progress> {
    events.iter().rev().find_map(|e| match e {
        LabEvent::Progress(p) => Some(p.clone()),
        _ => None,
    })
}

/// `GET /api/leakage/attacks/{id}`.
#[derive(Debug, Clone, Serialize)]
pub struct AttackView {
    /// `atk-` and 16 hex digits.
    pub id: String,
    /// `running`, `done`, `cancelled` or `failed`.
    pub state: &'static str,
    /// What was asked.
    pub request: AttackRequest,
    /// The latest point.
    pub last: Option<Progress>,
    /// The result, once done.
    pub result: Option<AttackResult>,
    /// Why it failed.
    pub error: Option<String>,
    /// Its event stream.
    pub events_url: String,
}

/// The lab: demo samples, running and recent attacks.
pub struct LeakageLab {
    info: LabInfo,
    runs: Runs<AttackRun>,
}

impl std::fmt::Debug for LeakageLab {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeakageLab")
            .field("samples", &self.info.samples.len())
            .field("running", &self.runs.running())
            .finish()
    }
}

/// The demo key (derived from a public label: it protects nothing).
pub fn demo_key() -> MasterKey {
    use sha2::Digest;
    MasterKey::from_bytes(sha2::Sha256::digest(DEMO_KEY_LABEL).into())
}

impl LeakageLab {
    /// The lab with its demo samples: the first [`PER_CLASS`] training digits of each class
    /// (split 20 % test, seed 7, as the shipped flows), encrypted with the shipped flows.
    pub fn new() -> anyhow::Result<Self> {
        let device = Device::flex();
        let data = digits();
        let (train, _) = data.split(0.2, 7);
        let flows = crate::embedded::digits_flows(&device)?;
        let key = demo_key();
        let mut samples = Vec::new();
        for class in 0..data.num_classes() {
            let picked: Vec<usize> = (0..train.len())
                .filter(|&i| train.labels[i] as usize == class)
                .take(PER_CLASS)
                .collect();
            let enc = flows.class_encryptor(&key, class, &device);
            let x = train
                .subset(&picked)
                .images_tensor(0..picked.len(), &device);
            let c: Vec<f32> = enc
                .encrypt(x)
                .clamp(0.0, 1.0)
                .into_data()
                .iter::<f32>()
                .collect();
            let n = data.shape.len();
            for (k, &i) in picked.iter().enumerate() {
                let ciphertext = c[k * n..(k + 1) * n].to_vec();
                let plaintext = train.image(i).to_vec();
                samples.push(LabSample {
                    id: samples.len(),
                    label: class as u32,
                    ciphertext_psnr: psnr(&ciphertext, &plaintext),
                    plaintext,
                    ciphertext,
                });
            }
        }
        let archs = [AttackedArch::LENET, AttackedArch::MLP]
            .iter()
            .map(|a| {
                let c = AttackedNetConfig::new(*a, data.shape, data.num_classes(), NET_SEED);
                (a.name().to_owned(), c.num_params())
            })
            .collect();
        let mut methods: Vec<String> = Method::ALL.iter().map(|m| m.name().to_owned()).collect();
        methods.push("analytic".into());
        Ok(Self {
            info: LabInfo {
                shape: data.shape,
                samples,
                archs,
                methods,
                max_iterations: MAX_ITERATIONS,
                max_concurrent: MAX_CONCURRENT,
                demo_key_fingerprint: key.fingerprint().to_string(),
            },
            runs: Runs::new(MAX_CONCURRENT, KEEP, "attacks"),
        })
    }

    /// What the lab offers.
    pub fn info(&self) -> &LabInfo {
        &self.info
    }

    /// Cancels every running attack and ends every event stream.
    pub fn begin_shutdown(&self) {
        self.runs.begin_shutdown();
    }

    fn find(&self, id: &str) -> Result<Arc<AttackRun>, AppError> {
        self.runs.find(id)
    }

    /// Validates and starts an attack. `admit` (the caller's attack quota) is asked once the request is known to be valid, so
    /// a refused request costs nothing.
    pub fn start(
        &self,
        request: AttackRequest,
        admit: impl FnOnce() -> Result<(), AppError>,
    ) -> Result<AttackView, AppError> {
        let plan = Plan::new(&self.info, &request)?;
        admit()?;
        let slot = self.runs.reserve()?;
        let run = Arc::new(AttackRun::new("atk", request)?);
        self.runs.insert(run.clone());
        let view = run.view();
        let name = format!("leak-{}", &run.id[4..12]);
        let (work, failed) = (run.clone(), run.clone());
        let spawned = self.runs.spawn(
            name,
            slot,
            move || {
                if let Err(e) = plan.execute(&work) {
                    work.push(LabEvent::Failed {
                        error: e.to_string(),
                    });
                }
            },
            move || {
                failed.push(LabEvent::Failed {
                    error: "internal error".into(),
                })
            },
        );
        if let Err(e) = spawned {
            run.push(LabEvent::Failed {
                error: "internal error".into(),
            });
            return Err(e);
        }
        Ok(view)
    }
}

/// A validated request.
struct Plan {
    sample: LabSample,
    training: Training,
    method: Option<Method>,
    net: AttackedNetConfig,
    iterations: usize,
    seed: u64,
}

impl Plan {
    fn new(info: &LabInfo, r: &AttackRequest) -> Result<Self, AppError> {
        let sample = info.samples.get(r.sample).cloned().ok_or_else(|| {
            AppError::BadRequest(format!(
                "sample {} does not exist: there are {} (0 to {})",
                r.sample,
                info.samples.len(),
                info.samples.len().saturating_sub(1)
            ))
        })?;
        let arch = AttackedArch::from_name(&r.arch).ok_or_else(|| {
            AppError::BadRequest(format!("unknown network {:?}: lenet or mlp", r.arch))
        })?;
        let method = match r.method.as_str() {
            "analytic" => {
                if !matches!(arch, AttackedArch::Mlp { .. }) {
                    return Err(AppError::BadRequest(
                        "the analytic attack needs a first fully connected layer: use arch \"mlp\""
                            .into(),
                    ));
                }
                None
            }
            m => Some(Method::from_name(m).ok_or_else(|| {
                AppError::BadRequest(format!(
                    "unknown method {m:?}: dlg, idlg, inverting-gradients or analytic"
                ))
            })?),
        };
        if method.is_some() && !(1..=MAX_ITERATIONS).contains(&r.iterations) {
            return Err(AppError::BadRequest(format!(
                "iterations must be between 1 and {MAX_ITERATIONS}, not {}",
                r.iterations
            )));
        }
        let classes = info
            .samples
            .iter()
            .map(|s| s.label as usize + 1)
            .max()
            .unwrap_or(1);
        Ok(Self {
            sample,
            training: r.training,
            method,
            net: AttackedNetConfig::new(arch, info.shape, classes, NET_SEED),
            iterations: r.iterations,
            seed: r.seed,
        })
    }

    fn input(&self) -> &[f32] {
        match self.training {
            Training::Plain => &self.sample.plaintext,
            Training::Encrypted => &self.sample.ciphertext,
        }
    }

    fn progress(&self, iteration: usize, loss: f32, image: Vec<f32>) -> Progress {
        Progress {
            iteration,
            iterations: self.iterations,
            loss,
            psnr_vs_input: psnr(&image, self.input()),
            psnr_vs_plaintext: psnr(&image, &self.sample.plaintext),
            image: image
                .iter()
                .map(|v| (v * 1000.0).round() / 1000.0)
                .collect(),
        }
    }

    fn result(
        &self,
        last: Progress,
        label: usize,
        residual: f32,
        started: Instant,
    ) -> AttackResult {
        AttackResult {
            ssim_vs_input: ssim(&last.image, self.input(), self.net.shape),
            label,
            label_correct: label == self.sample.label as usize,
            input_psnr_vs_plaintext: psnr(self.input(), &self.sample.plaintext),
            residual,
            seconds: started.elapsed().as_secs_f64(),
            last,
        }
    }

    fn execute(&self, run: &AttackRun) -> Result<(), veil::attacks::leakage::LeakageError> {
        let started = Instant::now();
        let device = Device::flex().autodiff();
        let net: AttackedNet = self.net.init(&device);
        let label = self.sample.label as usize;
        let grads = victim_gradient(&net, self.input(), label, &device);
        let Some(method) = self.method else {
            // The analytic attack: one division, no iterations.
            let image = analytic_first_layer(&net, &grads)
                .map(|x| x.into_iter().map(|v| v.clamp(0.0, 1.0)).collect())
                .ok_or_else(|| {
                    veil::attacks::leakage::LeakageError::Invalid(
                        "every bias gradient of the first layer vanishes".into(),
                    )
                })?;
            let last = self.progress(1, 0.0, image);
            let label = veil::attacks::leakage::infer_label(&net, &grads);
            run.push(LabEvent::Done(self.result(last, label, 0.0, started)));
            return Ok(());
        };
        let mut config = AttackConfig::new(method);
        config.iterations = self.iterations;
        config.seed = self.seed;
        let mut attack = GradientAttack::new(&net, &grads, config, &device)?;
        let every = (self.iterations / PROGRESS_EVENTS).max(1);
        run.push(LabEvent::Progress(self.progress(
            0,
            f32::NAN,
            attack.image(),
        )));
        let mut loss = f32::NAN;
        while attack.iteration() < self.iterations {
            if run.cancelled() {
                run.push(LabEvent::Cancelled {
                    iteration: attack.iteration(),
                });
                return Ok(());
            }
            let step = attack.step()?;
            loss = step.loss;
            if step.iteration % every == 0 && step.iteration < self.iterations {
                run.push(LabEvent::Progress(self.progress(
                    step.iteration,
                    step.loss,
                    attack.image(),
                )));
            }
        }
        let rec = attack.reconstruction();
        let last = self.progress(rec.iterations, loss, rec.image);
        run.push(LabEvent::Done(self.result(
            last,
            rec.label,
            rec.residual,
            started,
        )));
        Ok(())
    }
}

fn lab(state: &AppState) -> &Arc<LeakageLab> {
    &state.leakage
}

/// The lab's routes.
pub(crate) fn router() -> Router<AppState> {
    Router::new()
        .route("/api/leakage", get(info))
        .route(
            "/api/leakage/attacks",
            post(start).layer(DefaultBodyLimit::max(16 * 1024)),
        )
        .route("/api/leakage/attacks/{id}", get(attack))
        .route("/api/leakage/attacks/{id}/events", get(events))
        .route("/api/leakage/attacks/{id}/cancel", post(cancel))
}

async fn info(State(state): State<AppState>) -> Json<LabInfo> {
    Json(lab(&state).info().clone())
}

async fn start(
    caller: Caller,
    State(state): State<AppState>,
    body: Result<Json<AttackRequest>, JsonRejection>,
) -> Result<(StatusCode, Json<AttackView>), AppError> {
    let Json(request) = body?;
    let view = lab(&state).start(request, || state.factory.rates().attack(&caller))?;
    Ok((StatusCode::CREATED, Json(view)))
}

async fn attack(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<AttackView>, AppError> {
    Ok(Json(lab(&state).find(&id)?.view()))
}

async fn cancel(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<AttackView>, AppError> {
    let run = lab(&state).find(&id)?;
    run.cancel.store(true, Ordering::SeqCst);
    Ok(Json(run.view()))
}

/// `text/event-stream`: every event of the attack from its start (`progress` …, then one of
/// `done`, `cancelled`, `failed`), then the stream ends.
async fn events(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, AppError> {
    let lab = lab(&state).clone();
    let run = lab.find(&id)?;
    Ok(run.log.clone().stream(lab.runs.stopped()))
}
