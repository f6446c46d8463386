//! The black-box lab (survey §6): the factory attacks its own models through what the classify
//! route answers, to show what anyone who can query a model learns.
//!
//! - **Membership inference** by the loss threshold ([`veil::attacks::black_box::membership`]):
//!   is an image one the model was trained on? Members are the job's training part, non-members
//!   its validation part (for `digits-cnn`, the digits' training and test splits).
//! - **Model inversion** (Fredrikson et al. 2015, [`veil::attacks::model_inversion`]): for
//!   each class, the image the model finds most typical of it, found from its probabilities
//!   alone, starting from and anchored to the mean image of the held-out part (the domain's
//!   look, which the attacker is assumed to know). Scored against the class means of the
//!   training part: what the model gives away about its training images. A model trained on
//!   ciphertexts inverts to ciphertext-like images, scored against the ciphertexts' means (the
//!   factory never holds the owner's originals).
//! - **Model extraction**: query the model with images of the same domain, train a copy
//!   ([`SmallCnn`]) on its answers, and measure how often the copy agrees with it on held-out
//!   images, for growing query budgets. A model trained on ciphertexts is copied on
//!   ciphertexts: the copy classifies ciphertexts made with the same key, and nothing else.
//!
//! Runs are threads, at most two at once, over SSE, like the gradient-leakage lab; starting one
//! counts against the caller's attack quota, and a trained model can be attacked by its owner
//! (and the operator) only.
//!
//! Why this file is over 600 lines: one lab: its routes, its run registry and the runner of its
//! three attacks, which only make sense together; the attacks themselves are in `veil::attacks`.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, Sse};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::Stream;
use serde::{Deserialize, Serialize};
use veil::attacks::black_box::{MembershipReport, agreement, membership, per_example_loss};
use veil::attacks::model_inversion::{
    InversionOptions, InversionScore, class_means, domain_mean, invert, score_against_means,
};
use veil::burn::tensor::Device;
use veil::data::ImageDataset;
use veil::nn::model::SmallCnnConfig;
use veil::nn::train::{Control, TrainOptions, argmax_rows, predict_logits, train_classifier};

use crate::events::{LabRun, Run, RunEvent, Runs};
use crate::factory::api::{ready_model, visible};
use crate::factory::inference::Ready;
use crate::factory::owners::Caller;
use crate::factory::{Factory, jobs, store};
use crate::{AppError, AppState};

/// Runs at once.
pub const MAX_CONCURRENT: usize = 2;
/// Members and non-members scored, at most (each).
pub const MAX_SCORED: usize = 500;
/// Query budgets of the extraction curve (those the pool can pay).
pub const BUDGETS: [usize; 6] = [25, 50, 100, 200, 400, 800];
/// Epochs of each copy.
const COPY_EPOCHS: usize = 20;
/// Bins of the loss histograms.
const BINS: usize = 24;

/// `POST /api/blackbox/attacks`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BlackBoxRequest {
    /// A built-in model whose training set is known (`digits-cnn`) or the caller's `mdl-…`.
    pub model: String,
    /// `membership`, `extraction` or `inversion`.
    pub attack: String,
    /// Seed of the copies' training.
    #[serde(default)]
    pub seed: u64,
}

/// What the membership attack found, with the two loss histograms it separates.
#[derive(Debug, Clone, Serialize)]
pub struct MembershipOutcome {
    /// Members and non-members scored.
    pub members: usize,
    /// Non-members scored.
    pub non_members: usize,
    /// AUC, TPR at 1 % FPR, advantage.
    #[serde(flatten)]
    pub report: MembershipReport,
    /// The model's accuracy on the members and on the non-members (the generalisation gap the
    /// attack reads).
    pub train_accuracy: f64,
    /// On the non-members.
    pub test_accuracy: f64,
    /// The histograms' range of log₁₀(loss): [`LOG_LOSS_FLOOR`], and the 98th percentile's
    /// (losses outside go in the first or last bin).
    pub log10_loss_range: [f64; 2],
    /// Members per bin of log₁₀(loss).
    pub member_histogram: Vec<usize>,
    /// Non-members per bin of log₁₀(loss).
    pub non_member_histogram: Vec<usize>,
}

/// One point of the extraction curve.
#[derive(Debug, Clone, Serialize)]
pub struct ExtractionPoint {
    /// Queries answered by the model.
    pub queries: usize,
    /// Share of held-out images on which the copy answers as the model does.
    pub agreement: f64,
    /// The copy's accuracy on the held-out images' own labels.
    pub copy_accuracy: f64,
}

/// One class's inversion.
#[derive(Debug, Clone, Serialize)]
pub struct InvertedClass {
    /// The class's index.
    pub class: u32,
    /// Its name.
    pub name: String,
    /// The images' shape.
    pub shape: veil::data::ImageShape,
    /// The image (`[C, H, W]` in [0, 1]) and the model's probability of the class for it.
    pub image: Vec<f32>,
    /// The model's probability of the class for the image.
    pub confidence: f64,
    /// Queries spent.
    pub queries: usize,
    /// The mean of the class's training images, the figure's reference.
    pub class_mean: Vec<f32>,
    /// PSNR, SSIM and the class identified, against the training part's class means.
    #[serde(flatten)]
    pub score: InversionScore,
}

/// An event of a run's stream (`event:` is the variant's name).
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum BlackBoxEvent {
    /// A step done (`step` of `of`).
    Progress {
        /// Steps done.
        step: usize,
        /// Steps in all.
        of: usize,
        /// What was done.
        what: String,
    },
    /// A point of the extraction curve.
    Point(ExtractionPoint),
    /// The membership attack's result.
    Membership(MembershipOutcome),
    /// One class inverted.
    Inverted(InvertedClass),
    /// Finished: the model's held-out accuracy and how long it took.
    Done {
        /// The attacked model's accuracy on the held-out images.
        test_accuracy: f64,
        /// Seconds.
        seconds: f64,
    },
    /// Stopped by a cancel or the server stopping.
    Cancelled,
    /// Failed.
    Failed {
        /// Why.
        error: String,
    },
}

impl RunEvent for BlackBoxEvent {
    fn name(&self) -> &'static str {
        match self {
            BlackBoxEvent::Progress { .. } => "progress",
            BlackBoxEvent::Point(_) => "point",
            BlackBoxEvent::Membership(_) => "membership",
            BlackBoxEvent::Inverted(_) => "inverted",
            BlackBoxEvent::Done { .. } => "done",
            BlackBoxEvent::Cancelled => "cancelled",
            BlackBoxEvent::Failed { .. } => "failed",
        }
    }

    fn is_terminal(&self) -> bool {
        matches!(
            self,
            BlackBoxEvent::Done { .. } | BlackBoxEvent::Cancelled | BlackBoxEvent::Failed { .. }
        )
    }
}

/// A run as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct BlackBoxView {
    /// `bb-…`.
    pub id: String,
    /// What was asked.
    pub request: BlackBoxRequest,
    /// The stream of its events.
    pub events_url: String,
    /// Whether it has ended.
    pub finished: bool,
    /// Every event so far.
    pub events: Vec<BlackBoxEvent>,
}

type BlackBoxRun = Run<BlackBoxRequest, BlackBoxEvent>;

impl BlackBoxRun {
    fn view(&self) -> BlackBoxView {
        BlackBoxView {
            id: self.id.clone(),
            request: self.request.clone(),
            events_url: format!("/api/blackbox/attacks/{}/events", self.id),
            finished: self.log.finished(),
            events: self.log.events_from(0),
        }
    }
}

/// The lab: its runs.
pub struct BlackBoxLab {
    runs: Runs<BlackBoxRun>,
}

impl BlackBoxLab {
    /// An empty lab.
    pub fn new() -> Self {
        Self {
            runs: Runs::new(MAX_CONCURRENT, 32, "black-box attacks"),
        }
    }

    /// Cancels every run and ends every stream.
    pub fn begin_shutdown(&self) {
        self.runs.begin_shutdown();
    }
}

impl std::fmt::Debug for BlackBoxLab {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlackBoxLab")
            .field("running", &self.runs.running())
            .finish()
    }
}

impl Default for BlackBoxLab {
    fn default() -> Self {
        Self::new()
    }
}

/// The model to attack and the images it was and was not trained on.
struct Target {
    ready: Arc<Ready>,
    members: ImageDataset,
    non_members: ImageDataset,
}

/// Resolves `name` for `caller`: 404 for another owner's model, 400 where the factory does not
/// know which images trained it.
fn target(f: &Factory, caller: &Caller, name: &str) -> Result<Target, AppError> {
    let (members, non_members) = if name == "digits-cnn" {
        let (s, seed) = veil::nn::model::demo::SPLIT;
        veil::data::digits().split(s, seed)
    } else if store::valid_id(name, "mdl") {
        visible(f, caller, name, "model")?;
        let row = f
            .store()
            .model(name)?
            .ok_or_else(|| AppError::NotFound(format!("model {name:?}")))?;
        let job = f
            .store()
            .job(&row.job_id)?
            .ok_or_else(|| AppError::Conflict(format!("the job that trained {name} is gone")))?;
        let spec = &job.spec;
        if f.store().dataset(&spec.dataset)?.is_none() {
            return Err(AppError::Conflict(format!(
                "the dataset {} that trained {name} was deleted, so its members are unknown",
                spec.dataset
            )));
        }
        let bytes =
            std::fs::read(f.store().dataset_path(&spec.dataset)).map_err(anyhow::Error::from)?;
        let data = veil::data::container::decode(&bytes)
            .map_err(|e| AppError::Internal(anyhow::anyhow!("the stored dataset: {e}")))?
            .dataset;
        match jobs::split(&data, spec.validation_split, spec.seed) {
            (train, Some(val)) => (train, val),
            (_, None) => {
                return Err(AppError::BadRequest(format!(
                    "{name} was trained on its whole dataset, so no image is known not to be a \
                     member: train with a validation split to attack it"
                )));
            }
        }
    } else {
        return Err(AppError::BadRequest(format!(
            "the lab attacks digits-cnn or a model the factory trained for you (mdl-…), not \
             {name:?}: it must know which images trained the model"
        )));
    };
    let ready = ready_model(f, name)?;
    Ok(Target {
        ready,
        members,
        non_members,
    })
}

/// At most `n` images of `data`, spread evenly.
fn at_most(data: &ImageDataset, n: usize) -> ImageDataset {
    if data.len() <= n {
        return data.clone();
    }
    let idx: Vec<usize> = (0..n).map(|i| i * data.len() / n).collect();
    data.subset(&idx)
}

impl Target {
    /// Log-probabilities: the logits of the model's softmax, as the route answers them.
    fn log_probs(&self, data: &ImageDataset) -> Vec<f32> {
        self.ready
            .model
            .probabilities(&data.images, data.shape, &Device::flex())
            .into_iter()
            .map(|p| p.max(1e-30).ln())
            .collect()
    }

    fn answers(&self, data: &ImageDataset) -> Vec<u32> {
        argmax_rows(&self.log_probs(data), self.ready.classes.len())
    }
}

/// The smallest log₁₀(loss) the histograms show: a member can be fitted to a loss of 1e-6 and
/// less, and on a linear scale every member and most non-members would share the first bin.
pub const LOG_LOSS_FLOOR: f64 = -6.0;

fn histogram(losses: &[f64], [lo, hi]: [f64; 2]) -> Vec<usize> {
    let mut h = vec![0; BINS];
    for &l in losses {
        let x = (l.max(1e-300).log10() - lo) / (hi - lo);
        let b = (x * BINS as f64).floor().clamp(0.0, (BINS - 1) as f64) as usize;
        h[b] += 1;
    }
    h
}

fn run_membership(run: &BlackBoxRun, t: &Target) -> Result<f64, String> {
    let k = t.ready.classes.len();
    let members = at_most(&t.members, MAX_SCORED);
    let non_members = at_most(&t.non_members, MAX_SCORED);
    let m_logits = t.log_probs(&members);
    let n_logits = t.log_probs(&non_members);
    let m = per_example_loss(&m_logits, &members.labels, k);
    let n = per_example_loss(&n_logits, &non_members.labels, k);
    let mut all: Vec<f64> = m.iter().chain(&n).copied().collect();
    all.sort_by(f64::total_cmp);
    let top = all[((all.len() - 1) as f64 * 0.98) as usize]
        .max(1e-3)
        .log10();
    let range = [LOG_LOSS_FLOOR, top.max(LOG_LOSS_FLOOR + 1.0)];
    let test_accuracy = agreement(&argmax_rows(&n_logits, k), &non_members.labels);
    run.push(BlackBoxEvent::Membership(MembershipOutcome {
        members: m.len(),
        non_members: n.len(),
        report: membership(&m, &n),
        train_accuracy: agreement(&argmax_rows(&m_logits, k), &members.labels),
        test_accuracy,
        log10_loss_range: range,
        member_histogram: histogram(&m, range),
        non_member_histogram: histogram(&n, range),
    }));
    Ok(test_accuracy)
}

/// Copies trained on the model's answers to growing budgets of queries drawn from the members'
/// domain (the training part), scored on the held-out part.
fn run_extraction(run: &BlackBoxRun, t: &Target, seed: u64) -> Result<Option<f64>, String> {
    let k = t.ready.classes.len();
    let pool = at_most(&t.members, *BUDGETS.last().unwrap_or(&800));
    let held_out = at_most(&t.non_members, MAX_SCORED);
    let answers = t.answers(&pool);
    let served = t.answers(&held_out);
    let budgets: Vec<usize> = BUDGETS
        .iter()
        .copied()
        .filter(|&b| b <= pool.len())
        .collect();
    if budgets.is_empty() {
        return Err(format!(
            "the model's training part has {} images, fewer than the smallest budget ({})",
            pool.len(),
            BUDGETS[0]
        ));
    }
    for (i, &q) in budgets.iter().enumerate() {
        if run.cancelled() {
            return Ok(None);
        }
        run.push(BlackBoxEvent::Progress {
            step: i,
            of: budgets.len(),
            what: format!("training a copy on {q} answers"),
        });
        let queries = ImageDataset {
            labels: answers[..q].to_vec(),
            ..pool.subset(&(0..q).collect::<Vec<_>>())
        };
        let device = Device::flex().autodiff();
        device.seed(seed);
        let copy = SmallCnnConfig::for_shape(pool.shape, k).init(&device);
        let options = TrainOptions {
            epochs: COPY_EPOCHS,
            batch_size: 32,
            learning_rate: 2e-3,
            seed,
        };
        let copy = train_classifier(copy, &queries, options, &device, |_| {
            if run.cancelled() {
                Control::Stop
            } else {
                Control::Continue
            }
        })
        .map_err(|e| e.to_string())?;
        if run.cancelled() {
            return Ok(None);
        }
        let copied = argmax_rows(&predict_logits(&copy, &held_out, &Device::flex()), k);
        run.push(BlackBoxEvent::Point(ExtractionPoint {
            queries: q,
            agreement: agreement(&copied, &served),
            copy_accuracy: agreement(&copied, &held_out.labels),
        }));
    }
    Ok(Some(agreement(&served, &held_out.labels)))
}

/// Every class inverted in turn through the model's probabilities.
fn run_inversion(run: &BlackBoxRun, t: &Target, seed: u64) -> Result<Option<f64>, String> {
    let k = t.ready.classes.len();
    let shape = t.ready.shape;
    let device = Device::flex();
    let means = class_means(&t.members.images, &t.members.labels, shape, k);
    let held_means = class_means(&t.non_members.images, &t.non_members.labels, shape, k);
    let prior = domain_mean(&held_means)
        .ok_or("the held-out part has no images to take the domain's mean from")?;
    let options = InversionOptions {
        seed,
        ..InversionOptions::default()
    };
    let classes: Vec<u32> = (0..k as u32)
        .filter(|&c| !means[c as usize].is_empty())
        .collect();
    for (i, &class) in classes.iter().enumerate() {
        let name = t.ready.classes[class as usize].clone();
        let query = |images: &[f32]| -> Result<Vec<f32>, String> {
            Ok(t.ready.model.probabilities(images, shape, &device))
        };
        let on_step = |step: usize, confidence: f64| -> Result<(), String> {
            if run.cancelled() {
                return Err(CANCELLED.into());
            }
            if step.is_multiple_of(25) {
                run.push(BlackBoxEvent::Progress {
                    step: i * options.steps + step,
                    of: classes.len() * options.steps,
                    what: format!("inverting class {name}: step {step}, p = {confidence:.3}"),
                });
            }
            Ok(())
        };
        let inversion = match invert(query, shape, k, class, Some(&prior), options, on_step) {
            Ok(inv) => inv,
            Err(_) if run.cancelled() => return Ok(None),
            Err(e) => return Err(e.to_string()),
        };
        let score = score_against_means(&inversion, &means, shape);
        run.push(BlackBoxEvent::Inverted(InvertedClass {
            class,
            name,
            shape,
            confidence: inversion.confidence,
            queries: inversion.queries,
            image: inversion.image,
            class_mean: means[class as usize].clone(),
            score,
        }));
    }
    let held_out = at_most(&t.non_members, MAX_SCORED);
    Ok(Some(agreement(&t.answers(&held_out), &held_out.labels)))
}

/// What a cancelled inversion's step reports.
const CANCELLED: &str = "cancelled";

fn execute(run: &BlackBoxRun, t: &Target) {
    let started = Instant::now();
    let outcome = match run.request.attack.as_str() {
        "membership" => run_membership(run, t).map(Some),
        "inversion" => run_inversion(run, t, run.request.seed),
        _ => run_extraction(run, t, run.request.seed),
    };
    run.push(match outcome {
        Ok(Some(test_accuracy)) => BlackBoxEvent::Done {
            test_accuracy,
            seconds: started.elapsed().as_secs_f64(),
        },
        Ok(None) => BlackBoxEvent::Cancelled,
        Err(error) => BlackBoxEvent::Failed { error },
    });
}

/// `GET /api/blackbox`: what the lab offers.
#[derive(Debug, Serialize)]
struct LabInfo {
    attacks: [&'static str; 3],
    builtin_models: [&'static str; 1],
    budgets: [usize; 6],
    inversion_queries_per_class: usize,
    max_scored: usize,
    max_concurrent: usize,
}

async fn info() -> Json<LabInfo> {
    Json(LabInfo {
        attacks: ["membership", "extraction", "inversion"],
        inversion_queries_per_class: InversionOptions::default().queries(),
        builtin_models: ["digits-cnn"],
        budgets: BUDGETS,
        max_scored: MAX_SCORED,
        max_concurrent: MAX_CONCURRENT,
    })
}

async fn start(
    caller: Caller,
    State(state): State<AppState>,
    body: Result<Json<BlackBoxRequest>, JsonRejection>,
) -> Result<(StatusCode, Json<BlackBoxView>), AppError> {
    let Json(request) = body?;
    if !matches!(
        request.attack.as_str(),
        "membership" | "extraction" | "inversion"
    ) {
        return Err(AppError::BadRequest(format!(
            "unknown attack {:?}: choose membership, extraction or inversion",
            request.attack
        )));
    }
    let f = state.factory.clone();
    let target = {
        let (f, caller, name) = (f.clone(), caller.clone(), request.model.clone());
        tokio::task::spawn_blocking(move || target(&f, &caller, &name))
            .await
            .map_err(|e| AppError::Internal(e.into()))??
    };
    f.rates().attack(&caller)?;
    let lab = state.blackbox.clone();
    let slot = lab.runs.reserve()?;
    let run = Arc::new(BlackBoxRun::new("bb", request)?);
    lab.runs.insert(run.clone());
    let (work, failed) = (run.clone(), run.clone());
    lab.runs.spawn(
        format!("bb-{}", &run.id[3..11]),
        slot,
        move || execute(&work, &target),
        move || {
            failed.log.push(BlackBoxEvent::Failed {
                error: "internal error".into(),
            })
        },
    )?;
    Ok((StatusCode::CREATED, Json(run.view())))
}

async fn view(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<BlackBoxView>, AppError> {
    Ok(Json(state.blackbox.runs.find(&id)?.view()))
}

async fn cancel(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<BlackBoxView>, AppError> {
    let run = state.blackbox.runs.find(&id)?;
    run.cancel();
    Ok(Json(run.view()))
}

/// `text/event-stream`: `progress` and `point` (extraction), `membership` or `inverted` (one
/// per class), then `done`,
/// `cancelled` or `failed`; then the stream ends.
async fn events(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Sse<impl Stream<Item = Result<Event, std::convert::Infallible>>>, AppError> {
    let lab = state.blackbox.clone();
    let run = lab.runs.find(&id)?;
    Ok(run.log.clone().stream(lab.runs.stopped()))
}

/// The lab's routes.
pub(crate) fn router() -> Router<AppState> {
    Router::new()
        .route("/api/blackbox", get(info))
        .route(
            "/api/blackbox/attacks",
            post(start).layer(DefaultBodyLimit::max(4 * 1024)),
        )
        .route("/api/blackbox/attacks/{id}", get(view))
        .route("/api/blackbox/attacks/{id}/events", get(events))
        .route("/api/blackbox/attacks/{id}/cancel", post(cancel))
}
