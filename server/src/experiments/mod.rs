//! `veil experiment ...`: reproductions of the papers' experiments, writing a markdown report,
//! figures and a `results.json` with stable keys.

pub mod flow;

use indicatif::{ProgressBar, ProgressStyle};

/// A progress bar in Veil's style.
pub fn bar(len: u64, prefix: &str) -> ProgressBar {
    let b = ProgressBar::new(len).with_style(
        ProgressStyle::with_template("{prefix:>28} {bar:30} {pos}/{len} {msg} [{elapsed}]")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    b.set_prefix(prefix.to_owned());
    b
}
