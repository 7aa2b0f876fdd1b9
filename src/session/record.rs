//! The session's record: events stamped with run, session and leg, queued
//! for the driver to hand to the sinks, and the bounded subset kept for the
//! diagnosis and the summary, with the counts that must stay exact over
//! every event. No I/O.

use crate::event::{Event, EventKind, Leg, RunId, SessionEvent, SessionId, Source, Timestamp};
use crate::smtp::SmtpEvent;
use crate::summary::Counts;
use crate::tls::TlsEvent;

/// Events kept per session for the diagnosis; later ones are still logged,
/// and the summary says how many were not kept.
pub const MAX_KEPT_EVENTS: usize = 5_000;

/// ... and at most about this many bytes of them: a peer sending thousands of
/// 64 KiB multi-line replies must not make a session hold hundreds of MB.
pub const MAX_KEPT_BYTES: usize = 4 * 1024 * 1024;

/// A rough, cheap estimate of an event's memory: exact enough for the events
/// a peer can make large (reply lines, capabilities, hellos), a flat cost for
/// the rest.
fn approx_size(kind: &EventKind) -> usize {
    let strs = |v: &[String]| v.iter().map(|l| l.len() + 24).sum::<usize>();
    256 + match kind {
        EventKind::Smtp(SmtpEvent::Reply { text, lines, .. })
        | EventKind::Smtp(SmtpEvent::Banner { text, lines, .. }) => text.len() + strs(lines),
        EventKind::Smtp(SmtpEvent::Capabilities { capabilities, .. }) => strs(capabilities),
        EventKind::Smtp(SmtpEvent::Message { rcpt_to, .. }) => strs(rcpt_to),
        EventKind::Tls(TlsEvent::ClientHello(ch)) => {
            ch.ja3_string.len() * 4
                + strs(&ch.cipher_suites)
                + strs(&ch.supported_groups)
                + strs(&ch.signature_algorithms)
                + ch.extensions.len() * 2
        }
        _ => 0,
    }
}

/// Whether the diagnosis or the summary may need `kind` again.
fn worth_keeping(kind: &EventKind) -> bool {
    !matches!(
        kind,
        EventKind::Session(SessionEvent::Open { .. } | SessionEvent::UpstreamConnected { .. })
    )
}

/// Output queue, kept events and counts of one session.
#[derive(Debug)]
pub(super) struct Record {
    run: RunId,
    session: SessionId,
    /// Events not yet taken by the driver.
    pub out: Vec<Event>,
    /// Events kept for the diagnosis and the summary (bounded): every
    /// event but the two that open a session (`session.open`,
    /// `upstream.connected`), whose facts the analyzer holds in its own
    /// fields and no rule reads. The vector grows from one slot, doubling:
    /// an idle session keeps a few events, not four slots of them.
    pub kept: Vec<Event>,
    kept_bytes: usize,
    /// Events logged but not kept.
    pub not_kept: u64,
    /// The summary's counts, over every event (kept or not).
    pub counts: Counts,
}

impl Record {
    pub fn new(run: RunId, session: SessionId) -> Self {
        Record {
            run,
            session,
            out: Vec::new(),
            kept: Vec::new(),
            kept_bytes: 0,
            not_kept: 0,
            counts: Counts::default(),
        }
    }

    /// Records an event: stamped, counted, kept if it fits, queued.
    pub fn push(
        &mut self,
        ts: Timestamp,
        leg: Option<Leg>,
        source: Option<Source>,
        kind: EventKind,
    ) {
        self.count(&kind);
        let size = approx_size(&kind);
        let ev = Event::new(ts, self.session, kind)
            .in_run(&self.run)
            .on_leg(leg)
            .from_source(source);
        if !worth_keeping(&ev.kind) {
            // Logged, counted, not needed again.
        } else if self.kept.len() < MAX_KEPT_EVENTS && self.kept_bytes + size <= MAX_KEPT_BYTES {
            self.kept_bytes += size;
            if self.kept.len() == self.kept.capacity() {
                self.kept.reserve_exact(self.kept.capacity().max(1));
            }
            self.kept.push(ev.clone());
        } else {
            self.not_kept += 1;
        }
        self.out.push(ev);
    }

    /// Queues an event made elsewhere (the capture writer's) without keeping it.
    pub fn pass(&mut self, mut ev: Event) {
        if ev.run.is_empty() {
            ev.run = self.run.clone();
        }
        self.out.push(ev);
    }

    fn count(&mut self, kind: &EventKind) {
        let c = &mut self.counts;
        match kind {
            EventKind::Smtp(SmtpEvent::Command { .. }) => c.commands += 1,
            EventKind::Smtp(SmtpEvent::Message { accepted: true, .. }) => c.messages_accepted += 1,
            EventKind::Smtp(SmtpEvent::Message { .. }) => c.messages_rejected += 1,
            EventKind::Smtp(SmtpEvent::Reply {
                code,
                enhanced,
                text,
                ..
            })
            | EventKind::Smtp(SmtpEvent::Banner {
                code,
                enhanced,
                text,
                ..
            }) => {
                // The same spelling as the diagnosis quotes replies in.
                let line = c.last_reply.get_or_insert_with(String::new);
                crate::diagnose::Reply::new(*code, enhanced, text).write_line(line);
            }
            _ => {}
        }
    }
}
