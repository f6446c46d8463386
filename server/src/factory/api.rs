//! The factory's HTTP routes: datasets, training jobs (with Server-Sent Events), and the
//! untrusted classifier. Documented in `docs/api.md` (a test keeps the two in step).
//!
//! Why this file is over 600 lines: one handler per documented route (docs/api.md, kept in step by
//! a test), each short.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::{Stream, StreamExt};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use tokio::sync::broadcast;
use veil::data::container::{self, ContainerError};

use super::ids::{DatasetId, IdPath, JobId, TypedId};
use super::inference::{self, Arch, LoadedModel, Ready};
use super::owners::Caller;
use super::store::{self, DatasetDeletion, DatasetRow, JobRow, JobSpec, ModelRow};
use super::{Factory, JobEvent, LiveProgress};
use crate::{AppError, AppState};

/// The factory's routes (merged into the app's router).
pub(crate) fn router(factory: &Factory) -> Router<AppState> {
    let cfg = factory.config();
    Router::new()
        .route(
            "/api/owners",
            post(super::owners::create_owner).layer(DefaultBodyLimit::max(1024)),
        )
        .route("/api/me", get(super::owners::me))
        .route(
            "/api/datasets",
            get(list_datasets)
                // The upload is streamed to disk with its own limit (413 past it).
                .post(upload_dataset)
                .layer(DefaultBodyLimit::disable()),
        )
        .route(
            "/api/datasets/{id}",
            get(get_dataset).delete(delete_dataset),
        )
        .route("/api/datasets/{id}/container", get(download_dataset))
        .route(
            "/api/jobs",
            get(list_jobs)
                .post(create_job)
                .layer(DefaultBodyLimit::max(64 << 10)),
        )
        .route("/api/jobs/{id}", get(get_job))
        .route("/api/jobs/{id}/events", get(job_events))
        .route("/api/jobs/{id}/cancel", post(cancel_job))
        .route(
            "/api/models/{name}/classify",
            post(classify).layer(DefaultBodyLimit::max(
                cfg.max_classify_binary_bytes
                    .max(cfg.max_classify_json_bytes),
            )),
        )
}

fn factory(state: &AppState) -> &Arc<Factory> {
    &state.factory
}

/// 401 without a token; 404 unless `caller` may see object `id` (another owner's object answers
/// as a missing one does).
pub(crate) fn visible(f: &Factory, caller: &Caller, id: &str, what: &str) -> Result<(), AppError> {
    caller.require()?;
    if caller.sees(f.store().owner_of(id)?.as_deref()) {
        Ok(())
    } else {
        Err(AppError::NotFound(format!("{what} {id:?}")))
    }
}

/// What `caller` may list: a filter on object ids (401 without a token).
pub(crate) fn lister(
    f: &Factory,
    caller: &Caller,
) -> Result<impl Fn(&str) -> bool + use<>, AppError> {
    caller.require()?;
    let owned = match caller.owner() {
        Some(o) => Some(f.store().owned_by(o)?),
        None => None,
    };
    Ok(move |id: &str| owned.as_ref().is_none_or(|s| s.contains(id)))
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, AppError> + Send + 'static,
) -> Result<T, AppError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| AppError::Internal(anyhow::anyhow!("a blocking task failed: {e}")))?
}

// ---------------------------------------------------------------------------------------------
// Datasets

#[derive(Deserialize)]
struct UploadQuery {
    name: Option<String>,
}

fn check_name(name: &str) -> Result<(), AppError> {
    if name.trim().is_empty() || name.chars().count() > 100 || name.chars().any(char::is_control) {
        return Err(AppError::BadRequest(
            "a dataset name has 1 to 100 characters and no control characters".into(),
        ));
    }
    Ok(())
}

async fn upload_dataset(
    caller: Caller,
    State(state): State<AppState>,
    Query(q): Query<UploadQuery>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<DatasetRow>), AppError> {
    caller.require()?;
    let f = factory(&state).clone();
    let name = q.name.unwrap_or_else(|| "dataset".into());
    check_name(&name)?;
    let limit = f.config().max_upload_bytes;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(too_large(limit));
    }
    // Refuse before reading the body when the declared size cannot fit the owner's quota; the
    // size read is checked again before the dataset is recorded.
    if let Some(owner) = caller.owner() {
        let (f, owner) = (f.clone(), owner.to_owned());
        blocking(move || {
            let usage = f.store().usage(&owner)?;
            f.config()
                .quotas
                .admit_dataset(&usage, declared.unwrap_or(0))
        })
        .await?;
    }
    // Stream to a temporary file in the data directory, counting; nothing is recorded until the
    // whole container has been read and validated.
    let tmp = f.store().temp_path();
    let written = stream_to_file(body, &tmp, limit, f.config()).await;
    let (len, sha) = match written {
        Ok(v) => v,
        Err(e) => {
            let _ = tokio::fs::remove_file(&tmp).await;
            return Err(e);
        }
    };
    let result = {
        let f = f.clone();
        let tmp = tmp.clone();
        blocking(move || {
            let bytes = std::fs::read(&tmp).map_err(anyhow::Error::from)?;
            let c = container::decode(&bytes).map_err(upload_error)?;
            let id = store::new_id("ds");
            let row = DatasetRow {
                id: id.clone(),
                name,
                scheme: c.meta.scheme,
                key_fingerprint: c.meta.key_fingerprint,
                description: c.meta.description,
                pixel_type: match c.pixels {
                    container::PixelType::U8 => "u8".into(),
                    container::PixelType::F32 => "f32".into(),
                },
                count: c.dataset.len(),
                shape: c.dataset.shape,
                classes: c.dataset.class_names.clone(),
                class_counts: c.dataset.class_counts(),
                bytes: len,
                sha256: sha,
                created_at: store::now(),
            };
            // Thumbnails are drawn now, once, so that inspecting a dataset reads a small file
            // instead of decoding the whole container.
            let thumbs = serde_json::to_vec(&thumbnails(&c.dataset, 8)?)
                .map_err(anyhow::Error::from)?;
            f.store()
                .write_atomic(&f.store().thumbnails_path(&id), &thumbs)?;
            let path = f.store().dataset_path(&id);
            let added = f.admit(
                caller.owner(),
                |q, usage| q.admit_dataset(usage, len),
                || {
                    std::fs::rename(&tmp, &path).map_err(anyhow::Error::from)?;
                    Ok(f.store().insert_dataset(&row, caller.owner())?)
                },
            );
            if let Err(e) = added {
                let _ = std::fs::remove_file(&path);
                let _ = std::fs::remove_file(f.store().thumbnails_path(&id));
                return Err(e);
            }
            tracing::info!(dataset = %id, images = row.count, scheme = %row.scheme, "dataset uploaded");
            Ok(row)
        })
        .await
    };
    if result.is_err() {
        let _ = tokio::fs::remove_file(&tmp).await;
    }
    Ok((StatusCode::CREATED, Json(result?)))
}

fn too_large(limit: u64) -> AppError {
    AppError::PayloadTooLarge(format!(
        "the upload is larger than this server's limit of {} MiB",
        limit >> 20
    ))
}

fn upload_error(e: ContainerError) -> AppError {
    AppError::BadRequest(format!("the upload is not a valid dataset container: {e}"))
}

async fn stream_to_file(
    body: Body,
    path: &std::path::Path,
    limit: u64,
    config: &super::FactoryConfig,
) -> Result<(u64, String), AppError> {
    let mut file = tokio::fs::File::create(path)
        .await
        .map_err(anyhow::Error::from)?;
    let mut stream = body.into_data_stream();
    let mut len = 0u64;
    let mut hash = Sha256::new();
    let started = Instant::now();
    let idle = config.upload_idle_timeout;
    loop {
        let next = tokio::time::timeout(idle, stream.next())
            .await
            .map_err(|_| {
                AppError::RequestTimeout(format!(
                    "the upload sent nothing for {} s after {len} bytes: nothing was stored",
                    idle.as_secs_f64()
                ))
            })?;
        let Some(chunk) = next else { break };
        let chunk =
            chunk.map_err(|e| AppError::BadRequest(format!("the upload was interrupted: {e}")))?;
        len += chunk.len() as u64;
        let elapsed = started.elapsed();
        if elapsed > idle
            && (len as f64) < config.upload_min_bytes_per_s as f64 * elapsed.as_secs_f64()
        {
            return Err(AppError::RequestTimeout(format!(
                "the upload is slower than this server's minimum of {} KiB/s ({len} bytes in \
                 {:.0} s): nothing was stored",
                config.upload_min_bytes_per_s >> 10,
                elapsed.as_secs_f64()
            )));
        }
        if len > limit {
            return Err(too_large(limit));
        }
        hash.update(&chunk);
        file.write_all(&chunk).await.map_err(anyhow::Error::from)?;
    }
    file.sync_all().await.map_err(anyhow::Error::from)?;
    if len == 0 {
        return Err(AppError::BadRequest(
            "the upload is empty: send a dataset container (safetensors) as the body".into(),
        ));
    }
    Ok((len, hex::encode(hash.finalize())))
}

async fn list_datasets(
    caller: Caller,
    State(state): State<AppState>,
) -> Result<Json<Vec<DatasetRow>>, AppError> {
    let f = factory(&state).clone();
    blocking(move || {
        let mine = lister(&f, &caller)?;
        let rows = f.store().datasets()?;
        Ok(Json(rows.into_iter().filter(|d| mine(&d.id)).collect()))
    })
    .await
}

#[derive(Serialize, serde::Deserialize)]
struct Thumbnail {
    index: usize,
    label: u32,
    class: String,
    /// `data:image/png;base64,…`, pixels clamped to [0, 1].
    png: String,
}

#[derive(Serialize)]
struct DatasetDetail {
    #[serde(flatten)]
    row: DatasetRow,
    thumbnails: Vec<Thumbnail>,
}

async fn get_dataset(
    caller: Caller,
    State(state): State<AppState>,
    IdPath(id): IdPath<DatasetId>,
) -> Result<Json<DatasetDetail>, AppError> {
    let f = factory(&state).clone();
    blocking(move || {
        visible(&f, &caller, &id, "dataset")?;
        let row = f
            .store()
            .dataset(&id)?
            .ok_or_else(|| AppError::NotFound(format!("dataset {id:?}")))?;
        let cached = std::fs::read(f.store().thumbnails_path(&id))
            .ok()
            .and_then(|b| serde_json::from_slice::<Vec<Thumbnail>>(&b).ok());
        let thumbnails = match cached {
            Some(t) => t,
            // Uploaded before thumbnails were stored (or the file was lost): draw them and keep
            // them.
            None => {
                let bytes =
                    std::fs::read(f.store().dataset_path(&id)).map_err(anyhow::Error::from)?;
                let c = container::decode(&bytes)
                    .map_err(|e| anyhow::anyhow!("stored dataset {id} no longer decodes: {e}"))?;
                let t = thumbnails(&c.dataset, 8)?;
                if let Ok(json) = serde_json::to_vec(&t) {
                    let _ = f
                        .store()
                        .write_atomic(&f.store().thumbnails_path(&id), &json);
                }
                t
            }
        };
        Ok(Json(DatasetDetail { thumbnails, row }))
    })
    .await
}

/// Up to `max` thumbnails: the first image of each class, then more in order.
fn thumbnails(data: &veil::data::ImageDataset, max: usize) -> anyhow::Result<Vec<Thumbnail>> {
    use base64::Engine;
    let mut picks: Vec<usize> = Vec::new();
    for class in 0..data.num_classes() as u32 {
        if let Some(i) = data.labels.iter().position(|&l| l == class) {
            picks.push(i);
        }
    }
    picks.truncate(max);
    let mut i = 0;
    while picks.len() < max.min(data.len()) {
        if !picks.contains(&i) {
            picks.push(i);
        }
        i += 1;
    }
    let s = data.shape;
    picks
        .into_iter()
        .map(|i| {
            let px = data.image(i);
            let plane = s.height * s.width;
            let byte = |v: f32| (v.clamp(0.0, 1.0) * 255.0).round() as u8;
            let mut png = Vec::new();
            let encoder = image::codecs::png::PngEncoder::new(&mut png);
            if s.channels >= 3 {
                let rgb: Vec<u8> = (0..plane)
                    .flat_map(|p| [byte(px[p]), byte(px[plane + p]), byte(px[2 * plane + p])])
                    .collect();
                image::ImageEncoder::write_image(
                    encoder,
                    &rgb,
                    s.width as u32,
                    s.height as u32,
                    image::ExtendedColorType::Rgb8,
                )?;
            } else {
                let grey: Vec<u8> = px[..plane].iter().map(|&v| byte(v)).collect();
                image::ImageEncoder::write_image(
                    encoder,
                    &grey,
                    s.width as u32,
                    s.height as u32,
                    image::ExtendedColorType::L8,
                )?;
            }
            Ok(Thumbnail {
                index: i,
                label: data.labels[i],
                class: data.class_names[data.labels[i] as usize].clone(),
                png: format!(
                    "data:image/png;base64,{}",
                    base64::engine::general_purpose::STANDARD.encode(&png)
                ),
            })
        })
        .collect()
}

async fn download_dataset(
    caller: Caller,
    State(state): State<AppState>,
    IdPath(id): IdPath<DatasetId>,
) -> Result<Response, AppError> {
    let f = factory(&state).clone();
    visible(&f, &caller, &id, "dataset")?;
    if f.store().dataset(&id)?.is_none() {
        return Err(AppError::NotFound(format!("dataset {id:?}")));
    }
    let bytes = tokio::fs::read(f.store().dataset_path(&id))
        .await
        .map_err(anyhow::Error::from)?;
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_owned()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{id}.safetensors\""),
            ),
        ],
        bytes,
    )
        .into_response())
}

async fn delete_dataset(
    caller: Caller,
    State(state): State<AppState>,
    IdPath(id): IdPath<DatasetId>,
) -> Result<StatusCode, AppError> {
    let f = factory(&state).clone();
    blocking(move || {
        visible(&f, &caller, &id, "dataset")?;
        let deletion = f.store().delete_dataset(&id)?;
        match deletion {
            DatasetDeletion::InUse { job } => Err(AppError::Conflict(format!(
                "dataset {id} is used by job {job}, which has not finished: cancel it first"
            ))),
            DatasetDeletion::NotFound => Err(AppError::NotFound(format!("dataset {id:?}"))),
            DatasetDeletion::Deleted => {
                let _ = std::fs::remove_file(f.store().dataset_path(&id));
                let _ = std::fs::remove_file(f.store().thumbnails_path(&id));
                tracing::info!(dataset = %id, "dataset deleted");
                Ok(StatusCode::NO_CONTENT)
            }
        }
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// Jobs

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewJob {
    dataset: String,
    #[serde(default = "default_arch")]
    arch: String,
    #[serde(default = "default_epochs")]
    epochs: usize,
    #[serde(default = "default_batch")]
    batch_size: usize,
    #[serde(default = "default_lr")]
    learning_rate: f64,
    #[serde(default = "default_val")]
    validation_split: f64,
    #[serde(default)]
    seed: u64,
}

fn default_arch() -> String {
    "small-cnn".into()
}
fn default_epochs() -> usize {
    10
}
fn default_batch() -> usize {
    64
}
fn default_lr() -> f64 {
    2e-3
}
fn default_val() -> f64 {
    0.1
}

/// A job as the API shows it: the stored row, live progress while running, and the queue
/// position while queued.
#[derive(Serialize)]
pub struct JobView {
    #[serde(flatten)]
    row: JobRow,
    progress: Option<LiveProgress>,
}

fn view(f: &Factory, row: JobRow) -> JobView {
    JobView {
        progress: f.live(&row.id),
        row,
    }
}

fn job_or_404(f: &Factory, id: &str) -> Result<JobRow, AppError> {
    f.store()
        .job(id)?
        .ok_or_else(|| AppError::NotFound(format!("job {id:?}")))
}

async fn create_job(
    caller: Caller,
    State(state): State<AppState>,
    body: Result<Json<NewJob>, axum::extract::rejection::JsonRejection>,
) -> Result<(StatusCode, Json<JobView>), AppError> {
    caller.require()?;
    let Json(req) = body?;
    if Arch::parse(&req.arch).is_none() {
        let names: Vec<&str> = Arch::ALL.iter().map(|(n, _)| *n).collect();
        return Err(AppError::BadRequest(format!(
            "unknown architecture {:?}; choose one of {}",
            req.arch,
            names.join(", ")
        )));
    }
    if !(1..=1000).contains(&req.epochs) {
        return Err(AppError::BadRequest("epochs must be 1 to 1000".into()));
    }
    if !(1..=4096).contains(&req.batch_size) {
        return Err(AppError::BadRequest("batch_size must be 1 to 4096".into()));
    }
    if !(req.learning_rate > 0.0 && req.learning_rate <= 1.0) {
        return Err(AppError::BadRequest(
            "learning_rate must be in (0, 1]".into(),
        ));
    }
    if !(0.0..=0.5).contains(&req.validation_split) {
        return Err(AppError::BadRequest(
            "validation_split must be in [0, 0.5]".into(),
        ));
    }
    let dataset = DatasetId::parse(&req.dataset)?;
    let f = factory(&state).clone();
    blocking(move || {
        visible(&f, &caller, &dataset, "dataset")?;
        if f.store().dataset(&dataset)?.is_none() {
            return Err(AppError::NotFound(format!("dataset {:?}", req.dataset)));
        }
        let spec = JobSpec {
            dataset: req.dataset,
            arch: req.arch,
            epochs: req.epochs,
            batch_size: req.batch_size,
            learning_rate: req.learning_rate,
            validation_split: req.validation_split,
            seed: req.seed,
            arch_revision: inference::ARCH_REVISION,
        };
        let id = f.admit(
            caller.owner(),
            |q, usage| q.admit_job(usage),
            || Ok(f.submit(&spec, caller.owner())?),
        )?;
        let row = f
            .store()
            .job(&id)?
            .ok_or_else(|| anyhow::anyhow!("job {id} vanished"))?;
        Ok((StatusCode::ACCEPTED, Json(view(&f, row))))
    })
    .await
}

async fn list_jobs(
    caller: Caller,
    State(state): State<AppState>,
) -> Result<Json<Vec<JobView>>, AppError> {
    let f = factory(&state).clone();
    blocking(move || {
        let mine = lister(&f, &caller)?;
        let rows = f.store().jobs()?;
        Ok(Json(
            rows.into_iter()
                .filter(|r| mine(&r.id))
                .map(|r| view(&f, r))
                .collect(),
        ))
    })
    .await
}

async fn get_job(
    caller: Caller,
    State(state): State<AppState>,
    IdPath(id): IdPath<JobId>,
) -> Result<Json<JobView>, AppError> {
    let f = factory(&state).clone();
    blocking(move || {
        visible(&f, &caller, &id, "job")?;
        let row = job_or_404(&f, &id)?;
        Ok(Json(view(&f, row)))
    })
    .await
}

async fn cancel_job(
    caller: Caller,
    State(state): State<AppState>,
    IdPath(id): IdPath<JobId>,
) -> Result<Json<JobView>, AppError> {
    let f = factory(&state).clone();
    blocking(move || {
        visible(&f, &caller, &id, "job")?;
        let row = job_or_404(&f, &id)?;
        if row.state.is_terminal() || !f.cancel(&id)? {
            return Err(AppError::Conflict(format!(
                "job {id} has already ended ({})",
                row.state.as_str()
            )));
        }
        let row = f.store().job(&id)?.unwrap_or(row);
        Ok(Json(view(&f, row)))
    })
    .await
}

/// `text/event-stream` of one job: a `snapshot` event (the job as `GET /api/jobs/{id}` shows
/// it), then `progress`, `epoch` and `state` events until the job ends.
async fn job_events(
    caller: Caller,
    State(state): State<AppState>,
    IdPath(id): IdPath<JobId>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, AppError> {
    let f = factory(&state).clone();
    {
        let (f, id) = (f.clone(), id.clone());
        blocking(move || visible(&f, &caller, &id, "job")).await?;
    }
    // Subscribe before reading the snapshot, so that nothing falls between the two.
    let rx = f.subscribe();
    let row = {
        let f = f.clone();
        let id = id.clone();
        blocking(move || job_or_404(&f, &id)).await?
    };
    let ended = row.state.is_terminal();
    let snapshot = Event::default()
        .event("snapshot")
        .json_data(view(&f, row))
        .map_err(|e| AppError::Internal(e.into()))?;
    // Events of this job until (and including) its terminal state event; nothing after.
    let updates = futures_util::stream::unfold((rx, ended), move |(mut rx, done)| {
        let id = id.clone();
        async move {
            if done {
                return None;
            }
            loop {
                match rx.recv().await {
                    Ok(ev) if ev.job() == id.as_str() => {
                        let (name, terminal) = match &ev {
                            JobEvent::Progress { .. } => ("progress", false),
                            JobEvent::Epoch { .. } => ("epoch", false),
                            JobEvent::State { state, .. } => ("state", state.is_terminal()),
                        };
                        let event = Event::default()
                            .event(name)
                            .json_data(&ev)
                            .unwrap_or_else(|_| Event::default().event(name));
                        return Some((Ok(event), (rx, terminal)));
                    }
                    Ok(_) => {}
                    // A slow reader that lagged misses some events; epochs and states are also in
                    // the job's row, which a client can re-read.
                    Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            }
        }
    });
    let stream = futures_util::stream::once(std::future::ready(Ok(snapshot)))
        .chain(updates)
        .take_until(f.stopped());
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

// ---------------------------------------------------------------------------------------------
// Models and classification

/// The trained models `caller` may see (what `GET /api/models` lists beside the built-in ones;
/// none without a token).
pub(crate) fn trained_models(f: &Factory, caller: &Caller) -> Result<Vec<ModelRow>, AppError> {
    if *caller == Caller::Anonymous {
        return Ok(Vec::new());
    }
    let mine = lister(f, caller)?;
    Ok(f.store()
        .models()?
        .into_iter()
        .filter(|m| mine(&m.id))
        .collect())
}

/// Loads model `name` (a built-in model's name, or a trained model's id) through the cache.
pub(crate) fn ready_model(f: &Factory, name: &str) -> Result<Arc<Ready>, AppError> {
    // The hot path: a model in the cache needs no database read and no card parsing.
    if let Some(ready) = f.models().get(name) {
        return Ok(ready);
    }
    let device = burn::prelude::Device::flex();
    if store::valid_id(name, "mdl") {
        let row = f
            .store()
            .model(name)?
            .ok_or_else(|| AppError::NotFound(format!("model {name:?}")))?;
        let path = f.store().model_path(name);
        return Ok(f.models().get_or_load(name, || {
            let arch = Arch::parse(&row.arch).ok_or_else(|| {
                anyhow::anyhow!("model {name} has unknown architecture {}", row.arch)
            })?;
            let bytes = std::fs::read(&path)?;
            Ok(Ready {
                model: LoadedModel::load(
                    arch,
                    row.arch_revision,
                    row.shape,
                    row.classes.len(),
                    &bytes,
                    &device,
                )?,
                shape: row.shape,
                classes: row.classes.clone(),
            })
        })?);
    }
    if crate::embedded::builtin_model(name).is_none() {
        return Err(AppError::NotFound(format!("model {name:?}")));
    }
    Ok(f.models().get_or_load(name, || {
        inference::load_builtin(name, &device)?
            .ok_or_else(|| anyhow::anyhow!("built-in model {name} vanished"))
    })?)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonImages {
    /// Each image: C·H·W values, row-major `[C, H, W]`, in the model's input shape.
    images: Vec<Vec<f32>>,
}

#[derive(Serialize)]
struct Classification {
    model: String,
    classes: Vec<String>,
    predictions: Vec<u32>,
    probabilities: Vec<Vec<f32>>,
    elapsed_ms: f64,
}

const SAFETENSORS: &str = "application/vnd.veil.safetensors";

fn is_binary(content_type: &str) -> bool {
    let ct = content_type.split(';').next().unwrap_or("").trim();
    ct == "application/octet-stream" || ct == SAFETENSORS
}

async fn classify(
    caller: Caller,
    State(state): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, AppError> {
    let f = factory(&state).clone();
    // A trained model is its owner's; the built-in ones are public.
    if store::valid_id(&name, "mdl") {
        let (f, name, caller) = (f.clone(), name.clone(), caller.clone());
        blocking(move || visible(&f, &caller, &name, "model")).await?;
    }
    let cfg = f.config().clone();
    let started = Instant::now();
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let binary = is_binary(content_type);
    let json = content_type
        .split(';')
        .next()
        .is_some_and(|c| c.trim() == "application/json");
    if !binary && !json {
        return Err(AppError::UnsupportedMediaType(format!(
            "send images as application/json ({{\"images\": [[…], …]}}) or as a safetensors \
             body (application/octet-stream or {SAFETENSORS}); got {content_type:?}"
        )));
    }
    if json && body.len() > cfg.max_classify_json_bytes {
        return Err(AppError::PayloadTooLarge(format!(
            "JSON bodies are limited to {} MiB: send large batches as safetensors",
            cfg.max_classify_json_bytes >> 20
        )));
    }
    let want_binary = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("application/octet-stream") || a.contains(SAFETENSORS));
    // Wait for a slot, within the timeout: an overloaded server answers 503, not a hang.
    let slots = f.inference_slots();
    let permit = tokio::time::timeout(cfg.inference_timeout, slots.acquire_owned())
        .await
        .map_err(|_| AppError::Unavailable("the classifier is busy: retry shortly".into()))?
        .map_err(|_| AppError::Unavailable("the classifier is shutting down".into()))?;
    let remaining = cfg.inference_timeout.saturating_sub(started.elapsed());
    let task = {
        let f = f.clone();
        let name = name.clone();
        tokio::task::spawn_blocking(
            move || -> Result<(Vec<f32>, usize, Vec<String>), AppError> {
                let _permit = permit;
                let ready = ready_model(&f, &name)?;
                let (pixels, shape) = if binary {
                    container::decode_images(&body).map_err(|e| {
                        AppError::BadRequest(format!(
                            "the body is not a safetensors image batch: {e}"
                        ))
                    })?
                } else {
                    let req: JsonImages = serde_json::from_slice(&body).map_err(|e| {
                        AppError::BadRequest(format!(
                            "the body is not {{\"images\": [[numbers], …]}}: {e}"
                        ))
                    })?;
                    let len = ready.shape.len();
                    if let Some((i, img)) =
                        req.images.iter().enumerate().find(|(_, v)| v.len() != len)
                    {
                        return Err(AppError::BadRequest(format!(
                            "image {i} has {} values; the model takes {} (C·H·W = {len})",
                            img.len(),
                            ready.shape
                        )));
                    }
                    (req.images.concat(), ready.shape)
                };
                let n = inference::check_batch(&pixels, shape, ready.shape, cfg.max_classify_batch)
                    .map_err(|e| AppError::BadRequest(e.to_string()))?;
                f.rates()
                    .classify(&caller, u32::try_from(n).unwrap_or(u32::MAX))?;
                let probs =
                    ready
                        .model
                        .probabilities(&pixels, shape, &burn::prelude::Device::flex());
                let k = ready.classes.len();
                debug_assert_eq!(probs.len(), n * k);
                Ok((probs, k, ready.classes.clone()))
            },
        )
    };
    let (probs, k, classes) = tokio::time::timeout(remaining, task)
        .await
        .map_err(|_| AppError::Unavailable("the classification timed out".into()))?
        .map_err(|e| AppError::Internal(anyhow::anyhow!("classification task failed: {e}")))??;
    if want_binary {
        let bytes = container::encode_matrix("probabilities", &probs, k)
            .map_err(|e| AppError::Internal(e.into()))?;
        return Ok(([(header::CONTENT_TYPE, SAFETENSORS)], bytes).into_response());
    }
    let probabilities: Vec<Vec<f32>> = probs.chunks_exact(k).map(<[f32]>::to_vec).collect();
    Ok(Json(Classification {
        model: name,
        classes,
        predictions: veil::nn::train::argmax_rows(&probs, k),
        probabilities,
        elapsed_ms: started.elapsed().as_secs_f64() * 1e3,
    })
    .into_response())
}
