//! The SMTP conversation inside TLS, as a driver that terminates TLS hands
//! it in (intercept mode decrypts both legs; a probe that made its own TLS
//! session could do the same): [`SessionAnalyzer::plaintext`] feeds one SMTP
//! observer for the inner conversation, whose events carry no leg, like the
//! cleartext ones. After a STARTTLS the observer expects no banner (the
//! first reply answers the new EHLO); with implicit TLS the banner comes
//! first. What reaches the capture's decrypted flow follows the same policy
//! as the cleartext (AUTH secrets starred, bodies left out). No I/O.

use crate::event::{Leg, SessionEvent, Side, Timestamp};
use crate::smtp::{SmtpLimits, SmtpObserver};

use super::SessionAnalyzer;

/// The inner SMTP observer's state.
#[derive(Debug, Default)]
pub(super) struct Inner {
    /// The observer, created at the first plaintext byte.
    obs: Option<Box<SmtpObserver>>,
    /// The observer gave up: what follows is only counted.
    stopped: bool,
    /// The driver found the session to be implicit TLS without it being
    /// configured ([`SessionAnalyzer::implicit_tls_detected`]).
    implicit: bool,
}

impl SessionAnalyzer {
    /// A driver that terminates TLS found the client speaking TLS from its
    /// first byte, unconfigured (intercept mode, SMTPS on a listener without
    /// `implicit_tls`): the session is implicit TLS as if configured, so the
    /// conversation inside TLS starts with the banner. Reported as
    /// `tls.started` with `after: implicit_detected`, as passthrough does.
    /// Call it before the first plaintext byte; later it changes nothing.
    pub fn implicit_tls_detected(&mut self, ts: Timestamp) {
        if self.finished || self.inner.implicit || self.inner.obs.is_some() {
            return;
        }
        self.inner.implicit = true;
        if matches!(self.stage, super::stage::Stage::Smtp(_)) {
            // Nothing cleartext will come: not an SMTP conversation to wait for.
            self.stage = super::stage::Stage::Tls(Box::default());
        }
        self.emit(
            ts,
            Some(Leg::EndToEnd),
            SessionEvent::TlsStarted {
                after: "implicit_detected".into(),
            },
        );
    }

    /// Bytes of the SMTP conversation inside TLS sent by `side`, read at
    /// `ts`, in the order the driver relayed them (a server's 354 before the
    /// body it invites). Any split gives the same events.
    pub fn plaintext(&mut self, side: Side, ts: Timestamp, data: &[u8]) {
        if self.finished || data.is_empty() {
            return;
        }
        if self.inner.stopped {
            self.cap.decrypted_unfollowed(side, ts, data);
            return;
        }
        let implicit = self.info.implicit_tls || self.inner.implicit;
        let obs = self.inner.obs.get_or_insert_with(|| {
            Box::new(if implicit {
                SmtpObserver::new(SmtpLimits::default())
            } else {
                SmtpObserver::after_starttls(SmtpLimits::default())
            })
        });
        let mut out = Vec::new();
        let mut marks = Vec::new();
        // A STARTTLS inside TLS is a protocol error the observer reports; a
        // 220 to it hands nothing over here (there is no third TLS layer).
        let _ = obs.feed(side, data, &mut out, &mut marks);
        let desynced = obs.is_desynced();
        self.cap.decrypted(side, ts, data, &marks, desynced);
        for e in out {
            self.emit(ts, None, e);
        }
        if desynced {
            self.inner.obs = None;
            self.inner.stopped = true;
        }
    }

    /// `side` closed the TLS session inside which the conversation ran.
    pub fn plaintext_fin(&mut self, side: Side, ts: Timestamp) {
        if self.finished {
            return;
        }
        self.cap.decrypted_fin(side, ts);
    }

    /// TLS secrets of this session's legs (NSS key log lines) the driver
    /// chose to embed in the capture (`intercept.embed_secrets`): written as
    /// a Decryption Secrets Block before the capture's next frames.
    pub fn tls_secrets(&mut self, keylog: &[u8]) {
        if !self.finished {
            self.cap.secrets(keylog);
        }
    }

    /// One of intercept mode's own facts (`intercept.decision`,
    /// `intercept.handshake`), on `leg`. Other events are ignored.
    pub fn intercept_fact(&mut self, ts: Timestamp, leg: Option<Leg>, fact: SessionEvent) {
        if self.finished {
            return;
        }
        if matches!(
            fact,
            SessionEvent::InterceptDecision { .. } | SessionEvent::InterceptHandshake { .. }
        ) {
            self.emit(ts, leg, fact);
        }
    }
}
