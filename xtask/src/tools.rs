//! Installing what the commands need, when it is missing.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::run;

pub(crate) fn output(cmd: &mut Command) -> Option<String> {
    let out = cmd.output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `rustup target add wasm32-unknown-unknown` when it is not installed.
pub fn ensure_wasm_target() -> Result<()> {
    let installed =
        output(Command::new("rustup").args(["target", "list", "--installed"])).unwrap_or_default();
    if installed.lines().any(|l| l.trim() == crate::WASM_TARGET) {
        return Ok(());
    }
    run(Command::new("rustup").args(["target", "add", crate::WASM_TARGET]))
}

/// The `wasm-bindgen` version pinned in Cargo.lock.
pub fn locked_wasm_bindgen_version(root: &Path) -> Result<String> {
    let lock = std::fs::read_to_string(root.join("Cargo.lock")).context("reading Cargo.lock")?;
    let mut lines = lock.lines();
    while let Some(line) = lines.next() {
        if line.trim() == "name = \"wasm-bindgen\""
            && let Some(v) = lines
                .next()
                .and_then(|l| l.trim().strip_prefix("version = \""))
        {
            return Ok(v.trim_end_matches('"').to_owned());
        }
    }
    bail!("Cargo.lock has no wasm-bindgen entry")
}

fn cargo_bin(name: &str) -> PathBuf {
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from(".cargo"));
    home.join("bin").join(name)
}

/// wasm-bindgen-cli at the locked version (`cargo install` when missing or different).
pub fn ensure_wasm_bindgen(root: &Path) -> Result<PathBuf> {
    let version = locked_wasm_bindgen_version(root)?;
    let bin = cargo_bin("wasm-bindgen");
    let have = output(Command::new(&bin).arg("--version")).unwrap_or_default();
    if have.split_whitespace().nth(1) != Some(version.as_str()) {
        // `--locked` fails on some registry mirrors; the exact version pins the CLI itself.
        run(crate::cargo().args([
            "install",
            "wasm-bindgen-cli",
            "--version",
            &version,
            "--force",
        ]))?;
    }
    Ok(bin)
}

/// The wasm-bindgen test runner installed with the CLI.
pub fn bindgen_test_runner(root: &Path) -> Result<PathBuf> {
    ensure_wasm_bindgen(root)?;
    Ok(cargo_bin("wasm-bindgen-test-runner"))
}

/// Debian's chromium and chromium-driver, through apt-get when missing.
pub fn ensure_chromium() -> Result<()> {
    if Path::new("/usr/bin/chromium").exists() && Path::new("/usr/bin/chromedriver").exists() {
        return Ok(());
    }
    let root_user = output(Command::new("id").arg("-u")).is_some_and(|u| u.trim() == "0");
    let apt = |args: &[&str]| {
        let mut cmd = if root_user {
            Command::new("apt-get")
        } else {
            let mut c = Command::new("sudo");
            c.arg("apt-get");
            c
        };
        cmd.args(args).env("DEBIAN_FRONTEND", "noninteractive");
        cmd
    };
    run(&mut apt(&["update"])).context("apt-get update (needs root or sudo)")?;
    run(&mut apt(&[
        "install",
        "-y",
        "--no-install-recommends",
        "chromium",
        "chromium-driver",
    ]))
    .context("installing Debian's chromium and chromium-driver")
}

/// A WebDriver capabilities file for wasm-bindgen-test-runner: headless Chromium with a fresh
/// profile, with or without the software WebGPU adapter.
pub fn webdriver_json(root: &Path, webgpu: bool) -> Result<PathBuf> {
    let dir = crate::target_dir(root).join("webdriver");
    std::fs::create_dir_all(&dir)?;
    let profile = dir.join(format!(
        "profile-{}-{}",
        if webgpu { "webgpu" } else { "cpu" },
        std::process::id()
    ));
    let mut args = vec![
        "--headless=new".to_string(),
        "--no-sandbox".into(),
        "--no-first-run".into(),
        "--disable-background-networking".into(),
        "--disable-component-update".into(),
        "--disable-sync".into(),
        "--disable-quic".into(),
        "--disable-dev-shm-usage".into(),
        format!("--user-data-dir={}", profile.display()),
    ];
    if webgpu {
        args.push("--enable-unsafe-webgpu".into());
    }
    let json = serde_json::json!({
        "goog:chromeOptions": { "binary": "/usr/bin/chromium", "args": args }
    });
    let path = dir.join(if webgpu { "webgpu.json" } else { "cpu.json" });
    std::fs::write(&path, serde_json::to_string_pretty(&json)?)?;
    Ok(path)
}

/// `wasm-opt` from npm's `binaryen` (Debian's is too old: it breaks wasm-bindgen's externref
/// table), installed under `target/npm` on first use.
pub fn wasm_opt(root: &Path) -> Result<PathBuf> {
    let prefix = crate::target_dir(root).join("npm");
    let bin = prefix.join("node_modules").join(".bin").join("wasm-opt");
    if !bin.exists() {
        std::fs::create_dir_all(&prefix)?;
        run(Command::new("npm")
            .args(["install", "--no-audit", "--no-fund", "--prefix"])
            .arg(&prefix)
            .arg("binaryen@132"))
        .context("installing wasm-opt from npm's binaryen")?;
    }
    Ok(bin)
}

/// The ESLint configuration for `www/`: the pages' own modules (not the built `www/pkg`), in a
/// browser or a worker, with the two rules that catch what no test would until a page is opened:
/// a name that is not defined and a name that is never used.
const ESLINT_CONFIG: &str = r#"import globals from 'globals';
export default [{
  files: ['**/*.js'],
  ignores: ['pkg/**'],
  languageOptions: {
    ecmaVersion: 'latest',
    sourceType: 'module',
    globals: { ...globals.browser, ...globals.worker },
  },
  rules: { 'no-undef': 'error', 'no-unused-vars': ['error', { args: 'none' }] },
}];
"#;

/// ESLint over `www/` (see [`ESLINT_CONFIG`]), installed from npm under `target/npm` on first
/// use, with its configuration written beside it.
pub fn eslint(root: &Path) -> Result<()> {
    let prefix = crate::target_dir(root).join("npm");
    let modules = prefix.join("node_modules");
    let bin = modules.join(".bin").join("eslint");
    if !bin.exists() || !modules.join("globals").exists() {
        std::fs::create_dir_all(&prefix)?;
        run(Command::new("npm")
            .args(["install", "--no-audit", "--no-fund", "--prefix"])
            .arg(&prefix)
            .args(["eslint@9.39.5", "globals@17.15.0"]))
        .context("installing ESLint from npm")?;
    }
    let config = prefix.join("eslint.config.mjs");
    std::fs::write(&config, ESLINT_CONFIG)?;
    run(Command::new(&bin)
        .current_dir(root.join("www"))
        .arg("--config")
        .arg(&config)
        .arg("."))
    .context("ESLint found problems in www/ (see above)")
}

/// `cargo xtask fuzz [--seconds N]`: cargo-fuzz (libFuzzer) on the dataset container decoder for
/// a fixed budget, installing the nightly toolchain and cargo-fuzz when missing. Fails if the
/// fuzzer finds a crash (it then leaves the input under fuzz/artifacts/).
pub fn fuzz(root: &Path, rest: &[String]) -> Result<()> {
    let seconds = match rest.iter().position(|a| a == "--seconds") {
        Some(i) => rest
            .get(i + 1)
            .and_then(|v| v.parse::<u64>().ok())
            .context("--seconds takes a whole number")?,
        None => 120,
    };
    let toolchains = output(Command::new("rustup").args(["toolchain", "list"])).unwrap_or_default();
    if !toolchains.lines().any(|l| l.starts_with("nightly")) {
        run(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
        ]))
        .context("cargo-fuzz needs the nightly toolchain")?;
    }
    if output(crate::cargo().args(["fuzz", "--version"])).is_none() {
        run(crate::cargo().args(["install", "cargo-fuzz"]))?;
    }
    let corpus = root.join("fuzz").join("corpus").join("dataset_container");
    run(Command::new("cargo")
        .current_dir(root)
        .args(["+nightly", "fuzz", "run", "dataset_container"])
        .arg(&corpus)
        .args([
            "--",
            &format!("-max_total_time={seconds}"),
            "-max_len=65536",
        ]))
}
