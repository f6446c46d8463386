//! Support for Veil's end-to-end tests: the real server on a free port, and headless Chromium
//! driven through chromedriver (WebDriver), on WebGPU (SwiftShader, `--enable-unsafe-webgpu`) or
//! with no WebGPU adapter at all (the CPU fallback).

pub mod load;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use fantoccini::{Client, ClientBuilder};
use serde_json::json;

/// The repository root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// Where tests save screenshots (`target/screenshots`).
pub fn screenshot_dir() -> PathBuf {
    let dir = repo_root().join("target").join("screenshots");
    let _ = std::fs::create_dir_all(&dir);
    dir
}

/// The real Veil app on a free port, with a factory in a temporary data directory that is removed
/// when this is dropped (keep it alive for as long as the test uses the server).
pub struct TestServer {
    /// Where it listens.
    pub addr: SocketAddr,
    _data: tempfile::TempDir,
}

/// One request the server received: what an untrusted server sees.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// `GET`, `POST`, …
    pub method: String,
    /// Path and query.
    pub uri: String,
    /// Every header, as `name: value` lines.
    pub headers: String,
    /// The whole body.
    pub body: Vec<u8>,
}

/// Every request a recording server received, in order.
pub type Recording = std::sync::Arc<std::sync::Mutex<Vec<Recorded>>>;

/// Starts the real Veil app (the same router `veil serve` runs) on 127.0.0.1 and a free port.
/// The operator token of every test server: a test that checks the factory from outside (as an
/// auditor would) reads every owner's objects with it.
pub const OPERATOR_TOKEN: &str = "veil-test-operator-token-0123456789abcdef";

/// An HTTP client that sends [`OPERATOR_TOKEN`].
pub fn operator_client() -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        reqwest::header::HeaderValue::from_str(&format!("Bearer {OPERATOR_TOKEN}"))
            .expect("a header value"),
    );
    reqwest::Client::builder()
        .default_headers(headers)
        .build()
        .expect("a client")
}

pub async fn start_server() -> Result<TestServer> {
    start(None, veil_server::factory::quotas::Quotas::default()).await
}

/// [`start_server`] with other per-owner quotas.
pub async fn start_server_with_quotas(
    quotas: veil_server::factory::quotas::Quotas,
) -> Result<TestServer> {
    start(None, quotas).await
}

/// [`start_server`], with every request (method, URI, headers and whole body) recorded before the
/// app sees it: in these tests the page can reach no other host, so this is everything it sends.
pub async fn start_recording_server() -> Result<(TestServer, Recording)> {
    let recording = Recording::default();
    Ok((
        start(
            Some(recording.clone()),
            veil_server::factory::quotas::Quotas::default(),
        )
        .await?,
        recording,
    ))
}

async fn start(
    recording: Option<Recording>,
    quotas: veil_server::factory::quotas::Quotas,
) -> Result<TestServer> {
    let www = repo_root().join("www");
    if !www.join("pkg").join("veil_client_bg.wasm").exists() {
        bail!(
            "{} has no built wasm client: `cargo xtask test` builds it before the browser tests",
            www.display()
        );
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let data = tempfile::tempdir()?;
    let mut config = veil_server::factory::FactoryConfig::new(data.path());
    config.operator_token_sha256 = Some(veil_server::factory::owners::token_hash(OPERATOR_TOKEN));
    config.quotas = quotas;
    let factory = veil_server::factory::Factory::start(config)?;
    let mut app = veil_server::app(veil_server::AppState::with_defaults(www, factory)?);
    if let Some(rec) = recording {
        app = app.layer(axum::middleware::from_fn(
            move |req: axum::extract::Request, next: axum::middleware::Next| {
                let rec = rec.clone();
                async move {
                    let (parts, body) = req.into_parts();
                    let bytes = axum::body::to_bytes(body, usize::MAX)
                        .await
                        .unwrap_or_default();
                    let headers = parts
                        .headers
                        .iter()
                        .map(|(k, v)| format!("{k}: {}\n", String::from_utf8_lossy(v.as_bytes())))
                        .collect();
                    if let Ok(mut r) = rec.lock() {
                        r.push(Recorded {
                            method: parts.method.to_string(),
                            uri: parts.uri.to_string(),
                            headers,
                            body: bytes.to_vec(),
                        });
                    }
                    next.run(axum::extract::Request::from_parts(
                        parts,
                        axum::body::Body::from(bytes),
                    ))
                    .await
                }
            },
        ));
    }
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(TestServer { addr, _data: data })
}

/// Which WebGPU situation the browser is started in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GpuMode {
    /// `--enable-unsafe-webgpu`: Chromium offers its software (SwiftShader) adapter.
    Webgpu,
    /// No flag: `requestAdapter()` returns null, so the client must use the CPU.
    NoWebgpu,
}

impl GpuMode {
    /// From `VEIL_E2E_GPU` (`webgpu` or `none`; default `webgpu`).
    pub fn from_env() -> Self {
        match std::env::var("VEIL_E2E_GPU").as_deref() {
            Ok("none") | Ok("cpu") => GpuMode::NoWebgpu,
            _ => GpuMode::Webgpu,
        }
    }

    /// The backend label the page must report.
    pub fn expected_backend(self) -> &'static str {
        match self {
            GpuMode::Webgpu => "webgpu",
            GpuMode::NoWebgpu => "cpu",
        }
    }
}

/// A headless Chromium session through a chromedriver child process; both are stopped on drop
/// (call [`Browser::close`] for a clean WebDriver shutdown first).
pub struct Browser {
    /// The WebDriver client.
    pub client: Client,
    driver: Child,
    _profile: tempfile::TempDir,
    /// Where downloads land.
    pub downloads: tempfile::TempDir,
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

impl Browser {
    /// Starts chromedriver and a headless Chromium in `mode`.
    pub async fn start(mode: GpuMode) -> Result<Self> {
        let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
        let chromedriver =
            std::env::var("CHROMEDRIVER").unwrap_or_else(|_| "/usr/bin/chromedriver".into());
        let port = free_port()?;
        let driver = Command::new(&chromedriver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| {
                format!("starting {chromedriver} (install Debian's chromium-driver)")
            })?;
        let profile = tempfile::tempdir()?;
        let downloads = tempfile::tempdir()?;
        let mut args = vec![
            "--headless=new".to_string(),
            "--no-sandbox".into(),
            "--no-first-run".into(),
            "--disable-background-networking".into(),
            "--disable-component-update".into(),
            "--disable-sync".into(),
            "--disable-quic".into(),
            "--disable-dev-shm-usage".into(),
            "--window-size=1100,1400".into(),
            format!("--user-data-dir={}", profile.path().display()),
        ];
        if mode == GpuMode::Webgpu {
            args.push("--enable-unsafe-webgpu".into());
        }
        let caps = json!({
            "goog:chromeOptions": {
                "binary": chromium,
                "args": args,
                "prefs": {
                    "download.default_directory": downloads.path(),
                    "download.prompt_for_download": false,
                }
            }
        });
        let serde_json::Value::Object(caps) = caps else {
            unreachable!()
        };
        let url = format!("http://127.0.0.1:{port}");
        let started = Instant::now();
        let client = loop {
            let connector = hyper_util::client::legacy::connect::HttpConnector::new();
            match ClientBuilder::new(connector)
                .capabilities(caps.clone())
                .connect(&url)
                .await
            {
                Ok(c) => break c,
                Err(e) if started.elapsed() < Duration::from_secs(30) => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => bail!("cannot start Chromium through chromedriver: {e}"),
            }
        };
        Ok(Self {
            client,
            driver,
            _profile: profile,
            downloads,
        })
    }

    /// Ends the WebDriver session and stops chromedriver.
    pub async fn close(mut self) -> Result<()> {
        let client = self.client.clone();
        let _ = client.close().await;
        let _ = self.driver.kill();
        let _ = self.driver.wait();
        Ok(())
    }

    /// Saves a PNG screenshot under `target/screenshots/<name>.png`.
    pub async fn screenshot(&self, name: &str) -> Result<PathBuf> {
        let png = self.client.screenshot().await?;
        let path = screenshot_dir().join(format!("{name}.png"));
        std::fs::write(&path, png)?;
        Ok(path)
    }

    /// Polls `script` (a JS expression body returning a value) until it returns something other
    /// than null/false/empty string, or fails after `timeout`.
    pub async fn wait_for(
        &self,
        what: &str,
        script: &str,
        timeout: Duration,
    ) -> Result<serde_json::Value> {
        let started = Instant::now();
        loop {
            let v = self.client.execute(script, vec![]).await?;
            let done = !(v.is_null() || v == json!(false) || v == json!(""));
            if done {
                return Ok(v);
            }
            if started.elapsed() > timeout {
                bail!("timed out after {timeout:?} waiting for {what}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits for a page's client to start (its `#backend` badge) and checks that it runs on the
    /// backend `mode` must give; fails at once with the page's reason if it could not start.
    pub async fn wait_backend(&self, mode: GpuMode, timeout: Duration) -> Result<()> {
        let backend = self
            .wait_for(
                "the client to start",
                "const s = document.getElementById('backend'); \
                 if (s.classList.contains('failed')) return 'failed: ' + s.textContent; \
                 return s.dataset.backend || null;",
                timeout,
            )
            .await?;
        if backend != mode.expected_backend() {
            bail!(
                "the page reports backend {backend}, not {}",
                mode.expected_backend()
            );
        }
        Ok(())
    }

    /// Waits for a file to appear in the download folder and returns its path.
    pub async fn wait_for_download(&self, timeout: Duration) -> Result<PathBuf> {
        let started = Instant::now();
        loop {
            for entry in std::fs::read_dir(self.downloads.path())? {
                let path = entry?.path();
                let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
                if !name.ends_with(".crdownload") && !name.starts_with('.') {
                    return Ok(path);
                }
            }
            if started.elapsed() > timeout {
                bail!("no download arrived within {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
    }
}

/// Writes an 8×8 digit (values in [0, 1]) as a `scale`× nearest-neighbour greyscale PNG.
pub fn digit_png(pixels: &[f32], scale: u32, path: &Path) -> Result<()> {
    let side = 8 * scale;
    let img = image::GrayImage::from_fn(side, side, |x, y| {
        let v = pixels[((y / scale) * 8 + x / scale) as usize];
        image::Luma([(v * 255.0).round() as u8])
    });
    img.save(path)?;
    Ok(())
}

/// Loads the shipped digits flows (the ones `veil serve` serves) into a native client session,
/// as the pages load them from `/api/flows`.
pub fn load_digits_flows(
    session: &veil_client::Session,
) -> Result<veil_client::flow_rotation::flows::FlowsInfo> {
    let files: Vec<(String, Vec<u8>)> = veil_server::embedded::DIGITS_FLOW_FILES
        .iter()
        .map(|(n, b)| ((*n).to_owned(), b.to_vec()))
        .collect();
    Ok(session.flow_rotation().load(
        "digits",
        veil_server::embedded::DIGITS_FLOWS_MANIFEST,
        &files,
    )?)
}
