//! The API through `app().oneshot`, no socket.

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use tower::ServiceExt;
use veil_server::{AppState, app};

fn state() -> AppState {
    // Each test gets a fresh, empty factory.
    let dir = tempfile::tempdir().unwrap().keep();
    let factory =
        veil_server::factory::Factory::start(veil_server::factory::FactoryConfig::new(dir))
            .unwrap();
    AppState::with_defaults(veil_server::default_www_dir(), factory)
        .expect("the embedded flows load")
}

async fn get(uri: &str) -> (StatusCode, Vec<u8>) {
    crate::common::send(&state(), Request::get(uri).body(Body::empty()).unwrap()).await
}

#[tokio::test]
async fn health_reports_ok_and_the_model_count() {
    let (status, body) = get("/api/health").await;
    assert_eq!(status, StatusCode::OK);
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["status"], "ok");
    assert_eq!(v["models"], 2, "two built-in models");
}

#[tokio::test]
async fn models_list_the_demo_cnn_with_its_measured_accuracy() {
    let (status, body) = get("/api/models").await;
    assert_eq!(status, StatusCode::OK);
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let m = &v[0];
    assert_eq!(m["name"], "digits-cnn");
    assert_eq!(m["input"]["height"], 8);
    assert_eq!(m["kind"], "builtin");
    assert!(m["accuracy"].as_f64().unwrap() >= 0.95);
    let (status, weights) = get(m["weights_url"].as_str().unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(weights, veil::nn::model::demo::WEIGHTS);
}

/// OWSD's cloud with more labels than the owner's: listed beside the demo CNN, with the digits
/// first and 32 shapes after, and its classify route reproduces the logits in its card.
#[tokio::test]
async fn the_cloud_with_more_labels_is_served_and_reproduces_its_card() {
    let (status, body) = get("/api/models").await;
    assert_eq!(status, StatusCode::OK);
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let m = v
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == veil_server::embedded::CLOUD)
        .expect("the cloud is listed");
    assert_eq!(m["kind"], "builtin");
    assert_eq!(m["scheme"], "plain");
    assert_eq!(m["dataset"], veil_server::embedded::CLOUD_DATASET);
    let classes = m["classes"].as_array().unwrap();
    assert_eq!(classes.len(), 42);
    assert_eq!(classes[3], "3");
    assert!(classes[10].as_str().unwrap().starts_with("shape:"));

    let (card, _) = veil_server::embedded::builtin_model(veil_server::embedded::CLOUD).unwrap();
    let data = veil_server::embedded::cloud_data().unwrap();
    let (_, test) = data.split(card.split.0, card.split.1);
    let images: Vec<Vec<f32>> = card
        .reference_indices
        .iter()
        .map(|&i| test.image(i).to_vec())
        .collect();
    let response = app(state())
        .oneshot(
            Request::post(m["classify_url"].as_str().unwrap())
                .header("content-type", "application/json")
                .body(Body::from(
                    serde_json::json!({ "images": images }).to_string(),
                ))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let r: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let want = veil::nn::train::argmax_rows(&card.reference_logits, 42);
    let got: Vec<u32> = r["predictions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_u64().unwrap() as u32)
        .collect();
    assert_eq!(got.len(), 16);
    assert_eq!(got, want);
    // Probabilities are the softmax of the card's logits.
    let p0 = r["probabilities"][0].as_array().unwrap();
    let row = &card.reference_logits[..42];
    let max = row.iter().fold(f32::MIN, |m, v| m.max(*v));
    let z: f32 = row.iter().map(|v| (v - max).exp()).sum();
    for (p, l) in p0.iter().zip(row) {
        let want = (l - max).exp() / z;
        assert!((p.as_f64().unwrap() as f32 - want).abs() < 1e-4);
    }
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
async fn the_digits_flows_are_served_as_shipped_and_unknown_ones_are_404() {
    let (status, body) = get("/api/flows").await;
    assert_eq!(status, StatusCode::OK);
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let digits = &v[0];
    assert_eq!(digits["name"], "digits");
    assert_eq!(digits["shape"]["height"], 8);
    assert_eq!(digits["bins"], 17);
    assert_eq!(digits["classes"].as_array().unwrap().len(), 10);
    let flows = digits["flows"].as_array().unwrap();
    assert_eq!(flows.len(), 11);
    let (status, manifest) = get(digits["manifest_url"].as_str().unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        manifest,
        veil_server::embedded::DIGITS_FLOWS_MANIFEST.as_bytes()
    );
    let class3 = flows.iter().find(|f| f["name"] == "class-3").unwrap();
    let (status, bytes) = get(class3["url"].as_str().unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    let shipped = veil_server::embedded::DIGITS_FLOW_FILES
        .iter()
        .find(|(n, _)| *n == "flow-class-3.bpk")
        .unwrap()
        .1;
    assert_eq!(bytes, shipped);
    assert_eq!(class3["bytes"], shipped.len());
    for uri in [
        "/api/flows/cifar/flows.json",
        "/api/flows/digits/flow-class-10.bpk",
        "/api/flows/digits/..%2Fsecret",
    ] {
        let (status, body) = get(uri).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{uri}");
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert!(
            v["error"].as_str().unwrap().contains("not found"),
            "{uri}: {v}"
        );
    }
}

#[tokio::test]
async fn the_page_is_served_with_framing_denied_and_its_content_security_policy() {
    let response = app(state())
        .oneshot(Request::get("/").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let h = response.headers();
    assert_eq!(h["x-frame-options"], "DENY");
    let csp = h["content-security-policy"].to_str().unwrap();
    for directive in [
        "default-src 'self'",
        "connect-src 'self';",
        "script-src 'self' 'wasm-unsafe-eval';",
        "frame-ancestors 'none'",
    ] {
        assert!(csp.contains(directive), "{directive} missing from {csp}");
    }
    assert!(!csp.contains("unsafe-inline"), "{csp}");
    assert_eq!(h["cross-origin-opener-policy"], "same-origin");
    assert_eq!(h["cross-origin-embedder-policy"], "require-corp");
    assert_eq!(h["x-content-type-options"], "nosniff");
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let html = String::from_utf8_lossy(&body);
    assert!(html.contains("<title>Veil"), "{html}");
}

/// `docs/api.md` names exactly the routes in `ROUTES`, and each of those is routed (answers
/// something other than the API's "route not found" or 405).
#[tokio::test]
async fn docs_api_md_matches_the_router() {
    let doc = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/api.md"),
    )
    .unwrap();
    let mut documented: Vec<(String, String)> = doc
        .lines()
        .filter_map(|l| l.strip_prefix("### "))
        .filter_map(|l| l.split_once(' '))
        .map(|(m, p)| (m.to_owned(), p.trim().to_owned()))
        .collect();
    let mut routes: Vec<(String, String)> = veil_server::routes::ROUTES
        .iter()
        .map(|(m, p)| ((*m).to_owned(), (*p).to_owned()))
        .collect();
    documented.sort();
    routes.sort();
    assert_eq!(
        documented, routes,
        "docs/api.md and routes::ROUTES disagree"
    );
    let state = state();
    for (method, path) in veil_server::routes::ROUTES {
        let uri = path
            .replace("{id}", "ds-0000000000000000")
            .replace("{name}", "no-such-model");
        let resp = app(state.clone())
            .oneshot(
                Request::builder()
                    .method(*method)
                    .uri(&uri)
                    .header("content-type", "application/json")
                    .body(Body::from("{}"))
                    .unwrap(),
            )
            .await
            .unwrap();
        let status = resp.status();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        let text = String::from_utf8_lossy(&body);
        assert_ne!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
        assert!(
            !text.contains("API route not found"),
            "{method} {path} is not routed: {status} {text}"
        );
    }
}
