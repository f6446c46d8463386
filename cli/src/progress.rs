//! Progress of long work, on a terminal and off it. On a terminal it is an indicatif bar; when
//! standard error is not a terminal (a CI log, `nohup`, a pipe) indicatif draws nothing, so
//! [`Progress`] prints plain lines instead: one per epoch where the work has epochs, otherwise one
//! every tenth of the work or every 30 s, each with the time spent and an estimate of the time
//! left.

use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

/// A progress report: a bar on a terminal, lines elsewhere.
pub struct Progress {
    bar: ProgressBar,
    plain: Option<Mutex<Plain>>,
}

struct Plain {
    prefix: String,
    len: u64,
    pos: u64,
    message: String,
    started: Instant,
    last_line: Instant,
    /// Steps per epoch and epochs already done before this run (a resumed run).
    epochs: Option<(u64, u64)>,
    /// What is counted (`steps` unless set with [`Progress::unit`]).
    unit: &'static str,
}

impl Progress {
    /// Progress over `len` steps, labelled `prefix`.
    pub fn new(len: u64, prefix: &str) -> Self {
        Self::with_target(len, prefix, std::io::stderr().is_terminal())
    }

    fn with_target(len: u64, prefix: &str, terminal: bool) -> Self {
        let bar = if terminal {
            ProgressBar::new(len)
        } else {
            ProgressBar::hidden()
        };
        bar.set_style(
            ProgressStyle::with_template("{prefix:>28} {bar:30} {pos}/{len} {msg} [{elapsed}]")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar.set_prefix(prefix.to_owned());
        let now = Instant::now();
        let plain = (!terminal).then(|| {
            Mutex::new(Plain {
                prefix: prefix.to_owned(),
                len,
                pos: 0,
                message: String::new(),
                started: now,
                last_line: now,
                epochs: None,
                unit: "steps",
            })
        });
        Self { bar, plain }
    }

    /// Off a terminal, print a line at the end of every epoch of `steps_per_epoch` steps;
    /// `epochs_done` epochs were done before this run started.
    pub fn per_epoch(self, steps_per_epoch: u64, epochs_done: u64) -> Self {
        if let Some(p) = &self.plain {
            lock(p).epochs = Some((steps_per_epoch.max(1), epochs_done));
        }
        self
    }

    /// Name what is counted in the plain lines (`images`, `steps`, …).
    pub fn unit(self, unit: &'static str) -> Self {
        if let Some(p) = &self.plain {
            lock(p).unit = unit;
        }
        self
    }

    /// `n` more steps done.
    pub fn inc(&self, n: u64) {
        self.bar.inc(n);
        if let Some(p) = &self.plain {
            let mut p = lock(p);
            let before = p.pos;
            p.pos += n;
            if let Some(line) = p.due(before) {
                eprintln!("{line}");
            }
        }
    }

    /// What the work is doing now (shown beside the bar, and in the next line off a terminal).
    pub fn set_message(&self, message: impl Into<String>) {
        let message = message.into();
        if let Some(p) = &self.plain {
            lock(p).message.clone_from(&message);
        }
        self.bar.set_message(message);
    }

    /// The work is done.
    pub fn finish(&self) {
        self.bar.finish();
        if let Some(p) = &self.plain {
            let p = lock(p);
            eprintln!(
                "{}: done, {} {} in {}",
                p.prefix,
                p.pos,
                p.unit,
                human(p.started.elapsed())
            );
        }
    }
}

fn lock(p: &Mutex<Plain>) -> std::sync::MutexGuard<'_, Plain> {
    p.lock().unwrap_or_else(|e| e.into_inner())
}

impl Plain {
    /// The line to print after the position moved from `before` to `self.pos`, if one is due.
    fn due(&mut self, before: u64) -> Option<String> {
        let now = Instant::now();
        let crossed = match self.epochs {
            Some((per, _)) => before / per != self.pos / per,
            None => {
                let tenth = (self.len / 10).max(1);
                before / tenth != self.pos / tenth
                    || now.duration_since(self.last_line) >= Duration::from_secs(30)
            }
        };
        if !crossed || self.pos == 0 {
            return None;
        }
        self.last_line = now;
        let elapsed = self.started.elapsed();
        let left = if self.pos < self.len {
            let per_step = elapsed.as_secs_f64() / self.pos as f64;
            format!(
                ", about {} left",
                human(Duration::from_secs_f64(
                    per_step * (self.len - self.pos) as f64
                ))
            )
        } else {
            String::new()
        };
        let what = match self.epochs {
            Some((per, done)) => format!(
                "epoch {}/{}",
                done + self.pos / per,
                done + self.len.div_ceil(per)
            ),
            None => format!("{}/{} {}", self.pos, self.len, self.unit),
        };
        let message = if self.message.is_empty() {
            String::new()
        } else {
            format!(", {}", self.message)
        };
        Some(format!(
            "{}: {what}{message}, {} so far{left}",
            self.prefix,
            human(elapsed)
        ))
    }
}

/// `1 h 02 min`, `3 min 05 s`, `12 s`.
fn human(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 3600 {
        format!("{} h {:02} min", s / 3600, s % 3600 / 60)
    } else if s >= 60 {
        format!("{} min {:02} s", s / 60, s % 60)
    } else {
        format!("{:.1} s", d.as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn off_a_terminal_a_line_is_due_at_each_epoch_with_the_time_left() {
        let p = Progress::with_target(40, "flow class-3", false).per_epoch(10, 2);
        let plain = p.plain.as_ref().unwrap();
        let mut lines = Vec::new();
        for step in 0..40u64 {
            let mut g = lock(plain);
            let before = g.pos;
            g.pos += 1;
            g.message = format!("step {step}");
            lines.extend(g.due(before));
        }
        assert_eq!(lines.len(), 4, "{lines:?}");
        assert!(
            lines[0].starts_with("flow class-3: epoch 3/6, step 9,"),
            "{}",
            lines[0]
        );
        assert!(lines[0].contains("left"), "{}", lines[0]);
        assert!(
            lines[3].contains("epoch 6/6") && !lines[3].contains("left"),
            "{}",
            lines[3]
        );
    }

    #[test]
    fn without_epochs_a_line_is_due_every_tenth() {
        let p = Progress::with_target(100, "classify", false);
        let plain = p.plain.as_ref().unwrap();
        let due = (0..100u64)
            .filter(|_| {
                let mut g = lock(plain);
                let before = g.pos;
                g.pos += 1;
                g.due(before).is_some()
            })
            .count();
        assert_eq!(due, 10);
        let images = Progress::with_target(50, "encrypt", false).unit("images");
        let mut g = lock(images.plain.as_ref().unwrap());
        g.pos = 5;
        let line = g.due(4).expect("a line at the first tenth");
        assert!(line.contains("5/50 images"), "{line}");
        drop(g);
        assert!(Progress::with_target(5, "x", true).plain.is_none());
        assert_eq!(human(Duration::from_secs(3725)), "1 h 02 min");
        assert_eq!(human(Duration::from_secs(185)), "3 min 05 s");
    }
}
