//! Quotas per owner: stored bytes, datasets, active (queued or running) jobs, classified images
//! a minute and attack (lab) runs a minute. Going past one answers 429 with `Retry-After`.
//!
//! The stored-object quotas are counted from the store when a request would add to them, under
//! one admission lock, so two uploads of the same owner cannot both slip under the limit. The
//! rates are sliding windows kept in memory: they restart empty when the server restarts.
//!
//! Callers without a token share one "anonymous" window (for the public models and the labs):
//! a page that sends its owner token gets its own. The operator has no quota.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::owners::Caller;
use crate::AppError;

/// The limits, the same for every owner (`veil serve --quota-…`).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Quotas {
    /// Bytes of datasets and trained models an owner may keep.
    pub stored_bytes: u64,
    /// Datasets an owner may keep.
    pub datasets: usize,
    /// Jobs an owner may have queued or running at once.
    pub active_jobs: usize,
    /// Images an owner may have classified in any 60 s.
    pub classifications_per_minute: u32,
    /// Leakage attacks and RTAS lab runs an owner may start in any 60 s.
    pub attacks_per_minute: u32,
}

impl Default for Quotas {
    /// 2 GiB, 50 datasets, 2 active jobs, 6,000 images and 10 attacks a minute.
    fn default() -> Self {
        Self {
            stored_bytes: 2 << 30,
            datasets: 50,
            active_jobs: 2,
            classifications_per_minute: 6000,
            attacks_per_minute: 10,
        }
    }
}

/// How long a client is told to wait after a quota on stored objects (which waiting alone does
/// not free: a job must finish, or the owner must delete something).
const STORED_RETRY: Duration = Duration::from_secs(60);

/// A 429 naming the quota, with when to retry.
pub fn exceeded(message: String, retry_after: Duration) -> AppError {
    AppError::TooManyRequests {
        message,
        retry_after_s: retry_after.as_secs_f64().ceil().max(1.0) as u64,
    }
}

/// What an owner holds now, against [`Quotas`].
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Usage {
    /// Bytes of its datasets and trained models.
    pub stored_bytes: u64,
    /// Its datasets.
    pub datasets: usize,
    /// Its jobs queued or running.
    pub active_jobs: usize,
    /// Images classified in the last 60 s.
    pub classifications_last_minute: u32,
    /// Attacks and lab runs started in the last 60 s.
    pub attacks_last_minute: u32,
}

impl Quotas {
    /// 429 unless `usage` leaves room for one more dataset of `bytes`.
    pub fn admit_dataset(&self, usage: &Usage, bytes: u64) -> Result<(), AppError> {
        if usage.datasets >= self.datasets {
            return Err(exceeded(
                format!(
                    "this owner keeps {} dataset{} and its quota is {}: delete one first",
                    usage.datasets,
                    if usage.datasets == 1 { "" } else { "s" },
                    self.datasets
                ),
                STORED_RETRY,
            ));
        }
        self.admit_bytes(usage, bytes)
    }

    /// 429 unless `usage` leaves room for `bytes` more.
    pub fn admit_bytes(&self, usage: &Usage, bytes: u64) -> Result<(), AppError> {
        if usage.stored_bytes.saturating_add(bytes) > self.stored_bytes {
            return Err(exceeded(
                format!(
                    "this owner stores {} of its {} MiB{}: delete a dataset or model first",
                    mib(usage.stored_bytes),
                    mib(self.stored_bytes),
                    if bytes > 0 {
                        format!(", and this upload needs {} MiB more", mib(bytes))
                    } else {
                        String::new()
                    }
                ),
                STORED_RETRY,
            ));
        }
        Ok(())
    }

    /// 429 unless `usage` leaves room for one more queued job (and its model).
    pub fn admit_job(&self, usage: &Usage) -> Result<(), AppError> {
        if usage.active_jobs >= self.active_jobs {
            return Err(exceeded(
                format!(
                    "this owner's jobs queued or running ({}) are the most this server allows: \
                     wait for one to finish or cancel it",
                    usage.active_jobs
                ),
                STORED_RETRY,
            ));
        }
        self.admit_bytes(usage, 0)
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.1}", bytes as f64 / (1u64 << 20) as f64)
}

/// Sliding-window counters per caller. Written here rather than taken from `governor`: its GCRA
/// limiter answers yes or no, while `GET /api/me` reports how much of each window is used.
#[derive(Debug)]
pub struct Rates {
    classify: Window,
    attacks: Window,
}

impl Rates {
    /// Windows for `quotas`' rates.
    pub fn new(quotas: &Quotas) -> Self {
        Self {
            classify: Window::new(quotas.classifications_per_minute, "images classified"),
            attacks: Window::new(quotas.attacks_per_minute, "attacks started"),
        }
    }

    /// Counts `images` classifications for `caller`, or 429 if that passes its quota (413 if
    /// one batch is larger than the whole quota).
    pub fn classify(&self, caller: &Caller, images: u32) -> Result<(), AppError> {
        self.classify.take(caller, images, Instant::now())
    }

    /// Counts one attack or lab run for `caller`, or 429.
    pub fn attack(&self, caller: &Caller) -> Result<(), AppError> {
        self.attacks.take(caller, 1, Instant::now())
    }

    /// Images and attacks `caller` used in the last minute.
    pub fn used(&self, caller: &Caller) -> (u32, u32) {
        let now = Instant::now();
        (
            self.classify.used(caller, now),
            self.attacks.used(caller, now),
        )
    }
}

const MINUTE: Duration = Duration::from_secs(60);

/// One rate: for each caller, when it used how much, over the last minute.
#[derive(Debug)]
struct Window {
    limit: u32,
    what: &'static str,
    used: Mutex<HashMap<String, VecDeque<(Instant, u32)>>>,
}

impl Window {
    fn new(limit: u32, what: &'static str) -> Self {
        Self {
            limit,
            what,
            used: Mutex::default(),
        }
    }

    fn key(caller: &Caller) -> Option<&str> {
        match caller {
            Caller::Operator => None,
            Caller::Owner(hash) => Some(hash),
            Caller::Anonymous => Some("anonymous"),
        }
    }

    fn take(&self, caller: &Caller, n: u32, now: Instant) -> Result<(), AppError> {
        let Some(key) = Self::key(caller) else {
            return Ok(());
        };
        if n > self.limit {
            return Err(AppError::PayloadTooLarge(format!(
                "{n} {} in one request is more than this server's quota of {} a minute: send \
                 smaller batches",
                self.what, self.limit
            )));
        }
        let mut all = self.used.lock().unwrap_or_else(|e| e.into_inner());
        // Forget callers whose window has emptied, so the map does not grow with every visitor.
        if all.len() > 4096 {
            all.retain(|_, q| {
                q.back()
                    .is_some_and(|(t, _)| now.duration_since(*t) < MINUTE)
            });
        }
        let q = all.entry(key.to_owned()).or_default();
        while q
            .front()
            .is_some_and(|(t, _)| now.duration_since(*t) >= MINUTE)
        {
            q.pop_front();
        }
        let used: u32 = q.iter().map(|(_, k)| k).sum();
        if used + n > self.limit {
            // Wait until enough of the oldest entries have left the window.
            let mut freed = 0;
            let mut until = now;
            for (t, k) in q.iter() {
                freed += k;
                until = *t + MINUTE;
                if used - freed + n <= self.limit {
                    break;
                }
            }
            let who = if key == "anonymous" {
                "callers without an owner token share"
            } else {
                "this owner has"
            };
            return Err(exceeded(
                format!(
                    "{who} {used} of {} {} a minute: retry in {} s",
                    self.limit,
                    self.what,
                    until.duration_since(now).as_secs() + 1
                ),
                until.duration_since(now),
            ));
        }
        q.push_back((now, n));
        Ok(())
    }

    fn used(&self, caller: &Caller, now: Instant) -> u32 {
        let Some(key) = Self::key(caller) else {
            return 0;
        };
        let all = self.used.lock().unwrap_or_else(|e| e.into_inner());
        all.get(key).map_or(0, |q| {
            q.iter()
                .filter(|(t, _)| now.duration_since(*t) < MINUTE)
                .map(|(_, k)| k)
                .sum()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner(s: &str) -> Caller {
        Caller::Owner(s.into())
    }

    fn retry_after(e: AppError) -> u64 {
        match e {
            AppError::TooManyRequests { retry_after_s, .. } => retry_after_s,
            other => panic!("expected 429, got {other:?}"),
        }
    }

    #[test]
    fn a_window_admits_its_limit_then_says_when_room_returns() {
        let w = Window::new(10, "images classified");
        let t0 = Instant::now();
        w.take(&owner("a"), 6, t0).unwrap();
        w.take(&owner("a"), 4, t0 + Duration::from_secs(20))
            .unwrap();
        // Full: 1 more needs the first entry (6 images at t0) to leave, at t0 + 60 s.
        let e = w
            .take(&owner("a"), 1, t0 + Duration::from_secs(30))
            .unwrap_err();
        assert_eq!(retry_after(e), 30);
        // 7 more need both entries gone: t0 + 80 s.
        let e = w
            .take(&owner("a"), 7, t0 + Duration::from_secs(30))
            .unwrap_err();
        assert_eq!(retry_after(e), 50);
        // Another owner has its own window; the operator has none.
        w.take(&owner("b"), 10, t0 + Duration::from_secs(30))
            .unwrap();
        w.take(&Caller::Operator, 10, t0).unwrap();
        assert_eq!(w.used(&owner("a"), t0 + Duration::from_secs(30)), 10);
        // After a minute the first entry has left.
        w.take(&owner("a"), 6, t0 + Duration::from_secs(60))
            .unwrap();
        assert_eq!(w.used(&owner("a"), t0 + Duration::from_secs(61)), 10);
    }

    #[test]
    fn a_batch_larger_than_the_quota_is_413_not_429() {
        let w = Window::new(10, "images classified");
        let e = w.take(&owner("a"), 11, Instant::now()).unwrap_err();
        assert!(matches!(e, AppError::PayloadTooLarge(_)), "{e:?}");
    }

    #[test]
    fn stored_quotas_name_what_is_full() {
        let q = Quotas {
            stored_bytes: 10 << 20,
            datasets: 2,
            active_jobs: 1,
            ..Quotas::default()
        };
        let mut u = Usage {
            stored_bytes: 9 << 20,
            datasets: 1,
            active_jobs: 0,
            ..Usage::default()
        };
        q.admit_dataset(&u, 1 << 20).unwrap();
        let e = q.admit_dataset(&u, (1 << 20) + 1).unwrap_err();
        assert!(e.to_string().contains("9.0 of its 10.0 MiB"), "{e}");
        u.datasets = 2;
        assert!(
            q.admit_dataset(&u, 0)
                .unwrap_err()
                .to_string()
                .contains("2 datasets")
        );
        q.admit_job(&u).unwrap();
        u.active_jobs = 1;
        assert_eq!(retry_after(q.admit_job(&u).unwrap_err()), 60);
    }
}
