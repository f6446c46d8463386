//! Helpers shared by the factory's integration tests: a factory on a temporary directory,
//! requests through `app().oneshot`, the digits as containers, and polling a job.

#![allow(dead_code)] // Each test binary uses its own subset.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use http_body_util::BodyExt;
use serde_json::Value;
use tower::ServiceExt;
use veil::data::ImageDataset;
use veil::data::container::{self, ContainerMeta, PixelType};
use veil_server::factory::{Factory, FactoryConfig};
use veil_server::{AppState, app};

/// The operator token of every test factory; [`call`] sends it, so the tests that are not about
/// owners see everything.
pub const OPERATOR: &str = "test-operator-token-0123456789abcdef0123";

/// `Authorization` with [`OPERATOR`].
pub fn operator_auth() -> (header::HeaderName, String) {
    (header::AUTHORIZATION, format!("Bearer {OPERATOR}"))
}

pub fn start(dir: &Path, tweak: impl FnOnce(&mut FactoryConfig)) -> Arc<Factory> {
    let mut cfg = FactoryConfig::new(dir);
    cfg.operator_token_sha256 = Some(veil_server::factory::owners::token_hash(OPERATOR));
    tweak(&mut cfg);
    Factory::start(cfg).unwrap()
}

pub fn state(f: &Arc<Factory>) -> AppState {
    AppState::with_defaults(veil_server::default_www_dir(), f.clone())
        .expect("the embedded flows load")
}

pub async fn call(
    f: &Arc<Factory>,
    method: &str,
    uri: &str,
    content_type: Option<&str>,
    body: Vec<u8>,
) -> (StatusCode, Vec<u8>) {
    let (name, value) = operator_auth();
    let mut req = Request::builder()
        .method(method)
        .uri(uri)
        .header(name, value);
    if let Some(ct) = content_type {
        req = req.header(header::CONTENT_TYPE, ct);
    }
    send(&state(f), req.body(Body::from(body)).unwrap()).await
}

/// A request with bearer `token` (None: none) and `body` as (content type, bytes), sent to the
/// app of `state`: the status, the headers and the whole body.
pub async fn request(
    state: &AppState,
    token: Option<&str>,
    method: &str,
    uri: &str,
    body: Option<(&str, Vec<u8>)>,
) -> (StatusCode, header::HeaderMap, Vec<u8>) {
    let mut r = Request::builder().method(method).uri(uri);
    if let Some(t) = token {
        r = r.header(header::AUTHORIZATION, format!("Bearer {t}"));
    }
    let body = match body {
        Some((ct, bytes)) => {
            r = r.header(header::CONTENT_TYPE, ct);
            Body::from(bytes)
        }
        None => Body::empty(),
    };
    let resp = app(state.clone())
        .oneshot(r.body(body).unwrap())
        .await
        .unwrap();
    let (status, headers) = (resp.status(), resp.headers().clone());
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (status, headers, bytes.to_vec())
}

/// Sends `req` to the app of `state` (no socket): the status and the whole body.
pub async fn send(state: &AppState, req: Request<Body>) -> (StatusCode, Vec<u8>) {
    let resp = app(state.clone()).oneshot(req).await.unwrap();
    let status = resp.status();
    (
        status,
        resp.into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec(),
    )
}

pub async fn json_call(
    f: &Arc<Factory>,
    method: &str,
    uri: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let (status, bytes) = match body {
        Some(b) => {
            call(
                f,
                method,
                uri,
                Some("application/json"),
                b.to_string().into_bytes(),
            )
            .await
        }
        None => call(f, method, uri, None, Vec::new()).await,
    };
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

pub fn digits_split() -> (ImageDataset, ImageDataset) {
    veil::data::digits().split(0.2, 1)
}

pub fn pack(data: &ImageDataset) -> Vec<u8> {
    container::encode(data, &ContainerMeta::plain(), PixelType::U8).unwrap()
}

pub async fn upload(f: &Arc<Factory>, bytes: Vec<u8>) -> (StatusCode, Value) {
    let (s, b) = call(
        f,
        "POST",
        "/api/datasets?name=digits",
        Some("application/octet-stream"),
        bytes,
    )
    .await;
    (s, serde_json::from_slice(&b).unwrap_or(Value::Null))
}

pub async fn wait_for_job(f: &Arc<Factory>, id: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let (s, job) = json_call(f, "GET", &format!("/api/jobs/{id}"), None).await;
        assert_eq!(s, StatusCode::OK, "{job}");
        if done(&job) {
            return job;
        }
        assert!(
            Instant::now() < deadline,
            "job {id} did not get there: {job}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub fn ended(job: &Value) -> bool {
    matches!(
        job["state"].as_str(),
        Some("succeeded" | "failed" | "cancelled")
    )
}
