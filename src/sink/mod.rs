//! Sinks: where events go. One thread owns every writer (JSON lines, console
//! transcript, an in-memory collector for tests and the lab) and is fed by a
//! bounded queue, so that slow disks or terminals never reach the relay (the
//! relay never sends here; the sessions' analyses do, and may wait).
//!
//! The writer thread flushes whenever the queue runs empty, so a reader of the
//! JSON file sees each event within milliseconds, and at the end everything is
//! flushed before [`SinkHandle::finish`] returns.
//!
//! A writer that stops (a full disk that blocks, a `--log -` pipe nobody
//! reads) must not stop mail either: a session waits at most [`STALL`] for the
//! queue, then the sink is marked stalled and events are dropped (counted, and
//! reported on stderr through `tracing`) until the writer drains the queue
//! again. Sessions therefore always finish and release their slot.
//!
//! A JSON log *file* ([`Sinks::json_file`], what `--log FILE` opens) also
//! reopens when a `run.reopen` event passes (SIGHUP), rotates by size, and
//! survives a full disk: see [`json::JsonFile`].

pub mod console;
pub mod json;

use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use tokio::sync::mpsc;

use crate::event::Event;

/// How long the writer thread lets events gather after draining the queue.
pub const COALESCE: std::time::Duration = std::time::Duration::from_millis(5);

/// Batches of events queued to the writer thread before the analyses wait.
pub const QUEUE: usize = 2048;

/// How long a session's analysis waits for room in the queue before the sink is
/// considered stalled and events are dropped instead.
pub const STALL: std::time::Duration = std::time::Duration::from_secs(2);

/// How long shutdown waits for the writer thread to write its last events.
pub const FINISH_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Shared between senders and the writer thread.
#[derive(Debug, Default)]
struct SinkState {
    /// The writer did not take events for [`STALL`]: drop instead of waiting.
    stalled: AtomicBool,
    /// Events dropped since the last report.
    dropped: AtomicU64,
}

/// A cheap, clonable handle to send events to every sink. Events travel in
/// batches (a session's analysis sends what one chunk of traffic produced), so the
/// writer thread is woken once per batch, not once per event.
#[derive(Debug, Clone)]
pub struct EventSink {
    tx: mpsc::Sender<Vec<Event>>,
    state: Arc<SinkState>,
}

impl EventSink {
    /// Queues several events, in order; waits at most [`STALL`] when the
    /// writer is behind, and drops them (counted) while it is stalled.
    ///
    /// The common case (room in the queue) is done before the returned
    /// future is first polled, and the waiting path (with its timer) lives
    /// on the heap, only while it waits: the future is a pointer, so every
    /// session's analysis that awaits it stays small.
    pub fn send_batch(&self, evs: Vec<Event>) -> impl std::future::Future<Output = ()> + Send + '_ {
        let waiting = if evs.is_empty() {
            None
        } else {
            match self.tx.try_send(evs) {
                Ok(()) | Err(mpsc::error::TrySendError::Closed(_)) => None,
                Err(mpsc::error::TrySendError::Full(evs)) => Some(Box::pin(self.send_waiting(evs))),
            }
        };
        async move {
            if let Some(w) = waiting {
                w.await;
            }
        }
    }

    /// [`send_batch`](Self::send_batch) when the queue is full.
    async fn send_waiting(&self, evs: Vec<Event>) {
        let n = evs.len() as u64;
        if self.state.stalled.load(Ordering::Acquire) {
            self.state.dropped.fetch_add(n, Ordering::Relaxed);
            return;
        }
        if tokio::time::timeout(STALL, self.tx.send(evs))
            .await
            .is_err()
        {
            self.state.dropped.fetch_add(n, Ordering::Relaxed);
            if !self.state.stalled.swap(true, Ordering::AcqRel) {
                tracing::error!(
                    "the log writer has not taken events for {}s (blocked disk or pipe?): dropping events until it catches up; mail is not affected",
                    STALL.as_secs()
                );
            }
        }
    }
}

/// Events collected in memory (tests, the lab demo).
pub type Collector = Arc<Mutex<Vec<Event>>>;

/// The writers to attach.
#[derive(Default)]
pub struct Sinks {
    /// JSON lines (one object per line) to any writer (stdout, tests).
    pub json: Option<Box<dyn Write + Send>>,
    /// JSON lines to a file that reopens at `run.reopen`, rotates and
    /// recovers from a full disk.
    pub json_file: Option<json::JsonFile>,
    /// The console transcript.
    pub console: Option<console::Console>,
    /// An in-memory collector.
    pub memory: Option<Collector>,
}

/// Owns the writer thread.
pub struct SinkHandle {
    thread: Option<JoinHandle<()>>,
}

impl SinkHandle {
    /// Waits until every [`EventSink`] clone is dropped and everything is written and flushed.
    pub fn finish(mut self) {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn is_reopen(ev: &Event) -> bool {
    matches!(
        ev.kind,
        crate::event::EventKind::Session(crate::event::SessionEvent::RunReopen { .. })
    )
}

/// Starts the writer thread.
pub fn start(sinks: Sinks) -> (EventSink, SinkHandle) {
    let (tx, mut rx) = mpsc::channel::<Vec<Event>>(QUEUE);
    let state = Arc::new(SinkState::default());
    let shared = state.clone();
    let thread = std::thread::Builder::new()
        .name("smtptap-sinks".into())
        .spawn(move || {
            let Sinks {
                mut json,
                mut json_file,
                mut console,
                memory,
            } = sinks;
            let mut json_failed = false;
            while let Some(mut batch) = rx.blocking_recv() {
                while batch.len() < 256 {
                    match rx.try_recv() {
                        Ok(more) => batch.extend(more),
                        Err(_) => break,
                    }
                }
                for ev in &batch {
                    if let (Some(w), false) = (json.as_mut(), json_failed) {
                        if let Err(e) = json::write(w.as_mut(), ev) {
                            tracing::error!(error = %e, "cannot write the JSON log; further events are not written there");
                            json_failed = true;
                        }
                    }
                    if let Some(f) = json_file.as_mut() {
                        if is_reopen(ev) {
                            f.reopen(ev);
                        } else {
                            f.push(ev);
                        }
                    }
                    if let Some(c) = console.as_mut() {
                        c.write(ev);
                    }
                }
                if let Some(m) = &memory {
                    if let Ok(mut v) = m.lock() {
                        v.extend(batch);
                    }
                }
                if rx.is_empty() {
                    if let (Some(w), false) = (json.as_mut(), json_failed) {
                        if let Err(e) = w.flush() {
                            tracing::error!(error = %e, "cannot flush the JSON log");
                            json_failed = true;
                        }
                    }
                    if let Some(f) = json_file.as_mut() {
                        f.flush();
                    }
                    if let Some(c) = console.as_mut() {
                        c.flush();
                    }
                    if shared.stalled.swap(false, Ordering::AcqRel) {
                        let n = shared.dropped.swap(0, Ordering::Relaxed);
                        tracing::error!(
                            dropped = n,
                            "the log writer caught up; {n} events were dropped while it was stalled"
                        );
                    }
                    // Let events gather for a moment: under load the analysis
                    // tasks then hand over without waking this thread each
                    // time (no one is parked on the queue while it sleeps).
                    // A fact reaches the log at most COALESCE late.
                    std::thread::sleep(COALESCE);
                }
            }
            if let Some(w) = json.as_mut() {
                let _ = w.flush();
            }
            if let Some(f) = json_file.as_mut() {
                f.flush();
                let lost = f.lost();
                if lost > 0 {
                    tracing::error!(
                        path = %f.path().display(),
                        "the JSON log could not be written at the end: {lost} events were lost"
                    );
                }
            }
            if let Some(c) = console.as_mut() {
                c.flush();
            }
        })
        .ok();
    (EventSink { tx, state }, SinkHandle { thread })
}
