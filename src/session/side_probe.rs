//! When the session core asks for a side-probe, and what the answer becomes.
//!
//! In passthrough a TLS 1.3 session hides the server's certificate. When
//! `tls.side_probe` is on (and chains are checked at all), the core asks its
//! driver for a [`Request::SideProbe`] as soon as the end-to-end TLS observer
//! reports `tls.certificate_hidden`, with what the client showed (its SNI,
//! its EHLO name) so the driver's own connection resembles the client's.
//! The answer, [`super::SessionAnalyzer::side_probe_done`], becomes a
//! `tls.side_probe` event and, on success, the chain's `cert.*` events with
//! `source: "side_probe"`.
//!
//! It owns: the decision to ask (once per session) and what was learnt for
//! it. It must not: do I/O, or wait (the driver answers when it can; a
//! session may close first, and then the answer is dropped).

use std::net::SocketAddr;

use super::input::{Request, RequestId};
use crate::event::{EventKind, Leg};
use crate::smtp::SmtpEvent;
use crate::tls::TlsEvent;

/// What one session learnt for its side-probe, and whether it asked.
#[derive(Debug, Default)]
pub(super) struct SideProbeState {
    sni: Option<String>,
    ehlo: Option<String>,
    /// The request sent, until it is answered.
    pub asked: Option<RequestId>,
    /// Asked once already (answered or not): never ask twice.
    done: bool,
}

impl SideProbeState {
    /// Learns from an event on `leg`. True when the end-to-end server
    /// certificate just turned out to be hidden (TLS 1.3) and no side-probe
    /// was asked for yet.
    pub fn learn(&mut self, kind: &EventKind, leg: Option<Leg>) -> bool {
        let end_to_end = matches!(leg, None | Some(Leg::EndToEnd));
        match kind {
            EventKind::Tls(TlsEvent::ClientHello(ch)) if end_to_end && self.sni.is_none() => {
                self.sni = ch.sni.clone();
                false
            }
            EventKind::Smtp(SmtpEvent::Command { verb, arg, .. })
                if self.ehlo.is_none() && (verb == "EHLO" || verb == "HELO") =>
            {
                let name = arg.split_whitespace().next().unwrap_or("");
                if !name.is_empty() && name.len() <= 255 {
                    self.ehlo = Some(name.to_string());
                }
                false
            }
            EventKind::Tls(TlsEvent::CertificateHidden { .. }) if end_to_end => !self.done,
            _ => false,
        }
    }

    /// The request to make now (marks it asked).
    pub fn request(&mut self, id: RequestId, addr: SocketAddr, implicit_tls: bool) -> Request {
        self.done = true;
        self.asked = Some(id);
        Request::SideProbe {
            id,
            addr,
            sni: self.sni.clone(),
            ehlo: self.ehlo.clone(),
            implicit_tls,
        }
    }

    /// The SNI the side-probe was asked to send.
    pub fn sni(&self) -> Option<&str> {
        self.sni.as_deref()
    }
}
