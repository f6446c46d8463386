//! Owners of the factory's objects. A visitor gets an owner token (`POST /api/owners`: 32 random
//! bytes the server draws), sends it as `Authorization: Bearer …`, and owns the datasets, jobs
//! and models it makes: only it (and the operator) can list, read, download, classify with,
//! cancel or delete them. Built-in models, the public flows and the labs stay public.
//!
//! The server stores the SHA-256 of each token, never the token: the token has 256 bits of
//! entropy, so a fast hash is enough (a slow password hash protects low-entropy secrets). The
//! token is not a key: it guards access to the factory, and the factory still sees every
//! ciphertext it is given.
//!
//! Someone else's object answers 404, as a missing one does, so no owner learns that another
//! owner's id exists.

use axum::extract::{FromRequestParts, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::{Json, http::header};
use base64::Engine;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::{AppError, AppState};

/// Who sent a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// No token: public routes only.
    Anonymous,
    /// An owner, by the SHA-256 (hex) of its token.
    Owner(String),
    /// The operator (`VEIL_OPERATOR_TOKEN`): sees and may delete everything.
    Operator,
}

impl Caller {
    /// The owner recorded on what this caller makes (None for the operator).
    pub fn owner(&self) -> Option<&str> {
        match self {
            Caller::Owner(o) => Some(o),
            _ => None,
        }
    }

    /// 401 unless the request carried a valid token.
    pub fn require(&self) -> Result<(), AppError> {
        match self {
            Caller::Anonymous => Err(AppError::Unauthorized(
                "this route needs an owner token (Authorization: Bearer …): get one with \
                 POST /api/owners, or `veil factory login`"
                    .into(),
            )),
            _ => Ok(()),
        }
    }

    /// Whether this caller may see an object owned by `owner` (None: the operator's).
    pub fn sees(&self, owner: Option<&str>) -> bool {
        match self {
            Caller::Operator => true,
            Caller::Owner(me) => owner == Some(me.as_str()),
            Caller::Anonymous => false,
        }
    }
}

/// The SHA-256 of a token, hex: what the store keeps.
pub fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// A fresh token: `veil_` and 43 base64url characters (32 random bytes).
pub fn new_token() -> Result<String, AppError> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)
        .map_err(|e| AppError::Internal(anyhow::anyhow!("no randomness: {e}")))?;
    Ok(format!(
        "veil_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    ))
}

/// Equal without an early exit (both are hashes of the same length).
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, AppError> {
        let Some(value) = parts.headers.get(header::AUTHORIZATION) else {
            return Ok(Caller::Anonymous);
        };
        let token = value
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty() && t.len() <= 256)
            .ok_or_else(|| {
                AppError::Unauthorized("the Authorization header is not `Bearer <token>`".into())
            })?;
        let hash = token_hash(token);
        if let Some(op) = &state.factory.config().operator_token_sha256
            && same(op, &hash)
        {
            return Ok(Caller::Operator);
        }
        let f = state.factory.clone();
        let known = {
            let hash = hash.clone();
            tokio::task::spawn_blocking(move || f.store().owner_exists(&hash))
                .await
                .map_err(|e| AppError::Internal(e.into()))??
        };
        if known {
            Ok(Caller::Owner(hash))
        } else {
            Err(AppError::Unauthorized(
                "this owner token is unknown to this factory (it may have been reset): get a new \
                 one with POST /api/owners"
                    .into(),
            ))
        }
    }
}

/// `POST /api/owners`.
#[derive(Debug, Serialize)]
pub struct NewOwner {
    /// The token: send it as `Authorization: Bearer <token>`. Shown once; the server keeps only
    /// its hash.
    pub token: String,
}

/// `POST /api/owners`: a new owner and its token.
pub async fn create_owner(
    State(state): State<AppState>,
) -> Result<(StatusCode, Json<NewOwner>), AppError> {
    let token = new_token()?;
    let hash = token_hash(&token);
    let f = state.factory.clone();
    tokio::task::spawn_blocking(move || f.store().insert_owner(&hash))
        .await
        .map_err(|e| AppError::Internal(e.into()))??;
    Ok((StatusCode::CREATED, Json(NewOwner { token })))
}

/// `GET /api/me`.
#[derive(Debug, Serialize)]
pub struct Me {
    /// `owner` or `operator`.
    pub role: &'static str,
    /// Datasets this caller sees.
    pub datasets: usize,
    /// Bytes of those datasets.
    pub dataset_bytes: u64,
    /// Jobs this caller sees.
    pub jobs: usize,
    /// Trained models this caller sees.
    pub models: usize,
    /// What this owner holds against its quotas (absent for the operator, who has none).
    pub usage: Option<super::quotas::Usage>,
    /// This server's quotas per owner (absent for the operator).
    pub quotas: Option<super::quotas::Quotas>,
}

/// `GET /api/me`: who the token is, what it owns, and how much of its quotas it uses.
pub async fn me(caller: Caller, State(state): State<AppState>) -> Result<Json<Me>, AppError> {
    caller.require()?;
    let f = state.factory.clone();
    tokio::task::spawn_blocking(move || {
        let store = f.store();
        let owned = match caller.owner() {
            Some(o) => Some(store.owned_by(o)?),
            None => None,
        };
        let mine = |id: &str| owned.as_ref().is_none_or(|s| s.contains(id));
        let datasets: Vec<_> = store
            .datasets()?
            .into_iter()
            .filter(|d| mine(&d.id))
            .collect();
        let usage = match caller.owner() {
            Some(o) => {
                let (classified, attacks) = f.rates().used(&caller);
                Some(super::quotas::Usage {
                    classifications_last_minute: classified,
                    attacks_last_minute: attacks,
                    ..store.usage(o)?
                })
            }
            None => None,
        };
        Ok(Json(Me {
            quotas: usage.as_ref().map(|_| f.config().quotas.clone()),
            usage,
            role: if caller == Caller::Operator {
                "operator"
            } else {
                "owner"
            },
            datasets: datasets.len(),
            dataset_bytes: datasets.iter().map(|d| d.bytes).sum(),
            jobs: store.jobs()?.iter().filter(|j| mine(&j.id)).count(),
            models: store.models()?.iter().filter(|m| mine(&m.id)).count(),
        }))
    })
    .await
    .map_err(|e| AppError::Internal(e.into()))?
}
