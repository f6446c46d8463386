//! The API through `app().oneshot`, no socket.

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use tower::ServiceExt;
use veil_server::{AppState, app};

fn state() -> AppState {
    AppState::with_defaults(veil_server::default_www_dir())
}

async fn get(uri: &str) -> (StatusCode, Vec<u8>) {
    let response = app(state())
        .oneshot(Request::get(uri).body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes()
        .to_vec();
    (status, body)
}

#[tokio::test]
async fn health_reports_ok_and_the_model_count() {
    let (status, body) = get("/api/health").await;
    assert_eq!(status, StatusCode::OK);
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["status"], "ok");
    assert_eq!(v["models"], 1);
}

#[tokio::test]
async fn models_list_the_demo_cnn_with_its_measured_accuracy() {
    let (status, body) = get("/api/models").await;
    assert_eq!(status, StatusCode::OK);
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let m = &v[0];
    assert_eq!(m["name"], "digits-cnn");
    assert_eq!(m["input"]["height"], 8);
    assert!(m["test_accuracy"].as_f64().unwrap() >= 0.95);
    let (status, weights) = get(m["weights_url"].as_str().unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(weights, veil::model::demo::WEIGHTS);
}

#[tokio::test]
async fn unknown_model_and_route_are_404_with_a_message() {
    let (status, body) = get("/api/models/nope").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["error"], "model \"nope\" not found");
    let (status, _) = get("/api/nothing-here").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn the_page_is_served_with_framing_denied() {
    let response = app(state())
        .oneshot(Request::get("/").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["x-frame-options"], "DENY");
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let html = String::from_utf8_lossy(&body);
    assert!(html.contains("<title>Veil"), "{html}");
}
