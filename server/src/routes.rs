//! Routes: `/api/...` and the static pages.

use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use tower_http::compression::CompressionLayer;
use tower_http::services::ServeDir;
use tower_http::set_header::SetResponseHeaderLayer;
use tower_http::trace::TraceLayer;

use crate::factory::owners::Caller;
use crate::{AppError, AppState};

/// The Content-Security-Policy of every response. `connect-src 'self'`: a page may fetch,
/// stream or open sockets to this server only, so no script (Veil's, a dependency's or an
/// injected one) can send an image or a key to another origin; images, workers and scripts come
/// from this origin too (images also from `data:` and `blob:` URLs the page makes itself). No
/// inline script or style attribute runs; `'wasm-unsafe-eval'` lets the page compile the wasm
/// client and nothing else. Forms and `<base>` cannot point elsewhere, and no site may frame a
/// page.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self' 'wasm-unsafe-eval'; \
     connect-src 'self'; img-src 'self' data: blob:; style-src 'self'; worker-src 'self'; \
     object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

#[derive(Serialize)]
struct Health {
    status: &'static str,
    version: &'static str,
    /// Built-in and trained models.
    models: usize,
    datasets: usize,
    /// Training jobs waiting for a worker.
    queue_depth: usize,
    /// Training jobs running now.
    running_jobs: usize,
    /// The limits every owner has (`GET /api/me` shows one owner's use of them).
    quotas: crate::factory::quotas::Quotas,
}

/// A model as `GET /api/models` lists it: a built-in one (public weights, shipped with Veil) or
/// one the factory trained.
#[derive(Serialize)]
struct ModelSummary {
    name: String,
    /// `builtin` or `trained`.
    kind: &'static str,
    arch: String,
    dataset: String,
    /// How the images it reads were made (`plain`, `flow-rotation`, …).
    scheme: String,
    key_fingerprint: Option<String>,
    input: veil::data::ImageShape,
    classes: Vec<String>,
    /// Built-in: accuracy on the held-out test split. Trained: on the job's validation part
    /// (absent without one).
    accuracy: Option<f32>,
    weights_url: String,
    card_url: String,
    classify_url: String,
}

/// Every API route, as `(method, path)`: `docs/api.md` describes exactly these (a test checks
/// both that each answers and that the document names each). Add a route here when you add it
/// to a router.
pub const ROUTES: &[(&str, &str)] = &[
    ("GET", "/api/health"),
    ("POST", "/api/owners"),
    ("GET", "/api/me"),
    ("POST", "/api/datasets"),
    ("GET", "/api/datasets"),
    ("GET", "/api/datasets/{id}"),
    ("GET", "/api/datasets/{id}/container"),
    ("DELETE", "/api/datasets/{id}"),
    ("POST", "/api/jobs"),
    ("GET", "/api/jobs"),
    ("GET", "/api/jobs/{id}"),
    ("GET", "/api/jobs/{id}/events"),
    ("POST", "/api/jobs/{id}/cancel"),
    ("GET", "/api/models"),
    ("GET", "/api/models/{name}"),
    ("GET", "/api/models/{name}/weights"),
    ("DELETE", "/api/models/{name}"),
    ("POST", "/api/models/{name}/classify"),
    ("GET", "/api/flows"),
    ("GET", "/api/flows/{family}/{file}"),
    ("GET", "/api/leakage"),
    ("POST", "/api/leakage/attacks"),
    ("GET", "/api/leakage/attacks/{id}"),
    ("GET", "/api/leakage/attacks/{id}/events"),
    ("POST", "/api/leakage/attacks/{id}/cancel"),
    ("GET", "/api/blackbox"),
    ("POST", "/api/blackbox/attacks"),
    ("GET", "/api/blackbox/attacks/{id}"),
    ("GET", "/api/blackbox/attacks/{id}/events"),
    ("POST", "/api/blackbox/attacks/{id}/cancel"),
    ("GET", "/api/rtas"),
    ("POST", "/api/rtas/runs"),
    ("GET", "/api/rtas/runs/{id}"),
    ("GET", "/api/rtas/runs/{id}/events"),
];

pub(crate) fn router(state: AppState) -> Router {
    let api = Router::new()
        .route("/api/health", get(health))
        .route("/api/models", get(list_models))
        .route("/api/models/{name}", get(model_card).delete(delete_model))
        .route("/api/models/{name}/weights", get(model_weights))
        .merge(crate::factory::api::router(&state.factory))
        .merge(crate::leakage::router())
        .merge(crate::rtas::lab::router())
        .merge(crate::blackbox::router())
        .merge(crate::flowsets::router())
        .route("/api/{*rest}", axum::routing::any(api_not_found));
    let pages = ServeDir::new(&state.www_dir).append_index_html_on_directories(true);
    Router::new()
        .merge(api)
        .fallback_service(pages)
        .with_state(state)
        // The pages handle keys: no other site may frame them.
        .layer(SetResponseHeaderLayer::if_not_present(
            header::X_FRAME_OPTIONS,
            HeaderValue::from_static("DENY"),
        ))
        // The browser enforces the invariant that nothing leaves for another origin, whatever a
        // script does: see CONTENT_SECURITY_POLICY.
        .layer(SetResponseHeaderLayer::if_not_present(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CONTENT_SECURITY_POLICY),
        ))
        // Cross-origin isolation (a page of its own browsing-context group, and only resources
        // that opt in): what wasm threads' SharedArrayBuffer needs.
        .layer(SetResponseHeaderLayer::if_not_present(
            header::HeaderName::from_static("cross-origin-opener-policy"),
            HeaderValue::from_static("same-origin"),
        ))
        .layer(SetResponseHeaderLayer::if_not_present(
            header::HeaderName::from_static("cross-origin-embedder-policy"),
            HeaderValue::from_static("require-corp"),
        ))
        .layer(SetResponseHeaderLayer::if_not_present(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ))
        .layer(SetResponseHeaderLayer::if_not_present(
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        ))
        .layer(CompressionLayer::new())
        .layer(TraceLayer::new_for_http())
}

async fn health(State(state): State<AppState>) -> Result<Json<Health>, AppError> {
    let f = state.factory.clone();
    let builtin = state.models.len();
    let queue_depth = f.queue_depth();
    tokio::task::spawn_blocking(move || {
        let (datasets, models) = f.store().counts()?;
        let (_, running_jobs) = f.store().count_active_jobs()?;
        Ok(Json(Health {
            status: "ok",
            version: env!("CARGO_PKG_VERSION"),
            models: builtin + models,
            datasets,
            queue_depth,
            running_jobs,
            quotas: f.config().quotas.clone(),
        }))
    })
    .await
    .map_err(|e| AppError::Internal(e.into()))?
}

fn builtin_summary(m: &crate::ServedModel) -> ModelSummary {
    let name = &m.card.name;
    ModelSummary {
        name: name.clone(),
        kind: "builtin",
        arch: "small-cnn".into(),
        dataset: m.card.dataset.clone(),
        scheme: "plain".into(),
        key_fingerprint: None,
        input: m.card.config.input_shape(),
        classes: m.card.classes.clone(),
        accuracy: Some(m.card.test_accuracy),
        weights_url: format!("/api/models/{name}/weights"),
        card_url: format!("/api/models/{name}"),
        classify_url: format!("/api/models/{name}/classify"),
    }
}

fn trained_summary(m: crate::factory::ModelRow) -> ModelSummary {
    let name = m.id;
    ModelSummary {
        kind: "trained",
        arch: m.arch,
        dataset: m.dataset_name,
        scheme: m.scheme,
        key_fingerprint: m.key_fingerprint,
        input: m.shape,
        classes: m.classes,
        accuracy: m.val_accuracy,
        weights_url: format!("/api/models/{name}/weights"),
        card_url: format!("/api/models/{name}"),
        classify_url: format!("/api/models/{name}/classify"),
        name,
    }
}

async fn list_models(
    caller: Caller,
    State(state): State<AppState>,
) -> Result<Json<Vec<ModelSummary>>, AppError> {
    let mut out: Vec<ModelSummary> = state.models.iter().map(builtin_summary).collect();
    let f = state.factory.clone();
    let trained =
        tokio::task::spawn_blocking(move || crate::factory::api::trained_models(&f, &caller))
            .await
            .map_err(|e| AppError::Internal(e.into()))??;
    out.extend(trained.into_iter().map(trained_summary));
    Ok(Json(out))
}

fn find<'a>(state: &'a AppState, name: &str) -> Result<&'a crate::ServedModel, AppError> {
    state
        .models
        .iter()
        .find(|m| m.card.name == name)
        .ok_or_else(|| AppError::NotFound(format!("model {name:?}")))
}

/// A trained model `caller` may see (its owner's, or any for the operator); 404 otherwise.
fn trained(
    state: &AppState,
    caller: &Caller,
    name: &str,
) -> Result<crate::factory::ModelRow, AppError> {
    if !crate::factory::store::valid_id(name, "mdl") {
        return Err(AppError::NotFound(format!("model {name:?}")));
    }
    crate::factory::api::visible(&state.factory, caller, name, "model")?;
    state
        .factory
        .store()
        .model(name)?
        .ok_or_else(|| AppError::NotFound(format!("model {name:?}")))
}

async fn model_card(
    caller: Caller,
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Response, AppError> {
    if let Ok(m) = find(&state, &name) {
        return Ok(Json(m.card.clone()).into_response());
    }
    Ok(Json(trained(&state, &caller, &name)?).into_response())
}

async fn model_weights(
    caller: Caller,
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<impl IntoResponse, AppError> {
    let bytes = match find(&state, &name) {
        Ok(model) => model.weights.as_ref().clone(),
        Err(_) => {
            trained(&state, &caller, &name)?;
            tokio::fs::read(state.factory.store().model_path(&name))
                .await
                .map_err(anyhow::Error::from)?
        }
    };
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], bytes))
}

async fn delete_model(
    caller: Caller,
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<StatusCode, AppError> {
    if find(&state, &name).is_ok() {
        return Err(AppError::BadRequest(format!(
            "{name} is a built-in model and cannot be deleted"
        )));
    }
    trained(&state, &caller, &name)?;
    let f = &state.factory;
    if f.store().delete_model(&name)? {
        f.models().forget(&name);
        let _ = std::fs::remove_file(f.store().model_path(&name));
    }
    Ok(StatusCode::NO_CONTENT)
}

async fn api_not_found() -> AppError {
    AppError::NotFound("API route".into())
}
