//! What the end-to-end journeys share: starting a browser on a recording server, driving the
//! pages (choosing files, clicking, waiting for a page's state, importing a key), writing image
//! folders, and the checks every journey makes on what the pages sent.

use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use base64::Engine;
use fantoccini::Locator;
use serde_json::Value;
use veil::crypto::keys::MasterKey;
use veil::data::ImageDataset;
use veil_tests::{Browser, GpuMode, Recorded, Recording, digit_png, start_recording_server};

pub(crate) const LONG: Duration = Duration::from_secs(600);

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
    let started = std::time::Instant::now();
    let result = journey(&browser, &base, mode, &recording).await;
    let tag = mode.expected_backend();
    if result.is_err() {
        let _ = browser.screenshot(&format!("{name}-failure-{tag}")).await;
    }
    browser.close().await?;
    // How long the journey took on this backend (cargo test shows no output of passing tests):
    // target/e2e-figures/timing-<journey>-<backend>.json, to see what the slow e2e step spends.
    let dir = veil_tests::repo_root().join("target").join("e2e-figures");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(
        dir.join(format!("timing-{name}-{tag}.json")),
        serde_json::json!({
            "journey": name,
            "backend": tag,
            "seconds": started.elapsed().as_secs_f64(),
            "passed": result.is_ok(),
        })
        .to_string(),
    )?;
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

/// Opens the Encrypt page with the served digits flows and encrypts `count` of its sample
/// digits (300 or 1797) with the page's key.
pub(crate) async fn encrypt_sample(
    b: &Browser,
    base: &str,
    mode: GpuMode,
    count: usize,
) -> Result<()> {
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
pub(crate) fn fraction_or_two_images(fraction: f64, images: f64) -> f64 {
    fraction.max(2.0 / images + 1e-9)
}

pub(crate) fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}
