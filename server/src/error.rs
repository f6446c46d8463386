//! The one error type of every handler: a status and a message safe to show, never internals.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

/// An error answered to a client.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// 401: the route needs an owner token, or the one sent is unknown.
    #[error("{0}")]
    Unauthorized(String),
    /// 404 with what was not found.
    #[error("{0} not found")]
    NotFound(String),
    /// 400 with what is wrong with the request.
    #[error("{0}")]
    BadRequest(String),
    /// 409: the request conflicts with the current state (e.g. deleting a dataset in use).
    #[error("{0}")]
    Conflict(String),
    /// 413: the body is larger than the route allows.
    #[error("{0}")]
    PayloadTooLarge(String),
    /// 415: the body's content type is not one the route reads.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// 503: overloaded or timed out; retry later.
    #[error("{0}")]
    Unavailable(String),
    /// 500: logged in full, answered with a generic message.
    #[error("internal error")]
    Internal(#[from] anyhow::Error),
}

impl From<axum::extract::rejection::JsonRejection> for AppError {
    /// A JSON body that cannot be read: 413 past the route's limit, 415 without a JSON content
    /// type, 400 with serde's reason (naming the field) otherwise.
    fn from(e: axum::extract::rejection::JsonRejection) -> Self {
        match e.status() {
            StatusCode::PAYLOAD_TOO_LARGE => AppError::PayloadTooLarge(e.body_text()),
            StatusCode::UNSUPPORTED_MEDIA_TYPE => AppError::UnsupportedMediaType(e.body_text()),
            _ => AppError::BadRequest(e.body_text()),
        }
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let status = match &self {
            AppError::Unauthorized(_) => {
                return (
                    StatusCode::UNAUTHORIZED,
                    [(axum::http::header::WWW_AUTHENTICATE, "Bearer")],
                    Json(serde_json::json!({ "error": self.to_string() })),
                )
                    .into_response();
            }
            AppError::NotFound(_) => StatusCode::NOT_FOUND,
            AppError::BadRequest(_) => StatusCode::BAD_REQUEST,
            AppError::Conflict(_) => StatusCode::CONFLICT,
            AppError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            AppError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            AppError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            AppError::Internal(err) => {
                tracing::error!(error = ?err, "internal error");
                StatusCode::INTERNAL_SERVER_ERROR
            }
        };
        (
            status,
            Json(serde_json::json!({ "error": self.to_string() })),
        )
            .into_response()
    }
}
