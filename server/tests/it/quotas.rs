//! Each quota per owner answers 429 with `Retry-After` once it is used up, other owners and the
//! operator are not held back, and `/api/me` and `/api/health` report the quotas.

use std::sync::Arc;

use axum::http::{HeaderMap, StatusCode, header};
use serde_json::{Value, json};
use veil_server::factory::Factory;
use veil_server::factory::quotas::Quotas;

use crate::common::{self, OPERATOR};
use crate::owners::{new_owner, req, req_with_headers};

fn factory(quotas: Quotas) -> Arc<Factory> {
    let dir = tempfile::tempdir().unwrap().keep();
    common::start(&dir, |c| c.quotas = quotas)
}

/// 429 with a `Retry-After` of 1 to 60 s and an error naming `needle`.
fn assert_429(status: StatusCode, v: &Value, headers: &HeaderMap, needle: &str) -> u64 {
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{v}");
    let retry: u64 = headers[header::RETRY_AFTER]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry), "Retry-After {retry}");
    assert_eq!(v["retry_after_s"], json!(retry));
    let error = v["error"].as_str().unwrap();
    assert!(error.contains(needle), "{error:?} lacks {needle:?}");
    retry
}

fn digits(n: usize) -> Vec<u8> {
    common::pack(&veil::data::digits().subset(&(0..n).collect::<Vec<_>>()))
}

async fn upload(f: &Arc<Factory>, token: &str, bytes: Vec<u8>) -> (StatusCode, Value, HeaderMap) {
    req_with_headers(
        f,
        Some(token),
        "POST",
        "/api/datasets?name=d",
        Some(("application/octet-stream", bytes)),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_bytes_and_datasets_are_limited_per_owner() {
    let one = digits(100).len() as u64;
    let f = factory(Quotas {
        stored_bytes: one * 3 / 2,
        datasets: 2,
        ..Quotas::default()
    });
    let (a, b) = (new_owner(&f).await, new_owner(&f).await);
    let (status, first, _) = upload(&f, &a, digits(100)).await;
    assert_eq!(status, StatusCode::CREATED, "{first}");
    // A second dataset of the same size does not fit A's bytes; nothing is recorded.
    let (status, v, h) = upload(&f, &a, digits(100)).await;
    assert_429(status, &v, &h, "delete a dataset or model");
    let (_, me) = req(&f, Some(&a), "GET", "/api/me", None).await;
    assert_eq!(me["usage"]["datasets"], 1, "{me}");
    assert_eq!(me["usage"]["stored_bytes"], json!(one), "{me}");
    assert_eq!(me["quotas"]["stored_bytes"], json!(one * 3 / 2), "{me}");
    // B has its own quota; the operator has none.
    let (status, v, _) = upload(&f, &b, digits(100)).await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    for _ in 0..3 {
        let (status, v, _) = upload(&f, OPERATOR, digits(100)).await;
        assert_eq!(status, StatusCode::CREATED, "{v}");
    }
    // Small datasets fit A's bytes until the count is reached.
    let (status, v, _) = upload(&f, &a, digits(10)).await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    let (status, v, h) = upload(&f, &a, digits(10)).await;
    assert_429(status, &v, &h, "2 datasets and its quota is 2");
    // Deleting one makes room again.
    let id = first["id"].as_str().unwrap();
    let (status, _) = req(&f, Some(&a), "DELETE", &format!("/api/datasets/{id}"), None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, v, _) = upload(&f, &a, digits(100)).await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_and_running_jobs_are_limited_per_owner() {
    let f = factory(Quotas {
        active_jobs: 1,
        ..Quotas::default()
    });
    let (a, b) = (new_owner(&f).await, new_owner(&f).await);
    let (_, ds, _) = upload(&f, &a, digits(200)).await;
    let ds = ds["id"].as_str().unwrap();
    let job = json!({"dataset": ds, "epochs": 1000, "batch_size": 50})
        .to_string()
        .into_bytes();
    let submit = |token: String| {
        let (f, job) = (f.clone(), job.clone());
        async move {
            req_with_headers(
                &f,
                Some(&token),
                "POST",
                "/api/jobs",
                Some(("application/json", job)),
            )
            .await
        }
    };
    let (status, first, _) = submit(a.clone()).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{first}");
    let (status, v, h) = submit(a.clone()).await;
    assert_429(status, &v, &h, "jobs queued or running (1)");
    let (_, me) = req(&f, Some(&a), "GET", "/api/me", None).await;
    assert_eq!(me["usage"]["active_jobs"], 1, "{me}");
    // B cannot train on A's dataset at all (404), whatever its quota.
    let (status, _, _) = submit(b).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // Cancelling frees the slot.
    let id = first["id"].as_str().unwrap();
    let (status, _) = req(
        &f,
        Some(&a),
        "POST",
        &format!("/api/jobs/{id}/cancel"),
        None,
    )
    .await;
    assert!(status.is_success());
    common::wait_for_job(&f, id, common::ended).await;
    let (status, v, _) = submit(a.clone()).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{v}");
    let id = v["id"].as_str().unwrap();
    req(
        &f,
        Some(&a),
        "POST",
        &format!("/api/jobs/{id}/cancel"),
        None,
    )
    .await;
    common::wait_for_job(&f, id, common::ended).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn classifications_are_limited_per_owner_by_images_a_minute() {
    let f = factory(Quotas {
        classifications_per_minute: 5,
        ..Quotas::default()
    });
    let (a, b) = (new_owner(&f).await, new_owner(&f).await);
    let data = veil::data::digits();
    let images = |n: usize| {
        json!({"images": (0..n).map(|i| data.image(i)).collect::<Vec<_>>()})
            .to_string()
            .into_bytes()
    };
    let classify = |token: Option<String>, n: usize| {
        let (f, body) = (f.clone(), images(n));
        async move {
            req_with_headers(
                &f,
                token.as_deref(),
                "POST",
                "/api/models/digits-cnn/classify",
                Some(("application/json", body)),
            )
            .await
        }
    };
    let (status, v, _) = classify(Some(a.clone()), 3).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let (status, v, h) = classify(Some(a.clone()), 3).await;
    assert_429(status, &v, &h, "3 of 5 images classified a minute");
    // What is left still fits.
    let (status, v, _) = classify(Some(a.clone()), 2).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let (_, me) = req(&f, Some(&a), "GET", "/api/me", None).await;
    assert_eq!(me["usage"]["classifications_last_minute"], 5, "{me}");
    // One batch larger than the whole quota can never pass: 413, not a wait.
    let (status, v, _) = classify(Some(b.clone()), 6).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{v}");
    let (status, v, _) = classify(Some(b), 5).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    // Callers without a token share one window; the operator has none.
    let (status, v, _) = classify(None, 5).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let (status, v, h) = classify(None, 1).await;
    assert_429(status, &v, &h, "without an owner token share");
    for _ in 0..3 {
        let (status, v, _) = classify(Some(OPERATOR.into()), 5).await;
        assert_eq!(status, StatusCode::OK, "{v}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attacks_are_limited_per_owner_and_a_refused_request_costs_nothing() {
    let f = factory(Quotas {
        attacks_per_minute: 1,
        ..Quotas::default()
    });
    let a = new_owner(&f).await;
    let start = |body: Value| {
        let (f, a) = (f.clone(), a.clone());
        async move {
            req_with_headers(
                &f,
                Some(&a),
                "POST",
                "/api/leakage/attacks",
                Some(("application/json", body.to_string().into_bytes())),
            )
            .await
        }
    };
    // A bad request is a 400 and does not use the quota.
    let (status, v, _) = start(json!({"sample": 99})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    let (status, attack, _) = start(json!({"sample": 0})).await;
    assert_eq!(status, StatusCode::CREATED, "{attack}");
    let id = attack["id"].as_str().unwrap();
    let (status, v, h) = start(json!({"sample": 1})).await;
    assert_429(status, &v, &h, "1 of 1 attacks started a minute");
    // The RTAS lab counts against the same quota.
    let (status, v, h) = req_with_headers(
        &f,
        Some(&a),
        "POST",
        "/api/rtas/runs",
        Some((
            "application/json",
            json!({"samples": [0]}).to_string().into_bytes(),
        )),
    )
    .await;
    assert_429(status, &v, &h, "attacks started");
    let (_, me) = req(&f, Some(&a), "GET", "/api/me", None).await;
    assert_eq!(me["usage"]["attacks_last_minute"], 1, "{me}");
    req(
        &f,
        None,
        "POST",
        &format!("/api/leakage/attacks/{id}/cancel"),
        None,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_reports_the_quotas_and_the_operator_has_none() {
    let quotas = Quotas {
        stored_bytes: 123 << 20,
        datasets: 7,
        active_jobs: 3,
        classifications_per_minute: 99,
        attacks_per_minute: 4,
    };
    let f = factory(quotas.clone());
    let (status, health) = req(&f, None, "GET", "/api/health", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        health["quotas"],
        json!({
            "stored_bytes": 123u64 << 20,
            "datasets": 7,
            "active_jobs": 3,
            "classifications_per_minute": 99,
            "attacks_per_minute": 4,
        })
    );
    let (_, me) = req(&f, Some(OPERATOR), "GET", "/api/me", None).await;
    assert_eq!(me["role"], "operator");
    assert!(me["quotas"].is_null() && me["usage"].is_null(), "{me}");
}
