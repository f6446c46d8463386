//! Known pairs: the Encrypt page's attack breaks a class key from m of the page's pairs (on the
//! CPU path only; `cargo xtask test` runs it there).

use std::collections::HashSet;

use anyhow::{Context, Result, ensure};
use fantoccini::Locator;
use serde_json::Value;
use veil_tests::{Browser, GpuMode, Recorded, Recording};

use crate::journeys::*;

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
