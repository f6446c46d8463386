//! `cargo xtask bench`: build the shipped wasm client, then run `veil-bench` (native and
//! headless-Chromium measurements) which writes docs/BENCHMARKS.md and docs/benchmarks.json.

use std::path::Path;

use anyhow::Result;

use crate::{build_wasm, cargo, run, tools};

pub fn run_bench(root: &Path) -> Result<()> {
    tools::ensure_chromium()?;
    build_wasm(root, true)?;
    run(cargo().args([
        "run",
        "--release",
        "-p",
        "veil-tests",
        "--bin",
        "veil-bench",
    ]))
}

/// `cargo xtask cold-test`: a fresh clone of HEAD with an empty target directory, then
/// `cargo xtask test` in it; the timings land in docs/cold-test.json.
pub fn cold_test(root: &Path) -> Result<()> {
    let dir = std::env::temp_dir().join(format!("veil-cold-{}", std::process::id()));
    run(std::process::Command::new("git")
        .args(["clone", "--quiet"])
        .arg(root)
        .arg(&dir))?;
    run(cargo()
        .current_dir(&dir)
        .args(["xtask", "test"])
        .env_remove("CARGO_TARGET_DIR"))?;
    let times = dir.join("target").join("xtask-test-times.json");
    std::fs::copy(&times, root.join("docs").join("cold-test.json"))?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
