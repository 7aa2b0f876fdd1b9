//! The stage machine of the end-to-end stream: which observer reads the
//! next bytes.
//!
//! ```text
//!  Smtp ──STARTTLS 220──▶ Tls ──desync / done──▶ Off
//!   │ client's first bytes are TLS      ▲
//!   ▼                                   │ server answers in TLS (implicit TLS)
//!  Sniff ──────────────────────────────┘
//!   └── server greets in SMTP ──▶ Smtp (a TLS client on a STARTTLS port)
//! ```
//!
//! Implicit TLS is recognised without configuration: when the client's very
//! first bytes are a TLS handshake record and the server has not spoken yet,
//! the stage holds them (at most [`SNIFF_MAX`] bytes; the relay never waits)
//! until the server's first bytes say which protocol this is. Bytes of the
//! other legs (intercept mode's client↔smtptap and smtptap↔server TLS
//! sessions) are TLS from their first byte and each has its own observer.
//! No I/O.

use crate::event::{Leg, SessionEvent, Side, Timestamp};
use crate::smtp::{Progress, SmtpEvent, SmtpLimits, SmtpObserver};
use crate::tls::{TlsEvent, TlsObserver};

use super::SessionAnalyzer;

/// At most this many bytes of a client that spoke TLS first are held while
/// the server has not answered; beyond it the session is taken as implicit
/// TLS (a real ClientHello is a few hundred bytes to a few KB).
pub const SNIFF_MAX: usize = 64 * 1024;

/// Whether `bytes` open a TLS handshake record (type 22, version 3.x).
fn opens_tls_handshake(bytes: &[u8]) -> bool {
    matches!(bytes, [0x16, 0x03, ..])
}

/// Whether `bytes` open any TLS record (the server's ServerHello or alert).
fn opens_tls_record(bytes: &[u8]) -> bool {
    matches!(bytes, [0x14..=0x18, 0x03, ..] | [0x14..=0x18])
}

/// Which observer reads the end-to-end stream.
pub(super) enum Stage {
    Smtp(Box<SmtpObserver>),
    /// The client spoke TLS first: its chunks wait (at most [`SNIFF_MAX`]
    /// bytes) for the server's first bytes to say which protocol this is.
    Sniff(Vec<(Timestamp, Vec<u8>)>),
    Tls(Box<TlsObserver>),
    Off,
}

impl std::fmt::Debug for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Stage::Smtp(_) => "Smtp",
            Stage::Sniff(_) => "Sniff",
            Stage::Tls(_) => "Tls",
            Stage::Off => "Off",
        })
    }
}

fn side_index(side: Side) -> usize {
    match side {
        Side::Client => 0,
        Side::Server => 1,
    }
}

impl SessionAnalyzer {
    /// End-to-end bytes: through the stage machine.
    pub(super) fn end_to_end(&mut self, side: Side, ts: Timestamp, bytes: &[u8]) {
        self.stage_bytes(side, ts, bytes);
        self.fed[side_index(side)] += bytes.len() as u64;
    }

    fn stage_bytes(&mut self, side: Side, ts: Timestamp, bytes: &[u8]) {
        if matches!(self.stage, Stage::Smtp(_))
            && side == Side::Client
            && self.fed == [0, 0]
            && opens_tls_handshake(bytes)
        {
            self.stage = Stage::Sniff(Vec::new());
        }
        match &mut self.stage {
            Stage::Sniff(held) => {
                // TLS bytes from the client, or an SMTP greeting: nothing to redact.
                self.cap.raw(side, ts, bytes);
                match side {
                    Side::Client => {
                        held.push((ts, bytes.to_vec()));
                        if held.iter().map(|(_, b)| b.len()).sum::<usize>() > SNIFF_MAX {
                            self.sniffed_tls(ts, None);
                        }
                    }
                    Side::Server if opens_tls_record(bytes) => {
                        self.sniffed_tls(ts, Some((ts, bytes)));
                    }
                    Side::Server => self.sniffed_smtp(ts, bytes),
                }
            }
            Stage::Off => self.cap.unfollowed(side, ts, bytes),
            Stage::Smtp(_) => self.smtp_bytes(side, ts, bytes),
            Stage::Tls(_) => {
                // Analysis first: a chunk in which the TLS observer meets
                // cleartext is itself left out under the capture policy.
                self.feed_tls(Leg::EndToEnd, side, ts, bytes);
                self.cap.unfollowed(side, ts, bytes);
            }
        }
    }

    fn smtp_bytes(&mut self, side: Side, ts: Timestamp, bytes: &[u8]) {
        let Stage::Smtp(obs) = &mut self.stage else {
            return;
        };
        let mut out = Vec::new();
        let mut marks = Vec::new();
        let progress = obs.feed(side, bytes, &mut out, &mut marks);
        let desynced = obs.is_desynced();
        let start = self.fed[side_index(side)];
        let refused = out.iter().any(|e| {
            matches!(
                e,
                SmtpEvent::StartTls {
                    accepted: false,
                    ..
                }
            )
        });
        // When the observer gives up inside this chunk, what follows the
        // point of desync cannot be checked for AUTH secrets.
        let desync_at = out.iter().find_map(|e| match e {
            SmtpEvent::Desync {
                side: s, offset, ..
            } if *s == side => {
                Some(usize::try_from(offset.saturating_sub(start)).unwrap_or(usize::MAX))
            }
            _ => None,
        });
        self.cap.smtp(side, ts, bytes, marks, desync_at);
        for e in out {
            self.emit(ts, None, e);
        }
        if refused || desynced {
            // Re-read as SMTP (or not at all): their secrets cannot be marked any more.
            self.cap.release_held(ts, false);
        }
        match progress {
            Progress::StartTls {
                client_leftover,
                server_leftover,
            } => {
                self.cap.release_held(ts, true);
                self.emit(
                    ts,
                    Some(Leg::EndToEnd),
                    SessionEvent::TlsStarted {
                        after: "starttls".into(),
                    },
                );
                self.stage = Stage::Tls(Box::new(TlsObserver::new()));
                if !client_leftover.is_empty() {
                    self.feed_tls(Leg::EndToEnd, Side::Client, ts, &client_leftover);
                }
                if !server_leftover.is_empty() {
                    self.feed_tls(Leg::EndToEnd, Side::Server, ts, &server_leftover);
                }
            }
            Progress::Continue => {
                if desynced {
                    self.stage = Stage::Off;
                    self.cap.smtp_blind = true;
                }
            }
        }
    }

    /// The client spoke TLS first and the server answered in TLS (or never
    /// answered): an implicit-TLS session. Replays the held client bytes,
    /// then `server`'s, into a TLS observer.
    pub(super) fn sniffed_tls(&mut self, now: Timestamp, server: Option<(Timestamp, &[u8])>) {
        let held = match std::mem::replace(&mut self.stage, Stage::Tls(Box::default())) {
            Stage::Sniff(held) => held,
            other => {
                self.stage = other;
                return;
            }
        };
        let first = held.first().map(|(t, _)| *t).unwrap_or(now);
        self.emit(
            first,
            Some(Leg::EndToEnd),
            SessionEvent::TlsStarted {
                after: "implicit_detected".into(),
            },
        );
        for (t, b) in held {
            self.feed_tls(Leg::EndToEnd, Side::Client, t, &b);
        }
        if let Some((t, b)) = server {
            self.feed_tls(Leg::EndToEnd, Side::Server, t, b);
        }
    }

    /// The client spoke TLS first but the server greeted in cleartext: a TLS
    /// client on a STARTTLS port. The SMTP observer reads the greeting, then
    /// the held client bytes, and reports the mismatch as it does when the
    /// greeting comes first.
    fn sniffed_smtp(&mut self, ts: Timestamp, server: &[u8]) {
        let held = match std::mem::replace(&mut self.stage, Stage::Off) {
            Stage::Sniff(held) => held,
            other => {
                self.stage = other;
                return;
            }
        };
        let mut obs = Box::new(SmtpObserver::new(SmtpLimits::default()));
        let mut out = Vec::new();
        let mut marks = Vec::new();
        obs.feed(Side::Server, server, &mut out, &mut marks);
        for ev in std::mem::take(&mut out) {
            self.emit(ts, None, ev);
        }
        for (t, b) in held {
            obs.feed(Side::Client, &b, &mut out, &mut marks);
            for ev in std::mem::take(&mut out) {
                self.emit(t, None, ev);
            }
        }
        if obs.is_desynced() {
            // The client's TLS bytes held no AUTH secret; what follows is
            // the same unreadable conversation.
            self.cap.smtp_blind = true;
        } else {
            self.stage = Stage::Smtp(obs);
        }
    }

    /// Bytes of an intercept leg (client↔smtptap or smtptap↔server): TLS from
    /// their first byte, read by that leg's own observer.
    pub(super) fn leg_bytes(&mut self, leg: Leg, side: Side, ts: Timestamp, bytes: &[u8]) {
        let i = match leg {
            Leg::EndToEnd => return self.end_to_end(side, ts, bytes),
            Leg::ClientProxy => 0,
            Leg::ProxyServer => 1,
        };
        if self.legs[i].is_none() && !self.legs_done[i] {
            self.emit(
                ts,
                Some(leg),
                SessionEvent::TlsStarted {
                    after: "intercept".into(),
                },
            );
            self.legs[i] = Some(Box::default());
        }
        self.cap.leg_raw(i, side, ts, bytes);
        self.feed_tls(leg, side, ts, bytes);
    }

    /// Feeds `leg`'s TLS observer and analyses the chains it reports.
    pub(super) fn feed_tls(&mut self, leg: Leg, side: Side, ts: Timestamp, bytes: &[u8]) {
        let obs = match leg {
            Leg::EndToEnd => match &mut self.stage {
                Stage::Tls(obs) => obs,
                _ => return,
            },
            Leg::ClientProxy | Leg::ProxyServer => {
                let i = usize::from(leg == Leg::ProxyServer);
                match &mut self.legs[i] {
                    Some(obs) => obs,
                    None => return,
                }
            }
        };
        let mut out = Vec::new();
        obs.feed(side, bytes, &mut out);
        let desynced = obs.is_desynced();
        let stop = desynced || obs.is_done();
        for mut e in out {
            // The DER bytes (up to 1 MiB) go to the certificate analysis,
            // not into the kept events and the output (never serialised).
            let chain = match &mut e {
                TlsEvent::Certificate { side, ders, .. } if !ders.is_empty() => {
                    Some((*side, std::mem::take(ders)))
                }
                _ => None,
            };
            self.emit(ts, Some(leg), e);
            if let Some((sender, ders)) = chain {
                self.on_chain(ts, leg, sender, ders, None);
            }
        }
        if stop {
            match leg {
                Leg::EndToEnd => {
                    if desynced {
                        // Not TLS after all (cleartext after STARTTLS, or a
                        // wrong implicit_tls): what follows may hold AUTH
                        // lines or bodies that no observer will mark.
                        self.cap.smtp_blind = true;
                    }
                    self.stage = Stage::Off;
                }
                Leg::ClientProxy | Leg::ProxyServer => {
                    let i = usize::from(leg == Leg::ProxyServer);
                    self.legs[i] = None;
                    self.legs_done[i] = true;
                }
            }
        }
    }
}
