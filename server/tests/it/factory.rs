//! The ML factory end to end through `app().oneshot` (no socket). The real `veil` binary on a
//! socket, killed and restarted mid-job, is tested in `veil-cli`, which builds it.

use std::path::Path;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use http_body_util::BodyExt;
use serde_json::json;
use tower::ServiceExt;
use veil::data::container::{self, ContainerMeta, PixelType};
use veil_server::app;

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_train_classify() {
    let dir = tempfile::tempdir().unwrap();
    let f = start(dir.path(), |_| {});
    let (train, test) = digits_split();
    let (s, ds) = upload(&f, pack(&train)).await;
    assert_eq!(s, StatusCode::CREATED, "{ds}");
    assert_eq!(ds["count"], train.len());
    assert_eq!(ds["class_counts"].as_array().unwrap().len(), 10);
    let id = ds["id"].as_str().unwrap().to_owned();
    let (s, detail) = json_call(&f, "GET", &format!("/api/datasets/{id}"), None).await;
    assert_eq!(s, StatusCode::OK);
    let thumbs = detail["thumbnails"].as_array().unwrap();
    assert_eq!(thumbs.len(), 8);
    assert!(
        thumbs[0]["png"]
            .as_str()
            .unwrap()
            .starts_with("data:image/png;base64,")
    );
    // They were drawn at upload and are read from their own file, not from the container: they
    // survive the container being unreadable.
    let thumbs_file = dir.path().join(format!("datasets/{id}.thumbs.json"));
    assert!(thumbs_file.exists());
    let container_file = dir.path().join(format!("datasets/{id}.safetensors"));
    let saved = std::fs::read(&container_file).unwrap();
    std::fs::write(&container_file, b"not a container").unwrap();
    let (s, again) = json_call(&f, "GET", &format!("/api/datasets/{id}"), None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(again["thumbnails"], detail["thumbnails"]);
    std::fs::write(&container_file, saved).unwrap();

    let (s, job) = json_call(
        &f,
        "POST",
        "/api/jobs",
        Some(json!({"dataset": id, "epochs": 12, "seed": 3})),
    )
    .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{job}");
    let job = wait_for_job(&f, job["id"].as_str().unwrap(), ended).await;
    assert_eq!(job["state"], "succeeded", "{job}");
    assert_eq!(job["history"].as_array().unwrap().len(), 12);
    let model = job["model_id"].as_str().unwrap().to_owned();

    // The model is listed beside the built-in one, and classifies held-out digits.
    let (_, models) = json_call(&f, "GET", "/api/models", None).await;
    let listed = models
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == model.as_str())
        .unwrap();
    assert_eq!(listed["kind"], "trained");
    let images: Vec<Vec<f32>> = (0..test.len()).map(|i| test.image(i).to_vec()).collect();
    let (s, out) = json_call(
        &f,
        "POST",
        &format!("/api/models/{model}/classify"),
        Some(json!({ "images": images })),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{out}");
    let predictions: Vec<u32> = serde_json::from_value(out["predictions"].clone()).unwrap();
    let hits = predictions
        .iter()
        .zip(&test.labels)
        .filter(|(p, l)| p == l)
        .count();
    let accuracy = hits as f64 / test.len() as f64;
    assert!(accuracy >= 0.9, "held-out accuracy {accuracy}");
    let row = out["probabilities"][0].as_array().unwrap();
    assert_eq!(row.len(), 10);
    let sum: f64 = row.iter().map(|v| v.as_f64().unwrap()).sum();
    assert!((sum - 1.0).abs() < 1e-4, "{sum}");

    // The binary route gives the same probabilities.
    let body = container::encode_images(&test.images, test.shape, PixelType::F32).unwrap();
    let resp = app(state(&f))
        .oneshot(
            Request::post(format!("/api/models/{model}/classify"))
                .header(operator_auth().0, operator_auth().1)
                .header(header::CONTENT_TYPE, "application/octet-stream")
                .header(header::ACCEPT, "application/octet-stream")
                .body(Body::from(body))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let (probs, k) = container::decode_matrix(&bytes, "probabilities").unwrap();
    assert_eq!(k, 10);
    assert_eq!(veil::nn::train::argmax_rows(&probs, k), predictions);

    // Deleting the dataset leaves the model working; the weights download.
    let (s, _) = call(&f, "DELETE", &format!("/api/datasets/{id}"), None, vec![]).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    assert!(!thumbs_file.exists(), "the thumbnails go with the dataset");
    let (s, w) = call(
        &f,
        "GET",
        &format!("/api/models/{model}/weights"),
        None,
        vec![],
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert!(w.len() > 1000);
    let (s, _) = json_call(
        &f,
        "POST",
        &format!("/api/models/{model}/classify"),
        Some(json!({ "images": [test.image(0)] })),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    f.shutdown();
}

fn listing(dir: &Path, sub: &str) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir.join(sub))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[tokio::test]
async fn malformed_uploads_get_a_clear_4xx_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let f = start(dir.path(), |c| c.max_upload_bytes = 50_000);
    let (train, _) = digits_split();
    let small = train.subset(&(0..40).collect::<Vec<_>>());
    let good = pack(&small);
    let (s, _) = upload(&f, good.clone()).await;
    assert_eq!(s, StatusCode::CREATED);
    let before = (
        listing(dir.path(), "datasets"),
        f.store().datasets().unwrap(),
    );

    let nan_bytes = {
        // encode refuses NaN, so write the value into the bytes.
        let mut b = container::encode(&small, &ContainerMeta::plain(), PixelType::F32).unwrap();
        let needle = 0.25f32.to_le_bytes();
        let at = b.windows(4).rposition(|w| w == needle).unwrap();
        b[at..at + 4].copy_from_slice(&f32::NAN.to_le_bytes());
        b
    };
    let raw = |shape: Vec<usize>, labels: &[u32]| {
        let px = vec![0u8; shape.iter().product()];
        let lb: Vec<u8> = labels.iter().flat_map(|l| l.to_le_bytes()).collect();
        let mut info = std::collections::HashMap::new();
        info.insert("format".to_owned(), container::FORMAT.to_owned());
        info.insert("scheme".to_owned(), "plain".to_owned());
        info.insert(
            "classes".to_owned(),
            serde_json::to_string(&small.class_names).unwrap(),
        );
        let view = safetensors::tensor::TensorView::new;
        safetensors::tensor::serialize(
            [
                ("images", view(safetensors::Dtype::U8, shape, &px).unwrap()),
                (
                    "labels",
                    view(safetensors::Dtype::U32, vec![labels.len()], &lb).unwrap(),
                ),
            ],
            Some(info),
        )
        .unwrap()
    };
    let mut labels = small.labels.clone();
    labels[7] = 200;
    let labels_bad = raw(vec![40, 1, 8, 8], &labels);
    let wrong_shape = raw(vec![40, 64], &small.labels);
    let oversize = pack(&train); // > 50,000 bytes
    assert!(oversize.len() > 50_000);
    let cases: Vec<(&str, Vec<u8>, StatusCode, &str)> = vec![
        (
            "truncated",
            good[..good.len() / 2].to_vec(),
            StatusCode::BAD_REQUEST,
            "safetensors",
        ),
        ("empty", Vec::new(), StatusCode::BAD_REQUEST, "empty"),
        ("wrong shape", wrong_shape, StatusCode::BAD_REQUEST, "4-D"),
        ("NaN", nan_bytes, StatusCode::BAD_REQUEST, "non-finite"),
        (
            "label out of range",
            labels_bad,
            StatusCode::BAD_REQUEST,
            "out of range",
        ),
        ("oversize", oversize, StatusCode::PAYLOAD_TOO_LARGE, "limit"),
        (
            "not a container",
            b"hello".to_vec(),
            StatusCode::BAD_REQUEST,
            "safetensors",
        ),
    ];
    for (what, bytes, want, words) in cases {
        let (s, body) = upload(&f, bytes).await;
        assert_eq!(s, want, "{what}: {body}");
        let msg = body["error"].as_str().unwrap_or_default();
        assert!(
            msg.contains(words),
            "{what}: {msg:?} should mention {words:?}"
        );
    }
    let after = (
        listing(dir.path(), "datasets"),
        f.store().datasets().unwrap(),
    );
    assert_eq!(before, after, "a refused upload changed the store");
    assert!(
        listing(dir.path(), "tmp").is_empty(),
        "partial uploads left behind"
    );
    f.shutdown();
}

/// A body that sends `chunk` bytes every `every`, `chunks` times, then (with `stall`) nothing.
fn trickle(chunk: usize, every: Duration, chunks: usize, stall: bool) -> Body {
    use futures_util::StreamExt;
    let sent = futures_util::stream::iter(0..chunks).then(move |_| async move {
        tokio::time::sleep(every).await;
        Ok::<_, std::io::Error>(axum::body::Bytes::from(vec![0u8; chunk]))
    });
    if stall {
        Body::from_stream(sent.chain(futures_util::stream::pending()))
    } else {
        Body::from_stream(sent)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_and_trickling_uploads_answer_408_and_store_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let f = start(dir.path(), |c| {
        c.upload_idle_timeout = Duration::from_millis(500);
        c.upload_min_bytes_per_s = 100_000;
    });
    let state = state(&f);
    let (name, token) = operator_auth();
    let send = |body: Body| {
        let req = Request::post("/api/datasets?name=slow")
            .header(name.clone(), token.clone())
            .header(header::CONTENT_TYPE, "application/octet-stream")
            .body(body)
            .unwrap();
        send(&state, req)
    };
    // Sends 1 kB, then nothing.
    let t = std::time::Instant::now();
    let (status, body) = send(trickle(1000, Duration::ZERO, 1, true)).await;
    let msg = String::from_utf8_lossy(&body);
    assert_eq!(status, StatusCode::REQUEST_TIMEOUT, "{msg}");
    assert!(
        msg.contains("sent nothing for 0.5 s after 1000 bytes"),
        "{msg}"
    );
    assert!(t.elapsed() < Duration::from_secs(5));
    // Keeps sending, 1 kB every 100 ms (10 kB/s, under the minimum of 100 kB/s).
    let (status, body) = send(trickle(1000, Duration::from_millis(100), 100, false)).await;
    let msg = String::from_utf8_lossy(&body);
    assert_eq!(status, StatusCode::REQUEST_TIMEOUT, "{msg}");
    assert!(msg.contains("slower than this server's minimum"), "{msg}");
    assert!(f.store().datasets().unwrap().is_empty());
    assert!(
        listing(dir.path(), "tmp").is_empty(),
        "partial uploads left behind"
    );
    f.shutdown();
}

#[tokio::test]
async fn bad_jobs_and_classifications_are_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let f = start(dir.path(), |c| c.max_classify_batch = 4);
    let (s, b) = json_call(
        &f,
        "POST",
        "/api/jobs",
        Some(json!({"dataset": "ds-0000000000000000"})),
    )
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{b}");
    let (s, b) = json_call(
        &f,
        "POST",
        "/api/jobs",
        Some(json!({"dataset": "x", "arch": "vgg"})),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(b["error"].as_str().unwrap().contains("small-cnn"), "{b}");
    let (s, _) = json_call(
        &f,
        "POST",
        "/api/jobs",
        Some(json!({"dataset": "x", "epochs": 0})),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, _) = json_call(&f, "POST", "/api/jobs", Some(json!({"datasett": "x"}))).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, _) = json_call(&f, "GET", "/api/jobs/../../etc/passwd", None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    let one = vec![0.5f32; 64];
    let uri = "/api/models/digits-cnn/classify";
    let (s, b) = json_call(&f, "POST", uri, Some(json!({"images": [one]}))).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let (s, b) = json_call(&f, "POST", uri, Some(json!({"images": [vec![0.5f32; 63]]}))).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(b["error"].as_str().unwrap().contains("63 values"), "{b}");
    let (s, b) = json_call(
        &f,
        "POST",
        uri,
        Some(json!({"images": vec![one.clone(); 5]})),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(b["error"].as_str().unwrap().contains("limit is 4"), "{b}");
    let (s, _) = call(&f, "POST", uri, Some("text/plain"), b"hi".to_vec()).await;
    assert_eq!(s, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let mut nan = one.clone();
    nan[3] = f32::NAN;
    let raw = container::encode_images(&nan, veil::data::ImageShape::new(1, 8, 8), PixelType::F32)
        .unwrap();
    let (s, b) = call(&f, "POST", uri, Some("application/octet-stream"), raw).await;
    assert_eq!(
        s,
        StatusCode::BAD_REQUEST,
        "{}",
        String::from_utf8_lossy(&b)
    );
    let (s, _) = json_call(
        &f,
        "POST",
        "/api/models/nope/classify",
        Some(json!({"images": [one]})),
    )
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = call(&f, "DELETE", "/api/models/digits-cnn", None, vec![]).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    f.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_uploads_and_classifications() {
    let dir = tempfile::tempdir().unwrap();
    let f = start(dir.path(), |_| {});
    let (train, test) = digits_split();
    let small = pack(&train.subset(&(0..100).collect::<Vec<_>>()));
    let mut tasks = Vec::new();
    for i in 0..6 {
        let f = f.clone();
        let bytes = small.clone();
        tasks.push(tokio::spawn(async move {
            let (s, b) = upload(&f, bytes).await;
            assert_eq!(s, StatusCode::CREATED, "upload {i}: {b}");
        }));
    }
    for i in 0..16 {
        let f = f.clone();
        let img = test.image(i).to_vec();
        let label = test.labels[i];
        tasks.push(tokio::spawn(async move {
            let (s, b) = json_call(
                &f,
                "POST",
                "/api/models/digits-cnn/classify",
                Some(json!({"images": [img]})),
            )
            .await;
            assert_eq!(s, StatusCode::OK, "classify {i}: {b}");
            // The demo model is ~99 % accurate; the point is that answers are per request.
            let _ = label;
            assert_eq!(b["probabilities"][0].as_array().unwrap().len(), 10);
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(f.store().datasets().unwrap().len(), 6);
    let (_, health) = json_call(&f, "GET", "/api/health", None).await;
    assert_eq!(health["datasets"], 6);
    f.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_stream_progress_until_the_job_ends_and_cancel_works() {
    let dir = tempfile::tempdir().unwrap();
    let f = start(dir.path(), |_| {});
    let (train, _) = digits_split();
    let (_, ds) = upload(&f, pack(&train)).await;
    let id = ds["id"].as_str().unwrap();
    let (_, job) = json_call(
        &f,
        "POST",
        "/api/jobs",
        Some(json!({"dataset": id, "epochs": 2, "batch_size": 32})),
    )
    .await;
    let job_id = job["id"].as_str().unwrap().to_owned();
    let resp = app(state(&f))
        .oneshot(
            Request::get(format!("/api/jobs/{job_id}/events"))
                .header(operator_auth().0, operator_auth().1)
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.headers()[header::CONTENT_TYPE], "text/event-stream");
    let text = tokio::time::timeout(Duration::from_secs(300), resp.into_body().collect())
        .await
        .expect("the event stream ends when the job does")
        .unwrap()
        .to_bytes();
    let text = String::from_utf8_lossy(&text);
    let events: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("event: "))
        .collect();
    assert_eq!(events.first(), Some(&"snapshot"), "{text}");
    assert!(events.contains(&"progress"), "{events:?}");
    assert_eq!(
        events.iter().filter(|e| **e == "epoch").count(),
        2,
        "{events:?}"
    );
    assert_eq!(events.last(), Some(&"state"), "{events:?}");
    assert!(text.contains("\"succeeded\""), "{text}");

    // A dataset in use cannot be deleted; a running job can be cancelled, once.
    let (_, long) = json_call(
        &f,
        "POST",
        "/api/jobs",
        Some(json!({"dataset": id, "epochs": 500})),
    )
    .await;
    let long_id = long["id"].as_str().unwrap().to_owned();
    let (s, b) = call(&f, "DELETE", &format!("/api/datasets/{id}"), None, vec![]).await;
    assert_eq!(s, StatusCode::CONFLICT, "{}", String::from_utf8_lossy(&b));
    wait_for_job(&f, &long_id, |j| j["state"] == "running").await;
    let (s, _) = json_call(&f, "POST", &format!("/api/jobs/{long_id}/cancel"), None).await;
    assert_eq!(s, StatusCode::OK);
    let j = wait_for_job(&f, &long_id, ended).await;
    assert_eq!(j["state"], "cancelled");
    assert!(j["model_id"].is_null());
    let (s, _) = json_call(&f, "POST", &format!("/api/jobs/{long_id}/cancel"), None).await;
    assert_eq!(s, StatusCode::CONFLICT);
    assert!(!f.store().checkpoint_path(&long_id).exists());
    f.shutdown();
}
