//! The event history of a lab run (a gradient-leakage attack, an RTAS demo): every event is
//! kept, so a late subscriber still sees the whole run, and [`EventLog::stream`] turns it into a
//! `text/event-stream` that ends after the terminal event or when the server stops.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::{Stream, StreamExt};
use serde::Serialize;
use tokio::sync::watch;

use crate::AppError;

/// An event of a run's stream.
pub trait RunEvent: Clone + Serialize + Send + Sync + 'static {
    /// The SSE `event:` name.
    fn name(&self) -> &'static str;
    /// Whether the run ends with this event.
    fn is_terminal(&self) -> bool;
}

/// Every event of one run, in order.
pub struct EventLog<E> {
    events: Mutex<Vec<E>>,
    /// The number of events so far, for subscribers to wait on.
    count: watch::Sender<usize>,
}

impl<E: RunEvent> Default for EventLog<E> {
    fn default() -> Self {
        Self {
            events: Mutex::new(Vec::new()),
            count: watch::channel(0).0,
        }
    }
}

impl<E: RunEvent> EventLog<E> {
    /// Appends `event` and wakes the subscribers.
    pub fn push(&self, event: E) {
        let n = {
            let mut events = self.events.lock().unwrap_or_else(|p| p.into_inner());
            events.push(event);
            events.len()
        };
        self.count.send_replace(n);
    }

    /// The events from number `from` on.
    pub fn events_from(&self, from: usize) -> Vec<E> {
        self.with(|events| events.get(from..).map(<[_]>::to_vec).unwrap_or_default())
    }

    /// Reads the history under its lock.
    pub fn with<R>(&self, f: impl FnOnce(&[E]) -> R) -> R {
        f(&self.events.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Whether the run has ended.
    pub fn finished(&self) -> bool {
        self.with(|events| events.last().is_some_and(E::is_terminal))
    }

    /// Every event from the run's start, then the stream ends after the terminal event, or when
    /// `stopped` resolves (the server stopping).
    pub fn stream(
        self: Arc<Self>,
        stopped: impl Future<Output = ()> + Send + 'static,
    ) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
        let rx = self.count.subscribe();
        let stream = futures_util::stream::unfold(
            (self, rx, 0usize, VecDeque::<E>::new(), false),
            |(log, mut rx, mut pos, mut pending, mut ended)| async move {
                loop {
                    if let Some(ev) = pending.pop_front() {
                        ended |= ev.is_terminal();
                        let event = Event::default()
                            .event(ev.name())
                            .json_data(&ev)
                            .unwrap_or_else(|_| Event::default().event(ev.name()));
                        return Some((Ok(event), (log, rx, pos, pending, ended)));
                    }
                    if ended {
                        return None;
                    }
                    let fresh = log.events_from(pos);
                    if fresh.is_empty() {
                        rx.changed().await.ok()?;
                        continue;
                    }
                    pos += fresh.len();
                    pending.extend(fresh);
                }
            },
        )
        .take_until(stopped);
        Sse::new(stream).keep_alive(KeepAlive::default())
    }
}

/// A lab run the registry keeps.
pub trait LabRun: Send + Sync + 'static {
    /// Its id.
    fn id(&self) -> &str;
    /// Whether it has ended.
    fn finished(&self) -> bool;
    /// Asks it to stop at its next step.
    fn cancel(&self);
}

/// One lab run: its id, what was asked, the flag its work polls to stop, and its events.
pub struct Run<Q, E> {
    /// `prefix-` and 16 hex digits.
    pub id: String,
    /// The request that started it.
    pub request: Q,
    /// Set to ask the work to stop at its next step.
    pub cancel: Arc<AtomicBool>,
    /// Every event so far.
    pub log: Arc<EventLog<E>>,
}

impl<Q, E: RunEvent> Run<Q, E> {
    /// A new run of `request` with a fresh id `prefix-…`.
    pub fn new(prefix: &str, request: Q) -> Result<Self, AppError> {
        Ok(Self {
            id: new_id(prefix)?,
            request,
            cancel: Arc::default(),
            log: Arc::default(),
        })
    }

    /// Appends `event` to its log.
    pub fn push(&self, event: E) {
        self.log.push(event);
    }

    /// Whether it was asked to stop.
    pub fn cancelled(&self) -> bool {
        self.cancel.load(Ordering::SeqCst)
    }
}

impl<Q: Send + Sync + 'static, E: RunEvent> LabRun for Run<Q, E> {
    fn id(&self) -> &str {
        &self.id
    }
    fn finished(&self) -> bool {
        self.log.finished()
    }
    fn cancel(&self) {
        self.cancel.store(true, Ordering::SeqCst);
    }
}

/// A reserved place among the runs allowed at once; released when dropped.
pub struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A lab's running and recent runs: at most `max` run at once (503 past it), the last `keep`
/// finished ones stay readable, and a stop signal ends every stream when the server stops.
pub struct Runs<R> {
    runs: Mutex<VecDeque<Arc<R>>>,
    running: Arc<AtomicUsize>,
    max: usize,
    keep: usize,
    /// What a run is, for messages ("attacks", "RTAS runs").
    what: &'static str,
    stop: watch::Sender<bool>,
}

impl<R: LabRun> Runs<R> {
    /// An empty registry.
    pub fn new(max: usize, keep: usize, what: &'static str) -> Self {
        Self {
            runs: Mutex::new(VecDeque::new()),
            running: Arc::new(AtomicUsize::new(0)),
            max,
            keep,
            what,
            stop: watch::channel(false).0,
        }
    }

    /// Runs in progress.
    pub fn running(&self) -> usize {
        self.running.load(Ordering::SeqCst)
    }

    /// Reserves a place for a new run: 503 when the server is stopping or `max` runs are going.
    pub fn reserve(&self) -> Result<Slot, AppError> {
        if *self.stop.borrow() {
            return Err(AppError::Unavailable("the server is stopping".into()));
        }
        // Compare-and-swap, so two requests cannot both take the last place.
        self.running
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < self.max).then_some(n + 1)
            })
            .map_err(|_| {
                AppError::Unavailable(format!(
                    "{} {} are running; try again when one ends",
                    self.max, self.what
                ))
            })?;
        Ok(Slot(self.running.clone()))
    }

    /// Keeps `run`, dropping the oldest finished runs past `keep`.
    pub fn insert(&self, run: Arc<R>) {
        let mut runs = self.runs.lock().unwrap_or_else(|p| p.into_inner());
        while runs.len() >= self.keep {
            match runs.iter().position(|r| r.finished()) {
                Some(i) => {
                    runs.remove(i);
                }
                None => break,
            }
        }
        runs.push_back(run);
    }

    /// The run `id`, or 404.
    pub fn find(&self, id: &str) -> Result<Arc<R>, AppError> {
        self.runs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .find(|r| r.id() == id)
            .cloned()
            .ok_or_else(|| AppError::NotFound(format!("run {id:?}")))
    }

    /// Cancels every run and ends every event stream.
    pub fn begin_shutdown(&self) {
        self.stop.send_replace(true);
        for run in self.runs.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            run.cancel();
        }
    }

    /// Resolves when the server starts stopping.
    pub fn stopped(&self) -> impl Future<Output = ()> + Send + use<R> {
        let mut rx = self.stop.subscribe();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    }

    /// Runs `work` on its own thread named `name`, holding `slot` until it returns. A panic is
    /// logged and reported through `on_panic` (which should end the run's stream).
    pub fn spawn(
        &self,
        name: String,
        slot: Slot,
        work: impl FnOnce() + Send + 'static,
        on_panic: impl FnOnce() + Send + 'static,
    ) -> Result<(), AppError> {
        std::thread::Builder::new()
            .name(name.clone())
            .spawn(move || {
                let _slot = slot;
                if std::panic::catch_unwind(std::panic::AssertUnwindSafe(work)).is_err() {
                    tracing::error!(run = %name, "a lab run panicked");
                    on_panic();
                }
            })
            .map(drop)
            .map_err(|e| AppError::Internal(e.into()))
    }
}

/// A fresh run id: `prefix`, a dash and 16 hex digits.
pub fn new_id(prefix: &str) -> Result<String, AppError> {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes)
        .map_err(|e| AppError::Internal(anyhow::anyhow!("no randomness: {e}")))?;
    Ok(format!("{prefix}-{}", hex::encode(bytes)))
}
