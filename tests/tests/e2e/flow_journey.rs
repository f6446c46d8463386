//! End-to-end journeys in headless Chromium, with every request the pages make recorded by the
//! server.
//!
//! - Flow rotation: a key file made here is imported on the Keys page; the digits' training split
//!   is dropped into the Encrypt page as a folder of PNG files and encrypted there; the Train page
//!   uploads the ciphertexts and has the factory train a small CNN; the Classify page encrypts the
//!   test split and classifies it through that model, by route (a) and by route (c). Asserted: no
//!   request body holds the key (raw, hex, base64), the key file, or any original image (PNG,
//!   8-bit, f32 or JSON text); the uploaded dataset and the classification batches are the native
//!   encryptions of those images (same key, same flows); and the page's accuracies are the native
//!   ones within 2 points.
//! - Fine-tuning the flows in the page, keeping them in the browser, encrypting with them.
//! - Known pairs: the Encrypt page's attack breaks a class key from m of the page's pairs.
//! - OWSD: scrambling in the page, the cloud classifying only scrambled images, the internal
//!   network trained and used in the page, the key's count kept across a reload, the budget.
//!
//! `#[ignore]`d for plain `cargo test`: `cargo xtask test` runs them on WebGPU and on the CPU.

use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use base64::Engine;
use fantoccini::Locator;
use serde_json::Value;
use veil::burn::tensor::Device;
use veil::crypto::keys::MasterKey;
use veil::data::{ImageDataset, digits};
use veil_tests::{Browser, GpuMode, Recorded, Recording, digit_png, start_recording_server};

pub(crate) const LONG: Duration = Duration::from_secs(600);
/// Test images classified by route (c), which costs ten encryptions and queries per image.
const ROUTE_C_IMAGES: usize = 60;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the built wasm client and Chromium: run by `cargo xtask test`"]
async fn flow_rotation_journey_sends_only_ciphertexts() -> Result<()> {
    with_browser("flow", journey).await
}

/// Fine-tuning the served flows in the page on data they never saw (the digits inverted, light
/// on dark), keeping them in the browser, and encrypting with them: the page's before/after
/// figures are the native client's on the same images, fine-tuning makes every image encryptable,
/// and the server receives nothing but GETs of public files.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the built wasm client and Chromium: run by `cargo xtask test`"]
async fn fine_tuned_flows_stay_in_the_browser() -> Result<()> {
    with_browser("flows", fine_tune).await
}

async fn fine_tune(b: &Browser, base: &str, mode: GpuMode, rec: &Recording) -> Result<()> {
    use veil_client::finetune::{FineTuneOptions, FineTuneTarget};
    let c = &b.client;
    let tag = mode.expected_backend();
    let dir = tempfile::tempdir()?;
    let key = MasterKey::from_bytes(*b"the e2e fine-tuning's fixed key.");
    let key_text = import_key(b, base, mode, &key, dir.path()).await?;

    // The owner's images: digits, inverted. SwiftShader runs Glow's many small kernels slowly:
    // fewer images and steps there (still every code path: WebGPU training, asynchronous reads,
    // copying the weights back, encrypting with the kept flows).
    let (images, steps) = match mode {
        GpuMode::NoWebgpu => (300, 200),
        GpuMode::Webgpu => (100, 8),
    };
    let mut owner = digits().subset(&(0..images).collect::<Vec<_>>());
    owner.images.iter_mut().for_each(|v| *v = 1.0 - *v);
    let owner_dir = dir.path().join("owner");
    write_folder(&owner, &owner_dir)?;
    let mut order: Vec<usize> = (0..owner.len()).collect();
    order.sort_by_key(|&i| (owner.class_names[owner.labels[i] as usize].clone(), i));
    let owner = owner.subset(&order);

    c.goto(&format!("{base}/flows.html")).await?;
    b.wait_backend(mode, LONG).await?;
    b.wait_for(
        "the served flows",
        "return document.body.dataset.flows === 'digits' && \
         !!document.querySelector('#target option[value=agnostic]');",
        LONG,
    )
    .await?;
    choose(b, "folder", &owner_dir).await?;
    b.wait_for(
        "the picked images",
        "return window.veilFlows.entries.length || null;",
        LONG,
    )
    .await?;
    c.execute(
        &format!(
            "document.getElementById('target').value = 'agnostic'; \
             document.getElementById('steps').value = '{steps}';"
        ),
        vec![],
    )
    .await?;
    click(b, "run").await?;
    wait_state(b, "the fine-tuning", "state", "finished", "message").await?;
    c.execute(
        "document.getElementById('run-title').scrollIntoView();",
        vec![],
    )
    .await?;
    b.screenshot(&format!("flows-{tag}")).await?;
    let reports = c
        .execute("return window.veilFlows.result.reports;", vec![])
        .await?;
    let page: Vec<Value> = reports.as_array().context("reports")?.clone();
    ensure!(page.len() == 1, "{} reports", page.len());
    let page = &page[0];

    // The native client, same images and options.
    let native = {
        let session = veil_client::Session::start(false).await?;
        session.import_key(&key_text, Some("journey passphrase"))?;
        let files: Vec<(String, Vec<u8>)> = veil_server::embedded::DIGITS_FLOW_FILES
            .iter()
            .map(|(n, b)| (n.to_string(), b.to_vec()))
            .collect();
        session.load_flows(
            "digits",
            veil_server::embedded::DIGITS_FLOWS_MANIFEST,
            &files,
        )?;
        session.fine_tune_begin(
            owner.images.clone(),
            owner.labels.clone(),
            FineTuneOptions {
                target: FineTuneTarget::Agnostic,
                steps,
                learning_rate: 1e-3,
                ..FineTuneOptions::default()
            },
        )?;
        let mut p = session.fine_tune_run(usize::MAX).await?;
        while !p.finished {
            p = session.fine_tune_run(usize::MAX).await?;
        }
        serde_json::to_value(&p.reports[0])?
    };
    let figure = |v: &Value, path: &str| -> Result<f64> {
        v.pointer(path)
            .and_then(Value::as_f64)
            .with_context(|| format!("no {path} in {v}"))
    };
    for path in [
        "/before/bits_per_dim",
        "/after/bits_per_dim",
        "/before/gaussianity/sliced_wasserstein",
        "/after/gaussianity/sliced_wasserstein",
        "/before/encryptable",
        "/after/encryptable",
    ] {
        let (p, n) = (figure(page, path)?, figure(&native, path)?);
        println!("{tag}: {path}: page {p:.4}, native {n:.4}");
        // Which images a barely fine-tuned flow (8 steps on WebGPU) can encrypt is decided by
        // whether f32 overflows on the way back, and SwiftShader's arithmetic differs from the
        // CPU's in the last bits: there, a few held-out images may fall the other way (a run
        // under the served τ = 0.5 gave 0.700 against 0.733 on 60): up to 2 of them, or 5 %.
        let tolerance = if mode == GpuMode::Webgpu && path.ends_with("encryptable") {
            fraction_or_two_images(0.05, figure(page, "/held_out_images")?)
        } else {
            0.01 * n.abs().max(0.1)
        };
        ensure!(
            (p - n).abs() <= tolerance,
            "{path}: the page has {p}, the native client {n}"
        );
    }
    ensure!(figure(page, "/before/bits_per_dim")? > 20.0);
    if mode == GpuMode::NoWebgpu {
        // 200 steps: as good on inverted digits as the served flow on upright ones.
        ensure!(figure(page, "/after/bits_per_dim")? < 3.0, "{page}");
        ensure!(figure(page, "/after/encryptable")? == 1.0, "{page}");
        ensure!(figure(page, "/before/encryptable")? < 0.5, "{page}");
    }

    // Keep them, then encrypt with them on the Encrypt page (which now offers them first).
    c.find(Locator::Id("save-name")).await?.clear().await?;
    c.find(Locator::Id("save-name"))
        .await?
        .send_keys("inverted digits")
        .await?;
    click(b, "save").await?;
    b.wait_for(
        "the kept flows",
        "return document.body.dataset.saved || null;",
        LONG,
    )
    .await?;
    c.goto(&format!("{base}/encrypt.html")).await?;
    b.wait_backend(mode, LONG).await?;
    b.wait_for(
        "the kept flows on the encrypt page",
        "return document.body.dataset.flows === 'inverted digits' && \
         document.getElementById('family').value === 'stored:inverted digits';",
        LONG,
    )
    .await?;
    c.execute(
        "document.getElementById('route').value = 'agnostic';",
        vec![],
    )
    .await?;
    choose(b, "folder", &owner_dir).await?;
    b.wait_for(
        "the picked images",
        "return window.veilEncrypt.entries.length || null;",
        LONG,
    )
    .await?;
    click(b, "encrypt").await?;
    let outcome = b
        .wait_for(
            "the encryption with the kept flows",
            "const s = document.body.dataset.state; \
             return s === 'encrypted' || s === 'failed' ? s + ': ' + document.getElementById('message').textContent : null;",
            LONG,
        )
        .await?;
    let outcome = outcome.as_str().unwrap_or_default().to_owned();
    println!("{tag}: encrypting with the kept flows: {outcome}");
    // The encrypt page agrees with the fine-tuning's measurement: flows that encrypt every
    // held-out image encrypt the whole set; flows that encrypt none are refused with a reason
    // (on the CPU as NaN, on WebGPU by the page's decryption check).
    match figure(page, "/after/encryptable")? {
        1.0 => {
            ensure!(outcome.starts_with("encrypted"), "{outcome}");
            let values = c
                .execute("return window.veilEncrypt.ciphertexts.length;", vec![])
                .await?;
            ensure!(values == images * 64, "{values} ciphertext values");
        }
        0.0 => ensure!(
            outcome.starts_with("failed") && outcome.contains("Fine-tune the flows"),
            "{outcome}"
        ),
        e => println!("{tag}: {e} of the held-out images encrypt; not asserting the outcome"),
    }

    // The server saw only GETs: pages, the client, the public flows.
    let requests: Vec<Recorded> = rec.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.clone();
    for r in &requests {
        ensure!(
            r.method == "GET" && r.body.is_empty(),
            "the pages sent {} {} with {} body bytes",
            r.method,
            r.uri,
            r.body.len()
        );
    }
    println!(
        "{tag}: {} requests, all GETs without a body",
        requests.len()
    );
    Ok(())
}

/// The Encrypt page's known-pairs attack against the set the page made (all 1,797 sample
/// digits under the served flows' τ and cover classes): the decryptions improve as n grows, the
/// cover flow is found, m = 64 pairs decrypt every victim exactly (the figures are the page's,
/// scored against the originals), and the server receives nothing but GETs of public files.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the built wasm client and Chromium: run by `cargo xtask test`"]
async fn known_pairs_break_a_key_in_the_encrypt_page() -> Result<()> {
    with_browser("known-pairs", known_pairs).await
}

async fn known_pairs(b: &Browser, base: &str, mode: GpuMode, rec: &Recording) -> Result<()> {
    if mode == GpuMode::Webgpu {
        eprintln!("the attack's maths is the CPU path's: checked on the CPU pass only");
        return Ok(());
    }
    let c = &b.client;
    // A key made in the page: the owner's, which the attack never uses.
    c.goto(&format!("{base}/keys.html")).await?;
    b.wait_backend(mode, LONG).await?;
    click(b, "generate").await?;
    b.wait_for(
        "a fingerprint",
        "return document.getElementById('fingerprint').dataset.fingerprint;",
        LONG,
    )
    .await?;
    encrypt_sample(b, base, mode, 1797).await?;
    // The class with the most images is chosen; class 3 (183 digits) is attacked here.
    c.execute(
        "document.getElementById('attack-class').value = '3';",
        vec![],
    )
    .await?;
    click(b, "attack-run").await?;
    wait_state(b, "the attack", "attack", "done", "attack-message").await?;
    let points = c
        .execute("return window.veilEncrypt.attack;", vec![])
        .await?;
    let points = points.as_array().context("the attack's points")?;
    let field = |p: &Value, k: &str| p[k].as_f64().unwrap_or(f64::NAN);
    let ns: Vec<f64> = points.iter().map(|p| field(p, "n")).collect();
    ensure!(
        ns == [1.0, 4.0, 16.0, 32.0, 64.0, 128.0],
        "pair counts {ns:?}"
    );
    for (p, q) in points.iter().zip(points.iter().skip(1)) {
        ensure!(
            field(q, "psnr") >= field(p, "psnr") - 0.5,
            "PSNR fell from n = {} to n = {}: {points:?}",
            field(p, "n"),
            field(q, "n")
        );
    }
    let at = |n: f64| {
        points
            .iter()
            .find(|p| field(p, "n") == n)
            .cloned()
            .unwrap_or_default()
    };
    ensure!(
        field(&at(4.0), "exact") == 0.0 && field(&at(4.0), "psnr") < 20.0,
        "4 pairs decrypted too well: {points:?}"
    );
    for n in [64.0, 128.0] {
        let p = at(n);
        ensure!(
            field(&p, "exact") == field(&p, "victims") && field(&p, "rank") == 64.0,
            "n = {n}: {p}"
        );
    }
    // Every point found the same decoder: the cover class (not class 3's own flow).
    let decoders: HashSet<&str> = points
        .iter()
        .filter_map(|p| p["decoder"].as_str())
        .collect();
    ensure!(
        decoders.len() == 1 && !decoders.contains("3"),
        "decoders {decoders:?}"
    );
    let message = c.find(Locator::Id("attack-message")).await?.text().await?;
    ensure!(
        message.contains("With 64 known pairs") && message.contains("broken"),
        "{message}"
    );
    let rows = c
        .execute(
            "return document.querySelectorAll('#attack-rows .attack-row').length;",
            vec![],
        )
        .await?;
    ensure!(
        rows == 8,
        "{rows} rows of images (victims, originals, six fits)"
    );
    b.screenshot("known-pairs-cpu").await?;
    let requests: Vec<Recorded> = rec.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.clone();
    for r in &requests {
        ensure!(
            r.method == "GET" && r.body.is_empty(),
            "the page sent {} {} with {} body bytes",
            r.method,
            r.uri,
            r.body.len()
        );
    }
    println!(
        "known pairs: {}",
        points
            .iter()
            .map(|p| format!(
                "n = {}: {:.1} dB, {} exact",
                p["n"],
                field(p, "psnr"),
                p["exact"]
            ))
            .collect::<Vec<_>>()
            .join("; ")
    );
    Ok(())
}

/// Opens the Encrypt page with the served digits flows and encrypts `count` of its sample
/// digits (300 or 1797) with the page's key.
async fn encrypt_sample(b: &Browser, base: &str, mode: GpuMode, count: usize) -> Result<()> {
    let c = &b.client;
    c.goto(&format!("{base}/encrypt.html")).await?;
    b.wait_backend(mode, LONG).await?;
    b.wait_for(
        "the flows",
        "return document.body.dataset.flows === 'digits' && !document.getElementById('sample-row').hidden;",
        LONG,
    )
    .await?;
    c.execute(
        &format!("document.getElementById('sample-count').value = '{count}';"),
        vec![],
    )
    .await?;
    click(b, "sample").await?;
    b.wait_for(
        "the sample",
        "return !document.getElementById('encrypt').disabled;",
        LONG,
    )
    .await?;
    click(b, "encrypt").await?;
    wait_state(
        b,
        "the sample's encryption",
        "state",
        "encrypted",
        "message",
    )
    .await
}

/// Runs `journey` against a fresh recording server and browser (the backend from
/// `VEIL_E2E_GPU`), saving a screenshot `<name>-failure-<backend>` when it fails.
pub(crate) async fn with_browser(
    name: &str,
    journey: impl AsyncFnOnce(&Browser, &str, GpuMode, &Recording) -> Result<()>,
) -> Result<()> {
    let mode = GpuMode::from_env();
    let (server, recording) = start_recording_server().await?;
    let browser = Browser::start(mode).await?;
    let base = format!("http://{}", server.addr);
    let result = journey(&browser, &base, mode, &recording).await;
    if result.is_err() {
        let _ = browser
            .screenshot(&format!("{name}-failure-{}", mode.expected_backend()))
            .await;
    }
    browser.close().await?;
    result
}

/// Chooses the file or folder `path` in the file input `id`.
pub(crate) async fn choose(b: &Browser, id: &str, path: &Path) -> Result<()> {
    b.client
        .find(Locator::Id(id))
        .await?
        .send_keys(&path.display().to_string())
        .await?;
    Ok(())
}

/// Clicks the element `id`.
pub(crate) async fn click(b: &Browser, id: &str) -> Result<()> {
    b.client.find(Locator::Id(id)).await?.click().await?;
    Ok(())
}

/// Waits for `body.dataset[field]` to be one of `ok`, failing early on `failed` with the page's
/// message.
pub(crate) async fn wait_state(
    b: &Browser,
    what: &str,
    field: &str,
    ok: &str,
    message_id: &str,
) -> Result<()> {
    let script = format!(
        "const s = document.body.dataset['{field}']; \
         if (s === 'failed' || s === 'cancelled') return 'failed: ' + document.getElementById('{message_id}').textContent; \
         return s === '{ok}' ? 'ok' : null;"
    );
    let v = b.wait_for(what, &script, LONG).await?;
    ensure!(v == "ok", "{what}: {v}");
    Ok(())
}

pub(crate) fn write_folder(data: &ImageDataset, dir: &Path) -> Result<()> {
    for i in 0..data.len() {
        let class_dir = dir.join(&data.class_names[data.labels[i] as usize]);
        std::fs::create_dir_all(&class_dir)?;
        digit_png(data.image(i), 1, &class_dir.join(format!("{i:04}.png")))?;
    }
    Ok(())
}

async fn journey(b: &Browser, base: &str, mode: GpuMode, rec: &Recording) -> Result<()> {
    let c = &b.client;
    let tag = mode.expected_backend();
    let dir = tempfile::tempdir()?;
    let data = digits();
    let (train, test) = data.split(0.2, 7);
    // SwiftShader runs Glow's many small kernels slowly (the whole journey took 13 minutes there):
    // on WebGPU the journey checks what only WebGPU can (the page's ciphertexts and accuracies are
    // the native ones) on fewer images; the CPU path runs it in full, with the experiment's
    // reference accuracy and the built-in samples.
    let (train, test, route_c_images) = match mode {
        GpuMode::NoWebgpu => (train, test, ROUTE_C_IMAGES),
        GpuMode::Webgpu => (
            train.subset(&(0..300).collect::<Vec<_>>()),
            test.subset(&(0..100).collect::<Vec<_>>()),
            20,
        ),
    };

    // 1. Keys: import a passphrase-wrapped key file made here (cheap Argon2 costs for the test).
    //    A fixed key keeps the factory's training, and so the accuracies, the same run to run.
    let key = MasterKey::from_bytes(*b"the e2e journey's fixed key 2026");
    let fp = key.fingerprint().to_string();
    let key_text = import_key(b, base, mode, &key, dir.path()).await?;
    b.screenshot(&format!("keys-{tag}")).await?;

    // 2. Encrypt the training split, dropped in as a folder of class sub-folders.
    let train_dir = dir.path().join("train");
    write_folder(&train, &train_dir)?;
    c.goto(&format!("{base}/encrypt.html")).await?;
    b.wait_backend(mode, LONG).await?;
    b.wait_for(
        "the flows and the stored key",
        &format!(
            "return document.body.dataset.flows === 'digits' && \
             document.getElementById('key').dataset.fingerprint === '{fp}';"
        ),
        LONG,
    )
    .await?;
    choose(b, "folder", &train_dir).await?;
    let picked = b
        .wait_for(
            "the picked images",
            "return window.veilEncrypt.entries.length || null;",
            LONG,
        )
        .await?;
    ensure!(picked == train.len(), "the page picked {picked} images");
    click(b, "encrypt").await?;
    wait_state(b, "the encryption", "state", "encrypted", "message").await?;
    b.screenshot(&format!("encrypt-{tag}")).await?;

    // 3. Train in the factory: upload the page's container, train a small CNN, follow it.
    c.goto(&format!("{base}/train.html")).await?;
    b.wait_backend(mode, LONG).await?;
    b.wait_for(
        "the dataset summary",
        "return !document.getElementById('upload').disabled;",
        LONG,
    )
    .await?;
    click(b, "upload").await?;
    b.wait_for(
        "the upload",
        "return document.body.dataset.dataset || null;",
        LONG,
    )
    .await?;
    // The flow experiment's setting: every training image, batch 32, learning rate 0.002.
    c.find(Locator::Id("validation")).await?.clear().await?;
    c.find(Locator::Id("validation"))
        .await?
        .send_keys("0")
        .await?;
    click(b, "train").await?;
    wait_state(
        b,
        "the training job",
        "jobState",
        "succeeded",
        "job-message",
    )
    .await?;
    let model = b
        .wait_for("the model id", "return document.body.dataset.model;", LONG)
        .await?;
    let model = model.as_str().context("model id")?.to_owned();
    let epochs = b
        .wait_for(
            "the drawn history",
            "return window.veilTrain.history.length;",
            LONG,
        )
        .await?;
    ensure!(epochs == 30, "the chart has {epochs} epochs");
    b.screenshot(&format!("train-{tag}")).await?;

    // 4. Classify the test split through the factory's model: route (a), then route (c) on a
    //    subset.
    let test_dir = dir.path().join("test");
    write_folder(&test, &test_dir)?;
    let page_a = classify_folder(b, base, &model, "a", &test_dir, mode).await?;
    b.screenshot(&format!("classify-a-{tag}")).await?;
    let subset = test.subset(&(0..route_c_images).collect::<Vec<_>>());
    let subset_dir = dir.path().join("subset");
    write_folder(&subset, &subset_dir)?;
    let page_c = classify_folder(b, base, &model, "c", &subset_dir, mode).await?;
    b.screenshot(&format!("classify-c-{tag}")).await?;

    // 5. The sample digits built into the page encrypt too (and send nothing); on the CPU path
    //    only (nothing in it is WebGPU's own).
    if mode == GpuMode::NoWebgpu {
        encrypt_sample(b, base, mode, 300).await?;
        let values = c
            .execute("return window.veilEncrypt.ciphertexts.length;", vec![])
            .await?;
        ensure!(
            values == 300 * 64,
            "{values} ciphertext values for 300 samples"
        );
    }

    // --- what the server received ----------------------------------------------------------
    let requests: Vec<Recorded> = rec.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.clone();
    // At least the upload's ciphertexts (f32) went out.
    let min_bytes = train.len() * train.shape.len() * 4;
    assert_nothing_secret(&requests, &key, &key_text, &[&train, &test], 20, min_bytes)?;

    let device = Device::flex();
    let flows = veil_server::embedded::digits_flows(&device)?;
    let encryptors: Vec<_> = (0..flows.per_class.len())
        .map(|k| flows.class_encryptor(&key, k, &device))
        .collect();
    let encrypt = |d: &ImageDataset, class: Option<u32>| -> Vec<f32> {
        let mut out = Vec::with_capacity(d.images.len());
        for i in 0..d.len() {
            let enc = &encryptors[class.unwrap_or(d.labels[i]) as usize];
            out.extend(
                enc.encrypt_for_routing(d.images_tensor(i..i + 1, &device))
                    .into_data()
                    .iter::<f32>(),
            );
        }
        out
    };
    // The uploaded dataset is the native encryption of the training split.
    let uploads: Vec<&Recorded> = requests
        .iter()
        .filter(|r| r.method == "POST" && r.uri.starts_with("/api/datasets"))
        .collect();
    ensure!(uploads.len() == 1, "{} dataset uploads", uploads.len());
    let container = veil::data::container::decode(&uploads[0].body)?;
    ensure!(container.meta.scheme == "flow-rotation");
    ensure!(container.meta.key_fingerprint.as_deref() == Some(fp.as_str()));
    // The page reads the folder in path order: class folder, then zero-padded index.
    let mut order: Vec<usize> = (0..train.len()).collect();
    order.sort_by_key(|&i| (train.class_names[train.labels[i] as usize].clone(), i));
    let train = train.subset(&order);
    ensure!(
        container.dataset.labels == train.labels,
        "labels differ: page {:?}…, expected {:?}…",
        &container.dataset.labels[..40],
        &train.labels[..40]
    );
    let native_train = encrypt(&train, None);
    let worst = max_diff(&container.dataset.images, &native_train);
    println!("{tag}: uploaded ciphertexts vs native: max |diff| = {worst:e}");
    ensure!(
        worst < 2e-3,
        "the page's ciphertexts differ from native by {worst}"
    );

    // The page's accuracy is the native one: native ciphertexts of the same test images through
    // the same model.
    // The model is the page's owner's: read it as the operator.
    let http = veil_tests::operator_client();
    let native_a = accuracy(
        &http,
        base,
        &model,
        &encrypt(&test, None),
        &test.labels,
        test.shape.len(),
    )
    .await?;
    println!("{tag}: route (a) accuracy: page {page_a:.4}, native {native_a:.4}");
    // Ciphertexts within 2e-3 of each other may still fall either side of a decision boundary:
    // 2 points, or two images on the WebGPU journey's shorter test split.
    let route_a_tolerance = fraction_or_two_images(0.02, test.len() as f64);
    ensure!(
        (page_a - native_a).abs() <= route_a_tolerance,
        "route (a): the page reads {page_a}, natively {native_a}"
    );
    // The flow issue's measurement (docs/results/flow.json, the small CNN, route a) in the
    // served family's settings: Algorithm 1's row, or Veil's when the family uses them.
    let flow_json: Value = serde_json::from_str(&std::fs::read_to_string(
        veil_tests::repo_root().join("docs/results/flow.json"),
    )?)?;
    let served: Value = serde_json::from_str(veil_server::embedded::DIGITS_FLOWS_MANIFEST)?;
    let table = if served["encryption"]["cover_classes"] == Value::Bool(true) {
        ensure!(
            served["encryption"]["temperature"] == flow_json["veil_settings"]["temperature"],
            "the served τ {} is not the one docs/results/flow.json measured ({})",
            served["encryption"]["temperature"],
            flow_json["veil_settings"]["temperature"]
        );
        "table1_veil"
    } else {
        "table1"
    };
    let reference = flow_json[table]["cnn"]["enc_enc_true_class"]
        .as_f64()
        .with_context(|| format!("docs/results/flow.json has no {table}.cnn.enc_enc_true_class"))?;
    println!("{tag}: docs/results/flow.json {table} route (a): {reference:.4}");
    // The reference was measured training on the whole training split: the CPU path's setting.
    if mode == GpuMode::NoWebgpu {
        ensure!(
            page_a >= reference - 0.02,
            "route (a) reads {page_a}, below the flow experiment's {reference} by more than 2 points"
        );
    }
    let k = train.num_classes();
    let mut probs = Vec::with_capacity(k);
    for class in 0..k as u32 {
        let cipher = encrypt(&subset, Some(class));
        probs.push(probabilities(&http, base, &model, &cipher, subset.shape.len()).await?);
    }
    let (routed, _) = veil_client::flows::model_routed(&probs, subset.len())?;
    let native_c = routed
        .iter()
        .zip(&subset.labels)
        .filter(|(p, l)| p == l)
        .count() as f64
        / subset.len() as f64;
    println!(
        "{tag}: route (c) accuracy on {route_c_images}: page {page_c:.4}, native {native_c:.4}"
    );
    ensure!(
        (page_c - native_c).abs() <= fraction_or_two_images(0.034, route_c_images as f64),
        "route (c): the page reads {page_c}, natively {native_c}"
    );
    // The figures docs/RESULTS.md quotes, kept where a run under `cargo xtask test` (which shows
    // no output of passing tests) leaves them: target/e2e-figures/flow-journey-<backend>.json.
    let dir = veil_tests::repo_root().join("target").join("e2e-figures");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(
        dir.join(format!("flow-journey-{tag}.json")),
        serde_json::to_string_pretty(&serde_json::json!({
            "backend": tag,
            "served_settings": served["encryption"],
            "uploaded_vs_native_max_abs_diff": worst,
            "route_a_page": page_a,
            "route_a_native": native_a,
            "route_a_reference": { "table": table, "accuracy": reference },
            "train_images": train.len(),
            "test_images": test.len(),
            "route_c_images": route_c_images,
            "route_c_page": page_c,
            "route_c_native": native_c,
        }))?,
    )?;
    Ok(())
}

/// Imports `key` on the Keys page as a passphrase-wrapped key file (cheap Argon2 costs) and
/// waits until it is stored and active; returns the key file's text.
pub(crate) async fn import_key(
    b: &Browser,
    base: &str,
    mode: GpuMode,
    key: &MasterKey,
    dir: &Path,
) -> Result<String> {
    let c = &b.client;
    let fp = key.fingerprint().to_string();
    let cost = veil::crypto::keyfile::KdfCost {
        m_cost_kib: 1024,
        t_cost: 1,
        p_cost: 1,
    };
    let key_text =
        veil::crypto::keyfile::KeyFile::wrap(key, "journey", "journey passphrase", cost)?.to_json();
    let key_path = dir.join("journey-key.json");
    std::fs::write(&key_path, &key_text)?;
    c.goto(&format!("{base}/keys.html")).await?;
    b.wait_backend(mode, LONG).await?;
    choose(b, "import-file", &key_path).await?;
    c.find(Locator::Id("import-pass"))
        .await?
        .send_keys("journey passphrase")
        .await?;
    click(b, "import").await?;
    let shown = b
        .wait_for(
            "the imported key",
            "return document.getElementById('fingerprint').dataset.fingerprint;",
            LONG,
        )
        .await?;
    ensure!(shown == fp.as_str(), "the page shows key {shown}, not {fp}");
    b.wait_for(
        "the stored key list",
        &format!(
            "return !!document.querySelector('#stored li.active[data-fingerprint=\"{fp}\"]');"
        ),
        LONG,
    )
    .await?;
    Ok(key_text)
}

async fn classify_folder(
    b: &Browser,
    base: &str,
    model: &str,
    route: &str,
    folder: &Path,
    mode: GpuMode,
) -> Result<f64> {
    let c = &b.client;
    c.goto(&format!("{base}/classify.html?model={model}"))
        .await?;
    b.wait_backend(mode, LONG).await?;
    b.wait_for(
        "the model and its flows",
        "return document.body.dataset.ready === 'true';",
        LONG,
    )
    .await?;
    c.find(Locator::Id(&format!("route-{route}")))
        .await?
        .click()
        .await?;
    choose(b, "folder", folder).await?;
    b.wait_for(
        "the run button",
        "return !document.getElementById('run').disabled;",
        LONG,
    )
    .await?;
    let checked = c
        .execute(
            &format!("return document.getElementById('route-{route}').checked;"),
            vec![],
        )
        .await?;
    ensure!(checked == true, "route ({route}) is not selected");
    click(b, "run").await?;
    wait_state(b, "the classification", "state", "done", "message").await?;
    let ran = c
        .execute("return document.body.dataset.route;", vec![])
        .await?;
    ensure!(ran == route, "the page ran route {ran}, not ({route})");
    let acc = b
        .wait_for("the accuracy", "return window.veilClassify.accuracy;", LONG)
        .await?;
    acc.as_f64().context("accuracy")
}

/// A request that is not a read, other than the page asking for its owner token (an empty
/// `POST /api/owners`, which carries nothing).
pub(crate) fn is_post_of_data(r: &Recorded) -> bool {
    r.method != "GET" && !(r.uri == "/api/owners" && r.body.is_empty())
}

pub(crate) fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

async fn probabilities(
    http: &reqwest::Client,
    base: &str,
    model: &str,
    cipher: &[f32],
    len: usize,
) -> Result<Vec<f32>> {
    let images: Vec<&[f32]> = cipher.chunks(len).collect();
    let resp = http
        .post(format!("{base}/api/models/{model}/classify"))
        .json(&serde_json::json!({ "images": images }))
        .send()
        .await?;
    if !resp.status().is_success() {
        bail!("classify answered {}", resp.status());
    }
    let v: Value = resp.json().await?;
    Ok(v["probabilities"]
        .as_array()
        .context("probabilities")?
        .iter()
        .flat_map(|row| row.as_array().into_iter().flatten())
        .map(|p| p.as_f64().unwrap_or(f64::NAN) as f32)
        .collect())
}

async fn accuracy(
    http: &reqwest::Client,
    base: &str,
    model: &str,
    cipher: &[f32],
    labels: &[u32],
    len: usize,
) -> Result<f64> {
    let probs = probabilities(http, base, model, cipher, len).await?;
    let k = probs.len() / labels.len();
    let predicted = veil::nn::train::argmax_rows(&probs, k);
    Ok(predicted.iter().zip(labels).filter(|(p, l)| p == l).count() as f64 / labels.len() as f64)
}

/// Asserts that no request carries the key, the key file or an original image in any encoding.
pub(crate) fn assert_nothing_secret(
    requests: &[Recorded],
    key: &MasterKey,
    key_text: &str,
    originals: &[&ImageDataset],
    min_requests: usize,
    min_bytes: usize,
) -> Result<()> {
    let raw = key.as_bytes().to_vec();
    let hex = veil::crypto::keys::to_hex(key.as_bytes()).into_bytes();
    let b64 = base64::engine::general_purpose::STANDARD
        .encode(key.as_bytes())
        .into_bytes();
    let file: Value = serde_json::from_str(key_text)?;
    let wrapped = file["ciphertext"]
        .as_str()
        .context("the key file's ciphertext")?
        .as_bytes()
        .to_vec();
    // Fixed-length encodings of every original image, looked up by sliding windows.
    let mut u8_forms: HashSet<Vec<u8>> = HashSet::new();
    let mut f32_forms: HashSet<Vec<u8>> = HashSet::new();
    let mut text_forms: Vec<String> = Vec::new();
    for d in originals {
        for i in 0..d.len() {
            let img = d.image(i);
            u8_forms.insert(img.iter().map(|v| (v * 255.0).round() as u8).collect());
            f32_forms.insert(img.iter().flat_map(|v| v.to_le_bytes()).collect());
            text_forms.push(
                img.iter()
                    .map(|v| format!("{v}"))
                    .collect::<Vec<_>>()
                    .join(","),
            );
        }
    }
    let mut bytes_seen = 0;
    for r in requests {
        let what = format!("{} {}", r.method, r.uri);
        for (needle, name) in [
            (&raw, "the raw key"),
            (&hex, "the key in hex"),
            (&b64, "the key in base64"),
            (&wrapped, "the wrapped key"),
        ] {
            ensure!(
                !contains(&r.body, needle)
                    && !contains(r.headers.as_bytes(), needle)
                    && !contains(r.uri.as_bytes(), needle),
                "{what} carries {name}"
            );
        }
        ensure!(!contains(&r.body, b"\x89PNG"), "{what} carries a PNG file");
        for (forms, len, name) in [(&u8_forms, 64, "8-bit"), (&f32_forms, 256, "f32")] {
            if r.body.len() >= len {
                ensure!(
                    !r.body.windows(len).any(|w| forms.contains(w)),
                    "{what} carries an original image as {name} pixels"
                );
            }
        }
        let text = String::from_utf8_lossy(&r.body);
        ensure!(
            !text_forms.iter().any(|t| text.contains(t.as_str())),
            "{what} carries an original image as text"
        );
        bytes_seen += r.body.len();
    }
    println!(
        "checked {} requests, {bytes_seen} body bytes: no key, key file or original image",
        requests.len()
    );
    ensure!(
        requests.len() >= min_requests && bytes_seen > min_bytes,
        "too little was recorded"
    );
    Ok(())
}

/// A tolerance on a fraction of `images`: `fraction`, or two images where the set is small (two
/// ciphertexts within the backends' rounding may fall either side of a boundary).
fn fraction_or_two_images(fraction: f64, images: f64) -> f64 {
    fraction.max(2.0 / images + 1e-9)
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

/// OWSD in the page (`owsd.html`): a labelled sample is embedded and scrambled here, the cloud
/// (the built-in digits CNN) classifies the scrambled images, the internal network is trained
/// here and classifies new images. Asserted: the cloud received only the native scrambles of the
/// images (same key, generation 0) and never an original or the key; the key's count survives a
/// reload; past the budget the page refuses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the built wasm client and Chromium: run by `cargo xtask test`"]
async fn owsd_sends_only_scrambled_images() -> Result<()> {
    with_browser("owsd", owsd).await
}

async fn owsd(b: &Browser, base: &str, mode: GpuMode, rec: &Recording) -> Result<()> {
    let c = &b.client;
    let tag = mode.expected_backend();
    let dir = tempfile::tempdir()?;
    let key = MasterKey::from_bytes(*b"the e2e OWSD journey's fixed key");
    let key_text = import_key(b, base, mode, &key, dir.path()).await?;
    let all = digits();
    let sample = all.subset(&(0..350).collect::<Vec<_>>());
    let new = all.subset(&(1400..1600).collect::<Vec<_>>());
    let (sample_dir, new_dir) = (dir.path().join("sample"), dir.path().join("new"));
    write_folder(&sample, &sample_dir)?;
    write_folder(&new, &new_dir)?;
    let in_path_order = |d: &ImageDataset| {
        let mut order: Vec<usize> = (0..d.len()).collect();
        order.sort_by_key(|&i| (d.class_names[d.labels[i] as usize].clone(), i));
        d.subset(&order)
    };

    let open = async |used: usize| -> Result<()> {
        c.goto(&format!("{base}/owsd.html")).await?;
        b.wait_backend(mode, LONG).await?;
        b.wait_for(
            "the scrambler",
            &format!("return document.body.dataset.used === '{used}';"),
            LONG,
        )
        .await?;
        Ok(())
    };
    open(0).await?;
    // Use case 4 with the cloud that knows more labels: the demo CNN's layer and the owner's own
    // encoder (a PyTorch-layout file with 32 units), each scrambled by its own generator.
    let theirs = {
        let device = Device::flex();
        device.seed(21);
        veil::nn::model::SmallCnnConfig::for_shape(veil::data::ImageShape::new(1, 8, 8), 10)
            .with_hidden(32)
            .init(&device)
    };
    let encoder_file = veil::schemes::owsd::encoder::export_encoder(
        &theirs,
        veil::schemes::owsd::encoder::WeightLayout::PyTorch,
    )?;
    let encoder_path = dir.path().join("theirs.safetensors");
    std::fs::write(&encoder_path, &encoder_file)?;
    choose(b, "encoder-file", &encoder_path).await?;
    b.wait_for(
        "the imported encoder",
        "return window.veilOwsd.status && window.veilOwsd.status.encoders.length === 2 ? true : null;",
        LONG,
    )
    .await?;
    c.execute(
        "const s = document.getElementById('cloud'); s.value = 'digits-shapes-cnn'; s.dispatchEvent(new Event('change'));",
        vec![],
    )
    .await?;
    b.wait_for(
        "the cloud with more labels",
        "return document.getElementById('label-ratio').textContent.includes('42 labels') || null;",
        LONG,
    )
    .await?;
    choose(b, "sample-folder", &sample_dir).await?;
    b.wait_for(
        "the sample",
        "return window.veilOwsd.sampleEntries.length || null;",
        LONG,
    )
    .await?;
    click(b, "train").await?;
    wait_state(
        b,
        "the internal network",
        "state",
        "trained",
        "train-message",
    )
    .await?;
    choose(b, "new-folder", &new_dir).await?;
    b.wait_for(
        "the new images",
        "return !document.getElementById('classify').disabled;",
        LONG,
    )
    .await?;
    click(b, "classify").await?;
    wait_state(
        b,
        "the classification",
        "state",
        "classified",
        "classify-message",
    )
    .await?;
    b.screenshot(&format!("owsd-{tag}")).await?;
    let accuracy = c
        .execute("return window.veilOwsd.results.accuracy;", vec![])
        .await?
        .as_f64()
        .context("accuracy")?;
    println!("{tag}: OWSD accuracy on 200 new digits through the internal network: {accuracy:.4}");
    ensure!(accuracy >= 0.85, "the internal network reads {accuracy}");

    // The count survives a reload; past the budget the page refuses and counts nothing.
    open(550).await?;
    c.find(Locator::Id("budget")).await?.clear().await?;
    c.find(Locator::Id("budget"))
        .await?
        .send_keys("600")
        .await?;
    click(b, "set-budget").await?;
    b.wait_for(
        "the budget",
        "return document.getElementById('budget-shown').textContent === '600';",
        LONG,
    )
    .await?;
    choose(b, "sample-folder", &sample_dir).await?;
    b.wait_for(
        "the train button",
        "return !document.getElementById('train').disabled;",
        LONG,
    )
    .await?;
    click(b, "train").await?;
    let refused = b
        .wait_for(
            "the refusal",
            "return document.body.dataset.state === 'failed' ? document.getElementById('train-message').textContent : null;",
            LONG,
        )
        .await?;
    let refused = refused.as_str().unwrap_or_default();
    ensure!(refused.contains("budget is 600"), "{refused}");
    let used = c
        .execute("return document.body.dataset.used;", vec![])
        .await?;
    ensure!(used == "550", "the refused batch was counted: {used}");

    // What the cloud received: the native scrambles, and nothing secret.
    let requests: Vec<Recorded> = rec.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.clone();
    assert_nothing_secret(&requests, &key, &key_text, &[&sample, &new], 10, 300_000)?;
    // Nor the owner's encoder: no 32-byte window of its weights (the file's tail) in any body.
    let window = &encoder_file[encoder_file.len() - 32..];
    ensure!(
        requests
            .iter()
            .all(|r| !r.body.windows(32).any(|w| w == window)),
        "a request carries the owner's encoder"
    );
    let posts: Vec<&Recorded> = requests.iter().filter(|r| is_post_of_data(r)).collect();
    ensure!(
        posts
            .iter()
            .all(|r| r.method == "POST" && r.uri == "/api/models/digits-shapes-cnn/classify"),
        "the page sent {:?}",
        posts.iter().map(|r| &r.uri).collect::<Vec<_>>()
    );
    let mut sent: Vec<f32> = Vec::new();
    for r in &posts {
        let v: Value = serde_json::from_slice(&r.body)?;
        for img in v["images"].as_array().context("images")? {
            sent.extend(
                img.as_array()
                    .context("an image")?
                    .iter()
                    .map(|x| x.as_f64().unwrap_or(f64::NAN) as f32),
            );
        }
    }
    let native = veil_client::Session::start(false).await?;
    native.import_key(&key_text, Some("journey passphrase"))?;
    native.import_encoder("theirs.safetensors", &encoder_file)?;
    native.scramble_begin(
        veil_client::owsd::ScrambleSetup {
            encoders: vec![64, 32],
            output: veil::data::ImageShape::new(1, 8, 8),
            generation: 0,
        },
        veil::schemes::owsd::KeyUsage::new(10_000),
    )?;
    let mut expected = Vec::new();
    for d in [in_path_order(&sample), in_path_order(&new)] {
        let emb = native.embed(&d.images, &[0, 1]).await?;
        expected.extend(native.scramble(&emb, false).await?.pixels);
    }
    ensure!(
        sent.len() == expected.len(),
        "{} values sent, {} expected",
        sent.len(),
        expected.len()
    );
    let worst = max_diff(&sent, &expected);
    println!(
        "{tag}: {} scrambled images sent (550 images × 2 encoders); max |page − native| = {worst:e}",
        sent.len() / 64
    );
    ensure!(sent.len() == 2 * 550 * 64, "{} values sent", sent.len());
    ensure!(
        worst < 1e-3,
        "the page's scrambles differ from native by {worst}"
    );
    Ok(())
}
