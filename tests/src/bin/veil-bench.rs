//! `veil-bench`: measures Veil natively and in headless Chromium (CPU and WebGPU) and writes
//! `docs/BENCHMARKS.md` and `docs/benchmarks.json`. Run through `cargo xtask bench`, which builds
//! the shipped (size-optimised) wasm client first.
//!
//! Why this file is over 600 lines: one benchmark per measured operation, each short, and the
//! writer of docs/BENCHMARKS.md.

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};
use veil::burn::module::Module;

use anyhow::{Context, Result};
use fantoccini::Locator;
use serde_json::{Value, json};
use veil::burn::tensor::Device;
use veil::crypto::haar::{HaarRotation, RotationDerivation};
use veil::data::digits;
use veil::nn::model::{Classifier, demo};
use veil_tests::{Browser, GpuMode, repo_root, start_server};

fn main() -> Result<()> {
    let root = repo_root();
    // `--native-only`: re-measure the native figures and keep the browser ones of the last run.
    let native_only = std::env::args().any(|a| a == "--native-only");
    let previous: Value = std::fs::read_to_string(root.join("docs/benchmarks.json"))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or(Value::Null);
    // `--render`: rewrite BENCHMARKS.md from docs/benchmarks.json, measuring nothing.
    if std::env::args().any(|a| a == "--render") {
        anyhow::ensure!(
            !previous.is_null(),
            "docs/benchmarks.json is missing or unreadable"
        );
        let mut results = previous;
        results["cold_xtask_test"] = cold_test_record(&root);
        return write_results(&root, &results);
    }
    // `--only a,b`: re-measure these sections (names as in benchmarks.json: native, peers,
    // torch_glow (PyTorch's Glow, with `--peers`), flow_rotation, leakage, owsd, adversarial, rtas, factory, load_and_faults, browser; or
    // browser-cpu, the page's CPU figures only) and keep the rest of the last run.
    let only: Option<Vec<String>> = std::env::args()
        .skip_while(|a| a != "--only")
        .nth(1)
        .map(|v| v.split(',').map(str::to_owned).collect());
    if let Some(only) = only {
        anyhow::ensure!(
            !previous.is_null(),
            "--only needs docs/benchmarks.json from an earlier run"
        );
        let mut results = previous.clone();
        let runtime = tokio::runtime::Runtime::new()?;
        for name in &only {
            eprintln!("re-measuring {name}…");
            let section = if name.starts_with("browser") {
                "browser"
            } else {
                name.as_str()
            };
            results[section] = match name.as_str() {
                "native" => native()?,
                "peers" => peers()?,
                "torch_glow" => torch_glow()?,
                "flow_rotation" => flow_rotation()?,
                "leakage" => leakage(),
                "owsd" => owsd()?,
                "adversarial" => adversarial()?,
                "rtas" => rtas()?,
                "factory" => runtime.block_on(factory())?,
                "load_and_faults" => runtime.block_on(load_and_faults()),
                // The page's benchmarks with the www/pkg already built (`cargo xtask bench`
                // builds the shipped client first; this reuses whatever is there).
                "browser" | "browser-cpu" => {
                    let mut browser = previous["browser"].clone();
                    let modes: &[GpuMode] = if name == "browser" {
                        &[GpuMode::NoWebgpu, GpuMode::Webgpu]
                    } else {
                        &[GpuMode::NoWebgpu]
                    };
                    for &mode in modes {
                        let tag = mode.expected_backend();
                        eprintln!("browser ({tag}): running bench.html…");
                        browser[tag] = runtime
                            .block_on(browser_bench(mode))
                            .unwrap_or_else(|e| json!({ "error": format!("{e:#}") }));
                        eprintln!("{}", browser[tag]);
                    }
                    browser
                }
                other => anyhow::bail!("--only: no section {other:?}"),
            };
        }
        let mut parts: Vec<String> = previous["partial_rerun"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        parts.extend(
            only.iter()
                .filter(|n| !parts.contains(n))
                .cloned()
                .collect::<Vec<_>>(),
        );
        results["partial_rerun"] = json!(parts);
        // `machine` stays the full run's: the sections not re-measured were measured there.
        results["partial_machine"] = machine();
        results["cold_xtask_test"] = cold_test_record(&root);
        return write_results(&root, &results);
    }
    let mut results = json!({});
    eprintln!("native: 3072×3072 Haar rotation…");
    results["native"] = native()?;
    results["peers"] = peers()?;
    eprintln!("native: flow rotation…");
    results["flow_rotation"] = flow_rotation()?;
    results["torch_glow"] = torch_glow()?;
    eprintln!("native: gradient leakage…");
    results["leakage"] = leakage();
    eprintln!("native: OWSD scrambling…");
    results["owsd"] = owsd()?;
    eprintln!("native: adversarial data encryption (PGD)…");
    results["adversarial"] = adversarial()?;
    eprintln!("native: RTAS inference (four parties in one process)…");
    results["rtas"] = rtas()?;
    eprintln!(
        "{} {} {} {}",
        results["native"], results["flow_rotation"], results["leakage"], results["rtas"]
    );
    let runtime = tokio::runtime::Runtime::new()?;
    eprintln!("factory: training throughput and classify load…");
    results["factory"] = runtime.block_on(factory())?;
    eprintln!("{}", results["factory"]);
    results["load_and_faults"] = runtime.block_on(load_and_faults());
    let mut browser = json!({});
    for mode in [GpuMode::NoWebgpu, GpuMode::Webgpu] {
        if native_only {
            let mut kept = previous["browser"][mode.expected_backend()].clone();
            if kept.is_object() && kept.get("wasm_simd128").is_none() {
                // Measured before the Householder key and the build record: its Haar figure is
                // the QR key's, which this run no longer measures in the browser.
                if let Some(obj) = kept.as_object_mut() {
                    let qr = obj.remove("haar_3072_ms").unwrap_or(Value::Null);
                    obj.remove("haar_3072_digest");
                    obj.insert("haar_qr_3072_ms".into(), qr);
                }
            }
            browser[mode.expected_backend()] = kept;
            continue;
        }
        eprintln!("browser ({}): running bench.html…", mode.expected_backend());
        match runtime.block_on(browser_bench(mode)) {
            Ok(v) => browser[mode.expected_backend()] = v,
            Err(e) => browser[mode.expected_backend()] = json!({ "error": format!("{e:#}") }),
        }
        eprintln!("{}", browser[mode.expected_backend()]);
    }
    results["browser"] = browser;
    results["browser_from_previous_run"] = json!(native_only);
    results["wasm_size"] = if native_only {
        previous["wasm_size"].clone()
    } else {
        wasm_size(&root.join("www/pkg/veil_client_bg.wasm"))?
    };
    results["machine"] = machine();
    results["cold_xtask_test"] = cold_test_record(&root);
    write_results(&root, &results)
}

/// The last `cargo xtask cold-test` (docs/cold-test.json, with the run before it), or null.
fn cold_test_record(root: &Path) -> Value {
    std::fs::read_to_string(root.join("docs/cold-test.json"))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or(Value::Null)
}

fn write_results(root: &Path, results: &Value) -> Result<()> {
    let docs = root.join("docs");
    std::fs::create_dir_all(&docs)?;
    std::fs::write(
        docs.join("benchmarks.json"),
        serde_json::to_string_pretty(results)? + "\n",
    )?;
    std::fs::write(docs.join("BENCHMARKS.md"), markdown(results))?;
    eprintln!("wrote docs/BENCHMARKS.md and docs/benchmarks.json");
    Ok(())
}

/// The references a user would pick instead, when `cargo xtask bench --peers` names a Python
/// with numpy (`VEIL_BENCH_PYTHON`): numpy's QR route to a 3072² Haar matrix (Gaussian draw, QR,
/// sign correction), best of two, with numpy's default BLAS threads. `null` without it.
fn peers() -> Result<Value> {
    let Ok(python) = std::env::var("VEIL_BENCH_PYTHON") else {
        return Ok(Value::Null);
    };
    eprintln!("peers: numpy QR of a 3072×3072 Gaussian matrix…");
    let script = r#"
import json, os, time
import numpy as np
rng = np.random.default_rng(0)
best = None
for _ in range(2):
    t = time.perf_counter()
    z = rng.standard_normal((3072, 3072))
    q, r = np.linalg.qr(z)
    q *= np.sign(np.diag(r))
    dt = time.perf_counter() - t
    best = dt if best is None else min(best, dt)
print(json.dumps({"numpy": np.__version__, "cpus": os.cpu_count(), "numpy_qr_3072_ms": best * 1000}))
"#;
    python_json(&python, script, &[], "numpy")
}

/// Runs a Python `script` with `args` and reads the JSON object it prints; `what` names the
/// reference in the error when it fails.
fn python_json(python: &str, script: &str, args: &[String], what: &str) -> Result<Value> {
    let out = std::process::Command::new(python)
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .with_context(|| format!("running {python}"))?;
    anyhow::ensure!(
        out.status.success(),
        "the {what} reference failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// PyTorch's flow-rotation encryption of the same Glow (`tests/bench/torch_glow.py`) at
/// 1×28×28 and 3×32×32, with its parameter count checked against Veil's for each shape: a
/// reference of another size would make the ratio meaningless, so a mismatch fails the run.
fn torch_glow() -> Result<Value> {
    let Ok(python) = std::env::var("VEIL_BENCH_PYTHON") else {
        return Ok(Value::Null);
    };
    eprintln!("peers: PyTorch Glow encryption at 1×28×28 and 3×32×32…");
    let shapes: Vec<[usize; 2]> = FLOW_BENCH_SHAPES[1..]
        .iter()
        .map(|&(c, s)| [c, s])
        .collect();
    let torch = python_json(
        &python,
        include_str!("../../bench/torch_glow.py"),
        &[serde_json::to_string(&shapes)?],
        "PyTorch",
    )?;
    for [c, side] in shapes {
        let ours = flow_bench_glow(c, side).init(&Device::flex()).num_params();
        let theirs = torch[format!("params_{c}x{side}x{side}")].as_u64();
        anyhow::ensure!(
            theirs == Some(ours as u64),
            "PyTorch's Glow at {c}×{side}×{side} has {theirs:?} parameters, Veil's {ours}: not the same flow"
        );
    }
    Ok(torch)
}

fn native() -> Result<Value> {
    let key = veil::crypto::testvectors::test_key();
    let sub = key.class_subkey(veil::crypto::keys::Scheme::FlowRotation, 0);
    let t = Instant::now();
    let rot = HaarRotation::from_subkey(&sub, 3072, RotationDerivation::Householder);
    let haar_ms = t.elapsed().as_secs_f64() * 1000.0;
    let digest = veil::crypto::keys::to_hex(&rot.digest());
    // Ready to encrypt on a device: the WY blocks as tensors.
    let t = Instant::now();
    let _ = veil::schemes::flow_rotation::DeviceRotation::new(&rot, &Device::flex());
    let wy_ms = t.elapsed().as_secs_f64() * 1000.0;
    drop(rot);
    let t = Instant::now();
    let _ = HaarRotation::from_subkey(&sub, 3072, RotationDerivation::Qr);
    let qr_ms = t.elapsed().as_secs_f64() * 1000.0;

    let card = demo::card();
    let device = Device::flex();
    let model = card.config.load(demo::WEIGHTS, &device)?;
    let data = digits();
    let batch = 256;
    let pixels: Vec<f32> = data.images[..batch * data.shape.len()].to_vec();
    let run = || {
        let x = veil::data::images_tensor(&pixels, data.shape, &device);
        let _ = model.forward(x).into_data();
    };
    run();
    let reps = 20;
    let t = Instant::now();
    for _ in 0..reps {
        run();
    }
    let secs = t.elapsed().as_secs_f64();
    Ok(json!({
        "haar_3072_ms": haar_ms,
        "haar_3072_digest": digest,
        "haar_3072_to_device_ms": wy_ms,
        "haar_qr_3072_ms": qr_ms,
        "inference_images_per_s": (batch * reps) as f64 / secs,
        "inference_batch": batch,
        "encrypt_digits_images_per_s": encrypt_digits_native()?,
        "scramble_1x8x8_images_per_s": scramble_native(1, 8, 8)?,
        "scramble_3x32x32_images_per_s": scramble_native(3, 32, 4)?,
        "adversarial_digits_images_per_s": adversarial_native()?,
    }))
}

/// Every step of the CPU device is ready at once: poll to completion.
fn ready<F: Future>(f: F) -> F::Output {
    use std::task::{Context, Poll, Waker};
    let mut f = std::pin::pin!(f);
    let mut cx = Context::from_waker(Waker::noop());
    loop {
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
    }
}

/// OWSD scrambling through the client's own code path (`veil_client::Session` on flex,
/// natively), as the page's benchmark (`benchScramble` in www/bench/worker.js) runs it: 256 fixed 64-d
/// embeddings, `reps` repetitions after a warm-up, the budget forced.
fn scramble_native(channels: usize, side: usize, reps: usize) -> Result<f64> {
    let session = ready(veil_client::Session::start(false))?;
    session.generate_key("bench")?;
    session.owsd().scramble_begin(
        veil_client::owsd::ScrambleSetup {
            encoders: vec![64],
            output: veil::data::ImageShape::new(channels, side, side),
            generation: 0,
        },
        veil::schemes::owsd::KeyUsage::new(u64::MAX / 2),
    )?;
    let batch = 256;
    let emb: Vec<f32> = (0..batch * 64)
        .map(|i| ((i * 7919) % 101) as f32 / 50.0 - 1.0)
        .collect();
    ready(session.owsd().scramble(&emb, true))?;
    let t = Instant::now();
    for _ in 0..reps {
        ready(session.owsd().scramble(&emb, true))?;
    }
    Ok((batch * reps) as f64 / t.elapsed().as_secs_f64())
}

/// Adversarial data encryption of digits through the client's own code path
/// (`veil_client::Session` on flex, natively), as the page's benchmark (`benchAdversarial` in
/// www/bench/worker.js) runs it: the first 128 digits, the demo model as the base model, ε 1.5, 100 PGD
/// steps, one warm-up batch and 2 timed.
fn adversarial_native() -> Result<f64> {
    let session = ready(veil_client::Session::start(false))?;
    session.generate_key("bench")?;
    session.adversarial().begin(
        veil_client::adversarial::AdversarialSetup {
            shape: veil::data::ImageShape::new(1, 8, 8),
            classes: (0..10).map(|c| c.to_string()).collect(),
            epsilon: 1.5,
            iterations: 100,
            method: None,
        },
        None,
    )?;
    let data = digits();
    let batch = 128;
    let pixels = &data.images[..batch * 64];
    let labels = &data.labels[..batch];
    ready(session.adversarial().encrypt(pixels, labels))?;
    let reps = 2;
    let t = Instant::now();
    for _ in 0..reps {
        ready(session.adversarial().encrypt(pixels, labels))?;
    }
    Ok((batch * reps) as f64 / t.elapsed().as_secs_f64())
}

/// Flow-rotation encryption of digits through the client's own code path (`veil_client::Session`
/// on flex, natively), with the same batch as the page's benchmark (`benchEncrypt` in www/bench/worker.js):
/// the first 256 digits with their classes, route (a), 8 repetitions after a warm-up.
fn encrypt_digits_native() -> Result<f64> {
    let session = ready(veil_client::Session::start(false))?;
    session.generate_key("bench")?;
    veil_tests::load_digits_flows(&session)?;
    let batch = 256;
    let data = digits();
    let pixels = &data.images[..batch * data.shape.len()];
    let route = veil_client::FlowRoute::TrueClass(data.labels[..batch].to_vec());
    ready(session.flow_rotation().apply(pixels, &route, false))?;
    let reps = 8;
    let t = Instant::now();
    for _ in 0..reps {
        ready(session.flow_rotation().apply(pixels, &route, false))?;
    }
    Ok((batch * reps) as f64 / t.elapsed().as_secs_f64())
}

/// Flow-rotation figures: encryption throughput for 16×16×1 and 32×32×3 images (a 2-level,
/// 4-step Glow with 48 hidden channels — untrained weights cost the same as trained ones), and the
/// time of one training epoch of that flow on the digits.
/// OWSD scramble images/s natively (the generator alone, from 64-d embeddings, batch 256).
fn owsd() -> Result<Value> {
    use veil::burn::tensor::Distribution;
    use veil::data::ImageShape;
    use veil::schemes::owsd::ScrambleConfig;
    let device = Device::flex();
    let key =
        veil::crypto::testvectors::test_key().subkey(veil::crypto::keys::Scheme::Owsd, "generator");
    let mut out = json!({});
    for (c, side) in [(1usize, 8usize), (3, 32)] {
        let g = ScrambleConfig::new(64, ImageShape::new(c, side, side)).init(&key, &device)?;
        let x = veil::burn::tensor::Tensor::<2>::random(
            [256, 64],
            Distribution::Normal(0.0, 1.0),
            &device,
        );
        let _ = g.scramble(x.clone())?.into_data();
        let reps = 10;
        let t = Instant::now();
        for _ in 0..reps {
            let _ = g.scramble(x.clone())?.into_data();
        }
        out[format!("scramble_{c}x{side}x{side}_images_per_s")] =
            json!((256 * reps) as f64 / t.elapsed().as_secs_f64());
    }
    Ok(out)
}

/// Adversarial data encryption images/s natively: targeted L2 PGD (100 steps, the paper's
/// setting) through an untrained SmallCnn base model, batch 128 (the time does not depend on
/// the weights).
fn adversarial() -> Result<Value> {
    use veil::burn::tensor::{Int, Tensor, TensorData};
    use veil::data::ImageShape;
    use veil::nn::model::SmallCnnConfig;
    use veil::schemes::adversarial::{Goal, PgdConfig, pgd_l2};
    let device = Device::flex().autodiff();
    device.seed(1);
    let mut out = json!({});
    for (c, side) in [(1usize, 8usize), (1, 28), (3, 32)] {
        let shape = ImageShape::new(c, side, side);
        let model = SmallCnnConfig::for_shape(shape, 10).init(&device);
        let n = 128;
        let x = Tensor::<4>::random(
            [n, c, side, side],
            veil::burn::tensor::Distribution::Default,
            &device,
        );
        let targets = Tensor::<1, Int>::from_data(
            TensorData::new((0..n as i64).map(|i| i % 10).collect::<Vec<_>>(), [n]),
            &device,
        );
        let config = PgdConfig::with_epsilon(0.5, 100);
        let t = Instant::now();
        let _ = pgd_l2(&model, x, targets, Goal::Toward, &config)?.into_data();
        out[format!("pgd100_{c}x{side}x{side}_images_per_s")] =
            json!(n as f64 / t.elapsed().as_secs_f64());
    }
    Ok(out)
}

/// RTAS and RTAS-fast inference through the protocol (all four parties on this machine, each on
/// its own thread, over in-memory links): images/s and MB on all links per image, for the
/// paper's CNN on a batch of 2048 synthetic images (untrained weights: the cost does not depend
/// on them).
fn rtas() -> Result<Value> {
    use veil::data::{ImageShape, SyntheticConfig, synthetic};
    use veil::schemes::rtas::{FixedPoint, Mode, NetworkSpec, RunConfig, simulate};
    let mut out = json!({});
    for (c, side) in [(1usize, 8usize), (1, 28), (3, 32)] {
        let shape = ImageShape::new(c, side, side);
        let data = synthetic(SyntheticConfig {
            classes: 10,
            per_class: 205,
            shape,
            noise: 0.05,
            seed: 1,
        })?;
        let test = data.subset(&(0..2048).collect::<Vec<_>>());
        for (mode, name) in [(Mode::Rtas, "rtas"), (Mode::RtasFast, "rtas_fast")] {
            let config = RunConfig {
                spec: NetworkSpec::paper_cnn(shape, 10),
                fixed_point: FixedPoint::default(),
                lr: 1.0,
                epochs: 0,
                batch_size: 32,
                inference_batch: 2048,
                init_seed: 1,
                order_seed: 1,
                positive: 0,
                mode,
                view_batch: None,
            };
            let key = veil::crypto::testvectors::test_key();
            let sim = simulate(
                &config,
                &test,
                &test,
                &key,
                Duration::from_secs(600),
                None,
                &mut |_| {},
            )?;
            let seconds = sim.p0.inference_batch_seconds.iter().sum::<f64>();
            let sent = |a: &veil::schemes::rtas::Traffic, b: &veil::schemes::rtas::Traffic| {
                a.total_sent() - b.total_sent()
            };
            let bytes = sent(
                &sim.p0.traffic_after_inference,
                &sim.p0.traffic_after_training,
            ) + sent(
                &sim.p1.traffic_after_inference,
                &sim.p1.traffic_after_training,
            ) + sim.dealer.1.total_sent()
                + sim.helper.traffic.total_sent();
            out[format!("{name}_{c}x{side}x{side}_images_per_s")] = json!(2048.0 / seconds);
            out[format!("{name}_{c}x{side}x{side}_mb_per_image")] =
                json!(bytes as f64 / 2048.0 / 1e6);
        }
    }
    Ok(out)
}

/// Gradient-matching iterations per second against the lab's networks (one attack, one thread),
/// and the analytic attack's time.
fn leakage() -> Value {
    use veil::attacks::leakage::{
        AttackConfig, AttackedArch, AttackedNetConfig, GradientAttack, Method,
        analytic_first_layer, victim_gradient,
    };
    let device = Device::flex().autodiff();
    let data = digits();
    let mut out = json!({});
    for arch in [AttackedArch::LENET, AttackedArch::MLP] {
        let net = AttackedNetConfig::new(arch, data.shape, 10, 7).init(&device);
        let g = victim_gradient(&net, data.image(1), data.labels[1] as usize, &device);
        for method in Method::ALL {
            let mut config = AttackConfig::new(method);
            config.iterations = 400;
            let Ok(mut attack) = GradientAttack::new(&net, &g, config, &device) else {
                continue;
            };
            for _ in 0..20 {
                let _ = attack.step();
            }
            let t = Instant::now();
            let mut steps = 0;
            while attack.iteration() < 400 && attack.step().is_ok() {
                steps += 1;
            }
            out[format!(
                "{}_{}_iterations_per_s",
                arch.name(),
                method.name().replace('-', "_")
            )] = json!(steps as f64 / t.elapsed().as_secs_f64());
        }
        if let AttackedArch::Mlp { .. } = arch {
            let t = Instant::now();
            for _ in 0..100 {
                let _ = analytic_first_layer(&net, &g);
            }
            out["analytic_mlp_ms"] = json!(t.elapsed().as_secs_f64() * 10.0);
        }
    }
    out
}

/// The image shapes (channels, side) of the flow-encryption figures; PyTorch's reference
/// (`--peers`) runs the same Glow at the last two.
const FLOW_BENCH_SHAPES: [(usize, usize); 3] = [(1, 16), (1, 28), (3, 32)];

/// The Glow of the flow-encryption figures: 2 levels, 4 steps, 48 hidden channels.
fn flow_bench_glow(channels: usize, side: usize) -> veil::flow::glow::GlowConfig {
    veil::flow::glow::GlowConfig::new(channels, side, side)
        .with_steps(4)
        .with_hidden(48)
}

fn flow_rotation() -> Result<Value> {
    use veil::burn::tensor::Distribution;
    use veil::flow::glow::{GlowConfig, Preprocess};
    use veil::flow::train::{FlowTrainOptions, train_flow};
    use veil::schemes::flow_rotation::FlowEncryptor;
    let device = Device::flex();
    let key = veil::crypto::testvectors::test_key();
    let mut out = json!({});
    for (c, side) in FLOW_BENCH_SHAPES {
        let config = flow_bench_glow(c, side);
        let x = veil::burn::tensor::Tensor::<4>::random(
            [128, c, side, side],
            Distribution::Uniform(0.0, 1.0),
            &device,
        );
        let pre = Preprocess::EIGHT_BIT;
        let (s, _) = pre.to_logit(x.clone(), true);
        let glow = config.init(&device).data_init(s);
        // The current derivation (blocked above 256 dimensions), and the QR one (dense).
        for (derivation, suffix) in [
            (RotationDerivation::Householder, ""),
            (RotationDerivation::Qr, "_qr"),
        ] {
            let enc = FlowEncryptor::new(
                glow.clone(),
                pre,
                &key.class_subkey(veil::crypto::keys::Scheme::FlowRotation, 0),
                derivation,
                &device,
            );
            let _ = enc.encrypt(x.clone()).into_data();
            // The best of 3 rounds of 3 batches (PyTorch's reference is timed alike).
            let reps = 3;
            let seconds = (0..3)
                .map(|_| {
                    let t = Instant::now();
                    for _ in 0..reps {
                        let _ = enc.encrypt(x.clone()).into_data();
                    }
                    t.elapsed().as_secs_f64()
                })
                .fold(f64::INFINITY, f64::min);
            out[format!("encrypt_{c}x{side}x{side}{suffix}_images_per_s")] =
                json!((128 * reps) as f64 / seconds);
        }
        out[format!("params_{c}x{side}x{side}")] = json!(glow.num_params());
    }
    let data = digits();
    let (train, _) = data.split(0.2, 7);
    let pre = Preprocess {
        bins: 17,
        alpha: 0.05,
    };
    let ad = Device::flex().autodiff();
    let config = GlowConfig::new(1, 8, 8).with_steps(4).with_hidden(48);
    let (s, _) = pre.to_logit(train.images_tensor(0..256, &ad), true);
    let glow = config.init(&ad).data_init(s);
    let options = FlowTrainOptions {
        epochs: 1,
        batch_size: 32,
        ..Default::default()
    };
    let t = Instant::now();
    let _ = train_flow(glow, &train, pre, options, &ad, |_| {
        veil::nn::train::Control::Continue
    })?;
    out["flow_train_epoch_digits_s"] = json!(t.elapsed().as_secs_f64());
    out["flow_train_images"] = json!(train.len());
    Ok(out)
}

async fn browser_bench(mode: GpuMode) -> Result<Value> {
    let server = start_server().await?;
    let addr = server.addr;
    let b = Browser::start(mode).await?;
    let out = async {
        b.client.goto(&format!("http://{addr}/bench.html")).await?;
        let option = if mode == GpuMode::Webgpu {
            "gpu"
        } else {
            "cpu"
        };
        b.client
            .execute(
                &format!("document.getElementById('bench-backend').value = '{option}';"),
                vec![],
            )
            .await?;
        b.client
            .find(Locator::Id("bench-run"))
            .await?
            .click()
            .await?;
        let text = b
            .wait_for(
                "the benchmark results",
                "return document.getElementById('bench-json').textContent || null;",
                Duration::from_secs(900),
            )
            .await?;
        let v: Value = serde_json::from_str(text.as_str().unwrap_or("{}")).context("bench JSON")?;
        b.screenshot(&format!("bench-{}", mode.expected_backend()))
            .await?;
        Ok::<Value, anyhow::Error>(v)
    }
    .await;
    b.close().await?;
    out
}

fn wasm_size(path: &Path) -> Result<Value> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(&bytes)?;
    let gzip = gz.finish()?.len();
    Ok(json!({ "raw_bytes": bytes.len(), "gzip_bytes": gzip }))
}

fn first_line(cmd: &str, args: &[&str]) -> String {
    std::process::Command::new(cmd)
        .args(args)
        .output()
        .ok()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .unwrap_or("")
                .trim()
                .to_owned()
        })
        .unwrap_or_default()
}

fn machine() -> Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|r| r.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "unknown".into());
    let mem_kib: u64 = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("MemTotal:")
                .and_then(|r| r.trim().trim_end_matches(" kB").parse().ok())
        })
        .unwrap_or(0);
    json!({
        "cpu": cpu,
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "memory_gib": (mem_kib as f64 / 1024.0 / 1024.0 * 10.0).round() / 10.0,
        "os": first_line("uname", &["-sr"]),
        "rustc": first_line("rustc", &["--version"]),
        "chromium": first_line("/usr/bin/chromium", &["--version"]),
        "gpu": "none (WebGPU figures are Chromium's SwiftShader software adapter)",
    })
}

/// The ML factory: small-CNN training throughput on the digits, and the classify route under a
/// local load generator (concurrent HTTP clients on loopback).
async fn factory() -> Result<Value> {
    use veil::nn::train::{Control, TrainOptions, train_classifier};
    let data = digits();
    let (train, test) = data.split(0.2, 0);
    let epochs = 3;
    let t = Instant::now();
    let device = Device::flex().autodiff();
    let model = veil::nn::model::SmallCnnConfig::for_shape(train.shape, 10).init(&device);
    let options = TrainOptions {
        epochs,
        batch_size: 64,
        learning_rate: 2e-3,
        seed: 0,
    };
    let trained = tokio::task::spawn_blocking(move || {
        train_classifier(model, &train, options, &device, |_| Control::Continue)
            .map(|_| train.len())
    })
    .await??;
    let train_samples_per_s = (trained * epochs) as f64 / t.elapsed().as_secs_f64();

    let server = start_server().await?;
    let addr = server.addr;
    let url = format!("http://{addr}/api/models/digits-cnn/classify");
    let http = reqwest::Client::new();
    let (requests, concurrency) = (2000usize, 8usize);
    let images: Vec<Vec<f32>> = (0..64).map(|i| test.image(i).to_vec()).collect();
    // Warm the model cache.
    http.post(&url)
        .json(&json!({"images": [images[0]]}))
        .send()
        .await?
        .error_for_status()?;
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let t = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (http, url, next, images) = (http.clone(), url.clone(), next.clone(), images.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut errors = 0usize;
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= requests {
                    break;
                }
                let t = Instant::now();
                let ok = http
                    .post(&url)
                    .json(&json!({"images": [images[i % images.len()]]}))
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success());
                lat.push(t.elapsed().as_secs_f64() * 1e3);
                errors += usize::from(!ok);
            }
            (lat, errors)
        }));
    }
    let mut latencies = Vec::new();
    let mut errors = 0;
    for task in tasks {
        let (l, e) = task.await?;
        latencies.extend(l);
        errors += e;
    }
    let elapsed = t.elapsed().as_secs_f64();
    latencies.sort_by(f64::total_cmp);
    let pct = |p: f64| latencies[((latencies.len() - 1) as f64 * p).round() as usize];
    Ok(json!({
        "train_small_cnn_digits_samples_per_s": train_samples_per_s,
        "classify_requests": requests,
        "classify_concurrency": concurrency,
        "classify_requests_per_s": requests as f64 / elapsed,
        "classify_p50_ms": pct(0.5),
        "classify_p99_ms": pct(0.99),
        "classify_errors": errors,
    }))
}

/// Eight owners for 80 s against a `veil serve` process, killed and restarted at half time,
/// with slow clients, then a full disk (see [`veil_tests::load`]). The binary is `$VEIL_BIN`, or
/// the release build `cargo xtask bench` makes first.
async fn load_and_faults() -> Value {
    eprintln!("factory: owners under load, a SIGKILL and restart, slow clients, a full disk…");
    let veil = std::env::var_os("VEIL_BIN").map_or_else(
        || {
            let target = std::env::var_os("CARGO_TARGET_DIR")
                .map_or_else(|| repo_root().join("target"), Into::into);
            target.join("release").join("veil")
        },
        Into::into,
    );
    if !veil.exists() {
        return json!({ "error": format!("no veil binary at {} (cargo build --release -p veil-cli)", veil.display()) });
    }
    let cfg = veil_tests::load::LoadConfig {
        veil,
        owners: 8,
        duration: Duration::from_secs(80),
    };
    match veil_tests::load::run(&cfg).await {
        Ok(v) => {
            eprintln!("{v}");
            v
        }
        Err(e) => json!({ "error": format!("{e:#}") }),
    }
}

/// The load-and-faults section of BENCHMARKS.md.
fn load_markdown(l: &Value) -> String {
    let mut s = String::from(
        "## The factory under load and faults (`veil serve` as a process, loopback)\n\n",
    );
    if l.is_null() {
        return s + "Not measured in this run.\n\n";
    }
    if let Some(e) = l["error"].as_str() {
        return s + &format!("**The run failed:** {e}\n\n");
    }
    let ms = |v: &Value| f(v).map_or("—".into(), |x| format!("{x:.1} ms"));
    let results = |v: &Value| {
        v.as_object().map_or("—".into(), |m| {
            m.iter()
                .map(|(k, n)| format!("{k}: {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        })
    };
    s += &format!(
        "{} owners, each in a loop for {:.0} s: upload a digits container (60–200 images), queue a training job \
         (2 epochs) every other round, classify 4 × 8 images, and (two of them) start a gradient-leakage attack every \
         third round; quotas: 2 active jobs, 6,000 images and 10 attacks a minute per owner. The server was SIGKILLed \
         (signal {}) at {:.0} s and restarted on the same data directory; it answered again {:.2} s later, and {} of \
         {} jobs resumed from a checkpoint. Results are HTTP statuses, or `connection` for a request cut by the kill.\n\n",
        l["owners"],
        f(&l["duration_s"]).unwrap_or(0.0),
        l["killed_by_signal"],
        f(&l["killed_at_s"]).unwrap_or(0.0),
        f(&l["restart_to_healthy_s"]).unwrap_or(0.0),
        l["jobs_resumed_after_the_kill"],
        l["jobs"],
    );
    s += "| Requests | Count | p50 | p99 | Results |\n|---|---|---|---|---|\n";
    let all = &l["requests"]["all"];
    s += &format!(
        "| all | {} | {} | {} | {} |\n",
        all["requests"],
        ms(&all["p50_ms"]),
        ms(&all["p99_ms"]),
        results(&all["results"])
    );
    if let Some(kinds) = l["requests"]["by_kind"].as_object() {
        for (k, v) in kinds {
            s += &format!(
                "| {k} | {} | {} | {} | {} |\n",
                v["requests"],
                ms(&v["p50_ms"]),
                ms(&v["p99_ms"]),
                results(&v["results"])
            );
        }
    }
    let v = &l["verified"];
    s += &format!(
        "\nChecked afterwards through the API, with each owner's token: {} acknowledged datasets (each downloaded \
         and compared by SHA-256), {} acknowledged jobs, {} finished jobs and their models (each also asked for by \
         another owner, who must get 404). **Lost: {}. Corrupted: {}. Mixed between owners: {}. Finished jobs \
         changed: {}.**\n\n",
        v["datasets_checked"],
        v["jobs_checked"],
        v["finished_jobs_checked"],
        v["lost"],
        v["corrupted"],
        v["mixed"],
        v["finished_jobs_changed"],
    );
    s += "Slow clients (declaring a 1 MB upload; the server allows 30 s without a byte and 16 KiB/s on average):\n\n\
          | Client | Answer | After |\n|---|---|---|\n";
    for c in l["slow_clients"].as_array().into_iter().flatten() {
        let who = match (c["bytes_per_s"].as_u64(), c["after_restart"].as_bool()) {
            (Some(0), r) => format!(
                "sends nothing after its headers{}",
                if r == Some(true) {
                    " (after the restart)"
                } else {
                    ""
                }
            ),
            (Some(n), r) => format!(
                "sends {n} bytes/s{}",
                if r == Some(true) {
                    " (after the restart)"
                } else {
                    ""
                }
            ),
            _ => "?".into(),
        };
        let answer = match c["status"].as_u64() {
            Some(0) => "connection closed (the kill)".into(),
            Some(n) => n.to_string(),
            None => c["error"].as_str().unwrap_or("?").to_owned(),
        };
        s += &format!(
            "| {who} | {answer} | {} |\n",
            f(&c["answered_after_s"]).map_or("—".into(), |x| format!("{x:.1} s"))
        );
    }
    let d = &l["full_disk"];
    s += "\n";
    if let Some(skip) = d["skipped"].as_str() {
        s += &format!("Full disk: not measured ({skip}).\n\n");
    } else if let Some(e) = d["error"].as_str() {
        s += &format!("Full disk: **the run failed:** {e}\n\n");
    } else {
        s += &format!(
            "Full disk: a data directory on a {} MiB tmpfs (`unshare --user --mount`), one owner uploading 3×32×32 \
         containers of 600 images. {} were stored; upload {} was the first answered {} (\"{}\"). After it: health \
         {}, classification {}, {} of {} stored datasets listed and {} intact by SHA-256; deleting one answered {} \
         and the next upload {}.\n\n",
            d["tmpfs_mib"],
            d["uploads_stored"],
            d["first_full_upload"],
            d["full_status"],
            d["full_message"].as_str().unwrap_or(""),
            d["health_after"],
            d["classify_after"],
            d["listed_after"],
            d["uploads_stored"],
            d["intact_after"],
            d["delete_status"],
            d["upload_after_delete"],
        );
    }
    s
}

fn f(v: &Value) -> Option<f64> {
    v.as_f64()
}

fn markdown(r: &Value) -> String {
    let m = &r["machine"];
    let n = &r["native"];
    let cpu = &r["browser"]["cpu"];
    let gpu = &r["browser"]["webgpu"];
    let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) if b > 0.0 && a / b < 0.1 => format!("{:.4}×", a / b),
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}×", a / b),
        _ => "—".into(),
    };
    let secs = |v: Option<f64>| v.map_or("—".into(), |ms| format!("{:.2} s", ms / 1000.0));
    let ips = |v: Option<f64>| v.map_or("—".into(), |x| format!("{x:.0} images/s"));
    let mut s = String::new();
    s += "# Benchmarks\n\nWritten by `cargo xtask bench` (do not edit by hand).\n\n";
    s += &format!(
        "Machine: {} ({} cores), {} GiB, {}; {}; {}. GPU: {}.\n\n",
        m["cpu"].as_str().unwrap_or("?"),
        m["cores"],
        m["memory_gib"],
        m["os"].as_str().unwrap_or("?"),
        m["rustc"].as_str().unwrap_or("?"),
        m["chromium"].as_str().unwrap_or("?"),
        m["gpu"].as_str().unwrap_or("?"),
    );
    if let Some(parts) = r["partial_rerun"].as_array() {
        let names: Vec<&str> = parts.iter().filter_map(Value::as_str).collect();
        let pm = &r["partial_machine"];
        let on = if pm.is_object() {
            format!(
                "on {} ({} cores), {} GiB, {}",
                pm["cpu"].as_str().unwrap_or("?"),
                pm["cores"],
                pm["memory_gib"],
                pm["os"].as_str().unwrap_or("?")
            )
        } else {
            "on the machine above".to_owned()
        };
        s += &format!(
            "Re-measured in later partial runs (`cargo xtask bench --only {}`), the last {on}: {}; \
             the other sections come from the last full run, on the machine above. A ratio is \
             only measured in one run where both its figures are in the same group.\n\n",
            names.join(","),
            names.join(", ")
        );
    }
    s += "Native figures use burn's flex backend with its SIMD kernels and rayon threads; the browser's CPU \
          column is flex in the wasm module described under \"Shipped wasm client\" (its SIMD, no threads).\n\n";
    s += "## Keys and the demo model\n\n| What | Native (flex) | Browser CPU (wasm) | wasm / native | Browser WebGPU | WebGPU / native |\n|---|---|---|---|---|---|\n";
    s += &format!(
        "| 3072×3072 Haar rotation from a key, Householder derivation (time; lower is better) | {} | {} | {} | {} | {} |\n",
        secs(f(&n["haar_3072_ms"])),
        secs(f(&cpu["haar_3072_ms"])),
        ratio(f(&cpu["haar_3072_ms"]), f(&n["haar_3072_ms"])),
        secs(f(&gpu["haar_3072_ms"])),
        ratio(f(&gpu["haar_3072_ms"]), f(&n["haar_3072_ms"])),
    );
    s += &format!(
        "| Demo CNN inference, batch 256 (throughput; higher is better) | {} | {} | {} | {} | {} |\n\n",
        ips(f(&n["inference_images_per_s"])),
        ips(f(&cpu["inference_images_per_s"])),
        ratio(
            f(&cpu["inference_images_per_s"]),
            f(&n["inference_images_per_s"])
        ),
        ips(f(&gpu["inference_images_per_s"])),
        ratio(
            f(&gpu["inference_images_per_s"]),
            f(&n["inference_images_per_s"])
        ),
    );
    s = s.trim_end().to_owned() + "\n";
    s += &format!(
        "| Flow-rotation encryption of digits (1×8×8, the shipped flows, route a, the first 256 digits; throughput) | {} | {} | {} | {} | {} |\n\n",
        ips(f(&n["encrypt_digits_images_per_s"])),
        ips(f(&cpu["encrypt_digits_images_per_s"])),
        ratio(
            f(&cpu["encrypt_digits_images_per_s"]),
            f(&n["encrypt_digits_images_per_s"])
        ),
        ips(f(&gpu["encrypt_digits_images_per_s"])),
        ratio(
            f(&gpu["encrypt_digits_images_per_s"]),
            f(&n["encrypt_digits_images_per_s"])
        ),
    );
    for (key, what) in [
        (
            "adversarial_digits_images_per_s",
            "Adversarial data encryption of digits (the demo model as base, ε 1.5, 100 PGD steps, batch 128; throughput)",
        ),
        (
            "scramble_1x8x8_images_per_s",
            "OWSD scrambling, 64-d embeddings to 1×8×8 (batch 256; throughput)",
        ),
        (
            "scramble_3x32x32_images_per_s",
            "OWSD scrambling, 64-d embeddings to 3×32×32 (batch 256; throughput)",
        ),
    ] {
        s = s.trim_end().to_owned() + "\n";
        s += &format!(
            "| {what} | {} | {} | {} | {} | {} |\n\n",
            ips(f(&n[key])),
            ips(f(&cpu[key])),
            ratio(f(&cpu[key]), f(&n[key])),
            ips(f(&gpu[key])),
            ratio(f(&gpu[key]), f(&n[key])),
        );
    }
    if r["browser_from_previous_run"].as_bool() == Some(true) {
        s += "Browser figures and the wasm size come from the previous full run (`veil-bench --native-only` \
              re-measured only the native ones), so these ratios mix two runs.\n\n";
        if let Some(ms) = f(&cpu["haar_qr_3072_ms"]) {
            s += &format!(
                "That run drew the browser's 3072² key by the QR derivation: {} on the CPU.\n\n",
                secs(Some(ms))
            );
        }
    }
    s += "The Haar rotation is computed on the CPU in f64 on every host (it must be bit-identical), so its \
          WebGPU column is the same computation in the same wasm module.\n\n";
    let p = &r["peers"];
    if let Some(numpy) = f(&p["numpy_qr_3072_ms"]) {
        s += &format!(
            "Reference, measured in the same run: numpy {} draws the same-size Haar matrix by QR (Gaussian \
             draw, `np.linalg.qr`, sign correction; {} CPUs) in {}. Veil's Householder key takes {} of that \
             natively and {} in the browser (CPU).\n\n",
            p["numpy"].as_str().unwrap_or("?"),
            p["cpus"],
            secs(Some(numpy)),
            ratio(f(&n["haar_3072_ms"]), Some(numpy)),
            ratio(f(&cpu["haar_3072_ms"]), Some(numpy)),
        );
    }
    s += &format!(
        "The Householder key is the current derivation (Stewart 1980, O(m²)). Natively, turning it into \
         the WY blocks a device applies takes {} more; the QR derivation that keys made before it keep \
         (O(m³)) takes {} for the same size.\n\n",
        secs(f(&n["haar_3072_to_device_ms"])),
        secs(f(&n["haar_qr_3072_ms"])),
    );
    for (name, v) in [("CPU", cpu), ("WebGPU", gpu)] {
        if let Some(d) = v["haar_3072_digest"].as_str() {
            let same = Some(d) == n["haar_3072_digest"].as_str();
            s += &format!(
                "Browser {name} run: the 3072×3072 matrix's SHA-256 {} the native one ({}).\n\n",
                if same { "equals" } else { "DIFFERS FROM" },
                &d[..16.min(d.len())]
            );
        }
    }
    for (name, v) in [("CPU", cpu), ("WebGPU", gpu)] {
        if let Some(e) = v["error"].as_str() {
            s += &format!("Browser {name} run failed: {e}\n\n");
        }
    }
    let fr = &r["flow_rotation"];
    s += "## Flow rotation (native, flex CPU)\n\n| What | Figure |\n|---|---|\n";
    s += &format!(
        "| Encryption, 16×16×1 images (2-level, 4-step Glow, 48 hidden, batch 128; Householder key, formed as a 256² matrix) | {} |\n| Same, QR key (a dense 256² matrix) | {} |\n| Encryption, 28×28×1 images (same flow; Householder key, 13 WY blocks) | {} |\n| Same, QR key (a dense 784² matrix) | {} |\n| Encryption, 32×32×3 images (same flow; Householder key, 48 WY blocks) | {} |\n| Same, QR key (a dense 3072² matrix) | {} |\n| Flow training, one epoch of the {} digits training images (8×8, batch 32) | {} |\n\n",
        ips(f(&fr["encrypt_1x16x16_images_per_s"])),
        ips(f(&fr["encrypt_1x16x16_qr_images_per_s"])),
        ips(f(&fr["encrypt_1x28x28_images_per_s"])),
        ips(f(&fr["encrypt_1x28x28_qr_images_per_s"])),
        ips(f(&fr["encrypt_3x32x32_images_per_s"])),
        ips(f(&fr["encrypt_3x32x32_qr_images_per_s"])),
        fr["flow_train_images"],
        f(&fr["flow_train_epoch_digits_s"]).map_or("—".into(), |x| format!("{x:.2} s")),
    );
    let torch = &r["torch_glow"];
    if torch.is_object() {
        s += &format!(
            "### Against PyTorch, measured in the same run\n\nThe same Glow in PyTorch {} (`tests/bench/torch_glow.py`: the same layers and parameter count, checked by the bench; eval mode, no autograd, {} threads on {} CPUs; the rotation a dense matrix formed once), the same batch of 128 random 8-bit images.\n\n| Images | Parameters (Veil = PyTorch) | Veil | PyTorch | Veil ÷ PyTorch |\n|---|---|---|---|---|\n",
            torch["torch"].as_str().unwrap_or("?"),
            torch["threads"],
            torch["cpus"],
        );
        for shape in ["1x28x28", "3x32x32"] {
            let ours = f(&fr[format!("encrypt_{shape}_images_per_s")]);
            let theirs = f(&torch[format!("encrypt_{shape}_images_per_s")]);
            s += &format!(
                "| {} | {} | {} | {} | {} |\n",
                shape.replace('x', "×"),
                torch[format!("params_{shape}")],
                ips(ours),
                ips(theirs),
                ratio(ours, theirs),
            );
        }
        s += "\n";
    }
    let ow = &r["owsd"];
    s += &format!(
        "## OWSD scrambling (native, flex CPU, batch 256)\n\n| What | Figure |\n|---|---|\n| Scramble 64-d embeddings to 1×8×8 | {} |\n| Scramble 64-d embeddings to 3×32×32 | {} |\n\n",
        ips(f(&ow["scramble_1x8x8_images_per_s"])),
        ips(f(&ow["scramble_3x32x32_images_per_s"])),
    );
    let rt = &r["rtas"];
    s += "## RTAS inference (native; P0, P1, dealer and helper on this machine, in-memory links; paper CNN, batch 2048)\n\n| Images | RTAS | RTAS-fast |\n|---|---|---|\n";
    for shape in ["1x8x8", "1x28x28", "3x32x32"] {
        let cell = |name: &str| match (
            f(&rt[format!("{name}_{shape}_images_per_s")]),
            f(&rt[format!("{name}_{shape}_mb_per_image")]),
        ) {
            (Some(ips), Some(mb)) => format!("{ips:.0} images/s, {:.1} kB/image", mb * 1e3),
            _ => "—".into(),
        };
        s += &format!(
            "| {} | {} | {} |\n",
            shape.replace('x', "×"),
            cell("rtas"),
            cell("rtas_fast")
        );
    }
    s += "\nThe paper's RTAS (MNIST CNN, batch 8192, LAN, 16 cores and a T4): 772 images/s, 1.25 kB/image (Table 3 and 4; its traffic figure is below the size of the images themselves).\n\n";
    let ad = &r["adversarial"];
    s += &format!(
        "## Adversarial data encryption (native, flex CPU, batch 128, 100 PGD steps through the SmallCnn)\n\n| What | Figure |\n|---|---|\n| Encrypt 1×8×8 | {} |\n| Encrypt 1×28×28 | {} |\n| Encrypt 3×32×32 | {} |\n\nThe browser's figures (CPU and WebGPU, through the client) are in the first table, for the digits.\n\n",
        ips(f(&ad["pgd100_1x8x8_images_per_s"])),
        ips(f(&ad["pgd100_1x28x28_images_per_s"])),
        ips(f(&ad["pgd100_3x32x32_images_per_s"])),
    );
    let lk = &r["leakage"];
    s += "## Gradient leakage (native, flex CPU, one attack on one thread)\n\n| Attacked network | DLG | iDLG | Inverting Gradients |\n|---|---|---|---|\n";
    for (arch, name) in [
        ("lenet", "LeNet (3 conv, 15,226 parameters)"),
        ("mlp", "MLP (64-128-10)"),
    ] {
        let it = |m: &str| {
            f(&lk[format!("{arch}_{m}_iterations_per_s")])
                .map_or("—".into(), |x| format!("{x:.0} it/s"))
        };
        s += &format!(
            "| {name} | {} | {} | {} |\n",
            it("dlg"),
            it("idlg"),
            it("inverting_gradients")
        );
    }
    s += &format!(
        "\nThe analytic first-layer attack on the MLP takes {} per gradient.\n\n",
        f(&lk["analytic_mlp_ms"]).map_or("—".into(), |x| format!("{x:.3} ms"))
    );
    let fa = &r["factory"];
    s += "## The ML factory (native, flex CPU)\n\n| What | Figure |\n|---|---|\n";
    s += &format!(
        "| Training the small CNN on the digits (batch 64) | {} samples/s |\n| `POST /api/models/digits-cnn/classify`, one image a request, {} clients on loopback, {} requests | {} requests/s, p50 {} ms, p99 {} ms, {} errors |\n\n",
        f(&fa["train_small_cnn_digits_samples_per_s"]).map_or("—".into(), |x| format!("{x:.0}")),
        fa["classify_concurrency"],
        fa["classify_requests"],
        f(&fa["classify_requests_per_s"]).map_or("—".into(), |x| format!("{x:.0}")),
        f(&fa["classify_p50_ms"]).map_or("—".into(), |x| format!("{x:.2}")),
        f(&fa["classify_p99_ms"]).map_or("—".into(), |x| format!("{x:.2}")),
        fa["classify_errors"],
    );
    s += &load_markdown(&r["load_and_faults"]);
    let w = &r["wasm_size"];
    let simd = match cpu["wasm_simd128"].as_bool() {
        Some(true) => "WebAssembly SIMD (`+simd128`)",
        Some(false) => "no WebAssembly SIMD",
        None => "SIMD not recorded",
    };
    s += "## Shipped wasm client\n\n| Build | Raw | gzip |\n|---|---|---|\n";
    s += &format!(
        "| `wasm-size` profile (LTO, opt-level z) + `wasm-opt -Oz`, {simd}, WebGPU + CPU backends | {:.1} MB | {:.1} MB |\n\n",
        f(&w["raw_bytes"]).unwrap_or(0.0) / 1e6,
        f(&w["gzip_bytes"]).unwrap_or(0.0) / 1e6,
    );
    s += "## `cargo xtask test` on a fresh clone\n\n";
    match r.get("cold_xtask_test") {
        Some(c) if !c.is_null() => {
            let at = |c: &Value| match c["commit"].as_str() {
                Some(commit) if !commit.is_empty() => format!(" at {commit}"),
                _ => String::new(),
            };
            let prev = &c["previous"];
            s += &format!(
                "Cold run (empty target directory, tools already installed){}: {:.1} min on this machine.",
                at(c),
                f(&c["total_s"]).unwrap_or(0.0) / 60.0
            );
            if prev.is_object() {
                s += &format!(
                    " The run before it{}: {:.1} min.",
                    at(prev),
                    f(&prev["total_s"]).unwrap_or(0.0) / 60.0
                );
            }
            s += "\n\n";
            let steps = |c: &Value| -> Vec<(String, f64)> {
                c["steps"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .map(|st| {
                                (
                                    st["step"].as_str().unwrap_or("?").to_owned(),
                                    f(&st["seconds"]).unwrap_or(0.0),
                                )
                            })
                            .collect()
                    })
                    .unwrap_or_default()
            };
            let before = steps(prev);
            if before.is_empty() {
                s += "| Step | Seconds |\n|---|---|\n";
                for (name, secs) in steps(c) {
                    s += &format!("| {name} | {secs:.0} |\n");
                }
            } else {
                s += "| Step | Seconds | The run before |\n|---|---|---|\n";
                for (name, secs) in steps(c) {
                    let was = before
                        .iter()
                        .find(|(n, _)| *n == name)
                        .map_or("—".to_owned(), |(_, v)| format!("{v:.0}"));
                    s += &format!("| {name} | {secs:.0} | {was} |\n");
                }
            }
        }
        _ => {
            s += "Not measured yet: `cargo xtask cold-test` clones the repository, runs `cargo xtask test` in it and records the time in docs/cold-test.json.\n"
        }
    }
    s
}
