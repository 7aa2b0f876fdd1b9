//! The JSON lines sink: one event, one line, as documented in docs/log-schema.md.
//!
//! [`JsonFile`] is the log file of a run. It owns its path, so it can:
//!
//! * **reopen** at SIGHUP (logrotate renamed the file: the next line goes to a
//!   fresh file at the configured path, mode 0600), with `run.reopen` first;
//! * **rotate** by size (`log.max_bytes`): `log` → `log.1` → … → `log.<keep>`,
//!   the oldest dropped, the new file starting with `run.log_rotated`;
//! * **survive a full disk**: a failed write stops writing (stderr says so),
//!   a line left half-written is cut off again (the file stays valid JSON
//!   lines), later events are counted, not written; every so often (back-off
//!   from 1 s to [`RETRY_MAX`], at the next event or flush) it tries again,
//!   writes `run.log_recovered` with the number of events lost, and goes on.
//!
//! It runs on the sink thread only (blocking file I/O); it must not be used
//! from async code.

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::event::{Event, RunId, SessionEvent, Timestamp};

/// Writes one event as a JSON line.
pub fn write(w: &mut dyn Write, ev: &Event) -> io::Result<()> {
    let mut line = serde_json::to_vec(ev).map_err(io::Error::other)?;
    line.push(b'\n');
    w.write_all(&line)
}

/// Opens a JSON lines file for appending (created if missing, readable by
/// its owner only: the log names hosts, addresses and mail envelopes).
pub fn open(path: &std::path::Path) -> io::Result<Box<dyn Write + Send>> {
    let f = open_file(path)?;
    Ok(Box::new(io::BufWriter::with_capacity(64 * 1024, f)))
}

fn open_file(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))
}

/// Bytes gathered before they are written (also written at every flush).
const BUFFER: usize = 64 * 1024;
/// First wait before writing is tried again after a failure.
pub const RETRY_MIN: Duration = Duration::from_secs(1);
/// Longest wait between two tries.
pub const RETRY_MAX: Duration = Duration::from_secs(30);

/// Why the file is not being written.
#[derive(Debug)]
struct Failure {
    since: Timestamp,
    error: &'static str,
    detail: String,
    lost: u64,
    next_try: Instant,
    backoff: Duration,
    /// A line may have been cut short in the file.
    partial: bool,
}

/// A JSON lines log file that reopens, rotates and recovers (module doc).
#[derive(Debug)]
pub struct JsonFile {
    path: PathBuf,
    max_bytes: Option<u64>,
    keep: usize,
    file: Option<File>,
    /// Bytes in the file (as far as this process knows).
    size: u64,
    buf: Vec<u8>,
    /// Where each buffered line ends in `buf`.
    ends: Vec<usize>,
    failure: Option<Failure>,
    /// The run of the last event written (for the lines this writer adds).
    run: Option<RunId>,
    /// The line being serialised (reused).
    line: Vec<u8>,
}

impl JsonFile {
    /// Opens `path` for appending (0600). `max_bytes`: rotate past this
    /// size; `keep`: rotated files kept.
    pub fn open(path: &Path, max_bytes: Option<u64>, keep: usize) -> io::Result<JsonFile> {
        let file = open_file(path)?;
        let size = file.metadata().map(|m| m.len()).unwrap_or(0);
        Ok(JsonFile {
            path: path.to_path_buf(),
            max_bytes,
            keep: keep.max(1),
            file: Some(file),
            size,
            buf: Vec::with_capacity(BUFFER),
            ends: Vec::new(),
            failure: None,
            run: None,
            line: Vec::new(),
        })
    }

    /// The configured path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Events lost since writing failed (0 while it works).
    pub fn lost(&self) -> u64 {
        self.failure.as_ref().map_or(0, |f| f.lost)
    }

    /// Queues one event (written at the next [`Self::flush`] or when the
    /// buffer is full); counted as lost while the file cannot be written.
    pub fn push(&mut self, ev: &Event) {
        if !ev.run.is_empty() {
            self.run = Some(ev.run.clone());
        }
        if self.failure.is_some() {
            self.retry();
            if let Some(f) = self.failure.as_mut() {
                f.lost = f.lost.saturating_add(1);
                return;
            }
        }
        // Serialised into a buffer kept from one event to the next.
        let mut line = std::mem::take(&mut self.line);
        line.clear();
        if serde_json::to_writer(&mut line, ev).is_err() {
            self.line = line;
            return;
        }
        line.push(b'\n');
        if let Some(max) = self.max_bytes {
            let pending = self.size.saturating_add(self.buf.len() as u64);
            if pending > 0 && pending.saturating_add(line.len() as u64) > max {
                self.write_out();
                if self.failure.is_none() {
                    self.rotate();
                }
                if let Some(f) = self.failure.as_mut() {
                    f.lost = f.lost.saturating_add(1);
                    self.line = line;
                    return;
                }
            }
        }
        self.buf.extend_from_slice(&line);
        self.line = line;
        self.ends.push(self.buf.len());
        if self.buf.len() >= BUFFER {
            self.write_out();
        }
    }

    /// Writes what is buffered (and retries a failed file when it is time).
    pub fn flush(&mut self) {
        if self.failure.is_some() {
            self.retry();
        }
        self.write_out();
    }

    /// SIGHUP: writes what is buffered to the current file, then opens the
    /// configured path afresh (a new file if logrotate renamed the old one)
    /// and writes `ev` (the `run.reopen` event) first.
    pub fn reopen(&mut self, ev: &Event) {
        self.write_out();
        match open_file(&self.path) {
            Ok(f) => {
                self.size = f.metadata().map(|m| m.len()).unwrap_or(0);
                self.file = Some(f);
            }
            Err(e) => {
                self.file = None;
                self.fail(&e, false);
            }
        }
        self.push(ev);
        self.write_out();
    }

    /// The path of the `n`th rotated file (`log.jsonl.1`).
    fn rotated(&self, n: usize) -> PathBuf {
        let mut s = self.path.clone().into_os_string();
        s.push(format!(".{n}"));
        PathBuf::from(s)
    }

    /// `log` → `log.1` → … → `log.keep` (the oldest is overwritten), then a
    /// fresh `log` whose first line is `run.log_rotated`.
    fn rotate(&mut self) {
        self.file = None;
        for n in (1..self.keep).rev() {
            let from = self.rotated(n);
            if from.exists() {
                let _ = std::fs::rename(&from, self.rotated(n + 1));
            }
        }
        let previous = self.rotated(1);
        if let Err(e) = std::fs::rename(&self.path, &previous) {
            tracing::error!(path = %self.path.display(), error = %e, "cannot rotate the JSON log (log.max_bytes); writing on in the same file");
        }
        match open_file(&self.path) {
            Ok(f) => {
                self.size = f.metadata().map(|m| m.len()).unwrap_or(0);
                self.file = Some(f);
                let ev = self.own_event(SessionEvent::RunLogRotated {
                    previous: previous.display().to_string(),
                    keep: self.keep as u64,
                });
                if let Ok(mut line) = serde_json::to_vec(&ev) {
                    line.push(b'\n');
                    self.buf.extend_from_slice(&line);
                    self.ends.push(self.buf.len());
                }
            }
            Err(e) => self.fail(&e, false),
        }
    }

    fn own_event(&self, kind: SessionEvent) -> Event {
        let ev = Event::new(Timestamp::now(), 0, kind);
        match &self.run {
            Some(r) => ev.in_run(r),
            None => ev,
        }
    }

    /// Writes the buffer; at an error, counts the lines that did not make it
    /// and stops writing until [`Self::retry`] succeeds.
    fn write_out(&mut self) {
        if self.buf.is_empty() {
            return;
        }
        let Some(file) = self.file.as_mut() else {
            // Failed: what is buffered is lost.
            let n = self.ends.len() as u64;
            if let Some(f) = self.failure.as_mut() {
                f.lost = f.lost.saturating_add(n);
            }
            self.buf.clear();
            self.ends.clear();
            return;
        };
        let mut off = 0;
        let mut err = None;
        while off < self.buf.len() {
            match file.write(&self.buf[off..]) {
                Ok(0) => {
                    err = Some(io::Error::from(io::ErrorKind::WriteZero));
                    break;
                }
                Ok(n) => off += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    err = Some(e);
                    break;
                }
            }
        }
        self.size = self.size.saturating_add(off as u64);
        if let Some(e) = err {
            let whole_end = self
                .ends
                .iter()
                .copied()
                .filter(|end| *end <= off)
                .max()
                .unwrap_or(0);
            let lost = self.ends.iter().filter(|end| **end > off).count() as u64;
            // Cut a half-written line off again, so the file stays valid
            // JSON lines; if that fails, the recovery starts a new line.
            let cut = (off - whole_end) as u64;
            let mut partial = false;
            if cut > 0 {
                partial = match file.metadata() {
                    Ok(m) if m.len() >= cut => file.set_len(m.len() - cut).is_err(),
                    _ => true,
                };
                self.size = self.size.saturating_sub(cut);
            }
            self.buf.clear();
            self.ends.clear();
            self.file = None;
            self.fail(&e, partial);
            if let Some(f) = self.failure.as_mut() {
                f.lost = f.lost.saturating_add(lost);
            }
        } else {
            self.buf.clear();
            self.ends.clear();
        }
    }

    fn fail(&mut self, e: &io::Error, partial: bool) {
        if let Some(f) = self.failure.as_mut() {
            // A retry failed: wait longer.
            f.backoff = (f.backoff * 2).min(RETRY_MAX);
            f.next_try = Instant::now() + f.backoff;
            f.partial |= partial;
            return;
        }
        tracing::error!(
            path = %self.path.display(),
            error = %e,
            "cannot write the JSON log: events are counted but not written until it can be written again (tried every {}-{}s); mail is not affected",
            RETRY_MIN.as_secs(),
            RETRY_MAX.as_secs()
        );
        self.failure = Some(Failure {
            since: Timestamp::now(),
            error: crate::event::io_error_code(e),
            detail: e.to_string(),
            lost: 0,
            next_try: Instant::now() + RETRY_MIN,
            backoff: RETRY_MIN,
            partial,
        });
    }

    /// After the back-off: reopens the path, ends a half-written line, and
    /// writes `run.log_recovered`; on success, writing goes on.
    fn retry(&mut self) {
        let Some(f) = self.failure.as_ref() else {
            return;
        };
        if Instant::now() < f.next_try {
            return;
        }
        let mut file = match open_file(&self.path) {
            Ok(file) => file,
            Err(e) => {
                self.fail(&e, false);
                return;
            }
        };
        let mut head = Vec::new();
        if f.partial {
            head.push(b'\n');
        }
        let ev = self.own_event(SessionEvent::RunLogRecovered {
            lost_events: f.lost,
            since: f.since,
            error: f.error.to_string(),
            detail: f.detail.clone(),
        });
        let lost = f.lost;
        let since = f.since;
        if let Ok(line) = serde_json::to_vec(&ev) {
            head.extend_from_slice(&line);
            head.push(b'\n');
        }
        match file.write_all(&head) {
            Ok(()) => {
                self.size = file.metadata().map(|m| m.len()).unwrap_or(0);
                self.file = Some(file);
                self.failure = None;
                tracing::warn!(
                    path = %self.path.display(),
                    lost_events = lost,
                    "the JSON log is written again; {lost} events since {} were lost (run.log_recovered says so in the log)",
                    since.rfc3339()
                );
            }
            Err(e) => {
                // The newline may or may not have been written: the next
                // try writes one again (an empty line at worst).
                self.fail(&e, true);
            }
        }
    }
}

impl Drop for JsonFile {
    fn drop(&mut self) {
        self.write_out();
    }
}
