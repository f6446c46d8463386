//! The labs in headless Chromium: the gradient-leakage lab's attack converging, the RTAS lab
//! showing every party's view, the black-box lab's membership, extraction and inversion, and a
//! lab page past its quota saying which and when to retry.
//!
//! Needs the wasm build and Chromium, so it is `#[ignore]`d for plain `cargo test`;
//! `cargo xtask test` runs it on both paths (`VEIL_E2E_GPU=webgpu` and `VEIL_E2E_GPU=none`).

use std::time::Duration;

use anyhow::Result;
use fantoccini::Locator;
use veil_tests::{Browser, GpuMode, start_server, start_server_with_quotas};

const LONG: Duration = Duration::from_secs(180);

/// The gradient-leakage lab page: a short attack on plain training converges (the streamed PSNR
/// rises to an exact-looking reconstruction), one on encrypted training recovers the ciphertext
/// and nothing more of the digit, and a bad setting is reported in the page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Chromium: run by `cargo xtask test`"]
async fn leakage_lab_streams_a_converging_attack() -> Result<()> {
    let mode = GpuMode::from_env();
    if mode == GpuMode::Webgpu {
        eprintln!("the leakage page runs no client code: checked on the CPU pass only");
        return Ok(());
    }
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
