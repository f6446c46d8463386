//! The RTAS lab through `app().oneshot`: a run of the four parties on loopback, what each party
//! saw, the byte counters, and bad requests.

use std::time::Duration;

use axum::http::StatusCode;
use serde_json::{Value, json};

use crate::leakage::{call, json, parse_sse, state};

async fn run_to_end(state: &veil_server::AppState, request: Value) -> Vec<(String, Value)> {
    let (status, view) = json(state, "POST", "/api/rtas/runs", Some(request)).await;
    assert_eq!(status, StatusCode::CREATED, "{view}");
    let url = view["events_url"].as_str().unwrap().to_owned();
    let (status, body) =
        tokio::time::timeout(Duration::from_secs(300), call(state, "GET", &url, None))
            .await
            .expect("the stream ends");
    assert_eq!(status, StatusCode::OK);
    parse_sse(&String::from_utf8_lossy(&body))
}

fn captured<'a>(events: &'a [(String, Value)], from: &str, to: &str, message: &str) -> &'a Value {
    events
        .iter()
        .find(|(n, e)| {
            n == "captured" && e["from"] == from && e["to"] == to && e["message"] == message
        })
        .map(|(_, e)| e)
        .unwrap_or_else(|| panic!("no {message} from {from} to {to} was captured"))
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

fn sum_matrix(m: &Value) -> u64 {
    m.as_array()
        .unwrap()
        .iter()
        .flat_map(|r| r.as_array().unwrap().iter().map(|b| b.as_u64().unwrap()))
        .sum()
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}

fn last<'a>(events: &'a [(String, Value)], name: &str) -> &'a Value {
    events
        .iter()
        .rev()
        .find(|(n, _)| n == name)
        .map(|(_, e)| e)
        .unwrap_or_else(|| panic!("no {name} event"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lab_offers_test_digits_and_quotes_the_committed_attack() {
    let state = state();
    let (status, info) = json(&state, "GET", "/api/rtas", None).await;
    assert_eq!(status, StatusCode::OK);
    let samples = info["samples"].as_array().unwrap();
    assert_eq!(samples.len(), 20);
    for class in 0..10 {
        assert_eq!(samples.iter().filter(|s| s["label"] == class).count(), 2);
    }
    assert_eq!(samples[0]["image"].as_array().unwrap().len(), 64);
    let m = &info["measured"];
    assert!(m["rtas_class_accuracy"].as_f64().unwrap() > m["chance"].as_f64().unwrap());
    assert_eq!(m["values_per_image"], 180);
}

/// One RTAS run of the CNN on loopback TCP: P0 opens the same classes as the same network trained
/// in the clear; every link but dealer–helper carries bytes; what P1 receives of P0's images and
/// the opened x − u look uniform on the ring; the helper sees the batch's 4 × 180 first-layer
/// pre-activations, permuted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_shows_each_partys_view_and_matches_plaintext_training() {
    let state = state();
    let picked = [0, 3, 8, 15];
    let events = run_to_end(
        &state,
        json!({"samples": picked, "model": "cnn", "mode": "rtas", "epochs": 2}),
    )
    .await;
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names.first(), Some(&"started"), "{names:?}");
    assert_eq!(names.last(), Some(&"done"), "{:?}", events.last());
    let addresses = events[0].1["addresses"].as_object().unwrap();
    assert_eq!(addresses.len(), 4);
    assert!(
        addresses
            .values()
            .all(|a| a.as_str().unwrap().starts_with("127.0.0.1:"))
    );

    // Bytes grow as they flow, and every link but dealer–helper carries some.
    let traffic: Vec<&Value> = events
        .iter()
        .filter(|(n, _)| n == "traffic")
        .map(|(_, e)| e)
        .collect();
    assert!(traffic.len() >= 3, "{} traffic events", traffic.len());
    let total = |t: &Value| sum_matrix(&t["bytes"]);
    assert!(traffic.windows(2).all(|w| total(w[0]) <= total(w[1])));
    assert_eq!(traffic.last().unwrap()["phase"], "finished");
    let done = last(&events, "done");
    let bytes = &done["bytes"];
    for (from, to) in [
        (0, 1),
        (1, 0),
        (0, 2),
        (2, 0),
        (2, 1),
        (0, 3),
        (3, 0),
        (1, 3),
        (3, 1),
    ] {
        assert!(
            bytes[from][to].as_u64().unwrap() > 0,
            "link {from}→{to}: {bytes}"
        );
    }
    assert_eq!(bytes[2][3], 0);
    assert_eq!(bytes[3][2], 0);
    let inference = sum_matrix(&done["inference_bytes"]);
    assert!(inference > 0 && inference < total(done), "{inference}");

    // P0 opens what the same network trained in the clear predicts (fixed-point error may move
    // at most one of four).
    let rtas = done["predictions"].as_array().unwrap();
    let plain = done["plaintext_predictions"].as_array().unwrap();
    assert_eq!(rtas.len(), picked.len());
    let agree = rtas.iter().zip(plain).filter(|(a, b)| a == b).count();
    assert!(agree >= picked.len() - 1, "{rtas:?} vs {plain:?}");
    assert_eq!(done["implausible"], 0);
    assert!(done["triples"].as_u64().unwrap() > 0);

    // What P1 gets of P0's images: a share that is uniform on the ring (mean 1/2, sd 0.29/√256),
    // nothing like the pixels in [0, 1].
    let share = &captured(&events, "p0", "p1", "Share")["parts"][0];
    assert_eq!(share["cols"], 64);
    let u = floats(&share["uniform"]);
    assert_eq!(u.len(), 256);
    assert!((mean(&u) - 0.5).abs() < 0.08, "mean {}", mean(&u));
    let decoded = floats(&share["decoded"]);
    assert!(decoded.iter().filter(|v| v.abs() > 1e6).count() > 200);
    // The opened masked values x − u of the first Beaver product: uniform too.
    let opened = last(&events, "opened");
    let e = floats(&opened["e"]);
    assert!(
        !e.is_empty() && (mean(&e) - 0.5).abs() < 0.1,
        "mean {}",
        mean(&e)
    );
    // A triple reached both holders; the helper asked nothing of the dealer.
    captured(&events, "dealer", "p0", "Triple");
    captured(&events, "dealer", "p1", "Triple");
    captured(&events, "helper", "p1", "Activated");
    // The helper's vector: the batch's pre-activations, permuted, with the paper's 1/n! figure.
    let helper = last(&events, "helper");
    assert_eq!(helper["permuted"], true);
    assert_eq!(helper["function"], "relu");
    assert_eq!(helper["cols"], picked.len() * 180);
    let n = picked.len() * 180;
    let expected: f64 = (1..=n).map(|i| (i as f64).log10()).sum();
    assert!((helper["log10_factorial"].as_f64().unwrap() - expected).abs() < 1e-6);
    let values = floats(&helper["values"]);
    assert_eq!(values.len(), n);
    assert!(values.iter().all(|v| v.abs() < 100.0));
}

/// RTAS-fast: the helper sees the first layer's outputs in order (not permuted), as a batch ×
/// outputs matrix.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_rtas_fast_the_helper_sees_the_first_layer_in_order() {
    let state = state();
    let events = run_to_end(
        &state,
        json!({"samples": [1, 2], "model": "cnn", "mode": "fast", "epochs": 1}),
    )
    .await;
    let done = last(&events, "done");
    assert_eq!(done["predictions"].as_array().unwrap().len(), 2);
    let helper = last(&events, "helper");
    assert_eq!(helper["permuted"], false);
    assert_eq!(helper["function"], Value::Null);
    assert_eq!(
        (helper["rows"].clone(), helper["cols"].clone()),
        (json!(2), json!(180))
    );
    captured(&events, "p0", "helper", "FastForward");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_refused_with_the_reason() {
    let state = state();
    for (body, needle) in [
        (json!({"samples": []}), "pick 1 to 8"),
        (json!({"samples": vec![0; 9]}), "pick 1 to 8"),
        (json!({"samples": [20]}), "no sample 20"),
        (
            json!({"samples": [0], "epochs": 0}),
            "epochs must be 1 to 5",
        ),
        (json!({"samples": [0], "model": "resnet"}), "unknown model"),
        (json!({"samples": [0], "mode": "slow"}), "unknown mode"),
        (json!({"samples": [0], "key": "x"}), "unknown field"),
    ] {
        let (status, v) = json(&state, "POST", "/api/rtas/runs", Some(body.clone())).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {v}");
        assert!(v["error"].as_str().unwrap().contains(needle), "{body}: {v}");
    }
    let (status, _) = json(&state, "GET", "/api/rtas/runs/rtas-0000000000000000", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_run_waits_for_the_first() {
    let state = state();
    let body = json!({"samples": [0], "model": "cnn", "epochs": 3});
    let (status, first) = json(&state, "POST", "/api/rtas/runs", Some(body.clone())).await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, v) = json(&state, "POST", "/api/rtas/runs", Some(body)).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{v}");
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("RTAS demos are running")
    );
    // The first still ends well.
    let url = first["events_url"].as_str().unwrap().to_owned();
    let (_, body) = call(&state, "GET", &url, None).await;
    let events = parse_sse(&String::from_utf8_lossy(&body));
    assert_eq!(events.last().map(|(n, _)| n.as_str()), Some("done"));
}
