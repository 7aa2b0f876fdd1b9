//! The capture writer: a dedicated std thread that owns the files.
//!
//! Session handles push batches of ready-made frames through an unbounded
//! channel whose *contents* are bounded by a byte budget (`queue_bytes`):
//! a handle reserves the batch's bytes before sending and the writer releases
//! them once written. A batch that does not fit is dropped by the caller (see
//! the policy in the module doc of `capture`). Control messages (session
//! open/close, shutdown) are never dropped; there are at most two per session.
//!
//! The thread opens, rotates, flushes and closes files, and reports
//! `capture.file` / `capture.error` events into a bounded queue drained by
//! `Capture::take_events`. At the first write error it reports once (an
//! event, and an error on stderr at once) and stops writing for the rest of
//! the run. It also reopens renamed files at SIGHUP (`Msg::Reopen`) and
//! deletes the oldest closed files of the run past `max_total_bytes`. It must
//! never be called from the relay path with anything that can block.

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::pcapng::{self, NgWriter};
use super::{CaptureConfig, CaptureError, CaptureEvent, CaptureStats, Legs, Target};
use crate::event::{Event, SessionId, Timestamp};

/// Events kept between two `take_events` calls; older ones are dropped.
const MAX_EVENTS: usize = 1024;

/// Write buffer of the per-run file.
const RUN_BUFFER: usize = 256 * 1024;
/// Write buffer of each per-session file.
const SESSION_BUFFER: usize = 32 * 1024;

/// One frame ready for the file.
#[derive(Debug)]
pub(crate) struct WFrame {
    /// Interface id (leg index).
    pub iface: u32,
    pub ts: Timestamp,
    pub data: Vec<u8>,
    /// pcapng comments attached to this frame.
    pub comments: Vec<String>,
}

/// What session handles send to the writer thread.
#[derive(Debug)]
pub(crate) enum Msg {
    Open {
        session: SessionId,
        opened: Timestamp,
    },
    Frames {
        session: SessionId,
        frames: Vec<WFrame>,
        /// Bytes reserved in the budget for this message.
        cost: usize,
    },
    Secrets {
        session: SessionId,
        keylog: Vec<u8>,
        cost: usize,
    },
    Close {
        session: SessionId,
    },
    /// SIGHUP: reopen files that were renamed or removed.
    Reopen,
    Shutdown,
}

/// Counters shared by handles and the thread.
#[derive(Debug, Default)]
pub(crate) struct Stats {
    pub sessions: AtomicU64,
    pub files: AtomicU64,
    pub frames_written: AtomicU64,
    pub bytes_written: AtomicU64,
    pub frames_dropped: AtomicU64,
    pub bytes_dropped: AtomicU64,
    pub frames_discarded: AtomicU64,
    pub errors: AtomicU64,
}

impl Stats {
    pub fn snapshot(&self) -> CaptureStats {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        CaptureStats {
            sessions: l(&self.sessions),
            files: l(&self.files),
            frames_written: l(&self.frames_written),
            bytes_written: l(&self.bytes_written),
            frames_dropped: l(&self.frames_dropped),
            bytes_dropped: l(&self.bytes_dropped),
            frames_discarded: l(&self.frames_discarded),
            errors: l(&self.errors),
        }
    }
}

/// State shared by the handles and the writer thread. The thread holds only
/// this (never the sender), so when every handle is gone the channel
/// disconnects and the thread flushes, closes its files and exits.
pub(crate) struct Core {
    queued: AtomicUsize,
    budget: usize,
    failed: AtomicBool,
    events: Mutex<VecDeque<Event>>,
    pub stats: Stats,
}

impl Core {
    /// Reserves `cost` bytes of the queue budget; false if they do not fit.
    pub fn reserve(&self, cost: usize) -> bool {
        self.queued
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |q| {
                let n = q.checked_add(cost)?;
                (n <= self.budget).then_some(n)
            })
            .is_ok()
    }

    fn release(&self, cost: usize) {
        let _ = self
            .queued
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |q| {
                Some(q.saturating_sub(cost))
            });
    }

    /// True once a write error stopped the writer.
    pub fn is_failed(&self) -> bool {
        self.failed.load(Ordering::Acquire)
    }

    fn push_event(&self, session: SessionId, kind: CaptureEvent) {
        let mut q = self.events.lock().unwrap_or_else(|e| e.into_inner());
        if q.len() >= MAX_EVENTS {
            q.pop_front();
        }
        q.push_back(Event::new(Timestamp::now(), session, kind));
    }

    pub fn take_events(&self) -> Vec<Event> {
        let mut q = self.events.lock().unwrap_or_else(|e| e.into_inner());
        q.drain(..).collect()
    }
}

/// What [`super::Capture`] handles and sessions hold: the sender and the core.
pub(crate) struct Shared {
    tx: Sender<Msg>,
    join: Mutex<Option<JoinHandle<()>>>,
    core: Arc<Core>,
}

impl std::ops::Deref for Shared {
    type Target = Core;
    fn deref(&self) -> &Core {
        &self.core
    }
}

impl Shared {
    /// Sends a message whose cost was reserved; releases it if the writer is gone.
    pub fn send_data(&self, msg: Msg) {
        if let Err(e) = self.tx.send(msg) {
            let cost = match e.0 {
                Msg::Frames { cost, .. } | Msg::Secrets { cost, .. } => cost,
                _ => 0,
            };
            self.core.release(cost);
        }
    }

    /// Sends a control message (never dropped while the writer runs).
    pub fn send_control(&self, msg: Msg) {
        let _ = self.tx.send(msg);
    }

    /// Stops the thread after it has written everything queued.
    pub fn shutdown(&self) {
        let _ = self.tx.send(Msg::Shutdown);
        let handle = self.join.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(h) = handle {
            let _ = h.join();
        }
    }
}

/// Counts bytes accepted by the inner writer.
struct Counting<W> {
    inner: W,
    n: u64,
}

impl<W: Write> Write for Counting<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.n = self.n.saturating_add(n as u64);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// One open capture file.
struct OpenFile {
    path: PathBuf,
    ng: NgWriter<Counting<BufWriter<File>>>,
    dirty: bool,
}

impl OpenFile {
    /// `buffer`: write buffer size (per-session files get a small one, since
    /// many may be open at once).
    fn create(path: &Path, legs: Legs, buffer: usize) -> io::Result<OpenFile> {
        // Private to the owner: a capture holds whole conversations.
        let file = {
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(path)?
        };
        let w = Counting {
            inner: BufWriter::with_capacity(buffer, file),
            n: 0,
        };
        let names = legs.interface_names();
        let ng = pcapng::start(w, names).map_err(pcap_io)?;
        Ok(OpenFile {
            path: path.to_path_buf(),
            ng,
            dirty: true,
        })
    }

    fn size(&self) -> u64 {
        self.ng.get_ref().n
    }

    /// True if the path no longer names this file (renamed or removed).
    fn moved(&self) -> bool {
        use std::os::unix::fs::MetadataExt;
        let Ok(ours) = self.ng.get_ref().inner.get_ref().metadata() else {
            return false;
        };
        match std::fs::metadata(&self.path) {
            Ok(m) => m.ino() != ours.ino() || m.dev() != ours.dev(),
            Err(_) => true,
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.dirty {
            self.ng.get_mut().flush()?;
            self.dirty = false;
        }
        Ok(())
    }
}

fn pcap_io(e: pcap_file::PcapError) -> io::Error {
    match e {
        pcap_file::PcapError::IoError(e) => e,
        other => io::Error::other(other.to_string()),
    }
}

/// `20261123T210714Z`.
pub fn time_tag(ts: Timestamp) -> String {
    let dt = time::OffsetDateTime::from(ts.0);
    let fmt = time::macros::format_description!("[year][month][day]T[hour][minute][second]Z");
    dt.format(&fmt)
        .unwrap_or_else(|_| "19700101T000000Z".to_string())
}

/// Inserts `suffix` before the extension: `cap.pcapng` + `-1` → `cap-1.pcapng`.
fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "smtptap".to_string());
    let name = match path.extension() {
        Some(ext) => format!("{stem}{suffix}.{}", ext.to_string_lossy()),
        None => format!("{stem}{suffix}"),
    };
    path.with_file_name(name)
}

/// The per-run file name; `n` = 0 for the first, then 1, 2, … after rotations.
pub fn run_file_name(target: &Target, run_start: Timestamp, n: u64) -> PathBuf {
    match target {
        Target::Dir(d) => {
            let rot = if n == 0 {
                String::new()
            } else {
                format!("-{n}")
            };
            d.join(format!("smtptap-{}{rot}.pcapng", time_tag(run_start)))
        }
        Target::File(f) => {
            if n == 0 {
                f.clone()
            } else {
                with_suffix(f, &format!("-{n}"))
            }
        }
    }
}

/// The per-session file name.
pub fn session_file_name(target: &Target, opened: Timestamp, session: SessionId) -> PathBuf {
    match target {
        Target::Dir(d) => d.join(format!("smtptap-{}-s{session}.pcapng", time_tag(opened))),
        Target::File(f) => with_suffix(f, &format!("-{}-s{session}", time_tag(opened))),
    }
}

fn unwritable(path: &Path, source: io::Error) -> CaptureError {
    CaptureError::Unwritable {
        path: path.to_path_buf(),
        source,
    }
}

/// Checks the target, opens the first per-run file, and starts the thread.
pub(crate) fn spawn(cfg: Arc<CaptureConfig>) -> Result<Arc<Shared>, CaptureError> {
    let run_start = Timestamp::now();
    if let Target::Dir(d) = &cfg.target {
        std::fs::create_dir_all(d).map_err(|e| unwritable(d, e))?;
    }
    let mut first = None;
    if cfg.per_session {
        let probe = match &cfg.target {
            Target::Dir(d) => d.join(format!(".smtptap-probe-{}", std::process::id())),
            Target::File(f) => with_suffix(f, &format!(".probe-{}", std::process::id())),
        };
        File::create(&probe).map_err(|e| unwritable(&probe, e))?;
        let _ = std::fs::remove_file(&probe);
    } else {
        let path = run_file_name(&cfg.target, run_start, 0);
        first =
            Some(OpenFile::create(&path, cfg.legs, RUN_BUFFER).map_err(|e| unwritable(&path, e))?);
    }
    let (tx, rx) = channel();
    let budget = usize::try_from(cfg.queue_bytes).unwrap_or(usize::MAX);
    let core = Arc::new(Core {
        queued: AtomicUsize::new(0),
        budget,
        failed: AtomicBool::new(false),
        events: Mutex::new(VecDeque::new()),
        stats: Stats::default(),
    });
    if let Some(f) = &first {
        core.stats.files.fetch_add(1, Ordering::Relaxed);
        core.push_event(0, file_event(&f.path, "opened"));
    }
    let mut w = Writer {
        cfg: cfg.clone(),
        shared: core.clone(),
        run_start,
        run: first,
        rotations: 0,
        sessions: HashMap::new(),
        session_opened: HashMap::new(),
        failed: false,
        last_flush: Instant::now(),
        closed: VecDeque::new(),
        closed_bytes: 0,
        deleted_any: false,
    };
    let handle = std::thread::Builder::new()
        .name("smtptap-capture".to_string())
        .spawn(move || w.run(rx))
        .map_err(|e| unwritable(&run_file_name(&cfg.target, run_start, 0), e))?;
    Ok(Arc::new(Shared {
        tx,
        join: Mutex::new(Some(handle)),
        core,
    }))
}

fn file_event(path: &Path, reason: &str) -> CaptureEvent {
    CaptureEvent::File {
        path: path.display().to_string(),
        reason: reason.to_string(),
    }
}

struct Writer {
    cfg: Arc<CaptureConfig>,
    shared: Arc<Core>,
    run_start: Timestamp,
    /// The per-run file (per-run mode).
    run: Option<OpenFile>,
    rotations: u64,
    /// Open per-session files (per-session mode).
    sessions: HashMap<SessionId, OpenFile>,
    /// When each per-session file's session opened (for lazy opening).
    session_opened: HashMap<SessionId, Timestamp>,
    failed: bool,
    last_flush: Instant,
    /// Files of this run that are closed, oldest first, with their sizes
    /// (candidates for deletion under `max_total_bytes`).
    closed: VecDeque<(PathBuf, u64)>,
    closed_bytes: u64,
    /// A deletion was already announced on stderr.
    deleted_any: bool,
}

/// How long the writer lets frames gather after draining its queue.
const COALESCE: Duration = Duration::from_millis(5);

impl Writer {
    fn run(&mut self, rx: Receiver<Msg>) {
        loop {
            let interval = self.cfg.flush_interval;
            match rx.recv_timeout(interval) {
                Ok(Msg::Shutdown) | Err(RecvTimeoutError::Disconnected) => {
                    // Write what is already queued, then close everything.
                    while let Ok(m) = rx.try_recv() {
                        if !matches!(m, Msg::Shutdown) {
                            self.handle(m);
                        }
                    }
                    self.close_all();
                    return;
                }
                Ok(m) => {
                    self.handle(m);
                    // Drain what is queued, then let frames gather for a
                    // moment: the relay-side senders then queue without
                    // waking this thread for every session chunk.
                    loop {
                        match rx.try_recv() {
                            Ok(Msg::Shutdown) => {
                                while let Ok(m) = rx.try_recv() {
                                    if !matches!(m, Msg::Shutdown) {
                                        self.handle(m);
                                    }
                                }
                                self.close_all();
                                return;
                            }
                            Ok(m) => self.handle(m),
                            Err(_) => break,
                        }
                    }
                    std::thread::sleep(COALESCE);
                }
                Err(RecvTimeoutError::Timeout) => {}
            }
            if self.last_flush.elapsed() >= interval {
                self.flush_all();
            }
        }
    }

    fn handle(&mut self, msg: Msg) {
        match msg {
            Msg::Open { session, opened } => {
                if self.cfg.per_session && !self.failed {
                    self.session_opened.insert(session, opened);
                    self.open_session(session);
                }
            }
            Msg::Frames {
                session,
                frames,
                cost,
            } => {
                self.shared.release(cost);
                self.write_frames(session, frames);
            }
            Msg::Secrets {
                session,
                keylog,
                cost,
            } => {
                self.shared.release(cost);
                if let Some(f) = self.file_for(session) {
                    let r = pcapng::write_secrets(&mut f.ng, &keylog).map_err(pcap_io);
                    f.dirty = true;
                    if let Err(e) = r {
                        let p = f.path.clone();
                        self.fail(&p, e);
                    }
                }
            }
            Msg::Close { session } => {
                self.session_opened.remove(&session);
                if let Some(mut f) = self.sessions.remove(&session) {
                    match f.flush() {
                        Ok(()) => {
                            self.shared
                                .push_event(session, file_event(&f.path, "closed"));
                            self.closed_file(&f);
                            self.enforce_cap();
                        }
                        Err(e) => self.fail(&f.path.clone(), e),
                    }
                } else if let Some(f) = self.run.as_mut() {
                    if let Err(e) = f.flush() {
                        let p = f.path.clone();
                        self.fail(&p, e);
                    }
                }
            }
            Msg::Reopen => self.reopen(),
            Msg::Shutdown => {}
        }
    }

    /// SIGHUP: every open file whose path no longer names it (logrotate
    /// renamed it) is flushed and closed, and a fresh file is opened at the
    /// path. The renamed file is no longer this run's: never deleted by the cap.
    fn reopen(&mut self) {
        if self.failed {
            return;
        }
        if let Some(f) = self.run.as_mut() {
            if f.moved() {
                if let Some(mut old) = self.run.take() {
                    if let Err(e) = old.flush() {
                        self.fail(&old.path.clone(), e);
                        return;
                    }
                    self.shared.push_event(0, file_event(&old.path, "reopened"));
                    match OpenFile::create(&old.path, self.cfg.legs, RUN_BUFFER) {
                        Ok(f) => {
                            self.shared.stats.files.fetch_add(1, Ordering::Relaxed);
                            self.shared.push_event(0, file_event(&f.path, "opened"));
                            self.run = Some(f);
                        }
                        Err(e) => self.fail(&old.path.clone(), e),
                    }
                }
            }
        }
        let mut moved: Vec<SessionId> = self
            .sessions
            .iter()
            .filter(|(_, f)| f.moved())
            .map(|(id, _)| *id)
            .collect();
        moved.sort_unstable();
        for id in moved {
            if self.failed {
                return;
            }
            if let Some(mut old) = self.sessions.remove(&id) {
                if let Err(e) = old.flush() {
                    self.fail(&old.path.clone(), e);
                    return;
                }
                self.shared
                    .push_event(id, file_event(&old.path, "reopened"));
                match OpenFile::create(&old.path, self.cfg.legs, SESSION_BUFFER) {
                    Ok(f) => {
                        self.shared.stats.files.fetch_add(1, Ordering::Relaxed);
                        self.shared.push_event(id, file_event(&f.path, "opened"));
                        self.sessions.insert(id, f);
                    }
                    Err(e) => self.fail(&old.path.clone(), e),
                }
            }
        }
    }

    /// Records a closed file of this run (a deletion candidate).
    fn closed_file(&mut self, f: &OpenFile) {
        if self.cfg.max_total_bytes.is_some() {
            let size = f.size();
            self.closed_bytes = self.closed_bytes.saturating_add(size);
            self.closed.push_back((f.path.clone(), size));
        }
    }

    /// Deletes the oldest closed files while the total exceeds `max_total_bytes`.
    fn enforce_cap(&mut self) {
        let Some(cap) = self.cfg.max_total_bytes else {
            return;
        };
        let open: u64 = self.run.iter().map(OpenFile::size).sum::<u64>()
            + self.sessions.values().map(OpenFile::size).sum::<u64>();
        while self.closed_bytes.saturating_add(open) > cap {
            let Some((path, size)) = self.closed.pop_front() else {
                break;
            };
            self.closed_bytes = self.closed_bytes.saturating_sub(size);
            match std::fs::remove_file(&path) {
                Ok(()) => {
                    if !self.deleted_any {
                        self.deleted_any = true;
                        tracing::warn!(
                            max_total_bytes = cap,
                            "capture files reached capture.max_total_bytes ({cap} bytes): deleting the oldest files of this run (each one is logged as capture.deleted); first: {}",
                            path.display()
                        );
                    } else {
                        tracing::info!(path = %path.display(), bytes = size, "capture file deleted (capture.max_total_bytes)");
                    }
                    self.shared.push_event(
                        0,
                        CaptureEvent::Deleted {
                            path: path.display().to_string(),
                            bytes: size,
                            reason: "max_total_bytes".to_string(),
                        },
                    );
                }
                // Someone else removed it already.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => tracing::warn!(
                    path = %path.display(),
                    error = %e,
                    "cannot delete a capture file to keep under capture.max_total_bytes"
                ),
            }
        }
    }

    fn open_session(&mut self, session: SessionId) {
        if self.sessions.contains_key(&session) {
            return;
        }
        let opened = self
            .session_opened
            .get(&session)
            .copied()
            .unwrap_or_else(Timestamp::now);
        let path = session_file_name(&self.cfg.target, opened, session);
        match OpenFile::create(&path, self.cfg.legs, SESSION_BUFFER) {
            Ok(f) => {
                self.shared.stats.files.fetch_add(1, Ordering::Relaxed);
                self.shared.push_event(session, file_event(&path, "opened"));
                self.sessions.insert(session, f);
            }
            Err(e) => self.fail(&path, e),
        }
    }

    /// The file `session`'s frames go to (rotating the per-run file first if
    /// it is full); None after a failure.
    fn file_for(&mut self, session: SessionId) -> Option<&mut OpenFile> {
        if self.failed {
            return None;
        }
        if self.cfg.per_session {
            if !self.sessions.contains_key(&session) {
                self.open_session(session);
            }
            return self.sessions.get_mut(&session);
        }
        let full = match (&self.run, self.cfg.rotate_bytes) {
            (Some(f), Some(limit)) => f.size() >= limit,
            _ => false,
        };
        if full {
            self.rotate();
        }
        self.run.as_mut()
    }

    fn rotate(&mut self) {
        if let Some(mut old) = self.run.take() {
            if let Err(e) = old.flush() {
                self.fail(&old.path.clone(), e);
                return;
            }
            self.shared.push_event(0, file_event(&old.path, "rotated"));
            self.closed_file(&old);
        }
        self.rotations += 1;
        let path = run_file_name(&self.cfg.target, self.run_start, self.rotations);
        match OpenFile::create(&path, self.cfg.legs, RUN_BUFFER) {
            Ok(f) => {
                self.shared.stats.files.fetch_add(1, Ordering::Relaxed);
                self.shared.push_event(0, file_event(&path, "opened"));
                self.run = Some(f);
            }
            Err(e) => self.fail(&path, e),
        }
        self.enforce_cap();
    }

    fn write_frames(&mut self, session: SessionId, frames: Vec<WFrame>) {
        let n = frames.len() as u64;
        let Some(f) = self.file_for(session) else {
            self.shared
                .stats
                .frames_discarded
                .fetch_add(n, Ordering::Relaxed);
            return;
        };
        let before = f.size();
        let mut result = Ok(());
        let mut written = 0u64;
        for fr in &frames {
            if let Err(e) = pcapng::write_packet(&mut f.ng, fr.iface, fr.ts, &fr.data, &fr.comments)
            {
                result = Err(pcap_io(e));
                break;
            }
            written += 1;
        }
        f.dirty = true;
        let grown = f.size().saturating_sub(before);
        let path = f.path.clone();
        let stats = &self.shared.stats;
        stats.frames_written.fetch_add(written, Ordering::Relaxed);
        stats.bytes_written.fetch_add(grown, Ordering::Relaxed);
        if let Err(e) = result {
            stats
                .frames_discarded
                .fetch_add(n.saturating_sub(written), Ordering::Relaxed);
            self.fail(&path, e);
        }
    }

    fn flush_all(&mut self) {
        self.last_flush = Instant::now();
        let mut err = None;
        if let Some(f) = self.run.as_mut() {
            if let Err(e) = f.flush() {
                err = Some((f.path.clone(), e));
            }
        }
        if err.is_none() {
            for f in self.sessions.values_mut() {
                if let Err(e) = f.flush() {
                    err = Some((f.path.clone(), e));
                    break;
                }
            }
        }
        if let Some((p, e)) = err {
            self.fail(&p, e);
        }
        self.enforce_cap();
    }

    fn close_all(&mut self) {
        self.flush_all();
        if let Some(f) = self.run.take() {
            if !self.failed {
                self.shared.push_event(0, file_event(&f.path, "closed"));
            }
        }
        let mut ids: Vec<SessionId> = self.sessions.keys().copied().collect();
        ids.sort_unstable();
        for id in ids {
            if let Some(f) = self.sessions.remove(&id) {
                if !self.failed {
                    self.shared.push_event(id, file_event(&f.path, "closed"));
                }
            }
        }
    }

    /// First error: report once, drop every file, stop writing.
    fn fail(&mut self, path: &Path, e: io::Error) {
        if self.failed {
            return;
        }
        self.failed = true;
        self.shared.failed.store(true, Ordering::Release);
        // At once on stderr: the log hears of it at the next drain of the
        // writer's events, which may be later.
        tracing::error!(
            path = %path.display(),
            error = %e,
            "cannot write the capture: nothing more is captured this run (the relay is not affected)"
        );
        self.shared.stats.errors.fetch_add(1, Ordering::Relaxed);
        self.shared.push_event(
            0,
            CaptureEvent::Error {
                path: path.display().to_string(),
                error: crate::event::io_error_code(&e).into(),
                detail: e.to_string(),
            },
        );
        self.run = None;
        self.sessions.clear();
    }
}
