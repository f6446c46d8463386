//! End-to-end: the real server, headless Chromium, the real page. Generates a key, exports it
//! passphrase-wrapped through the page's download, forgets it, imports it back, and classifies
//! digit images dropped into the page, asserting the labels.
//!
//! Needs the wasm build and Chromium, so it is `#[ignore]`d for plain `cargo test`;
//! `cargo xtask test` runs it on both paths (`VEIL_E2E_GPU=webgpu` and `VEIL_E2E_GPU=none`).
//! Also: the browser blocks a page from sending anything to another origin (the CSP).

use std::time::Duration;

use anyhow::Result;
use fantoccini::Locator;
use veil::data::digits;
use veil_tests::{Browser, GpuMode, digit_png, start_server};

const LONG: Duration = Duration::from_secs(180);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the built wasm client and Chromium: run by `cargo xtask test`"]
async fn key_round_trip_and_local_classification() -> Result<()> {
    let mode = GpuMode::from_env();
    let server = start_server().await?;
    let addr = server.addr;
    let browser = Browser::start(mode).await?;
    let result = journey(&browser, &format!("http://{addr}/"), mode).await;
    if result.is_err() {
        let _ = browser
            .screenshot(&format!("failure-{}", mode.expected_backend()))
            .await;
    }
    browser.close().await?;
    result
}

async fn journey(b: &Browser, url: &str, mode: GpuMode) -> Result<()> {
    let c = &b.client;
    c.goto(url).await?;
    b.wait_backend(mode, LONG).await?;

    // Generate a key.
    c.find(Locator::Id("key-name")).await?.clear().await?;
    c.find(Locator::Id("key-name"))
        .await?
        .send_keys("e2e key")
        .await?;
    c.find(Locator::Id("generate")).await?.click().await?;
    let fp = b
        .wait_for(
            "a fingerprint",
            "return document.getElementById('fingerprint').dataset.fingerprint;",
            LONG,
        )
        .await?;
    let fp = fp.as_str().unwrap_or_default().to_owned();
    assert_eq!(fp.len(), 19, "fingerprint {fp:?}");

    // Export it with a passphrase: the page downloads a wrapped key file.
    c.find(Locator::Id("export-pass"))
        .await?
        .send_keys("a long passphrase")
        .await?;
    c.find(Locator::Id("export")).await?.click().await?;
    let path = b.wait_for_download(LONG).await?;
    let text = std::fs::read_to_string(&path)?;
    let file = veil::crypto::keyfile::KeyFile::from_json(&text)?;
    assert!(
        file.is_wrapped(),
        "the exported file must be passphrase-wrapped"
    );
    assert_eq!(file.fingerprint, fp);
    assert_eq!(file.name, "e2e key");
    assert!(file.unlock(Some("a long passphrase")).is_ok());

    // Forget it, then a wrong passphrase is refused in the page, and the right one restores it.
    c.find(Locator::Id("forget")).await?.click().await?;
    b.wait_for(
        "the key to be forgotten",
        "return document.getElementById('fingerprint').dataset.fingerprint === '';",
        LONG,
    )
    .await?;
    c.find(Locator::Id("import-file"))
        .await?
        .send_keys(&path.display().to_string())
        .await?;
    c.find(Locator::Id("import-pass"))
        .await?
        .send_keys("not it")
        .await?;
    c.find(Locator::Id("import")).await?.click().await?;
    let msg = b
        .wait_for(
            "the import error",
            "const m = document.getElementById('keys-message'); return m.classList.contains('error') ? m.textContent : null;",
            LONG,
        )
        .await?;
    assert!(
        msg.as_str().unwrap_or("").contains("wrong passphrase"),
        "{msg}"
    );
    c.find(Locator::Id("import-pass")).await?.clear().await?;
    c.find(Locator::Id("import-pass"))
        .await?
        .send_keys("a long passphrase")
        .await?;
    c.find(Locator::Id("import")).await?.click().await?;
    let restored = b
        .wait_for(
            "the imported fingerprint",
            "return document.getElementById('fingerprint').dataset.fingerprint;",
            LONG,
        )
        .await?;
    assert_eq!(restored, fp);

    // Classify the model card's reference digits, dropped into the page as 64×64 PNG files: the
    // page makes each into a UCI-style digit (veil::data::handwriting::uci_digit) and must give
    // the native model's answer on the same file read the same way, for every one (right or
    // wrong), and so be right as often as it is natively.
    let card = veil::nn::model::demo::card();
    let (_, test) = digits().split(card.split.0, card.split.1);
    let dir = tempfile::tempdir()?;
    let device = veil::burn::tensor::Device::flex();
    let model = card.config.load(veil::nn::model::demo::WEIGHTS, &device)?;
    let mut native = Vec::new();
    for &i in &card.reference_indices {
        let png = dir.path().join(format!("digit-{i}.png"));
        digit_png(test.image(i), 8, &png)?;
        let img = image::open(&png)?.to_luma8();
        let luma: Vec<f32> = img.pixels().map(|p| f32::from(p.0[0]) / 255.0).collect();
        let (digit, _) =
            veil::data::handwriting::uci_digit(&luma, img.width() as usize, img.height() as usize)?;
        let one = veil::data::ImageDataset::new(
            digit.to_vec(),
            vec![0],
            veil::data::ImageShape::new(1, 8, 8),
            card.classes.clone(),
        )?;
        let logits = veil::nn::train::predict_logits(&model, &one, &device);
        native.push(veil::nn::train::argmax_rows(&logits, card.classes.len())[0]);
    }
    let mut correct = 0;
    for (r, &i) in card.reference_indices.iter().enumerate() {
        let png = dir.path().join(format!("digit-{i}.png"));
        c.execute(
            "document.getElementById('prediction').dataset.label = '';",
            vec![],
        )
        .await?;
        let input = c.find(Locator::Id("image-file")).await?;
        input.send_keys(&png.display().to_string()).await?;
        let label = b
            .wait_for(
                "a prediction",
                "return document.getElementById('prediction').dataset.label || null;",
                LONG,
            )
            .await?;
        assert_eq!(
            label.as_str().unwrap_or(""),
            native[r].to_string(),
            "test image {i}: the page predicted {label}, natively {}",
            native[r]
        );
        correct += usize::from(native[r] == test.labels[i]);
        // Reset the input so the next file fires `change`.
        c.execute("document.getElementById('image-file').value = '';", vec![])
            .await?;
    }
    // Draw a "1" on the pad (a vertical stroke) and classify the drawing: the page turns it into a
    // 32×32 bitmap and counts set pixels in 4×4 blocks, as the UCI data was made.
    c.execute(
        "const pad = document.getElementById('pad'); const r = pad.getBoundingClientRect(); \
         const ev = (type, y) => pad.dispatchEvent(new PointerEvent(type, { pointerId: 1, bubbles: true, \
           clientX: r.left + r.width * 0.5, clientY: r.top + r.height * y })); \
         ev('pointerdown', 0.15); for (let y = 0.15; y <= 0.85; y += 0.05) ev('pointermove', y); ev('pointerup', 0.85); \
         document.getElementById('prediction').dataset.label = '';",
        vec![],
    )
    .await?;
    c.find(Locator::Id("classify-drawing"))
        .await?
        .click()
        .await?;
    let drawn = b
        .wait_for(
            "the drawing's prediction",
            "return document.getElementById('prediction').dataset.label || null;",
            LONG,
        )
        .await?;
    assert_eq!(drawn, "1", "a vertical stroke was read as {drawn}");

    let native_correct = native
        .iter()
        .zip(&card.reference_indices)
        .filter(|(p, i)| **p == test.labels[**i])
        .count();
    assert_eq!(correct, native_correct);
    assert!(correct >= 15, "{correct}/16 reference digits right");
    b.screenshot(&format!("home-{}", mode.expected_backend()))
        .await?;
    Ok(())
}

/// The Content-Security-Policy enforces the invariant in the browser: on the page that holds the
/// keys, a script that tries to send something to another origin (`fetch`, an image beacon,
/// `sendBeacon`, a WebSocket) is stopped by the browser, and nothing reaches the other origin,
/// while requests to Veil's own server still work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Chromium: run by `cargo xtask test`"]
async fn the_browser_blocks_sending_to_another_origin() -> Result<()> {
    let mode = GpuMode::from_env();
    if mode == GpuMode::Webgpu {
        eprintln!(
            "the policy is the browser's, whatever the backend: checked on the CPU pass only"
        );
        return Ok(());
    }
    let server = start_server().await?;
    let addr = server.addr;
    // Another origin (another port): it records any connection that reaches it.
    let other = std::net::TcpListener::bind("127.0.0.1:0")?;
    other.set_nonblocking(true)?;
    let other_url = format!("http://127.0.0.1:{}/collect", other.local_addr()?.port());
    let browser = Browser::start(mode).await?;
    let result = csp_journey(&browser, &format!("http://{addr}/keys.html"), &other_url).await;
    if result.is_err() {
        let _ = browser
            .screenshot(&format!("failure-csp-{}", mode.expected_backend()))
            .await;
    }
    browser.close().await?;
    result?;
    match other.accept() {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(()),
        Ok((_, from)) => anyhow::bail!("the other origin received a connection from {from}"),
        Err(e) => Err(e.into()),
    }
}

async fn csp_journey(b: &Browser, url: &str, other: &str) -> Result<()> {
    let c = &b.client;
    c.goto(url).await?;
    b.wait_for(
        "the page to load",
        "return document.readyState === 'complete' ? true : null;",
        LONG,
    )
    .await?;
    let out = c
        .execute_async(
            r#"
            const [other, done] = arguments;
            (async () => {
              const violations = [];
              document.addEventListener('securitypolicyviolation',
                (e) => violations.push(e.effectiveDirective));
              const tryIt = async (f) => { try { await f(); return 'sent'; } catch (e) { return `blocked (${e.name})`; } };
              const fetched = await tryIt(() => fetch(other, { method: 'POST', body: 'a key', mode: 'no-cors' }));
              const image = await new Promise((resolve) => {
                const i = new Image();
                i.onload = () => resolve('loaded');
                i.onerror = () => resolve('blocked');
                i.src = `${other}.png?key=secret`;
              });
              let beacon;
              try { beacon = navigator.sendBeacon(other, 'a key') ? 'queued' : 'refused'; } catch (e) { beacon = `blocked (${e.name})`; }
              const socket = await tryIt(() => new Promise((resolve, reject) => {
                const ws = new WebSocket(other.replace('http', 'ws'));
                ws.onopen = resolve;
                ws.onerror = () => reject(new Error('socket'));
              }));
              const own = (await fetch('/api/health')).status;
              await new Promise((r) => setTimeout(r, 500));
              done({ fetched, image, beacon, socket, own, violations });
            })();
            "#,
            vec![serde_json::json!(other)],
        )
        .await?;
    eprintln!("cross-origin attempts: {out}");
    assert!(
        out["fetched"].as_str().unwrap_or("").starts_with("blocked"),
        "{out}"
    );
    assert_eq!(out["image"], "blocked", "{out}");
    assert!(
        out["socket"].as_str().unwrap_or("").starts_with("blocked"),
        "{out}"
    );
    assert_eq!(out["own"], 200, "{out}");
    let violations: Vec<String> = serde_json::from_value(out["violations"].clone())?;
    assert!(violations.iter().any(|v| v == "connect-src"), "{out}");
    assert!(violations.iter().any(|v| v == "img-src"), "{out}");
    Ok(())
}
