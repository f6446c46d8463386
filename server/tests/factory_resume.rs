//! A training job stopped by a graceful restart resumes exactly where it stopped. In a test
//! binary of its own: the CPU backend's random generator is process-wide, so a job training
//! beside another test's job would not draw the same dropout noise as the reference run.

use axum::http::StatusCode;
use serde_json::json;

mod common;
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_stopped_by_a_restart_resumes_where_it_stopped() {
    let (train, test) = digits_split();
    let spec = |id: &str| json!({"dataset": id, "epochs": 6, "batch_size": 32, "seed": 11});

    // Uninterrupted reference run.
    let ref_dir = tempfile::tempdir().unwrap();
    let f = start(ref_dir.path(), |_| {});
    let (_, ds) = upload(&f, pack(&train)).await;
    let (_, job) = json_call(
        &f,
        "POST",
        "/api/jobs",
        Some(spec(ds["id"].as_str().unwrap())),
    )
    .await;
    let reference = wait_for_job(&f, job["id"].as_str().unwrap(), ended).await;
    assert_eq!(reference["state"], "succeeded");
    f.shutdown();

    // Same job, stopped mid-way by a shutdown and resumed by a new factory on the same data.
    let dir = tempfile::tempdir().unwrap();
    let f = start(dir.path(), |_| {});
    let (_, ds) = upload(&f, pack(&train)).await;
    let ds_id = ds["id"].as_str().unwrap().to_owned();
    let (_, job) = json_call(&f, "POST", "/api/jobs", Some(spec(&ds_id))).await;
    let id = job["id"].as_str().unwrap().to_owned();
    wait_for_job(&f, &id, |j| {
        j["epochs_done"].as_u64() >= Some(2) && j["progress"]["step"].as_u64() >= Some(5)
    })
    .await;
    let f2 = f.clone();
    tokio::task::spawn_blocking(move || f2.shutdown())
        .await
        .unwrap();
    let stopped = f.store().job(&id).unwrap().unwrap();
    assert_eq!(stopped.state, veil_server::factory::JobState::Queued);
    assert!(
        stopped.epochs_done >= 2 && stopped.epochs_done < 6,
        "{stopped:?}"
    );
    assert!(f.store().checkpoint_path(&id).exists());
    drop(f);

    let f = start(dir.path(), |_| {});
    let resumed = wait_for_job(&f, &id, ended).await;
    assert_eq!(resumed["state"], "succeeded", "{resumed}");
    assert_eq!(
        resumed["resumes"], 0,
        "a graceful stop re-queues; it is not a crash"
    );
    // Same steps as the uninterrupted run: same per-epoch figures.
    let a = reference["history"].as_array().unwrap();
    let b = resumed["history"].as_array().unwrap();
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(b) {
        for key in ["loss", "accuracy", "val_accuracy"] {
            let (x, y) = (x[key].as_f64().unwrap(), y[key].as_f64().unwrap());
            assert!((x - y).abs() < 1e-3, "{key}: {x} vs {y}\n{a:?}\n{b:?}");
        }
    }
    // Nothing lost: the dataset is still there and the model classifies.
    assert!(f.store().dataset(&ds_id).unwrap().is_some());
    let model = resumed["model_id"].as_str().unwrap();
    let (s, _) = json_call(
        &f,
        "POST",
        &format!("/api/models/{model}/classify"),
        Some(json!({"images": [test.image(0)]})),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    f.shutdown();
}
