//! The factory under load and faults, for `cargo xtask bench` (issue 22, item 4): many owners
//! uploading, training, classifying and attacking at once against a `veil serve` process that is
//! SIGKILLed and restarted in the middle, slow clients holding uploads open, and a data directory
//! on a small tmpfs that fills up. Afterwards every owner's objects are checked through the API:
//! each acknowledged dataset is downloaded and compared by SHA-256, each acknowledged job and
//! each finished job's model must still be there, and no owner may see another's.
//!
//! Why this file is over 600 lines: one scenario (many owners, a kill and restart, slow clients, a
//! full disk) whose phases share the server process and the owners' state.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use veil::data::container::{self, ContainerMeta, PixelType};
use veil::data::{ImageDataset, ImageShape, SyntheticConfig};

use crate::OPERATOR_TOKEN;

/// How big a run is.
#[derive(Debug, Clone)]
pub struct LoadConfig {
    /// The `veil` binary.
    pub veil: PathBuf,
    /// Owners working at once.
    pub owners: usize,
    /// How long they work; the server is killed at half time.
    pub duration: Duration,
}

/// A `veil serve` child on a fixed address.
struct Server {
    child: Child,
    addr: SocketAddr,
}

impl Server {
    /// Starts `veil serve` on `addr` with `data_dir`; with `tmpfs_mib`, inside a user and mount
    /// namespace (`unshare -rm`) whose `data_dir` is a tmpfs of that size.
    fn start(
        veil: &Path,
        addr: SocketAddr,
        data_dir: &Path,
        log: &Path,
        tmpfs_mib: Option<u64>,
        quotas: &[(&str, &str)],
    ) -> Result<Self> {
        let mut args: Vec<String> = vec![
            "serve".into(),
            "--bind".into(),
            addr.to_string(),
            "--data-dir".into(),
            data_dir.display().to_string(),
        ];
        for (flag, value) in quotas {
            args.push(format!("--{flag}"));
            args.push((*value).into());
        }
        let mut cmd = match tmpfs_mib {
            None => {
                let mut c = Command::new(veil);
                c.args(&args);
                c
            }
            Some(mib) => {
                // `exec` so that killing the child kills the server itself.
                let quoted: Vec<String> = args.iter().map(|a| format!("'{a}'")).collect();
                let script = format!(
                    "mount -t tmpfs -o size={mib}m veil-load '{}' && exec '{}' {}",
                    data_dir.display(),
                    veil.display(),
                    quoted.join(" ")
                );
                let mut c = Command::new("unshare");
                c.args(["--user", "--map-root-user", "--mount", "sh", "-c", &script]);
                c
            }
        };
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)?;
        let child = cmd
            .env("VEIL_OPERATOR_TOKEN", OPERATOR_TOKEN)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", veil.display()))?;
        Ok(Self { child, addr })
    }

    /// Waits until `/api/health` answers; the time it took.
    async fn healthy(&mut self, http: &reqwest::Client, within: Duration) -> Result<Duration> {
        let t = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!("veil serve exited with {status} before it answered");
            }
            let url = format!("http://{}/api/health", self.addr);
            if http
                .get(&url)
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
            {
                return Ok(t.elapsed());
            }
            if t.elapsed() > within {
                bail!("veil serve did not answer within {within:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGKILL, and reap: the signal that ended it (9 unless it had already exited).
    fn kill(&mut self) -> Option<i32> {
        use std::os::unix::process::ExitStatusExt;
        let _ = self.child.kill();
        self.child.wait().ok().and_then(|s| s.signal())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.kill();
    }
}

fn free_addr() -> Result<SocketAddr> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?)
}

/// One request's outcome.
#[derive(Debug, Clone)]
struct Outcome {
    kind: &'static str,
    /// The status, or the class of failure (`connection`, `timeout`).
    result: String,
    ms: f64,
}

#[derive(Default)]
struct Log(Mutex<Vec<Outcome>>);

impl Log {
    fn push(&self, kind: &'static str, result: String, t: Instant) {
        self.0.lock().unwrap().push(Outcome {
            kind,
            result,
            ms: t.elapsed().as_secs_f64() * 1e3,
        });
    }
}

/// What one owner was told the factory now holds for it.
#[derive(Debug, Default)]
struct Acked {
    /// Dataset id → SHA-256 of the bytes uploaded.
    datasets: BTreeMap<String, String>,
    /// SHA-256 of every upload tried, answered or not (one cut by the kill may have landed).
    tried: HashSet<String>,
    jobs: BTreeSet<String>,
    /// Submissions whose answer was lost (the job may exist).
    jobs_unanswered: usize,
    /// Job id → model id, for jobs seen succeeded.
    succeeded: BTreeMap<String, String>,
}

/// Sends one request; the status (or failure class) is logged under `kind`.
async fn send(
    log: &Log,
    kind: &'static str,
    req: reqwest::RequestBuilder,
) -> Option<(reqwest::StatusCode, Vec<u8>)> {
    let t = Instant::now();
    match req.timeout(Duration::from_secs(60)).send().await {
        Ok(resp) => {
            let status = resp.status();
            let body = resp.bytes().await.map(|b| b.to_vec());
            match body {
                Ok(body) => {
                    log.push(kind, status.as_u16().to_string(), t);
                    Some((status, body))
                }
                Err(_) => {
                    log.push(kind, "connection".into(), t);
                    None
                }
            }
        }
        Err(e) => {
            let class = if e.is_timeout() {
                "timeout"
            } else {
                "connection"
            };
            log.push(kind, class.into(), t);
            None
        }
    }
}

fn sha(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// A small labelled container, different for every (owner, round).
fn dataset(owner: usize, round: usize, base: &ImageDataset) -> Vec<u8> {
    let n = 60 + (owner * 37 + round * 53) % 140;
    let start = (owner * 131 + round * 17) % (base.len() - n);
    let part = base.subset(&(start..start + n).collect::<Vec<_>>());
    let meta = ContainerMeta {
        description: Some(format!("load owner {owner} round {round}")),
        ..ContainerMeta::plain()
    };
    container::encode(&part, &meta, PixelType::U8).expect("digits encode")
}

/// One owner's loop until `until`: upload, train, classify, sometimes attack, follow its jobs.
async fn owner_loop(
    index: usize,
    base: Arc<ImageDataset>,
    addr: SocketAddr,
    token: String,
    until: Instant,
    log: Arc<Log>,
) -> Acked {
    let http = reqwest::Client::new();
    let url = |p: &str| format!("http://{addr}{p}");
    let auth = format!("Bearer {token}");
    let mut acked = Acked::default();
    let mut round = 0;
    let images: Vec<Vec<f32>> = (0..8).map(|i| base.image(index * 8 + i).to_vec()).collect();
    while Instant::now() < until {
        round += 1;
        let bytes = dataset(index, round, &base);
        let digest = sha(&bytes);
        acked.tried.insert(digest.clone());
        let up = send(
            &log,
            "upload",
            http.post(url(&format!("/api/datasets?name=o{index}r{round}")))
                .header("authorization", &auth)
                .header("content-type", "application/octet-stream")
                .body(bytes),
        )
        .await;
        let mut last_dataset = None;
        if let Some((s, body)) = up
            && s.as_u16() == 201
        {
            let v: Value = serde_json::from_slice(&body).unwrap_or_default();
            if let Some(id) = v["id"].as_str() {
                acked.datasets.insert(id.to_owned(), digest);
                last_dataset = Some(id.to_owned());
            }
        }
        if let Some(ds) = last_dataset
            && round % 2 == 1
        {
            let body = json!({"dataset": ds, "epochs": 2, "batch_size": 32, "seed": round});
            match send(
                &log,
                "train",
                http.post(url("/api/jobs"))
                    .header("authorization", &auth)
                    .json(&body),
            )
            .await
            {
                Some((s, body)) if s.as_u16() == 202 => {
                    let v: Value = serde_json::from_slice(&body).unwrap_or_default();
                    if let Some(id) = v["id"].as_str() {
                        acked.jobs.insert(id.to_owned());
                    }
                }
                None => acked.jobs_unanswered += 1,
                _ => {}
            }
        }
        for _ in 0..4 {
            send(
                &log,
                "classify",
                http.post(url("/api/models/digits-cnn/classify"))
                    .header("authorization", &auth)
                    .json(&json!({ "images": images })),
            )
            .await;
        }
        if index.is_multiple_of(4) && round % 3 == 1 {
            let body = json!({"sample": index % 20, "iterations": 30, "training": "encrypted"});
            send(
                &log,
                "attack",
                http.post(url("/api/leakage/attacks"))
                    .header("authorization", &auth)
                    .json(&body),
            )
            .await;
        }
        follow_jobs(&http, addr, &auth, &log, &mut acked).await;
        if Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    acked
}

/// Reads this owner's acknowledged jobs and records the models of those that succeeded.
async fn follow_jobs(
    http: &reqwest::Client,
    addr: SocketAddr,
    auth: &str,
    log: &Log,
    acked: &mut Acked,
) {
    let open: Vec<String> = acked
        .jobs
        .iter()
        .filter(|j| !acked.succeeded.contains_key(*j))
        .cloned()
        .collect();
    for id in open {
        let got = send(
            log,
            "job",
            http.get(format!("http://{addr}/api/jobs/{id}"))
                .header("authorization", auth),
        )
        .await;
        if let Some((s, body)) = got
            && s.is_success()
        {
            let v: Value = serde_json::from_slice(&body).unwrap_or_default();
            if v["state"] == "succeeded"
                && let Some(m) = v["model_id"].as_str()
            {
                acked.succeeded.insert(id, m.to_owned());
            }
        }
    }
}

/// A client that declares a 1 MB upload and then sends `rate` bytes a second (0: nothing after
/// the headers). Returns the status line's code (or 0 if the connection closed without one) and
/// when it came.
async fn slow_upload(addr: SocketAddr, token: &str, rate: usize) -> Result<(u16, f64)> {
    let t = Instant::now();
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    let head = format!(
        "POST /api/datasets?name=slow HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/octet-stream\r\nContent-Length: 1000000\r\n\r\n"
    );
    s.write_all(head.as_bytes()).await?;
    let (mut rd, mut wr) = s.into_split();
    let writer = tokio::spawn(async move {
        if rate == 0 {
            // Hold the connection open, sending nothing (dropping `wr` would close it).
            std::future::pending::<()>().await;
            drop(wr);
            return;
        }
        let chunk = vec![0u8; rate.div_ceil(10)];
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if wr.write_all(&chunk).await.is_err() {
                return;
            }
        }
    });
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(180), rd.read(&mut buf))
        .await
        .context("the server held a slow upload for 3 minutes")??;
    writer.abort();
    let line = String::from_utf8_lossy(&buf[..n]);
    let code = line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Ok((code, t.elapsed().as_secs_f64()))
}

async fn new_owner(http: &reqwest::Client, addr: SocketAddr) -> Result<String> {
    let v: Value = http
        .post(format!("http://{addr}/api/owners"))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    Ok(v["token"].as_str().context("no token")?.to_owned())
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn summarize(outcomes: &[Outcome]) -> Value {
    let mut by_kind: BTreeMap<&str, Vec<&Outcome>> = BTreeMap::new();
    for o in outcomes {
        by_kind.entry(o.kind).or_default().push(o);
    }
    let stats = |os: &[&Outcome]| {
        let mut ms: Vec<f64> = os.iter().map(|o| o.ms).collect();
        ms.sort_by(f64::total_cmp);
        let mut results: BTreeMap<String, usize> = BTreeMap::new();
        for o in os {
            *results.entry(o.result.clone()).or_default() += 1;
        }
        json!({
            "requests": os.len(),
            "p50_ms": percentile(&ms, 0.5),
            "p99_ms": percentile(&ms, 0.99),
            "results": results,
        })
    };
    let all: Vec<&Outcome> = outcomes.iter().collect();
    let mut kinds = serde_json::Map::new();
    for (k, os) in &by_kind {
        kinds.insert((*k).into(), stats(os));
    }
    json!({ "all": stats(&all), "by_kind": kinds })
}

/// Checks every owner's objects after the run; counts of what was verified, lost, corrupted or
/// visible to the wrong owner.
async fn verify(addr: SocketAddr, owners: &[(String, Acked)]) -> Result<Value> {
    let http = reqwest::Client::new();
    let get = |path: String, token: &str| {
        http.get(format!("http://{addr}{path}"))
            .header("authorization", format!("Bearer {token}"))
            .send()
    };
    let (mut datasets, mut jobs, mut models) = (0usize, 0usize, 0usize);
    let (mut lost, mut corrupted, mut mixed, mut changed) = (0usize, 0usize, 0usize, 0usize);
    let mut problems = Vec::new();
    let all_tried: Vec<&HashSet<String>> = owners.iter().map(|(_, a)| &a.tried).collect();
    for (i, (token, acked)) in owners.iter().enumerate() {
        let list: Value = get("/api/datasets".into(), token).await?.json().await?;
        let listed: HashMap<String, String> = list
            .as_array()
            .context("dataset list")?
            .iter()
            .map(|d| {
                (
                    d["id"].as_str().unwrap_or("").to_owned(),
                    d["sha256"].as_str().unwrap_or("").to_owned(),
                )
            })
            .collect();
        for (id, digest) in &acked.datasets {
            datasets += 1;
            if !listed.contains_key(id) {
                lost += 1;
                problems.push(format!("owner {i}: dataset {id} acknowledged, not listed"));
                continue;
            }
            let bytes = get(format!("/api/datasets/{id}/container"), token)
                .await?
                .bytes()
                .await?;
            if sha(&bytes) != *digest {
                corrupted += 1;
                problems.push(format!("owner {i}: dataset {id} differs from the upload"));
            }
        }
        // Anything listed that this owner never tried to upload is someone else's.
        for (id, digest) in &listed {
            if !acked.tried.contains(digest) {
                mixed += 1;
                let whose = all_tried.iter().position(|t| t.contains(digest));
                problems.push(format!(
                    "owner {i} lists dataset {id}, uploaded by {whose:?}"
                ));
            }
        }
        let list: Value = get("/api/jobs".into(), token).await?.json().await?;
        let listed: HashMap<String, Value> = list
            .as_array()
            .context("job list")?
            .iter()
            .map(|j| (j["id"].as_str().unwrap_or("").to_owned(), j.clone()))
            .collect();
        for id in &acked.jobs {
            jobs += 1;
            if !listed.contains_key(id) {
                lost += 1;
                problems.push(format!("owner {i}: job {id} acknowledged, not listed"));
            }
        }
        let extra = listed.keys().filter(|k| !acked.jobs.contains(*k)).count();
        if extra > acked.jobs_unanswered {
            mixed += extra - acked.jobs_unanswered;
            problems.push(format!(
                "owner {i} lists {extra} jobs it was not told of ({} answers were lost)",
                acked.jobs_unanswered
            ));
        }
        for (job, model) in &acked.succeeded {
            models += 1;
            let Some(now) = listed.get(job) else {
                continue; // counted as lost above
            };
            if now["state"] != "succeeded" || now["model_id"].as_str() != Some(model) {
                changed += 1;
                problems.push(format!("owner {i}: finished job {job} is now {now}"));
            }
            let card = get(format!("/api/models/{model}"), token).await?;
            if !card.status().is_success() {
                lost += 1;
                problems.push(format!(
                    "owner {i}: model {model} answers {}",
                    card.status()
                ));
            }
            // The next owner must not see it.
            let (other, _) = &owners[(i + 1) % owners.len()];
            if owners.len() > 1 {
                let s = get(format!("/api/models/{model}"), other).await?.status();
                if s.as_u16() != 404 {
                    mixed += 1;
                    problems.push(format!("owner {i}'s model {model} answers {s} to another"));
                }
            }
        }
    }
    Ok(json!({
        "datasets_checked": datasets,
        "jobs_checked": jobs,
        "finished_jobs_checked": models,
        "lost": lost,
        "corrupted": corrupted,
        "mixed": mixed,
        "finished_jobs_changed": changed,
        "problems": problems,
    }))
}

/// Waits (at most `within`) until no job of the operator's view is queued or running, then
/// cancels what is left.
async fn settle_jobs(addr: SocketAddr, within: Duration) -> Result<usize> {
    let http = crate::operator_client();
    let t = Instant::now();
    loop {
        let jobs: Value = http
            .get(format!("http://{addr}/api/jobs"))
            .send()
            .await?
            .json()
            .await?;
        let open: Vec<String> = jobs
            .as_array()
            .context("job list")?
            .iter()
            .filter(|j| matches!(j["state"].as_str(), Some("queued" | "running")))
            .filter_map(|j| j["id"].as_str().map(str::to_owned))
            .collect();
        if open.is_empty() {
            return Ok(0);
        }
        if t.elapsed() > within {
            for id in &open {
                let _ = http
                    .post(format!("http://{addr}/api/jobs/{id}/cancel"))
                    .send()
                    .await;
            }
            return Ok(open.len());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The run: load, a SIGKILL and restart at half time, slow clients, then the check; then the
/// full-disk phase.
pub async fn run(cfg: &LoadConfig) -> Result<Value> {
    let work = tempfile::tempdir()?;
    let data_dir = work.path().join("data");
    std::fs::create_dir_all(&data_dir)?;
    let log_path = work.path().join("server.log");
    let addr = free_addr()?;
    let quotas = [
        ("quota-datasets", "1000"),
        ("quota-stored-mib", "4096"),
        ("quota-jobs", "2"),
    ];
    let http = reqwest::Client::new();
    let mut server = Server::start(&cfg.veil, addr, &data_dir, &log_path, None, &quotas)?;
    server.healthy(&http, Duration::from_secs(60)).await?;
    let base = Arc::new(veil::data::digits());
    let log = Arc::new(Log::default());
    let mut tokens = Vec::new();
    for _ in 0..cfg.owners {
        tokens.push(new_owner(&http, addr).await?);
    }
    let started = Instant::now();
    let until = started + cfg.duration;
    let mut tasks = Vec::new();
    for (i, token) in tokens.iter().enumerate() {
        tasks.push(tokio::spawn(owner_loop(
            i,
            base.clone(),
            addr,
            token.clone(),
            until,
            log.clone(),
        )));
    }
    // Slow clients: one stalls after its headers, one trickles 200 bytes a second.
    let slow: Vec<_> = [0usize, 200]
        .into_iter()
        .map(|rate| {
            let token = tokens[0].clone();
            tokio::spawn(async move { (rate, slow_upload(addr, &token, rate).await) })
        })
        .collect();
    tokio::time::sleep(cfg.duration / 2).await;
    let killed_at = started.elapsed().as_secs_f64();
    let signal = server.kill();
    let mut server = Server::start(&cfg.veil, addr, &data_dir, &log_path, None, &quotas)?;
    let restart = server.healthy(&http, Duration::from_secs(60)).await?;
    let mut slow_clients = Vec::new();
    for task in slow {
        let (rate, r) = task.await?;
        slow_clients.push(match r {
            Ok((status, after)) => {
                json!({"bytes_per_s": rate, "status": status, "answered_after_s": after})
            }
            Err(e) => json!({"bytes_per_s": rate, "error": format!("{e:#}")}),
        });
    }
    // Slow clients after the restart too (the first pair may have been cut by the kill).
    let after_restart: Vec<_> = [0usize, 200]
        .into_iter()
        .map(|rate| {
            let token = tokens[0].clone();
            tokio::spawn(async move { (rate, slow_upload(addr, &token, rate).await) })
        })
        .collect();
    let mut acked = Vec::new();
    for (task, token) in tasks.into_iter().zip(&tokens) {
        acked.push((token.clone(), task.await?));
    }
    let load_s = started.elapsed().as_secs_f64();
    for task in after_restart {
        let (rate, r) = task.await?;
        slow_clients.push(match r {
            Ok((status, after)) => json!({"bytes_per_s": rate, "status": status, "answered_after_s": after, "after_restart": true}),
            Err(e) => json!({"bytes_per_s": rate, "error": format!("{e:#}"), "after_restart": true}),
        });
    }
    let left_running = settle_jobs(addr, Duration::from_secs(120)).await?;
    // Jobs followed once more, now that they have ended.
    let client = reqwest::Client::new();
    for (token, a) in &mut acked {
        follow_jobs(&client, addr, &format!("Bearer {token}"), &log, a).await;
    }
    let jobs: Value = crate::operator_client()
        .get(format!("http://{addr}/api/jobs"))
        .send()
        .await?
        .json()
        .await?;
    let jobs = jobs.as_array().context("job list")?;
    let resumed = jobs
        .iter()
        .filter(|j| j["resumes"].as_u64().unwrap_or(0) > 0)
        .count();
    let outcomes = log.0.lock().unwrap().clone();
    let verified = verify(addr, &acked).await?;
    drop(server);
    let full_disk = match full_disk(cfg, work.path()).await {
        Ok(v) => v,
        Err(e) => json!({ "error": format!("{e:#}") }),
    };
    Ok(json!({
        "owners": cfg.owners,
        "duration_s": load_s,
        "killed_at_s": killed_at,
        "killed_by_signal": signal,
        "jobs": jobs.len(),
        "jobs_resumed_after_the_kill": resumed,
        "restart_to_healthy_s": restart.as_secs_f64(),
        "jobs_cancelled_at_the_end": left_running,
        "requests": summarize(&outcomes),
        "slow_clients": slow_clients,
        "verified": verified,
        "full_disk": full_disk,
    }))
}

/// A data directory on a 24 MiB tmpfs: one owner uploads 3×32×32 datasets until the disk is
/// full. Measures that the server answers 507, keeps serving, loses none of what it stored, and
/// accepts uploads again once a dataset is deleted.
async fn full_disk(cfg: &LoadConfig, work: &Path) -> Result<Value> {
    let probe = Command::new("unshare")
        .args(["--user", "--map-root-user", "--mount", "true"])
        .status();
    if !probe.is_ok_and(|s| s.success()) {
        return Ok(json!({
            "skipped": "unshare --user --mount is not available here (no user namespaces)"
        }));
    }
    let data_dir = work.join("small");
    std::fs::create_dir_all(&data_dir)?;
    let addr = free_addr()?;
    let quotas = [("quota-datasets", "1000"), ("quota-stored-mib", "4096")];
    let mut server = Server::start(
        &cfg.veil,
        addr,
        &data_dir,
        &work.join("small.log"),
        Some(24),
        &quotas,
    )?;
    let http = reqwest::Client::new();
    server.healthy(&http, Duration::from_secs(60)).await?;
    let token = new_owner(&http, addr).await?;
    let auth = format!("Bearer {token}");
    let log = Log::default();
    let mut stored: BTreeMap<String, String> = BTreeMap::new();
    let mut first_full = None;
    let mut full_answers = Vec::new();
    for round in 0..40 {
        let data = veil::data::synthetic(SyntheticConfig {
            classes: 10,
            per_class: 60,
            shape: ImageShape::new(3, 32, 32),
            noise: 0.3,
            seed: round,
        })?;
        let bytes = container::encode(&data, &ContainerMeta::plain(), PixelType::U8)?;
        let digest = sha(&bytes);
        let got = send(
            &log,
            "upload",
            http.post(format!("http://{addr}/api/datasets?name=fill{round}"))
                .header("authorization", &auth)
                .header("content-type", "application/octet-stream")
                .body(bytes),
        )
        .await
        .context("the server stopped answering on a full disk")?;
        let v: Value = serde_json::from_slice(&got.1).unwrap_or_default();
        match got.0.as_u16() {
            201 => {
                stored.insert(v["id"].as_str().unwrap_or("").to_owned(), digest);
            }
            507 => {
                first_full.get_or_insert(round + 1); // 1-based
                full_answers.push(v["error"].as_str().unwrap_or("").to_owned());
                if full_answers.len() >= 3 {
                    break;
                }
            }
            other => bail!("an upload on a filling disk answered {other}: {v}"),
        }
    }
    let Some(first_full) = first_full else {
        bail!("40 uploads of ~3 MB fitted in a 24 MiB tmpfs");
    };
    // Still serving: health, a classification, and every stored dataset intact.
    let health = http
        .get(format!("http://{addr}/api/health"))
        .send()
        .await?
        .status();
    let classify = http
        .post(format!("http://{addr}/api/models/digits-cnn/classify"))
        .header("authorization", &auth)
        .json(&json!({"images": [veil::data::digits().image(0)]}))
        .send()
        .await?
        .status();
    let mut intact = 0;
    for (id, digest) in &stored {
        let bytes = http
            .get(format!("http://{addr}/api/datasets/{id}/container"))
            .header("authorization", &auth)
            .send()
            .await?
            .bytes()
            .await?;
        intact += usize::from(sha(&bytes) == *digest);
    }
    let listed: Value = http
        .get(format!("http://{addr}/api/datasets"))
        .header("authorization", &auth)
        .send()
        .await?
        .json()
        .await?;
    // Room again after a deletion.
    let first = stored
        .keys()
        .next()
        .cloned()
        .context("nothing was stored")?;
    let deleted = http
        .delete(format!("http://{addr}/api/datasets/{first}"))
        .header("authorization", &auth)
        .send()
        .await?
        .status();
    let small = veil::data::digits().subset(&(0..100).collect::<Vec<_>>());
    let again = http
        .post(format!("http://{addr}/api/datasets?name=after"))
        .header("authorization", &auth)
        .header("content-type", "application/octet-stream")
        .body(container::encode(
            &small,
            &ContainerMeta::plain(),
            PixelType::U8,
        )?)
        .send()
        .await?
        .status();
    Ok(json!({
        "tmpfs_mib": 24,
        "uploads_stored": stored.len(),
        "first_full_upload": first_full,
        "full_status": 507,
        "full_message": full_answers.first(),
        "listed_after": listed.as_array().map_or(0, Vec::len),
        "intact_after": intact,
        "health_after": health.as_u16(),
        "classify_after": classify.as_u16(),
        "delete_status": deleted.as_u16(),
        "upload_after_delete": again.as_u16(),
    }))
}
