//! `cargo xtask serve | test | bench`: the project's whole set-up, in Rust so it runs wherever
//! cargo does. Each command installs what it needs on a fresh Debian machine: the wasm32 rustup
//! target, wasm-bindgen-cli at the version in Cargo.lock, and Debian's chromium and
//! chromium-driver.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};

mod bench;
mod tools;

const WASM_TARGET: &str = "wasm32-unknown-unknown";

fn usage() -> ! {
    eprintln!(
        "usage: cargo xtask <command>\n\n\
         commands:\n  \
           serve [--fast] [-- <veil serve args>]  build the wasm client (size-optimised; --fast: plain release)\n                                          and run the server at http://127.0.0.1:8080/\n  \
           test                                   every check: fmt, clippy (native and wasm32), ESLint on www/,\n                                          native tests, wasm tests and end-to-end tests in headless Chromium\n  \
           eslint                                 ESLint on www/ alone (undefined and unused names)\n  \
           bench [--peers]                        measure, and write docs/BENCHMARKS.md and docs/benchmarks.json\n                                          (--peers: also numpy's QR key and PyTorch's Glow encryption, from PyPI in target/bench-venv)\n  \
           cold-test                              time `cargo xtask test` on a fresh clone (docs/cold-test.json)\n  \
           fuzz [--seconds N]                     fuzz the dataset container decoder with cargo-fuzz (nightly;\n                                          default 120 s); new inputs join fuzz/corpus/, which `test` replays"
    );
    std::process::exit(2)
}

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let command = args.next().unwrap_or_else(|| usage());
    let rest: Vec<String> = args.collect();
    let root = repo_root();
    std::env::set_current_dir(&root)?;
    match command.as_str() {
        "serve" => serve(&root, &rest),
        "test" => test(&root),
        "bench" => bench::run_bench(&root, &rest),
        "cold-test" => bench::cold_test(&root),
        "fuzz" => tools::fuzz(&root, &rest),
        "eslint" => tools::eslint(&root),
        "build-wasm" => build_wasm(&root, rest.iter().any(|a| a == "--size")).map(|_| ()),
        _ => usage(),
    }
}

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Runs a command, echoing it, and fails with its exit status.
pub(crate) fn run(cmd: &mut Command) -> Result<()> {
    eprintln!("\n$ {}", describe(cmd));
    let status = cmd
        .status()
        .with_context(|| format!("cannot run {}", describe(cmd)))?;
    if !status.success() {
        bail!("`{}` failed ({status})", describe(cmd));
    }
    Ok(())
}

/// Runs a `cargo test` command like [`run`], echoing its output, and returns the passed and
/// failed counts summed over its "test result:" lines.
pub(crate) fn run_tests(cmd: &mut Command) -> Result<(u64, u64)> {
    use std::io::{BufRead, BufReader};
    eprintln!("\n$ {}", describe(cmd));
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot run {}", describe(cmd)))?;
    let (mut passed, mut failed) = (0, 0);
    if let Some(out) = child.stdout.take() {
        for line in BufReader::new(out).lines() {
            let line = line?;
            println!("{line}");
            if let Some(rest) = line.trim().strip_prefix("test result: ") {
                let count = |word: &str| {
                    rest.split([';', '.'])
                        .find_map(|part| part.trim().strip_suffix(word)?.trim().parse::<u64>().ok())
                        .unwrap_or(0)
                };
                passed += count(" passed");
                failed += count(" failed");
            }
        }
    }
    let status = child.wait()?;
    if !status.success() {
        bail!(
            "`{}` failed ({status}; {failed} tests failed)",
            describe(cmd)
        );
    }
    Ok((passed, failed))
}

fn describe(cmd: &Command) -> String {
    let envs: Vec<String> = cmd
        .get_envs()
        .filter_map(|(k, v)| Some(format!("{}={}", k.to_str()?, v?.to_str()?)))
        .collect();
    let args: Vec<String> = cmd
        .get_args()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let prefix = if envs.is_empty() {
        String::new()
    } else {
        format!("{} ", envs.join(" "))
    };
    format!(
        "{prefix}{} {}",
        cmd.get_program().to_string_lossy(),
        args.join(" ")
    )
}

/// Cargo's target folder: `CARGO_TARGET_DIR` when set (relative to `root`), else `root/target`.
pub(crate) fn target_dir(root: &Path) -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => root.join(dir),
        _ => root.join("target"),
    }
}

pub(crate) fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

/// Builds the client for wasm32 and runs wasm-bindgen into `www/pkg`. `size`: the `wasm-size`
/// profile (LTO, opt-level z) plus `wasm-opt -Oz` when available; else plain `release`, which
/// shares its build with the wasm tests. Returns the path of the `.wasm` written to `www/pkg`.
pub(crate) fn build_wasm(root: &Path, size: bool) -> Result<PathBuf> {
    tools::ensure_wasm_target()?;
    let bindgen = tools::ensure_wasm_bindgen(root)?;
    let profile = if size { "wasm-size" } else { "release" };
    run(cargo().args([
        "build",
        "--profile",
        profile,
        "--target",
        WASM_TARGET,
        "-p",
        "veil-client",
        "--lib",
    ]))?;
    let wasm = target_dir(root)
        .join(WASM_TARGET)
        .join(profile)
        .join("veil_client.wasm");
    let out = root.join("www").join("pkg");
    run(Command::new(&bindgen)
        .args(["--target", "web", "--no-typescript", "--out-dir"])
        .arg(&out)
        .arg(&wasm))?;
    let bg = out.join("veil_client_bg.wasm");
    if size {
        match tools::wasm_opt(root) {
            Ok(opt) => run(Command::new(opt)
                .args([
                    "-Oz",
                    "--enable-bulk-memory",
                    "--enable-nontrapping-float-to-int",
                    "--enable-sign-ext",
                    "--enable-mutable-globals",
                    "--enable-reference-types",
                    "--enable-multivalue",
                    "--enable-simd",
                    "-o",
                ])
                .arg(&bg)
                .arg(&bg))?,
            Err(e) => eprintln!("note: skipping wasm-opt ({e:#})"),
        }
    }
    Ok(bg)
}

fn serve(root: &Path, rest: &[String]) -> Result<()> {
    let fast = rest.iter().any(|a| a == "--fast");
    let passthrough: Vec<&String> = rest.iter().skip_while(|a| *a != "--").skip(1).collect();
    build_wasm(root, !fast)?;
    run(cargo()
        .args([
            "run",
            "--release",
            "-p",
            "veil-cli",
            "--bin",
            "veil",
            "--",
            "serve",
        ])
        .args(passthrough))
}

fn test(root: &Path) -> Result<()> {
    let started = Instant::now();
    let mut steps: Vec<(String, f64)> = Vec::new();
    let totals = std::cell::Cell::new((0u64, 0u64));
    let count = |(p, f): (u64, u64)| {
        let (tp, tf) = totals.get();
        totals.set((tp + p, tf + f));
    };
    let mut step = |name: &str, f: &mut dyn FnMut() -> Result<()>| -> Result<()> {
        let t = Instant::now();
        eprintln!("\n==== {name} ====");
        f().with_context(|| format!("step failed: {name}"))?;
        steps.push((name.to_owned(), t.elapsed().as_secs_f64()));
        Ok(())
    };
    step("tools", &mut || {
        tools::ensure_wasm_target()?;
        tools::ensure_wasm_bindgen(root)?;
        tools::ensure_chromium()
    })?;
    step("rustfmt", &mut || {
        run(cargo().args(["fmt", "--all", "--", "--check"]))
    })?;
    step("clippy (native)", &mut || {
        run(cargo().args([
            "clippy",
            "--workspace",
            "--all-targets",
            "--release",
            "--",
            "-D",
            "warnings",
        ]))
    })?;
    step("clippy (wasm32 client)", &mut || {
        run(cargo().args([
            "clippy",
            "-p",
            "veil-client",
            "--all-targets",
            "--release",
            "--target",
            WASM_TARGET,
            "--",
            "-D",
            "warnings",
        ]))
    })?;
    step("eslint (www)", &mut || tools::eslint(root))?;
    step("native tests", &mut || {
        run_tests(cargo().args(["test", "--workspace", "--release"])).map(count)
    })?;
    step("wasm build", &mut || build_wasm(root, false).map(|_| ()))?;
    for (mode, expect) in [("webgpu", "webgpu"), ("none", "cpu")] {
        step(
            &format!("wasm tests in headless Chromium ({mode})"),
            &mut || {
                let config = tools::webdriver_json(root, mode == "webgpu")?;
                run_tests(
                    cargo()
                        .args([
                            "test",
                            "--release",
                            "--target",
                            WASM_TARGET,
                            "-p",
                            "veil-client",
                            "--test",
                            "web",
                        ])
                        .env(
                            "CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUNNER",
                            tools::bindgen_test_runner(root)?,
                        )
                        .env("CHROMEDRIVER", "/usr/bin/chromedriver")
                        .env("WASM_BINDGEN_TEST_TIMEOUT", "300")
                        .env("WASM_BINDGEN_TEST_WEBDRIVER_JSON", &config)
                        .env("VEIL_EXPECT_BACKEND", expect),
                )
                .map(count)
            },
        )?;
        step(
            &format!("end-to-end tests in headless Chromium ({mode})"),
            &mut || {
                run_tests(
                    cargo()
                        // `--workspace`, not `-p veil-tests`: with one package selected, cargo
                        // resolves other features for burn and the rest, and rebuilt them all
                        // here (430 s of the cold run); this reuses the native tests' build.
                        .args([
                            "test",
                            "--workspace",
                            "--release",
                            "--test",
                            "e2e",
                            "--",
                            "--ignored",
                            "--test-threads=1",
                        ])
                        .env("VEIL_E2E_GPU", mode),
                )
                .map(count)
            },
        )?;
    }
    eprintln!("\n==== summary ====");
    for (name, secs) in &steps {
        eprintln!("{secs:8.1} s  {name}");
    }
    eprintln!("{:8.1} s  total", started.elapsed().as_secs_f64());
    let record = target_dir(root).join("xtask-test-times.json");
    let json = serde_json::json!({
        "total_s": started.elapsed().as_secs_f64(),
        "steps": steps.iter().map(|(n, s)| serde_json::json!({"step": n, "seconds": s})).collect::<Vec<_>>(),
    });
    std::fs::write(record, serde_json::to_string_pretty(&json)?)?;
    let (passed, failed) = totals.get();
    eprintln!("all {} steps passed", steps.len());
    // The plain closing line CI reads.
    println!("xtask: {passed} passed, {failed} failed");
    Ok(())
}
