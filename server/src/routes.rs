//! Routes: `/api/...` and the static pages.

use axum::extract::{Path, State};
use axum::http::{HeaderValue, header};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use tower_http::compression::CompressionLayer;
use tower_http::services::ServeDir;
use tower_http::set_header::SetResponseHeaderLayer;
use tower_http::trace::TraceLayer;

use crate::{AppError, AppState};

#[derive(Serialize)]
struct Health {
    status: &'static str,
    version: &'static str,
    models: usize,
}

#[derive(Serialize)]
struct ModelSummary {
    name: String,
    dataset: String,
    input: veil::data::ImageShape,
    classes: Vec<String>,
    test_accuracy: f32,
    weights_url: String,
    card_url: String,
}

pub(crate) fn router(state: AppState) -> Router {
    let api = Router::new()
        .route("/api/health", get(health))
        .route("/api/models", get(list_models))
        .route("/api/models/{name}", get(model_card))
        .route("/api/models/{name}/weights", get(model_weights))
        .fallback(api_not_found);
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
        .layer(CompressionLayer::new())
        .layer(TraceLayer::new_for_http())
}

async fn health(State(state): State<AppState>) -> Json<Health> {
    Json(Health {
        status: "ok",
        version: env!("CARGO_PKG_VERSION"),
        models: state.models.len(),
    })
}

async fn list_models(State(state): State<AppState>) -> Json<Vec<ModelSummary>> {
    Json(
        state
            .models
            .iter()
            .map(|m| ModelSummary {
                name: m.card.name.clone(),
                dataset: m.card.dataset.clone(),
                input: m.card.config.input_shape(),
                classes: m.card.classes.clone(),
                test_accuracy: m.card.test_accuracy,
                weights_url: format!("/api/models/{}/weights", m.card.name),
                card_url: format!("/api/models/{}", m.card.name),
            })
            .collect(),
    )
}

fn find<'a>(state: &'a AppState, name: &str) -> Result<&'a crate::ServedModel, AppError> {
    state
        .models
        .iter()
        .find(|m| m.card.name == name)
        .ok_or_else(|| AppError::NotFound(format!("model {name:?}")))
}

async fn model_card(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<veil::model::ModelCard>, AppError> {
    Ok(Json(find(&state, &name)?.card.clone()))
}

async fn model_weights(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<impl IntoResponse, AppError> {
    let model = find(&state, &name)?;
    Ok((
        [(header::CONTENT_TYPE, "application/octet-stream")],
        model.weights.as_ref().clone(),
    ))
}

async fn api_not_found() -> AppError {
    AppError::NotFound("API route".into())
}
