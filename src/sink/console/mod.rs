//! The console transcript, swaks-like: one line per fact, prefixed with the
//! session id and the seconds since the session opened.
//!
//! ```text
//! [#1 +0.004]  -> EHLO client.example.test
//! [#1 +0.005] <-  250-gw.example.test
//! [#1 +0.031] === TLS ServerHello: TLSv1.3, TLS_AES_256_GCM_SHA384
//! [#1 +0.090] *** TLS alert from the client: fatal unknown_ca
//! ```
//!
//! `->` client to server, `<-` server to client, `===` facts, `***` problems.
//! Colour only when writing to a terminal (or when forced). Facts of run
//! (session 0) are prefixed `[smtptap]`; with interception, TLS and
//! certificate facts name their leg (`[client↔smtptap]`, `[smtptap↔server]`).
//!
//! This module owns how events read on a terminal: [`Console`] (the writer:
//! prefixes, colour, per-session clocks) and [`render`] (pure: an event's
//! lines), which dispatches on the typed [`EventKind`] to one file per event
//! family (`session`: `run.*`, `session.*`, `upstream.*`, `observer.*`,
//! `tls.started`, `probe.version`; `smtp`; `tls`; `cert`; `capture`; `summary`). It must not
//! decide anything (findings are [`crate::diagnose`]'s, the summary's figures
//! [`crate::summary`]'s), read the JSON form, or do I/O other than writing to
//! the one output it was given.

mod capture;
mod cert;
mod session;
mod smtp;
mod summary;
#[cfg(test)]
mod tests;
mod tls;

use std::collections::HashMap;
use std::io::Write;

use crate::event::{Event, EventKind, Leg, SessionEvent, Side, Timestamp};

/// The kind of a transcript line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineKind {
    /// Sent by the client (`->`).
    Client,
    /// Sent by the server (`<-`).
    Server,
    /// A fact (`===`).
    Fact,
    /// A problem (`***`).
    Problem,
}

impl LineKind {
    fn marker(self) -> &'static str {
        match self {
            LineKind::Client => " ->",
            LineKind::Server => "<- ",
            LineKind::Fact => "===",
            LineKind::Problem => "***",
        }
    }
    fn color(self) -> &'static str {
        match self {
            LineKind::Client => "\x1b[36m",
            LineKind::Server => "\x1b[32m",
            LineKind::Fact => "\x1b[2m",
            LineKind::Problem => "\x1b[1;31m",
        }
    }
}

/// The lines of one event, in order.
type Lines = Vec<(LineKind, String)>;

/// The console writer.
pub struct Console {
    out: Box<dyn Write + Send>,
    color: bool,
    opened: HashMap<u64, Timestamp>,
}

impl Console {
    /// A console writing to `out`, with ANSI colours if `color`.
    pub fn new(out: Box<dyn Write + Send>, color: bool) -> Self {
        Console {
            out,
            color,
            opened: HashMap::new(),
        }
    }

    /// Writes the transcript lines of one event.
    pub fn write(&mut self, ev: &Event) {
        // Session 0 carries facts of the run, not of a session (run.start,
        // the capture writer's files).
        let prefix = if ev.session == 0 {
            "[smtptap]".to_string()
        } else {
            let start = *self.opened.entry(ev.session).or_insert(ev.ts);
            format!("[#{} +{:.3}]", ev.session, ev.ts.since(start))
        };
        for (kind, text) in render(ev) {
            let line = format!("{prefix} {} {}", kind.marker(), text);
            let _ = if self.color {
                writeln!(self.out, "{}{}\x1b[0m", kind.color(), line)
            } else {
                writeln!(self.out, "{line}")
            };
        }
        if matches!(ev.kind, EventKind::Session(SessionEvent::Summary(_))) {
            self.opened.remove(&ev.session);
        }
    }

    /// Flushes the output.
    pub fn flush(&mut self) {
        let _ = self.out.flush();
    }
}

/// The transcript lines for one event (pure; also used by the lab demo and tests).
pub fn render(ev: &Event) -> Vec<(LineKind, String)> {
    let mut out = match &ev.kind {
        EventKind::Session(e) => session::render(ev, e),
        EventKind::Smtp(e) => smtp::render(e),
        EventKind::Tls(e) => tls::render(e),
        EventKind::Cert(e) => cert::render(e),
        EventKind::Capture(e) => capture::render(e),
    };
    if let Some(leg) = leg_prefix(ev.leg) {
        for (_, text) in &mut out {
            *text = format!("{leg} {text}");
        }
    }
    if ev.source == Some(crate::event::Source::SideProbe) {
        for (_, text) in &mut out {
            *text = format!("[side-probe] {text}");
        }
    }
    out
}

/// Which TLS session a line is about, when there are two (interception);
/// nothing for passthrough, where the one TLS session runs end to end.
fn leg_prefix(leg: Option<Leg>) -> Option<&'static str> {
    match leg? {
        Leg::EndToEnd => None,
        Leg::ClientProxy => Some("[client↔smtptap]"),
        Leg::ProxyServer => Some("[smtptap↔server]"),
    }
}

/// An observer (`SMTP`, `TLS`) lost track of the stream.
fn desync(observer: &str, side: Side, offset: u64, reason: &str) -> (LineKind, String) {
    (
        LineKind::Problem,
        format!(
            "{observer} observer stopped on {side} bytes at offset {offset}: {reason} (the relay goes on unchanged)"
        ),
    )
}
