//! `cargo xtask bench`: build the shipped wasm client, then run `veil-bench` (native and
//! headless-Chromium measurements) which writes docs/BENCHMARKS.md and docs/benchmarks.json.

use std::path::Path;

use anyhow::Result;

use crate::{build_wasm, cargo, run, tools};

/// `cargo xtask bench [--peers]`. With `--peers`, also the references a user would pick
/// instead, measured in the same run: numpy and PyTorch (CPU) from PyPI, in a virtual
/// environment made under `target/bench-venv` (never needed by the tests; PyPI's Linux torch
/// wheel brings its CUDA libraries, several GB, which the CPU reference does not use).
pub fn run_bench(root: &Path, args: &[String]) -> Result<()> {
    let peers = args.iter().any(|a| a == "--peers");
    tools::ensure_chromium()?;
    build_wasm(root, true)?;
    // The load-and-faults run starts `veil serve` as a process (to SIGKILL it).
    run(cargo().args(["build", "--release", "-p", "veil-cli"]))?;
    let mut cmd = cargo();
    cmd.args([
        "run",
        "--release",
        "-p",
        "veil-tests",
        "--bin",
        "veil-bench",
    ]);
    if peers {
        cmd.env("VEIL_BENCH_PYTHON", bench_venv(root)?);
    }
    // The rest (`--native-only`, `--render`, `--only a,b`) goes to veil-bench.
    cmd.arg("--").args(args.iter().filter(|a| *a != "--peers"));
    run(&mut cmd)
}

/// The Python of `target/bench-venv`, made (with numpy) if missing.
fn bench_venv(root: &Path) -> Result<std::path::PathBuf> {
    let venv = root.join("target").join("bench-venv");
    let python = venv.join("bin").join("python");
    if !python.exists() {
        run(std::process::Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv))?;
    }
    for package in ["numpy", "torch"] {
        let has = std::process::Command::new(&python)
            .args(["-c", &format!("import {package}")])
            .status()
            .is_ok_and(|s| s.success());
        if !has {
            eprintln!(
                "bench: installing {package} from PyPI into {}",
                venv.display()
            );
            run(std::process::Command::new(&python)
                .args(["-m", "pip", "install", "--quiet", package]))?;
        }
    }
    Ok(python)
}

/// `cargo xtask cold-test`: a fresh clone of HEAD with an empty target directory, then
/// `cargo xtask test` in it; the timings land in docs/cold-test.json, with the commit measured
/// and the run before it (as `previous`), so BENCHMARKS.md shows both.
pub fn cold_test(root: &Path) -> Result<()> {
    let dir = std::env::temp_dir().join(format!("veil-cold-{}", std::process::id()));
    run(std::process::Command::new("git")
        .args(["clone", "--quiet"])
        .arg(root)
        .arg(&dir))?;
    let commit = tools::output(std::process::Command::new("git").current_dir(&dir).args([
        "rev-parse",
        "--short",
        "HEAD",
    ]))
    .unwrap_or_default();
    run(cargo()
        .current_dir(&dir)
        .args(["xtask", "test"])
        .env_remove("CARGO_TARGET_DIR"))?;
    let times = dir.join("target").join("xtask-test-times.json");
    let mut record: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&times)?)?;
    let kept = root.join("docs").join("cold-test.json");
    let mut previous: serde_json::Value = std::fs::read_to_string(&kept)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or(serde_json::Value::Null);
    if let Some(p) = previous.as_object_mut() {
        p.remove("previous");
    }
    record["commit"] = commit.trim().into();
    record["previous"] = previous;
    std::fs::write(&kept, serde_json::to_string_pretty(&record)?)?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
