//! OWSD: scrambling in the page, the cloud classifying only scrambled images, the internal network
//! trained and used in the page, the key's count kept across a reload, the budget.
//! `#[ignore]`d for plain `cargo test`: `cargo xtask test` runs it on WebGPU and on the CPU.

use anyhow::{Context, Result, ensure};
use fantoccini::Locator;
use serde_json::Value;
use veil::burn::tensor::Device;
use veil::crypto::keys::MasterKey;
use veil::data::{ImageDataset, digits};
use veil_tests::{Browser, GpuMode, Recorded, Recording};

use crate::journeys::*;

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
    native
        .owsd()
        .import_encoder("theirs.safetensors", &encoder_file)?;
    native.owsd().scramble_begin(
        veil_client::owsd::ScrambleSetup {
            encoders: vec![64, 32],
            output: veil::data::ImageShape::new(1, 8, 8),
            generation: 0,
        },
        veil::schemes::owsd::KeyUsage::new(10_000),
    )?;
    let mut expected = Vec::new();
    for d in [in_path_order(&sample), in_path_order(&new)] {
        let emb = native.owsd().embed(&d.images, &[0, 1]).await?;
        expected.extend(native.owsd().scramble(&emb, false).await?.pixels);
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
    // A typed argument with a misspelt field is refused by name, not silently ignored.
    let answer = c
        .execute(
            "return window.veilOwsd.call('scrambleBegin', { setup: { encoders: [64], \
             output: { channels: 1, height: 8, width: 8 }, generation: 0, genration: 1 }, \
             usage: { used: 0, budget: 10, warn_at: 8 } }).then(() => 'accepted', (e) => e.message);",
            vec![],
        )
        .await?;
    let refusal = answer.as_str().unwrap_or_default();
    ensure!(
        refusal.contains("unknown field `genration`"),
        "a misspelt setup field was not refused by name: {answer}"
    );
    Ok(())
}
