//! The black-box lab: membership inference finds the members of an overfitted model, extraction
//! agrees more with more queries, inversion finds each class's look, and a trained model can be
//! attacked by its owner only.

use std::time::Duration;

use axum::http::StatusCode;
use serde_json::{Value, json};
use veil_server::AppState;

use crate::common;
use crate::leakage::parse_sse;

async fn req(
    state: &AppState,
    token: Option<&str>,
    method: &str,
    uri: &str,
    body: Option<(&str, Vec<u8>)>,
) -> (StatusCode, Vec<u8>) {
    let (status, _, bytes) = common::request(state, token, method, uri, body).await;
    (status, bytes)
}

async fn json_req(
    state: &AppState,
    token: Option<&str>,
    method: &str,
    uri: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let body = body.map(|b| ("application/json", b.to_string().into_bytes()));
    let (s, bytes) = req(state, token, method, uri, body).await;
    (s, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

/// Starts an attack and reads its whole stream.
async fn attack(state: &AppState, token: Option<&str>, request: Value) -> Vec<(String, Value)> {
    let (status, view) =
        json_req(state, token, "POST", "/api/blackbox/attacks", Some(request)).await;
    assert_eq!(status, StatusCode::CREATED, "{view}");
    let url = view["events_url"].as_str().unwrap().to_owned();
    let (status, body) = tokio::time::timeout(
        Duration::from_secs(300),
        req(state, token, "GET", &url, None),
    )
    .await
    .expect("the stream ends");
    assert_eq!(status, StatusCode::OK);
    parse_sse(&String::from_utf8_lossy(&body))
}

fn setup() -> AppState {
    let dir = tempfile::tempdir().unwrap().keep();
    common::state(&common::start(&dir, |_| {}))
}

async fn new_owner(state: &AppState) -> String {
    let (status, v) = json_req(state, None, "POST", "/api/owners", None).await;
    assert_eq!(status, StatusCode::CREATED);
    v["token"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn membership_finds_the_members_of_an_overfitted_model_and_only_its_owner_may_ask() {
    let state = setup();
    let (a, b) = (new_owner(&state).await, new_owner(&state).await);
    // 120 digits, half held out, trained to memorise them.
    let data = veil::data::digits().subset(&(0..120).collect::<Vec<_>>());
    let (status, bytes) = req(
        &state,
        Some(&a),
        "POST",
        "/api/datasets?name=few",
        Some(("application/octet-stream", common::pack(&data))),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    let ds: Value = serde_json::from_slice(&bytes).unwrap();
    let job =
        json!({"dataset": ds["id"], "epochs": 100, "batch_size": 16, "validation_split": 0.5});
    let (status, job) = json_req(&state, Some(&a), "POST", "/api/jobs", Some(job)).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{job}");
    let id = job["id"].as_str().unwrap();
    let model = loop {
        let (_, j) = json_req(&state, Some(&a), "GET", &format!("/api/jobs/{id}"), None).await;
        if common::ended(&j) {
            assert_eq!(j["state"], "succeeded", "{j}");
            break j["model_id"].as_str().unwrap().to_owned();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let events = attack(
        &state,
        Some(&a),
        json!({"model": model, "attack": "membership"}),
    )
    .await;
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["membership", "done"], "{events:?}");
    let m = &events[0].1;
    let (members, non_members) = (
        m["members"].as_u64().unwrap(),
        m["non_members"].as_u64().unwrap(),
    );
    assert_eq!(members + non_members, 120, "{m}");
    let auc = m["auc"].as_f64().unwrap();
    assert!(
        m["train_accuracy"].as_f64().unwrap() > m["test_accuracy"].as_f64().unwrap(),
        "{m}"
    );
    assert!(
        auc > 0.55 && m["advantage"].as_f64().unwrap() > 0.1,
        "membership AUC {auc} on an overfitted model: {m}"
    );
    let hist = |k: &str| -> u64 {
        m[k].as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap())
            .sum()
    };
    assert_eq!(
        (hist("member_histogram"), hist("non_member_histogram")),
        (members, non_members)
    );

    // B may not attack A's model (404, as for a missing one); no token is 401.
    let req_b = json!({"model": model, "attack": "membership"});
    let (status, v) = json_req(
        &state,
        Some(&b),
        "POST",
        "/api/blackbox/attacks",
        Some(req_b.clone()),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{v}");
    let (status, _) = json_req(&state, None, "POST", "/api/blackbox/attacks", Some(req_b)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extraction_agrees_more_with_more_queries_and_bad_requests_are_refused() {
    let state = setup();
    let events = attack(
        &state,
        None,
        json!({"model": "digits-cnn", "attack": "extraction"}),
    )
    .await;
    let points: Vec<&Value> = events
        .iter()
        .filter(|(n, _)| n == "point")
        .map(|(_, v)| v)
        .collect();
    assert_eq!(points.len(), 6, "{events:?}");
    let agreement = |p: &Value| p["agreement"].as_f64().unwrap();
    let (first, last) = (agreement(points[0]), agreement(points[5]));
    assert_eq!(points[5]["queries"], 800);
    assert!(
        last > first + 0.1 && last > 0.85,
        "agreement from 25 to 800 queries: {first} → {last}"
    );
    assert_eq!(events.last().unwrap().0, "done", "{events:?}");

    for (body, status, needle) in [
        (
            json!({"model": "digits-cnn", "attack": "inference"}),
            StatusCode::BAD_REQUEST,
            "unknown attack",
        ),
        (
            json!({"model": "cloud-cnn", "attack": "membership"}),
            StatusCode::BAD_REQUEST,
            "must know which images",
        ),
        (
            json!({"model": "digits-cnn"}),
            StatusCode::BAD_REQUEST,
            "attack",
        ),
        (
            json!({"model": "mdl-0123456789abcdef", "attack": "membership"}),
            StatusCode::UNAUTHORIZED,
            "owner token",
        ),
    ] {
        let (s, v) = json_req(
            &state,
            None,
            "POST",
            "/api/blackbox/attacks",
            Some(body.clone()),
        )
        .await;
        assert_eq!(s, status, "{body}: {v}");
        assert!(v["error"].as_str().unwrap().contains(needle), "{body}: {v}");
    }
}

/// Inverting `digits-cnn` through its probabilities: one `inverted` event per class, each image
/// convinces the model, and most show their own class's features (the class identified from the
/// training part's class means) and sit nearer their class's mean than the domain's mean does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inversion_finds_each_class_of_the_digits_model() {
    let state = setup();
    let events = attack(
        &state,
        None,
        json!({"model": "digits-cnn", "attack": "inversion"}),
    )
    .await;
    let inverted: Vec<&Value> = events
        .iter()
        .filter(|(n, _)| n == "inverted")
        .map(|(_, v)| v)
        .collect();
    assert_eq!(inverted.len(), 10, "{events:?}");
    let mut identified = 0;
    let mut nearer = 0;
    for (k, v) in inverted.iter().enumerate() {
        assert_eq!(v["class"], k);
        assert_eq!(v["image"].as_array().unwrap().len(), 64);
        assert_eq!(v["class_mean"].as_array().unwrap().len(), 64);
        assert!(v["confidence"].as_f64().unwrap() > 0.9, "{v}");
        assert_eq!(v["queries"], 6001);
        identified += usize::from(v["nearest_class"] == k);
        nearer +=
            usize::from(v["psnr"].as_f64().unwrap() > v["domain_mean_psnr"].as_f64().unwrap());
    }
    assert!(identified >= 8, "{identified} of 10 classes identified");
    assert!(
        nearer >= 6,
        "{nearer} of 10 nearer their class mean than the domain mean"
    );
    assert!(events.iter().any(|(n, _)| n == "progress"));
    assert_eq!(events.last().unwrap().0, "done", "{events:?}");
}
