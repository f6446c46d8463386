//! `veil serve` as a real process on a real socket: the factory keeps its jobs across a SIGKILL.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use veil::data::ImageDataset;
use veil::data::container::{self, ContainerMeta, PixelType};

fn digits_split() -> (ImageDataset, ImageDataset) {
    veil::data::digits().split(0.2, 1)
}

fn pack(data: &ImageDataset) -> Vec<u8> {
    container::encode(data, &ContainerMeta::plain(), PixelType::U8).unwrap()
}

fn ended(job: &Value) -> bool {
    matches!(
        job["state"].as_str(),
        Some("succeeded" | "failed" | "cancelled")
    )
}

/// The real binary on a real socket: SIGKILL mid-job, restart, and the job resumes from its last
/// epoch checkpoint and succeeds; a checkpoint that cannot be read fails the job with a reason.
#[test]
fn killed_server_resumes_its_job_after_restart() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};

    let dir = tempfile::tempdir().unwrap();
    let spawn = || {
        let mut child = Command::new(env!("CARGO_BIN_EXE_veil"))
            .args(["serve", "--bind", "127.0.0.1:0", "--data-dir"])
            .arg(dir.path())
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let base = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap()
            .trim_end_matches('/')
            .to_owned();
        (child, base)
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let http = reqwest::Client::new();
    let get = |url: String| {
        let http = http.clone();
        rt.block_on(async move {
            http.get(url)
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        })
    };

    let deadline = Instant::now() + Duration::from_secs(300);
    // Polls job `id` on `base` until `done` holds (failing past the deadline).
    let wait_until = |base: &str, id: &str, done: &dyn Fn(&Value) -> bool| loop {
        let j = get(format!("{base}/api/jobs/{id}"));
        if done(&j) {
            return j;
        }
        assert!(Instant::now() < deadline, "job {id} did not get there: {j}");
        std::thread::sleep(Duration::from_millis(50));
    };
    let start_job = |base: &str, spec: Value| -> String {
        let job: Value = rt.block_on(async {
            let resp = http
                .post(format!("{base}/api/jobs"))
                .json(&spec)
                .send()
                .await;
            resp.unwrap().json().await.unwrap()
        });
        job["id"].as_str().unwrap().to_owned()
    };
    let first_epoch_done = |j: &Value| j["epochs_done"].as_u64() >= Some(1);

    let (mut child, base) = spawn();
    let (train, test) = digits_split();
    let ds = rt
        .block_on(veil_cli::factory::upload(
            &http,
            &base,
            pack(&train),
            "digits",
        ))
        .unwrap();
    let id = start_job(
        &base,
        json!({"dataset": ds["id"], "epochs": 8, "batch_size": 16}),
    );
    wait_until(&base, &id, &first_epoch_done);
    child.kill().unwrap(); // SIGKILL: no chance to checkpoint beyond the last epoch.
    child.wait().unwrap();

    let (mut child, base) = spawn();
    let j = wait_until(&base, &id, &ended);
    assert_eq!(j["state"], "succeeded", "{j}");
    assert_eq!(j["resumes"], 1, "{j}");
    assert_eq!(j["history"].as_array().unwrap().len(), 8);
    let datasets = get(format!("{base}/api/datasets"));
    assert_eq!(
        datasets.as_array().unwrap().len(),
        1,
        "the dataset survived"
    );
    // The resumed job's model classifies held-out digits over the socket (binary route).
    let model = j["model_id"].as_str().unwrap();
    let (probs, k) = rt
        .block_on(veil_cli::factory::classify(
            &http,
            &base,
            model,
            &test.images,
            test.shape,
        ))
        .unwrap();
    let predicted = veil::nn::train::argmax_rows(&probs, k);
    let hits = predicted
        .iter()
        .zip(&test.labels)
        .filter(|(p, l)| p == l)
        .count();
    let accuracy = hits as f64 / test.len() as f64;
    assert!(
        accuracy >= 0.9,
        "held-out accuracy over the socket {accuracy}"
    );

    // A job whose checkpoint is damaged fails with the reason instead of vanishing.
    let id2 = start_job(
        &base,
        json!({"dataset": ds["id"], "epochs": 200, "batch_size": 16}),
    );
    wait_until(&base, &id2, &first_epoch_done);
    child.kill().unwrap();
    child.wait().unwrap();
    std::fs::write(
        dir.path().join("checkpoints").join(format!("{id2}.ckpt")),
        b"garbage",
    )
    .unwrap();
    let (mut child, base) = spawn();
    let j = wait_until(&base, &id2, &ended);
    assert_eq!(j["state"], "failed");
    assert!(j["error"].as_str().unwrap().contains("checkpoint"), "{j}");
    child.kill().unwrap();
    child.wait().unwrap();
}
