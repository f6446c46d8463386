//! Fine-tuning the flows in the page, keeping them in the browser, and encrypting with them.
//! `#[ignore]`d for plain `cargo test`: `cargo xtask test` runs it on WebGPU and on the CPU.

use anyhow::{Context, Result, ensure};
use fantoccini::Locator;
use serde_json::Value;
use veil::crypto::keys::MasterKey;
use veil::data::digits;
use veil_tests::{Browser, GpuMode, Recorded, Recording};

use crate::journeys::*;

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
    use veil_client::flow_rotation::finetune::{FineTuneOptions, FineTuneTarget};
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
        veil_tests::load_digits_flows(&session)?;
        session.flow_rotation().fine_tune_begin(
            owner.images.clone(),
            owner.labels.clone(),
            FineTuneOptions {
                target: FineTuneTarget::Agnostic,
                steps,
                learning_rate: 1e-3,
                ..FineTuneOptions::default()
            },
        )?;
        let mut p = session.flow_rotation().fine_tune_run(usize::MAX).await?;
        while !p.finished {
            p = session.flow_rotation().fine_tune_run(usize::MAX).await?;
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
