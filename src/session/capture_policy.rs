//! Capture policy: what of a session's bytes reaches its pcapng flow.
//! DATA/BDAT payloads are left out when `capture.bodies = false` and AUTH
//! secrets starred out when `capture.redact_auth = true`, both per the SMTP
//! observer's marks; client bytes sent after STARTTLS are held back until
//! the reply says whether they are TLS; once the conversation can no longer
//! be followed in cleartext, the rest is left out (with one comment saying
//! why) when the policy asks for redaction. Sequence numbers stay
//! consistent: what is left out is skipped, not dropped. No I/O (the
//! [`SessionCapture`] hands frames to the writer thread's bounded queue).

use crate::capture::{CloseKind, SessionCapture};
use crate::event::{Side, Timestamp};
use crate::smtp::{Mark, MarkKind};

use super::input::{DirEnd, Ends};

/// One session's capture, with its policy state.
#[derive(Default)]
pub(super) struct CapturePolicy {
    /// This session's pcapng flow(s), when capture is on and selects it.
    /// Boxed: most sessions capture nothing, and inline it would make
    /// every analyzer 230 bytes larger.
    pub capture: Option<Box<SessionCapture>>,
    /// The SMTP conversation was lost in cleartext: secrets can no longer be marked.
    pub smtp_blind: bool,
    /// The capture already says why the rest of the session is left out.
    blind_noted: bool,
    /// Client bytes sent after STARTTLS before its reply, not yet written
    /// (only when the policy redacts). Bounded by the observer's `max_handoff`.
    held: Vec<u8>,
    /// The capture already says why the rest of the decrypted flow is left out.
    decrypted_noted: bool,
}

impl std::fmt::Debug for CapturePolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CapturePolicy")
            .field("capturing", &self.capture.is_some())
            .field("smtp_blind", &self.smtp_blind)
            .field("held", &self.held.len())
            .finish()
    }
}

/// Why bytes nobody follows must stay out of `c`'s file, per its policy
/// (None: they may be written).
fn blind_reason(c: &SessionCapture) -> Option<&'static str> {
    match c.policy() {
        (true, false) => None,
        (true, true) => Some("AUTH credentials could not be redacted (capture.redact_auth)"),
        (false, false) => Some("message bodies could not be left out (capture.bodies = false)"),
        (false, true) => Some(
            "AUTH credentials could not be redacted (capture.redact_auth) nor message bodies left out (capture.bodies = false)",
        ),
    }
}

fn blind_comment(why: &str) -> String {
    format!(
        "smtptap: the conversation could no longer be followed here; the rest of this session is left out of the capture because {why}"
    )
}

impl CapturePolicy {
    /// Bytes seen while the protocol is still being sniffed (a client's
    /// ClientHello, or a server's greeting): nothing in them to redact.
    pub fn raw(&mut self, side: Side, ts: Timestamp, bytes: &[u8]) {
        if let Some(c) = self.capture.as_mut() {
            c.data(side, ts, bytes);
        }
    }

    /// SMTP bytes read by the observer, with its marks. `desync_at`: the
    /// observer gave up at this offset of the chunk; what follows cannot be
    /// checked for secrets.
    pub fn smtp(
        &mut self,
        side: Side,
        ts: Timestamp,
        bytes: &[u8],
        mut marks: Vec<Mark>,
        desync_at: Option<usize>,
    ) {
        let Some(c) = self.capture.as_mut() else {
            return;
        };
        let redacting = blind_reason(c).is_some();
        // Bytes held after STARTTLS wait for its reply before they reach a
        // capture that must redact (they are the chunk's tail).
        let mut bytes = bytes;
        let held_at = marks
            .iter()
            .find(|m| m.kind == MarkKind::Held)
            .map(|m| m.range.start);
        if let (Some(h), true) = (held_at, redacting) {
            let (head, tail) = bytes.split_at(h.min(bytes.len()));
            self.held.extend_from_slice(tail);
            bytes = head;
            marks.retain(|m| m.range.end <= h);
        }
        match desync_at {
            Some(cut) if redacting && cut < bytes.len() => {
                let head = bytes.get(..cut).unwrap_or(bytes);
                let head_marks: Vec<Mark> =
                    marks.into_iter().filter(|m| m.range.end <= cut).collect();
                capture_marked(c, side, ts, head, &head_marks);
                if let Some(why) = blind_reason(c) {
                    c.comment(&blind_comment(why));
                }
                self.blind_noted = true;
                c.skip(side, ts, bytes.len() - cut);
            }
            _ => capture_marked(c, side, ts, bytes, &marks),
        }
    }

    /// Writes (`as_tls`: they turned out to be TLS) or leaves out, with a
    /// comment, the client bytes held back after STARTTLS.
    pub fn release_held(&mut self, ts: Timestamp, as_tls: bool) {
        if self.held.is_empty() {
            return;
        }
        let held = std::mem::take(&mut self.held);
        let Some(c) = self.capture.as_mut() else {
            return;
        };
        if as_tls {
            c.data(Side::Client, ts, &held);
        } else {
            c.comment(&format!(
                "smtptap: {} bytes the client sent after STARTTLS, before the server's reply, are left out: they were not TLS and could not be checked for AUTH credentials or bodies",
                held.len()
            ));
            c.skip(Side::Client, ts, held.len());
        }
    }

    /// Bytes no SMTP observer marks (TLS, or after an observer stopped):
    /// written as they are, unless the conversation was lost in cleartext
    /// and the policy asks for redaction, then left out with one comment.
    pub fn unfollowed(&mut self, side: Side, ts: Timestamp, bytes: &[u8]) {
        let Some(c) = self.capture.as_mut() else {
            return;
        };
        match blind_reason(c) {
            Some(why) if self.smtp_blind => {
                if !self.blind_noted {
                    c.comment(&blind_comment(why));
                    self.blind_noted = true;
                }
                c.skip(side, ts, bytes.len());
            }
            _ => c.data(side, ts, bytes),
        }
    }

    /// A side sent FIN.
    pub fn fin(&mut self, side: Side, ts: Timestamp) {
        if let Some(c) = self.capture.as_mut() {
            c.end(side, ts, CloseKind::Fin);
        }
    }

    /// The session ended: held bytes left out, the flow closed as it ended
    /// (RST for a direction that failed). Returns the capture's own events
    /// (truncation, drops, per-session file closed).
    pub fn close(
        &mut self,
        ts: Timestamp,
        ends: &Ends,
        loss: Option<(Side, u64)>,
    ) -> Vec<crate::capture::CaptureEvent> {
        // Held bytes whose STARTTLS reply never came.
        self.release_held(ts, false);
        let Some(mut c) = self.capture.take() else {
            return Vec::new();
        };
        if let Some((side, bytes)) = loss {
            c.comment(&format!(
                "smtptap: the analysis fell behind; {bytes} relayed bytes from the {side} onwards are missing from this capture"
            ));
        }
        for (side, end) in [
            (Side::Client, &ends.client_end),
            (Side::Server, &ends.server_end),
        ] {
            match end {
                DirEnd::Fin => {}
                DirEnd::Error { .. } | DirEnd::PeerFailed => c.end(side, ts, CloseKind::Rst),
                DirEnd::Idle | DirEnd::Aborted | DirEnd::Deadline { .. } => {
                    c.end(side, ts, CloseKind::Fin)
                }
            }
        }
        let mut evs = c.take_events();
        evs.extend(c.close(ts));
        evs
    }
}

/// A piece of SMTP bytes as the capture must take it.
enum Seg<'a> {
    /// Written (already redacted).
    Data(std::borrow::Cow<'a, [u8]>),
    /// Left out: this many bytes (a body with `capture.bodies = false`).
    Skip(usize),
}

/// SMTP bytes cut per the observer's marks and the policy: DATA/BDAT payload
/// skipped when `bodies` is false, AUTH secrets replaced by `*` when
/// `redact` is true.
fn segments<'a>(bytes: &'a [u8], marks: &[Mark], bodies: bool, redact: bool) -> Vec<Seg<'a>> {
    let relevant = marks.iter().any(|m| match m.kind {
        MarkKind::Body => !bodies,
        MarkKind::Secret => redact,
        MarkKind::Held => false,
    });
    if !relevant {
        return vec![Seg::Data(std::borrow::Cow::Borrowed(bytes))];
    }
    let data: std::borrow::Cow<'a, [u8]> =
        if redact && marks.iter().any(|m| m.kind == MarkKind::Secret) {
            let mut redacted = bytes.to_vec();
            for m in marks.iter().filter(|m| m.kind == MarkKind::Secret) {
                if let Some(r) = redacted.get_mut(m.range.clone()) {
                    for b in r.iter_mut() {
                        if !matches!(*b, b'\r' | b'\n') {
                            *b = b'*';
                        }
                    }
                }
            }
            std::borrow::Cow::Owned(redacted)
        } else {
            std::borrow::Cow::Borrowed(bytes)
        };
    if bodies {
        return vec![Seg::Data(data)];
    }
    let piece = |r: std::ops::Range<usize>| -> std::borrow::Cow<'a, [u8]> {
        match &data {
            std::borrow::Cow::Borrowed(b) => std::borrow::Cow::Borrowed(b.get(r).unwrap_or(&[])),
            std::borrow::Cow::Owned(v) => std::borrow::Cow::Owned(v.get(r).unwrap_or(&[]).to_vec()),
        }
    };
    let mut out = Vec::new();
    let mut pos = 0;
    for m in marks.iter().filter(|m| m.kind == MarkKind::Body) {
        let start = m.range.start.min(data.len());
        let end = m.range.end.min(data.len());
        if start > pos {
            out.push(Seg::Data(piece(pos..start)));
        }
        if end > start {
            out.push(Seg::Skip(end - start));
        }
        pos = pos.max(end);
    }
    if pos < data.len() {
        out.push(Seg::Data(piece(pos..data.len())));
    }
    out
}

/// Hands SMTP bytes to the capture: DATA/BDAT payload skipped when
/// `capture.bodies = false`, AUTH secrets replaced by `*` when
/// `capture.redact_auth = true` (both per the marks of the SMTP observer).
fn capture_marked(c: &mut SessionCapture, side: Side, ts: Timestamp, bytes: &[u8], marks: &[Mark]) {
    let (bodies, redact) = c.policy();
    for seg in segments(bytes, marks, bodies, redact) {
        match seg {
            Seg::Data(d) => c.data(side, ts, &d),
            Seg::Skip(n) => c.skip(side, ts, n),
        }
    }
}

impl CapturePolicy {
    /// Intercept mode: decrypted SMTP with its observer's marks, to the
    /// decrypted flow under the same policy as the cleartext. `desynced`:
    /// the observer gave up in this chunk, so its tail cannot be checked.
    pub fn decrypted(
        &mut self,
        side: Side,
        ts: Timestamp,
        bytes: &[u8],
        marks: &[Mark],
        desynced: bool,
    ) {
        let Some(c) = self.capture.as_mut() else {
            return;
        };
        if !c.has_decrypted() {
            return;
        }
        if desynced && blind_reason(c).is_some() {
            return self.decrypted_unfollowed(side, ts, bytes);
        }
        let (bodies, redact) = c.policy();
        for seg in segments(bytes, marks, bodies, redact) {
            match seg {
                Seg::Data(d) => c.decrypted_data(side, ts, &d, 0),
                Seg::Skip(n) => c.decrypted_data(side, ts, &[], n),
            }
        }
    }

    /// Intercept mode: decrypted bytes no observer follows any more: written
    /// unless the policy redacts, then left out with one comment.
    pub fn decrypted_unfollowed(&mut self, side: Side, ts: Timestamp, bytes: &[u8]) {
        let Some(c) = self.capture.as_mut() else {
            return;
        };
        match blind_reason(c) {
            Some(why) => {
                if !self.decrypted_noted {
                    c.comment(&blind_comment(why));
                    self.decrypted_noted = true;
                }
                c.decrypted_data(side, ts, &[], bytes.len());
            }
            None => c.decrypted_data(side, ts, bytes, 0),
        }
    }

    /// Intercept mode: `side` closed the decrypted conversation.
    pub fn decrypted_fin(&mut self, side: Side, ts: Timestamp) {
        if let Some(c) = self.capture.as_mut() {
            c.decrypted_end(side, ts, CloseKind::Fin);
        }
    }

    /// Intercept mode: raw TLS bytes of one wire leg (`leg` 0: client leg,
    /// 1: upstream leg). They are encrypted: nothing in them to redact.
    pub fn leg_raw(&mut self, leg: usize, side: Side, ts: Timestamp, bytes: &[u8]) {
        if let Some(c) = self.capture.as_mut() {
            c.leg_data(leg, side, ts, bytes);
        }
    }

    /// Intercept mode: `side` closed wire leg `leg`.
    pub fn leg_fin(&mut self, leg: usize, side: Side, ts: Timestamp) {
        if let Some(c) = self.capture.as_mut() {
            c.leg_end(leg, side, ts, CloseKind::Fin);
        }
    }

    /// Intercept mode: TLS secrets (NSS key log lines) to embed before the
    /// next frames (only when the configuration asks for it).
    pub fn secrets(&mut self, keylog: &[u8]) {
        if let Some(c) = self.capture.as_mut() {
            c.tls_secrets(keylog);
        }
    }
}
