//! The gradient-leakage lab through `app().oneshot`: attacks on plain and encrypted training,
//! the event stream, limits, cancellation and bad requests.

use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use serde_json::{Value, json};
use veil_server::AppState;

pub(crate) fn state() -> AppState {
    // Each test gets its own lab (and an empty factory).
    let dir = tempfile::tempdir().unwrap().keep();
    crate::common::state(&crate::common::start(&dir, |_| {}))
}

pub(crate) async fn call(
    state: &AppState,
    method: &str,
    uri: &str,
    body: Option<Value>,
) -> (StatusCode, Vec<u8>) {
    let mut req = Request::builder().method(method).uri(uri);
    if body.is_some() {
        req = req.header("content-type", "application/json");
    }
    let body = body.map_or(Body::empty(), |b| Body::from(b.to_string()));
    crate::common::send(state, req.body(body).unwrap()).await
}

pub(crate) async fn json(
    state: &AppState,
    method: &str,
    uri: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let (status, bytes) = call(state, method, uri, body).await;
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or_else(|_| {
            panic!(
                "{method} {uri}: {status} {}",
                String::from_utf8_lossy(&bytes)
            )
        }),
    )
}

/// Parses a whole `text/event-stream` body into `(event, data)` pairs.
pub(crate) fn parse_sse(text: &str) -> Vec<(String, Value)> {
    text.split("\n\n")
        .filter_map(|block| {
            let mut name = None;
            let mut data = String::new();
            for line in block.lines() {
                if let Some(n) = line.strip_prefix("event:") {
                    name = Some(n.trim().to_owned());
                } else if let Some(d) = line.strip_prefix("data:") {
                    data.push_str(d.trim_start());
                }
            }
            Some((name?, serde_json::from_str(&data).ok()?))
        })
        .collect()
}

async fn run_to_end(state: &AppState, request: Value) -> Vec<(String, Value)> {
    let (status, view) = json(state, "POST", "/api/leakage/attacks", Some(request)).await;
    assert_eq!(status, StatusCode::CREATED, "{view}");
    let url = view["events_url"].as_str().unwrap().to_owned();
    let (status, body) =
        tokio::time::timeout(Duration::from_secs(120), call(state, "GET", &url, None))
            .await
            .expect("the stream ends");
    assert_eq!(status, StatusCode::OK);
    parse_sse(&String::from_utf8_lossy(&body))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_training_leaks_the_digit_and_encrypted_training_only_the_ciphertext() {
    let state = state();
    let (status, info) = json(&state, "GET", "/api/leakage", None).await;
    assert_eq!(status, StatusCode::OK);
    let samples = info["samples"].as_array().unwrap();
    assert_eq!(samples.len(), 20);
    assert_eq!(samples[4]["label"], 2);
    assert_eq!(samples[4]["plaintext"].as_array().unwrap().len(), 64);
    assert_eq!(info["demo_key_fingerprint"].as_str().unwrap().len(), 19);

    for sample in [3usize, 12] {
        // Plain: the reconstruction converges to the digit, and the PSNR rises along the way.
        let events = run_to_end(&state, json!({"sample": sample, "training": "plain"})).await;
        let (last, done) = events.last().unwrap();
        assert_eq!(last, "done", "{done}");
        let curve: Vec<f64> = events
            .iter()
            .filter(|(n, _)| n == "progress")
            .map(|(_, v)| v["psnr_vs_input"].as_f64().unwrap())
            .collect();
        assert!(curve.len() >= 30, "{} progress events", curve.len());
        assert!(curve[curve.len() - 1] > curve[0] + 10.0, "{curve:?}");
        assert!(done["psnr_vs_input"].as_f64().unwrap() >= 25.0, "{done}");
        assert_eq!(done["psnr_vs_input"], done["psnr_vs_plaintext"]);
        assert_eq!(done["label_correct"], true);

        // Encrypted: it converges to the ciphertext, and learns nothing more of the digit.
        let events = run_to_end(&state, json!({"sample": sample, "training": "encrypted"})).await;
        let (last, done) = events.last().unwrap();
        assert_eq!(last, "done", "{done}");
        let vs_input = done["psnr_vs_input"].as_f64().unwrap();
        let vs_plain = done["psnr_vs_plaintext"].as_f64().unwrap();
        let cipher = samples[sample]["ciphertext_psnr"].as_f64().unwrap();
        assert!(vs_input >= 25.0, "{done}");
        assert!(
            vs_plain <= cipher + 1.0,
            "{vs_plain} dB vs the ciphertext's own {cipher} dB"
        );
        assert!(
            cipher < 15.0,
            "the ciphertext itself shows the digit: {cipher} dB"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_analytic_attack_is_exact_and_needs_the_mlp() {
    let state = state();
    let events = run_to_end(
        &state,
        json!({"sample": 7, "method": "analytic", "arch": "mlp"}),
    )
    .await;
    assert_eq!(events.len(), 1);
    let (name, done) = &events[0];
    assert_eq!(name, "done");
    assert!(done["psnr_vs_input"].as_f64().unwrap() >= 60.0, "{done}");
    let (status, v) = json(
        &state,
        "POST",
        "/api/leakage/attacks",
        Some(json!({"sample": 7, "method": "analytic"})),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(v["error"].as_str().unwrap().contains("mlp"), "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_refused_with_reasons() {
    let state = state();
    for (body, needle) in [
        (json!({"sample": 99}), "sample 99"),
        (json!({"sample": 0, "method": "magic"}), "unknown method"),
        (json!({"sample": 0, "arch": "vgg"}), "unknown network"),
        (json!({"sample": 0, "iterations": 0}), "iterations"),
        (json!({"sample": 0, "iterations": 100000}), "iterations"),
        (json!({"sample": 0, "training": "rot13"}), "training"),
        (json!({"sample": 0, "key": "…"}), "key"),
        (json!({}), "sample"),
    ] {
        let (status, v) = json(&state, "POST", "/api/leakage/attacks", Some(body.clone())).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {v}");
        assert!(v["error"].as_str().unwrap().contains(needle), "{body}: {v}");
    }
    let (status, _) = call(
        &state,
        "POST",
        "/api/leakage/attacks",
        Some(json!("x".repeat(20_000))),
    )
    .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    let (status, _) = json(
        &state,
        "GET",
        "/api/leakage/attacks/atk-0000000000000000",
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_most_two_attacks_run_and_cancel_stops_one() {
    let state = state();
    let long = json!({"sample": 1, "iterations": 3000});
    let (s1, a) = json(&state, "POST", "/api/leakage/attacks", Some(long.clone())).await;
    let (s2, b) = json(&state, "POST", "/api/leakage/attacks", Some(long.clone())).await;
    assert_eq!((s1, s2), (StatusCode::CREATED, StatusCode::CREATED));
    let (s3, v) = json(&state, "POST", "/api/leakage/attacks", Some(long.clone())).await;
    assert_eq!(s3, StatusCode::SERVICE_UNAVAILABLE, "{v}");
    for view in [&a, &b] {
        let id = view["id"].as_str().unwrap();
        let (status, _) = json(
            &state,
            "POST",
            &format!("/api/leakage/attacks/{id}/cancel"),
            None,
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        let (_, body) = tokio::time::timeout(
            Duration::from_secs(30),
            call(&state, "GET", view["events_url"].as_str().unwrap(), None),
        )
        .await
        .expect("a cancelled attack's stream ends");
        let events = parse_sse(&String::from_utf8_lossy(&body));
        let (name, last) = events.last().unwrap();
        assert_eq!(name, "cancelled", "{last}");
        assert!(last["iteration"].as_u64().unwrap() < 3000);
        let (_, view) = json(&state, "GET", &format!("/api/leakage/attacks/{id}"), None).await;
        assert_eq!(view["state"], "cancelled");
    }
    // The slots are free again (the threads release them right after the last event).
    let mut started = false;
    for _ in 0..50 {
        let (status, _) = json(
            &state,
            "POST",
            "/api/leakage/attacks",
            Some(json!({"sample": 1, "iterations": 5})),
        )
        .await;
        if status == StatusCode::CREATED {
            started = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(started, "no slot became free after cancelling");
}
