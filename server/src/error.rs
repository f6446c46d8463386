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
    /// 429: past one of the owner's quotas; `Retry-After` says when to try again.
    #[error("{message}")]
    TooManyRequests {
        /// Which quota, and how much of it is used.
        message: String,
        /// Seconds until the request may succeed.
        retry_after_s: u64,
    },
    /// 503: overloaded or timed out; retry later.
    #[error("{0}")]
    Unavailable(String),
    /// 408: the client sent the body too slowly (or stopped); nothing was stored.
    #[error("{0}")]
    RequestTimeout(String),
    /// 507: the data directory's disk is full; nothing was stored.
    #[error("{0}")]
    InsufficientStorage(String),
    /// 500: logged in full, answered with a generic message.
    #[error("internal error")]
    Internal(anyhow::Error),
}

impl From<anyhow::Error> for AppError {
    /// A full disk (an `ENOSPC` or `EDQUOT` anywhere in the chain, or SQLite's `SQLITE_FULL`) is
    /// 507 with what to do; anything else is a 500.
    fn from(e: anyhow::Error) -> Self {
        if is_disk_full(&e) {
            tracing::warn!(error = %e, "the data directory's disk is full");
            AppError::InsufficientStorage(
                "the factory's disk is full: nothing was stored. Delete a dataset or model, or ask \
                 the operator to make room"
                    .into(),
            )
        } else {
            AppError::Internal(e)
        }
    }
}

/// Whether `e` comes from a full disk or an exhausted disk quota.
pub fn is_disk_full(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            matches!(
                io.kind(),
                std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
            )
        } else if let Some(rusqlite::Error::SqliteFailure(f, _)) =
            cause.downcast_ref::<rusqlite::Error>()
        {
            f.code == rusqlite::ErrorCode::DiskFull
        } else {
            false
        }
    })
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
            AppError::TooManyRequests { retry_after_s, .. } => {
                return (
                    StatusCode::TOO_MANY_REQUESTS,
                    [(axum::http::header::RETRY_AFTER, retry_after_s.to_string())],
                    Json(serde_json::json!({
                        "error": self.to_string(),
                        "retry_after_s": retry_after_s,
                    })),
                )
                    .into_response();
            }
            AppError::NotFound(_) => StatusCode::NOT_FOUND,
            AppError::BadRequest(_) => StatusCode::BAD_REQUEST,
            AppError::Conflict(_) => StatusCode::CONFLICT,
            AppError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            AppError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            AppError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            AppError::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            AppError::InsufficientStorage(_) => StatusCode::INSUFFICIENT_STORAGE,
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

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    #[test]
    fn a_full_disk_is_507_and_other_failures_500() {
        let full: anyhow::Error = std::io::Error::from(std::io::ErrorKind::StorageFull).into();
        let full = Err::<(), _>(full)
            .context("writing the dataset")
            .unwrap_err();
        assert!(matches!(
            AppError::from(full),
            AppError::InsufficientStorage(_)
        ));
        let sqlite = rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_FULL),
            None,
        );
        assert!(matches!(
            AppError::from(anyhow::Error::from(sqlite)),
            AppError::InsufficientStorage(_)
        ));
        let other: anyhow::Error = std::io::Error::from(std::io::ErrorKind::NotFound).into();
        assert!(matches!(AppError::from(other), AppError::Internal(_)));
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn writing_to_dev_full_is_recognised() {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .unwrap();
        let e = f.write_all(&[0; 16]).and_then(|()| f.flush()).unwrap_err();
        assert!(is_disk_full(&anyhow::Error::from(e)));
    }
}
