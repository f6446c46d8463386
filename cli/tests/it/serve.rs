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

const OPERATOR: &str = "serve-test-operator-token-0123456789abcdef";

/// `veil serve` on a free port with `data_dir`, the operator token and `extra` flags: the child
/// and its base URL (read from its first line, `listening on …`).
fn spawn_serve(data_dir: &std::path::Path, extra: &[&str]) -> (std::process::Child, String) {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    let mut child = Command::new(env!("CARGO_BIN_EXE_veil"))
        .args(["serve", "--bind", "127.0.0.1:0"])
        .args(extra)
        .arg("--data-dir")
        .arg(data_dir)
        .env("RUST_LOG", "warn")
        .env("VEIL_OPERATOR_TOKEN", OPERATOR)
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
}

/// The real binary on a real socket: SIGKILL mid-job, restart, and the job resumes from its last
/// epoch checkpoint and succeeds; a checkpoint that cannot be read fails the job with a reason.

#[test]
fn killed_server_resumes_its_job_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let spawn = || spawn_serve(dir.path(), &[]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    // The operator (from `VEIL_OPERATOR_TOKEN`) owns what it uploads and sees every job.
    let mut auth = reqwest::header::HeaderMap::new();
    auth.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {OPERATOR}").parse().unwrap(),
    );
    let http = reqwest::Client::builder()
        .default_headers(auth)
        .build()
        .unwrap();
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

/// `veil factory` against a real server: the first command gets an owner token and keeps it
/// (readable by this user only); what one owner uploads, another (another config folder) does
/// not see; `login --force` replaces the token, after which the old dataset is out of reach.
#[test]
fn factory_commands_keep_an_owner_token_and_owners_do_not_see_each_other() {
    use std::process::Command;

    let dir = tempfile::tempdir().unwrap();
    let (mut server, base) = spawn_serve(&dir.path().join("data"), &["--quota-datasets", "1"]);
    let run = |config: &str, args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_veil"))
            .arg("factory")
            .args(args)
            .args(["--server", &base])
            .env("XDG_CONFIG_HOME", dir.path().join(config))
            .env_remove("VEIL_OWNER_TOKEN")
            .output()
            .unwrap()
    };
    let veil = |config: &str, args: &[&str]| {
        let out = run(config, args);
        assert!(
            out.status.success(),
            "veil factory {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let uploaded = veil("alice", &["upload", "digits", "--name", "alices-digits"]);
    let id = uploaded.split_whitespace().nth(1).unwrap().to_owned();
    assert!(id.starts_with("ds-"), "{uploaded}");
    let tokens = dir.path().join("alice/veil/owner-tokens.json");
    let kept: Value = serde_json::from_slice(&std::fs::read(&tokens).unwrap()).unwrap();
    assert!(kept[&base].as_str().unwrap().starts_with("veil_"), "{kept}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&tokens).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{mode:o}");
    }
    // Past her quota of one dataset, the CLI says which quota and when to retry.
    let out = run("alice", &["upload", "digits", "--name", "more"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("429")
            && err.contains("1 dataset and its quota is 1")
            && err.contains("retry after 60 s"),
        "{err}"
    );
    assert!(veil("alice", &["list"]).contains(&id));
    let bobs = veil("bob", &["list"]);
    assert!(!bobs.contains(&id), "{bobs}");
    assert!(
        bobs.contains("digits-cnn"),
        "the built-in models stay public: {bobs}"
    );
    // A new token for alice: the old one's dataset is no longer hers to see.
    veil("alice", &["login", "--force"]);
    assert!(!veil("alice", &["list"]).contains(&id));
    server.kill().unwrap();
    server.wait().unwrap();
}
