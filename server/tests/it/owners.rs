//! Owners through `app().oneshot`: tokens and their hashes, 401 without a valid token, one owner
//! isolated from another on every route of the factory, and the operator.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use serde_json::{Value, json};
use veil_server::factory::Factory;

use crate::common::{self, OPERATOR};

/// A request with `token` (None: none), answered as (status, JSON or null).
pub(crate) async fn req(
    f: &Arc<Factory>,
    token: Option<&str>,
    method: &str,
    uri: &str,
    body: Option<(&str, Vec<u8>)>,
) -> (StatusCode, Value) {
    let (status, v, _) = req_with_headers(f, token, method, uri, body).await;
    (status, v)
}

/// [`req`], with the response's headers.
pub(crate) async fn req_with_headers(
    f: &Arc<Factory>,
    token: Option<&str>,
    method: &str,
    uri: &str,
    body: Option<(&str, Vec<u8>)>,
) -> (StatusCode, Value, axum::http::HeaderMap) {
    let (status, headers, bytes) =
        common::request(&common::state(f), token, method, uri, body).await;
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        headers,
    )
}

pub(crate) async fn new_owner(f: &Arc<Factory>) -> String {
    let (status, v) = req(f, None, "POST", "/api/owners", None).await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    v["token"].as_str().unwrap().to_owned()
}

fn factory() -> (Arc<Factory>, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap().keep();
    (common::start(&dir, |_| {}), dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_is_random_and_only_its_hash_is_stored() {
    let (f, dir) = factory();
    let a = new_owner(&f).await;
    let b = new_owner(&f).await;
    assert_ne!(a, b);
    assert!(a.starts_with("veil_") && a.len() == 5 + 43, "{a}");
    let (status, me) = req(&f, Some(&a), "GET", "/api/me", None).await;
    assert_eq!(status, StatusCode::OK, "{me}");
    assert_eq!(me["role"], "owner");
    assert_eq!(me["datasets"], 0);
    // The store holds the SHA-256 of each token and never the token.
    let hash = veil_server::factory::owners::token_hash(&a);
    let mut stored = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap().flatten() {
        if entry
            .file_name()
            .to_string_lossy()
            .starts_with("veil.sqlite")
        {
            stored.extend(std::fs::read(entry.path()).unwrap());
        }
    }
    let has = |needle: &str| stored.windows(needle.len()).any(|w| w == needle.as_bytes());
    assert!(has(&hash), "the token's hash is not in the database");
    assert!(
        !has(&a) && !has(&a[5..]),
        "the token itself is in the database"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_valid_token_the_factory_answers_401_and_public_routes_stay_open() {
    let (f, _dir) = factory();
    for uri in ["/api/datasets", "/api/jobs", "/api/me"] {
        let (status, v) = req(&f, None, "GET", uri, None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{uri}: {v}");
        assert!(v["error"].as_str().unwrap().contains("owner token"), "{v}");
        let (status, v) = req(
            &f,
            Some("veil_not-a-token-of-this-factory"),
            "GET",
            uri,
            None,
        )
        .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{uri}: {v}");
        assert!(v["error"].as_str().unwrap().contains("unknown"), "{v}");
    }
    let bytes = common::pack(&veil::data::digits().subset(&(0..50).collect::<Vec<_>>()));
    let (status, _) = req(
        &f,
        None,
        "POST",
        "/api/datasets?name=x",
        Some(("application/octet-stream", bytes)),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // A header that is not `Bearer <token>`.
    let r = Request::get("/api/datasets")
        .header(header::AUTHORIZATION, "Basic dXNlcjpwYXNz")
        .body(Body::empty())
        .unwrap();
    let (status, _) = common::send(&common::state(&f), r).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // Public: health, the built-in models, the flows.
    for uri in [
        "/api/health",
        "/api/models",
        "/api/flows",
        "/api/models/digits-cnn",
    ] {
        let (status, v) = req(&f, None, "GET", uri, None).await;
        assert_eq!(status, StatusCode::OK, "{uri}: {v}");
    }
    let (_, models) = req(&f, None, "GET", "/api/models", None).await;
    assert!(
        models
            .as_array()
            .unwrap()
            .iter()
            .all(|m| m["kind"] == "builtin")
    );
}

/// What owner A makes, owner B can neither see, read, download, train on, classify with, cancel
/// nor delete; B's answers are those of a missing object. A can; the operator can too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owners_are_isolated_on_every_route() {
    let (f, _dir) = factory();
    let a = new_owner(&f).await;
    let b = new_owner(&f).await;
    let data = veil::data::digits().subset(&(0..200).collect::<Vec<_>>());
    let (status, ds) = req(
        &f,
        Some(&a),
        "POST",
        "/api/datasets?name=mine",
        Some(("application/octet-stream", common::pack(&data))),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{ds}");
    let ds = ds["id"].as_str().unwrap().to_owned();
    let job_body = json!({"dataset": ds, "epochs": 1, "batch_size": 50}).to_string();
    let (status, job) = req(
        &f,
        Some(&a),
        "POST",
        "/api/jobs",
        Some(("application/json", job_body.clone().into_bytes())),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{job}");
    let job = job["id"].as_str().unwrap().to_owned();
    let model = loop {
        let (status, j) = req(&f, Some(&a), "GET", &format!("/api/jobs/{job}"), None).await;
        assert_eq!(status, StatusCode::OK, "{j}");
        if common::ended(&j) {
            assert_eq!(j["state"], "succeeded", "{j}");
            break j["model_id"].as_str().unwrap().to_owned();
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    let image = json!({"images": [data.image(0)]}).to_string().into_bytes();

    // B's lists hold none of A's objects.
    for (uri, id) in [
        ("/api/datasets", &ds),
        ("/api/jobs", &job),
        ("/api/models", &model),
    ] {
        let (status, list) = req(&f, Some(&b), "GET", uri, None).await;
        assert_eq!(status, StatusCode::OK);
        assert!(!list.to_string().contains(id.as_str()), "{uri}: {list}");
        let (_, list) = req(&f, Some(&a), "GET", uri, None).await;
        assert!(list.to_string().contains(id.as_str()), "{uri}: {list}");
        let (_, list) = req(&f, Some(OPERATOR), "GET", uri, None).await;
        assert!(list.to_string().contains(id.as_str()), "{uri}: {list}");
    }
    let (_, me) = req(&f, Some(&b), "GET", "/api/me", None).await;
    assert_eq!(
        (me["datasets"].clone(), me["models"].clone()),
        (json!(0), json!(0))
    );
    let (_, me) = req(&f, Some(&a), "GET", "/api/me", None).await;
    assert_eq!(
        (
            me["datasets"].clone(),
            me["jobs"].clone(),
            me["models"].clone()
        ),
        (json!(1), json!(1), json!(1))
    );

    // Every route on one object: B gets a 404 worded as for a missing id; A does not.
    type Body = Option<(&'static str, Vec<u8>)>;
    let routes: Vec<(&str, String, Body)> = vec![
        ("GET", format!("/api/datasets/{ds}"), None),
        ("GET", format!("/api/datasets/{ds}/container"), None),
        ("GET", format!("/api/jobs/{job}"), None),
        ("GET", format!("/api/jobs/{job}/events"), None),
        ("GET", format!("/api/models/{model}"), None),
        ("GET", format!("/api/models/{model}/weights"), None),
        (
            "POST",
            format!("/api/models/{model}/classify"),
            Some(("application/json", image.clone())),
        ),
        (
            "POST",
            "/api/jobs".into(),
            Some(("application/json", job_body.clone().into_bytes())),
        ),
        ("POST", format!("/api/jobs/{job}/cancel"), None),
        ("DELETE", format!("/api/models/{model}"), None),
        ("DELETE", format!("/api/datasets/{ds}"), None),
    ];
    for (method, uri, body) in &routes {
        let (status, v) = req(&f, Some(&b), method, uri, body.clone()).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "B {method} {uri}: {v}");
        let missing = v["error"]
            .as_str()
            .unwrap()
            .replace(&ds, "ds-x")
            .replace(&job, "job-x")
            .replace(&model, "mdl-x");
        assert!(missing.ends_with("not found"), "{missing}");
        let (status, v) = req(&f, None, method, uri, body.clone()).await;
        assert_eq!(
            status,
            StatusCode::UNAUTHORIZED,
            "anonymous {method} {uri}: {v}"
        );
    }
    // A reads, streams, classifies and trains again; the job has ended, so cancelling it is a
    // conflict, not a 404.
    for (method, uri, body) in &routes[..8] {
        let (status, v) = req(&f, Some(&a), method, uri, body.clone()).await;
        assert!(status.is_success(), "A {method} {uri}: {status} {v}");
    }
    let (status, _) = req(
        &f,
        Some(&a),
        "POST",
        &format!("/api/jobs/{job}/cancel"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT);
    // Nothing of A's was deleted by B's attempts; the operator may delete it.
    let (status, _) = req(&f, Some(&a), "GET", &format!("/api/models/{model}"), None).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = req(
        &f,
        Some(OPERATOR),
        "DELETE",
        &format!("/api/models/{model}"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = req(&f, Some(&a), "GET", &format!("/api/models/{model}"), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, me) = req(&f, Some(OPERATOR), "GET", "/api/me", None).await;
    assert_eq!(me["role"], "operator");
}
