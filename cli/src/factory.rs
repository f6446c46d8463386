//! `veil factory …`: a command-line client of a running factory, over HTTP, so the whole flow
//! (upload, train, follow, classify, download) works without a browser.
//!
//! Why this file is over 600 lines: one subcommand per factory route, each short, over one HTTP
//! client.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use futures_util::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::Value;
use veil::data::container::{self, ContainerMeta, PixelType};
use veil::data::{ImageDataset, ImageShape};

/// `veil factory` and its sub-commands.
#[derive(clap::Args, Debug)]
pub struct FactoryArgs {
    /// The factory's address.
    #[arg(
        long,
        env = "VEIL_SERVER",
        default_value = "http://127.0.0.1:8080",
        global = true
    )]
    pub server: String,
    /// What to do.
    #[command(subcommand)]
    pub command: FactoryCommand,
}

/// The sub-commands.
#[derive(clap::Subcommand, Debug)]
pub enum FactoryCommand {
    /// Upload a dataset: a container (.safetensors, e.g. ciphertexts from the page), or public
    /// data to pack as a plain container first (`digits`, or a path `veil data-info` reads).
    Upload {
        /// `digits`, a `.safetensors` container, or a dataset path (digits CSV, MNIST, CIFAR-10,
        /// image folder).
        source: String,
        /// The dataset's name on the server.
        #[arg(long)]
        name: Option<String>,
        /// Image folders: side length to resize to.
        #[arg(long, default_value_t = 32)]
        size: usize,
        /// Image folders: channels (1 or 3).
        #[arg(long, default_value_t = 3)]
        channels: usize,
    },
    /// Start a training job on an uploaded dataset, and follow it unless `--detach`.
    Train {
        /// The dataset's id (`ds-…`).
        dataset: String,
        /// `small-cnn` or `small-resnet`.
        #[arg(long, default_value = "small-cnn")]
        arch: String,
        /// Epochs.
        #[arg(long, default_value_t = 10)]
        epochs: usize,
        /// Batch size.
        #[arg(long, default_value_t = 64)]
        batch_size: usize,
        /// Adam's learning rate.
        #[arg(long, default_value_t = 2e-3)]
        learning_rate: f64,
        /// Fraction held out for validation.
        #[arg(long, default_value_t = 0.1)]
        validation_split: f64,
        /// Seed.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Return once the job is queued.
        #[arg(long)]
        detach: bool,
    },
    /// The server's health, or one job (`--follow` streams its progress until it ends).
    Status {
        /// A job id (`job-…`); without it, the server's health and every job.
        job: Option<String>,
        /// Follow the job's progress.
        #[arg(long)]
        follow: bool,
    },
    /// Datasets and models on the server.
    List,
    /// Get an owner token from the server and keep it for this server (`veil factory` does this
    /// on first use): the datasets, jobs and models you make belong to it.
    Login {
        /// Replace the token kept for this server (what the old one owns becomes unreachable).
        #[arg(long)]
        force: bool,
    },
    /// Cancel a job.
    Cancel {
        /// The job's id.
        job: String,
    },
    /// Classify images with a model on the server and print the predictions (and the accuracy,
    /// when the input is a labelled container).
    Classify {
        /// A model name (a built-in one, or a trained model's id `mdl-…`).
        model: String,
        /// A `.safetensors` container or image batch, or PNG/JPEG files (resized to the model).
        inputs: Vec<PathBuf>,
        /// Images per request.
        #[arg(long, default_value_t = 256)]
        batch: usize,
    },
    /// Download a trained model's weights (burnpack).
    Download {
        /// The model.
        model: String,
        /// Output file.
        #[arg(long, short)]
        out: PathBuf,
    },
}

fn bar(len: u64, template: &str) -> ProgressBar {
    let pb = ProgressBar::new(len);
    pb.set_style(
        ProgressStyle::with_template(template)
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    pb
}

async fn check(resp: reqwest::Response) -> Result<reqwest::Response> {
    let status = resp.status();
    if status.is_success() {
        return Ok(resp);
    }
    // A quota (429) says when to try again.
    let retry = resp
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .map(|s| format!(" (the server asks to retry after {s} s)"))
        .unwrap_or_default();
    let text = resp.text().await.unwrap_or_default();
    let msg = serde_json::from_str::<Value>(&text)
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_owned))
        .unwrap_or(text);
    bail!("the server answered {status}: {msg}{retry}")
}

async fn get_json(http: &reqwest::Client, url: &str) -> Result<Value> {
    Ok(check(http.get(url).send().await?).await?.json().await?)
}

/// Where `veil factory` keeps its owner tokens, one per server: `<config dir>/veil/owner-tokens.json`
/// (`~/.config/veil` on Linux), readable by this user only.
fn tokens_path() -> Result<PathBuf> {
    let dir = dirs::config_dir().context("this system has no configuration directory")?;
    Ok(dir.join("veil").join("owner-tokens.json"))
}

fn kept_token(path: &Path, base: &str) -> Result<Option<String>> {
    let tokens: serde_json::Map<String, Value> = match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .with_context(|| format!("{} is not a JSON object of tokens", path.display()))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    Ok(tokens.get(base).and_then(Value::as_str).map(str::to_owned))
}

/// Asks `base` for a new owner token and keeps it in `path`.
async fn login(base: &str, path: &Path) -> Result<String> {
    let http = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .build()?;
    let answer: Value = check(
        http.post(format!("{base}/api/owners"))
            .send()
            .await
            .with_context(|| format!("reaching the factory at {base}"))?,
    )
    .await?
    .json()
    .await?;
    let token = answer["token"]
        .as_str()
        .context("the server's answer has no token")?
        .to_owned();
    let mut tokens: serde_json::Map<String, Value> = std::fs::read(path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    tokens.insert(base.to_owned(), Value::String(token.clone()));
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let json = serde_json::to_vec_pretty(&tokens)?;
    write_private(path, &json).with_context(|| format!("writing {}", path.display()))?;
    eprintln!("got an owner token from {base}; kept in {}", path.display());
    Ok(token)
}

/// Writes `bytes` to `path`, readable and writable by this user only.
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)?.write_all(bytes)
}

/// An HTTP client that sends this user's owner token for `base`: `VEIL_OWNER_TOKEN`, else the
/// kept one, else a new one from the server (kept for next time).
async fn owner_client(base: &str) -> Result<reqwest::Client> {
    let token = match std::env::var("VEIL_OWNER_TOKEN") {
        Ok(t) if !t.is_empty() => t,
        _ => {
            let path = tokens_path()?;
            match kept_token(&path, base)? {
                Some(t) => t,
                None => login(base, &path).await?,
            }
        }
    };
    let mut auth = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))
        .context("the owner token has characters a header cannot carry")?;
    auth.set_sensitive(true);
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(reqwest::header::AUTHORIZATION, auth);
    Ok(reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .default_headers(headers)
        .build()?)
}

/// Runs a `veil factory` command.
pub fn run(args: FactoryArgs) -> Result<()> {
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(run_async(args))
}

async fn run_async(args: FactoryArgs) -> Result<()> {
    let base = args.server.trim_end_matches('/').to_owned();
    if let FactoryCommand::Login { force } = args.command {
        let path = tokens_path()?;
        if !force && kept_token(&path, &base)?.is_some() {
            println!(
                "an owner token for {base} is already kept in {} (--force replaces it)",
                path.display()
            );
            return Ok(());
        }
        login(&base, &path).await?;
        return Ok(());
    }
    let http = owner_client(&base).await?;
    match args.command {
        FactoryCommand::Upload {
            source,
            name,
            size,
            channels,
        } => {
            let (bytes, default_name) = pack(&source, ImageShape::new(channels, size, size))?;
            let row = upload(
                &http,
                &base,
                bytes,
                name.as_deref().unwrap_or(&default_name),
            )
            .await?;
            println!(
                "uploaded {} ({} images of {}, {} classes, scheme {})",
                row["id"].as_str().unwrap_or("?"),
                row["count"],
                shape_text(&row["shape"]),
                row["classes"].as_array().map_or(0, Vec::len),
                row["scheme"].as_str().unwrap_or("?"),
            );
            Ok(())
        }
        FactoryCommand::Train {
            dataset,
            arch,
            epochs,
            batch_size,
            learning_rate,
            validation_split,
            seed,
            detach,
        } => {
            let body = serde_json::json!({
                "dataset": dataset, "arch": arch, "epochs": epochs, "batch_size": batch_size,
                "learning_rate": learning_rate, "validation_split": validation_split, "seed": seed,
            });
            let job: Value = check(
                http.post(format!("{base}/api/jobs"))
                    .json(&body)
                    .send()
                    .await?,
            )
            .await?
            .json()
            .await?;
            let id = job["id"]
                .as_str()
                .context("the server's answer has no job id")?;
            println!("job {id} queued");
            if !detach {
                follow(&http, &base, id).await?;
            }
            Ok(())
        }
        FactoryCommand::Status {
            job: Some(id),
            follow: true,
        } => follow(&http, &base, &id).await,
        FactoryCommand::Status { job: Some(id), .. } => {
            let job: Value = get_json(&http, &format!("{base}/api/jobs/{id}")).await?;
            println!("{}", serde_json::to_string_pretty(&job)?);
            Ok(())
        }
        FactoryCommand::Status { job: None, .. } => {
            let health: Value = get_json(&http, &format!("{base}/api/health")).await?;
            println!(
                "{base}: {} (version {}), {} datasets, {} models, {} jobs queued, {} running",
                health["status"].as_str().unwrap_or("?"),
                health["version"].as_str().unwrap_or("?"),
                health["datasets"],
                health["models"],
                health["queue_depth"],
                health["running_jobs"],
            );
            let jobs: Value = get_json(&http, &format!("{base}/api/jobs")).await?;
            for j in jobs.as_array().into_iter().flatten() {
                let last = j["history"].as_array().and_then(|h| h.last()).cloned();
                println!(
                    "{}  {:9}  {} on {}  epoch {}/{}{}{}",
                    j["id"].as_str().unwrap_or("?"),
                    j["state"].as_str().unwrap_or("?"),
                    j["spec"]["arch"].as_str().unwrap_or("?"),
                    j["spec"]["dataset"].as_str().unwrap_or("?"),
                    j["epochs_done"],
                    j["spec"]["epochs"],
                    last.and_then(|r| r["val_accuracy"].as_f64())
                        .map(|a| format!("  val acc {a:.3}"))
                        .unwrap_or_default(),
                    j["error"]
                        .as_str()
                        .map(|e| format!("  error: {e}"))
                        .unwrap_or_default(),
                );
            }
            Ok(())
        }
        FactoryCommand::Login { .. } => unreachable!("handled before the client is made"),
        FactoryCommand::List => {
            let datasets: Value = get_json(&http, &format!("{base}/api/datasets")).await?;
            println!("datasets:");
            for d in datasets.as_array().into_iter().flatten() {
                println!(
                    "  {}  {:24} {:5} images {:>9}  scheme {}{}",
                    d["id"].as_str().unwrap_or("?"),
                    d["name"].as_str().unwrap_or("?"),
                    d["count"],
                    shape_text(&d["shape"]),
                    d["scheme"].as_str().unwrap_or("?"),
                    d["key_fingerprint"]
                        .as_str()
                        .map(|k| format!("  key {k}"))
                        .unwrap_or_default()
                );
            }
            let models: Value = get_json(&http, &format!("{base}/api/models")).await?;
            println!("models:");
            for m in models.as_array().into_iter().flatten() {
                println!(
                    "  {:22} {:8} {:13} on {:20} accuracy {}",
                    m["name"].as_str().unwrap_or("?"),
                    m["kind"].as_str().unwrap_or("?"),
                    m["arch"].as_str().unwrap_or("?"),
                    m["dataset"].as_str().unwrap_or("?"),
                    m["accuracy"],
                );
            }
            Ok(())
        }
        FactoryCommand::Cancel { job } => {
            check(
                http.post(format!("{base}/api/jobs/{job}/cancel"))
                    .send()
                    .await?,
            )
            .await?;
            println!("job {job} cancelled");
            Ok(())
        }
        FactoryCommand::Classify {
            model,
            inputs,
            batch,
        } => classify_files(&http, &base, &model, &inputs, batch.max(1)).await,
        FactoryCommand::Download { model, out } => {
            let bytes = check(
                http.get(format!("{base}/api/models/{model}/weights"))
                    .send()
                    .await?,
            )
            .await?
            .bytes()
            .await?;
            std::fs::write(&out, &bytes).with_context(|| format!("writing {}", out.display()))?;
            println!("wrote {} bytes to {}", bytes.len(), out.display());
            Ok(())
        }
    }
}

fn shape_text(v: &Value) -> String {
    format!("{}×{}×{}", v["channels"], v["height"], v["width"])
}

/// The container bytes to upload for `source`, and a default name.
pub fn pack(source: &str, folder_shape: ImageShape) -> Result<(Vec<u8>, String)> {
    if source == "digits" {
        let data = veil::data::digits();
        return Ok((
            container::encode(&data, &ContainerMeta::plain(), PixelType::U8)?,
            "UCI digits".into(),
        ));
    }
    let path = Path::new(source);
    let name = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| source.to_owned());
    if path.extension().is_some_and(|e| e == "safetensors") {
        let bytes = std::fs::read(path).with_context(|| format!("reading {source}"))?;
        // Check locally first: a clear message here beats a 400 after a long upload.
        container::decode(&bytes).with_context(|| source.to_owned())?;
        return Ok((bytes, name));
    }
    let data = crate::datasets::load(path, crate::datasets::Format::Auto, folder_shape)?;
    Ok((
        container::encode(&data, &ContainerMeta::plain(), PixelType::U8)?,
        name,
    ))
}

/// Uploads container bytes with a progress bar; returns the dataset's row.
pub async fn upload(
    http: &reqwest::Client,
    base: &str,
    bytes: Vec<u8>,
    name: &str,
) -> Result<Value> {
    let total = bytes.len() as u64;
    let pb = bar(
        total,
        "upload {bar:40} {bytes}/{total_bytes} {bytes_per_sec}",
    );
    let chunks: Vec<Vec<u8>> = bytes.chunks(256 << 10).map(<[u8]>::to_vec).collect();
    let pb2 = pb.clone();
    let stream = futures_util::stream::iter(chunks).map(move |c| {
        pb2.inc(c.len() as u64);
        Ok::<_, std::io::Error>(c)
    });
    let resp = http
        .post(format!("{base}/api/datasets"))
        .query(&[("name", name)])
        .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
        .header(reqwest::header::CONTENT_LENGTH, total)
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await?;
    pb.finish_and_clear();
    Ok(check(resp).await?.json().await?)
}

/// Follows a job's Server-Sent Events with a progress bar until it ends; fails if it failed.
pub async fn follow(http: &reqwest::Client, base: &str, id: &str) -> Result<()> {
    let resp = check(
        http.get(format!("{base}/api/jobs/{id}/events"))
            .send()
            .await?,
    )
    .await?;
    let pb = bar(0, "{prefix} {bar:40} {pos}/{len} steps {msg}");
    let mut stream = resp.bytes_stream();
    let mut buf = String::new();
    let mut final_state: Option<Value> = None;
    'outer: while let Some(chunk) = stream.next().await {
        buf.push_str(&String::from_utf8_lossy(&chunk?));
        while let Some(end) = buf.find("\n\n") {
            let frame: String = buf.drain(..end + 2).collect();
            let mut event = "";
            let mut data = String::new();
            for line in frame.lines() {
                if let Some(e) = line.strip_prefix("event:") {
                    event = e.trim();
                } else if let Some(d) = line.strip_prefix("data:") {
                    data.push_str(d.trim_start());
                }
            }
            let Ok(v) = serde_json::from_str::<Value>(&data) else {
                continue;
            };
            match event {
                "snapshot" => {
                    if matches!(
                        v["state"].as_str(),
                        Some("succeeded" | "failed" | "cancelled")
                    ) {
                        final_state = Some(v);
                        break 'outer;
                    }
                    pb.set_prefix(format!(
                        "epoch {}/{}",
                        v["epochs_done"], v["spec"]["epochs"]
                    ));
                }
                "progress" => {
                    let spe = v["steps_per_epoch"].as_u64().unwrap_or(1);
                    let epochs = v["epochs"].as_u64().unwrap_or(1);
                    let epoch = v["epoch"].as_u64().unwrap_or(1);
                    pb.set_length(spe * epochs);
                    pb.set_position((epoch - 1) * spe + v["step"].as_u64().unwrap_or(0));
                    pb.set_prefix(format!("epoch {epoch}/{epochs}"));
                    pb.set_message(format!(
                        "loss {:.4} acc {:.3}",
                        v["loss"].as_f64().unwrap_or(f64::NAN),
                        v["accuracy"].as_f64().unwrap_or(f64::NAN)
                    ));
                }
                "epoch" => {
                    let line = format!(
                        "epoch {:>3}: loss {:.4}  train acc {:.3}  val acc {}",
                        v["epoch"],
                        v["loss"].as_f64().unwrap_or(f64::NAN),
                        v["accuracy"].as_f64().unwrap_or(f64::NAN),
                        v["val_accuracy"]
                            .as_f64()
                            .map(|a| format!("{a:.3}"))
                            .unwrap_or_else(|| "-".into())
                    );
                    // A hidden bar (output not a terminal) prints nothing: print the line itself.
                    if pb.is_hidden() {
                        println!("{line}");
                    } else {
                        pb.println(line);
                    }
                }
                "state" => {
                    if matches!(
                        v["state"].as_str(),
                        Some("succeeded" | "failed" | "cancelled")
                    ) {
                        final_state = Some(v);
                        break 'outer;
                    }
                }
                _ => {}
            }
        }
    }
    pb.finish_and_clear();
    let job: Value = get_json(http, &format!("{base}/api/jobs/{id}")).await?;
    match job["state"].as_str() {
        Some("succeeded") => {
            println!(
                "job {id} succeeded: model {}",
                job["model_id"].as_str().unwrap_or("?")
            );
            Ok(())
        }
        Some("failed") => bail!(
            "job {id} failed: {}",
            job["error"].as_str().unwrap_or("no reason recorded")
        ),
        Some("cancelled") => bail!("job {id} was cancelled"),
        other => bail!(
            "the event stream ended with job {id} {} ({final_state:?})",
            other.unwrap_or("in an unknown state")
        ),
    }
}

/// Sends `pixels` (whole images of `shape`) for classification as a safetensors body; returns
/// the probabilities, row-major `[N, K]`, and K.
pub async fn classify(
    http: &reqwest::Client,
    base: &str,
    model: &str,
    pixels: &[f32],
    shape: ImageShape,
) -> Result<(Vec<f32>, usize)> {
    let body = container::encode_images(pixels, shape, PixelType::F32)?;
    let resp = http
        .post(format!("{base}/api/models/{model}/classify"))
        .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
        .header(reqwest::header::ACCEPT, "application/octet-stream")
        .body(body)
        .send()
        .await?;
    let bytes = check(resp).await?.bytes().await?;
    Ok(container::decode_matrix(&bytes, "probabilities")?)
}

async fn classify_files(
    http: &reqwest::Client,
    base: &str,
    model: &str,
    inputs: &[PathBuf],
    batch: usize,
) -> Result<()> {
    if inputs.is_empty() {
        bail!("give a container or image files to classify");
    }
    let info: Value = get_json(http, &format!("{base}/api/models")).await?;
    let m = info
        .as_array()
        .and_then(|a| a.iter().find(|m| m["name"] == model))
        .with_context(|| format!("the server has no model {model:?}"))?;
    let shape: ImageShape = serde_json::from_value(m["input"].clone())?;
    let classes: Vec<String> = serde_json::from_value(m["classes"].clone())?;
    let (pixels, labels, names) = read_inputs(inputs, shape)?;
    let n = pixels.len() / shape.len();
    let pb = bar(n as u64, "classify {bar:40} {pos}/{len}");
    let mut predictions = Vec::with_capacity(n);
    for chunk in pixels.chunks(batch * shape.len()) {
        let (probs, k) = classify(http, base, model, chunk, shape).await?;
        predictions.extend(veil::nn::train::argmax_rows(&probs, k));
        pb.inc((chunk.len() / shape.len()) as u64);
    }
    pb.finish_and_clear();
    match labels {
        Some(labels) => {
            let hits = predictions
                .iter()
                .zip(&labels)
                .filter(|(p, l)| p == l)
                .count();
            println!(
                "{n} images: accuracy {:.2} % ({hits} correct) with model {model}",
                100.0 * hits as f64 / n as f64
            );
        }
        None => {
            for (name, p) in names.iter().zip(&predictions) {
                println!(
                    "{name}\t{}",
                    classes.get(*p as usize).map_or("?", String::as_str)
                );
            }
        }
    }
    Ok(())
}

type Inputs = (Vec<f32>, Option<Vec<u32>>, Vec<String>);

fn read_inputs(inputs: &[PathBuf], shape: ImageShape) -> Result<Inputs> {
    if let [one] = inputs
        && one.extension().is_some_and(|e| e == "safetensors")
    {
        let bytes = std::fs::read(one).with_context(|| format!("reading {}", one.display()))?;
        if let Ok(c) = container::decode(&bytes) {
            let d: ImageDataset = c.dataset;
            let names = (0..d.len()).map(|i| format!("#{i}")).collect();
            return Ok((d.images, Some(d.labels), names));
        }
        let (px, s) = container::decode_images(&bytes).with_context(|| {
            format!(
                "{} is neither a container nor an image batch",
                one.display()
            )
        })?;
        if s != shape {
            bail!(
                "{} holds {s} images; the model takes {shape}",
                one.display()
            );
        }
        let names = (0..px.len() / s.len()).map(|i| format!("#{i}")).collect();
        return Ok((px, None, names));
    }
    let mut pixels = Vec::new();
    let mut names = Vec::new();
    for p in inputs {
        let bytes = std::fs::read(p).with_context(|| format!("reading {}", p.display()))?;
        let entry = veil::data::FolderEntry {
            class: "?".into(),
            file_name: p.display().to_string(),
            bytes,
        };
        let d = veil::data::decode_image_folder(&[entry], shape)?;
        pixels.extend(d.images);
        names.push(p.display().to_string());
    }
    Ok((pixels, None, names))
}
