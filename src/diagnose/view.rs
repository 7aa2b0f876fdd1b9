//! [`SessionView`]: a session's events, read through their types.
//!
//! The rules and the summary ask the view questions ("was STARTTLS offered in
//! cleartext?", "which certificate did the server present?") instead of
//! walking the events themselves, so each such question is answered once.
//!
//! With interception a session has two TLS legs, and on the client↔smtptap
//! leg smtptap itself is the server, presenting a certificate it minted. The
//! view answers for the real peers only: a certificate fact (`cert.*`) or a
//! ServerHello counts when its sender is the real peer of that side on its
//! leg ([`presented_by_peer`]).

use crate::cert::{CertEvent, CertInfo};
use crate::event::{Event, EventKind, Leg, SessionEvent, Side};
use crate::smtp::SmtpEvent;
use crate::tls::{ClientHelloInfo, TlsEvent};

/// Whether a fact sent by `side` on `leg` comes from the real peer of that
/// side rather than from smtptap: on the client↔smtptap leg smtptap is the
/// server, on the smtptap↔server leg it is the client. Passthrough
/// (`end_to_end`) and events without a leg are the peers' own.
pub fn presented_by_peer(side: Side, leg: Option<Leg>) -> bool {
    !matches!(
        (side, leg),
        (Side::Server, Some(Leg::ClientProxy)) | (Side::Client, Some(Leg::ProxyServer))
    )
}

/// A server reply (banner, reply, STARTTLS reply, the reply to a message).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reply<'a> {
    /// Reply code.
    pub code: u16,
    /// Enhanced status code, if the text started with one.
    pub enhanced: Option<&'a str>,
    /// The text, enhanced code stripped.
    pub text: &'a str,
}

impl<'a> Reply<'a> {
    /// The parts of a reply, as the events carry them.
    pub fn new(code: u16, enhanced: &'a Option<String>, text: &'a str) -> Self {
        Reply {
            code,
            enhanced: enhanced.as_deref(),
            text,
        }
    }

    /// The reply as one line: `530 5.7.0 Must issue a STARTTLS command first`
    /// (the enhanced status code is put back: the events carry it apart from
    /// the text).
    pub fn line(&self) -> String {
        let mut s = String::new();
        self.write_line(&mut s);
        s
    }

    /// [`Self::line`] into `out`, replacing what it held (its buffer is
    /// reused: a session's last reply is rewritten at every reply).
    pub fn write_line(&self, out: &mut String) {
        use std::fmt::Write;
        out.clear();
        let _ = match self.enhanced {
            Some(e) if !e.is_empty() => write!(out, "{} {e} {}", self.code, self.text),
            _ => write!(out, "{} {}", self.code, self.text),
        };
        out.truncate(out.trim_end().len());
    }
}

/// The client's HELO/EHLO.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hello<'a> {
    /// `EHLO`, `HELO` or `LHLO`.
    pub verb: &'a str,
    /// The name the client gave.
    pub name: &'a str,
}

/// The server's EHLO reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities<'a> {
    /// The server's own name (first word of the reply).
    pub host: Option<&'a str>,
    /// The keyword lines as sent.
    pub capabilities: &'a [String],
    /// STARTTLS offered.
    pub starttls: bool,
}

/// The version and cipher suite the server chose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Negotiated<'a> {
    /// `TLSv1.2`, `TLSv1.3`…
    pub version: &'a str,
    /// IANA suite name.
    pub cipher_suite: &'a str,
}

/// An SMTP fact or the start of TLS, in the order they happened
/// ([`SessionView::events_in_order`]).
#[derive(Debug, Clone, Copy)]
pub enum Ordered<'a> {
    /// A cleartext SMTP fact.
    Smtp(&'a SmtpEvent),
    /// TLS started (`tls.started`).
    TlsStarted,
}

/// A session's events (in order), with typed questions about them.
#[derive(Debug, Clone, Copy)]
pub struct SessionView<'a> {
    events: &'a [Event],
}

impl<'a> SessionView<'a> {
    /// The view of `events` (one session's, in order).
    pub fn new(events: &'a [Event]) -> Self {
        SessionView { events }
    }

    /// The cleartext SMTP facts, in order.
    pub fn smtp(&self) -> impl Iterator<Item = &'a SmtpEvent> + 'a {
        self.events.iter().filter_map(|e| match &e.kind {
            EventKind::Smtp(s) => Some(s),
            _ => None,
        })
    }

    /// The SMTP facts and the start of TLS, in order: what was said before
    /// TLS and what after.
    pub fn events_in_order(&self) -> impl Iterator<Item = Ordered<'a>> + 'a {
        self.events.iter().filter_map(|e| match &e.kind {
            EventKind::Smtp(s) => Some(Ordered::Smtp(s)),
            EventKind::Session(SessionEvent::TlsStarted { .. }) => Some(Ordered::TlsStarted),
            _ => None,
        })
    }

    /// The TLS facts of every leg, in order.
    pub fn tls(&self) -> impl Iterator<Item = &'a TlsEvent> + 'a {
        self.events.iter().filter_map(|e| match &e.kind {
            EventKind::Tls(t) => Some(t),
            _ => None,
        })
    }

    /// The session-level facts, in order.
    pub fn session(&self) -> impl Iterator<Item = &'a SessionEvent> + 'a {
        self.events.iter().filter_map(|e| match &e.kind {
            EventKind::Session(s) => Some(s),
            _ => None,
        })
    }

    /// The session-level facts with their leg (intercept mode's per-leg facts).
    pub fn session_legs(&self) -> impl Iterator<Item = (&'a SessionEvent, Option<Leg>)> + 'a {
        self.events.iter().filter_map(|e| match &e.kind {
            EventKind::Session(s) => Some((s, e.leg)),
            _ => None,
        })
    }

    /// The certificate facts about certificates the real peers presented
    /// ([`presented_by_peer`]; never one smtptap minted), in order.
    pub fn certs(&self) -> impl Iterator<Item = &'a CertEvent> + 'a {
        self.events.iter().filter_map(|e| match &e.kind {
            EventKind::Cert(c) if presented_by_peer(cert_side(c), e.leg) => Some(c),
            _ => None,
        })
    }

    /// Where the server's certificate facts came from when not the wire
    /// (`source` of the first server-side `cert.*` event).
    pub fn server_cert_source(&self) -> Option<crate::event::Source> {
        self.events.iter().find_map(|e| match &e.kind {
            EventKind::Cert(c)
                if cert_side(c) == Side::Server && presented_by_peer(Side::Server, e.leg) =>
            {
                Some(e.source)
            }
            _ => None,
        })?
    }

    /// The side-probe's report, if one was made: `(when, event)`.
    pub fn side_probe(&self) -> Option<(&'a Event, &'a SessionEvent)> {
        self.events.iter().find_map(|e| match &e.kind {
            EventKind::Session(s @ SessionEvent::SideProbe { .. }) => Some((e, s)),
            _ => None,
        })
    }

    /// The server's greeting.
    pub fn banner(&self) -> Option<Reply<'a>> {
        self.smtp().find_map(|e| match e {
            SmtpEvent::Banner {
                code,
                enhanced,
                text,
                ..
            } => Some(Reply::new(*code, enhanced, text)),
            _ => None,
        })
    }

    /// The server's replies after the banner, each with the command it answers.
    pub fn replies(&self) -> impl Iterator<Item = (Reply<'a>, Option<&'a str>)> + 'a {
        self.smtp().filter_map(|e| match e {
            SmtpEvent::Reply {
                code,
                enhanced,
                text,
                command,
                ..
            } => Some((Reply::new(*code, enhanced, text), command.as_deref())),
            _ => None,
        })
    }

    /// The client's HELO/EHLO (first).
    pub fn hello(&self) -> Option<Hello<'a>> {
        self.smtp().find_map(|e| match e {
            SmtpEvent::Ehlo { verb, name } => Some(Hello { verb, name }),
            _ => None,
        })
    }

    /// The EHLO reply seen in cleartext (before TLS started), if any.
    pub fn cleartext_capabilities(&self) -> Option<Capabilities<'a>> {
        for e in self.events {
            match &e.kind {
                EventKind::Session(SessionEvent::TlsStarted { .. }) => return None,
                EventKind::Smtp(SmtpEvent::Capabilities {
                    host,
                    capabilities,
                    starttls,
                    ..
                }) => {
                    return Some(Capabilities {
                        host: host.as_deref(),
                        capabilities,
                        starttls: *starttls,
                    })
                }
                _ => {}
            }
        }
        None
    }

    /// Whether STARTTLS was offered in cleartext (None: no EHLO reply seen).
    pub fn starttls_offered(&self) -> Option<bool> {
        self.cleartext_capabilities().map(|c| c.starttls)
    }

    /// Whether the client sent a command with this verb (upper-case).
    pub fn sent(&self, verb: &str) -> bool {
        self.smtp()
            .any(|e| matches!(e, SmtpEvent::Command { verb: v, .. } if v == verb))
    }

    /// Whether the client sent STARTTLS.
    pub fn starttls_attempted(&self) -> bool {
        self.sent("STARTTLS")
    }

    /// How TLS started (`starttls`, `implicit`, `implicit_detected`), if it did.
    fn tls_started_after(&self) -> Option<&'a str> {
        self.session().find_map(|e| match e {
            SessionEvent::TlsStarted { after } => Some(after.as_str()),
            _ => None,
        })
    }

    /// Whether the server accepted STARTTLS (or the session was implicit TLS).
    pub fn tls_started(&self) -> bool {
        self.tls_started_after().is_some()
    }

    /// Whether TLS started from the first byte (configured or detected), not
    /// after STARTTLS.
    pub fn implicit_tls(&self) -> bool {
        self.tls_started_after()
            .is_some_and(|a| a.starts_with("implicit"))
    }

    /// Whether the TLS handshake completed and data flowed.
    pub fn tls_established(&self) -> bool {
        self.tls()
            .any(|t| matches!(t, TlsEvent::Established { .. }))
    }

    /// The (first) ClientHello.
    pub fn client_hello(&self) -> Option<&'a ClientHelloInfo> {
        self.tls().find_map(|t| match t {
            TlsEvent::ClientHello(ch) => Some(&**ch),
            _ => None,
        })
    }

    /// The ClientHello sent on `leg` (intercept mode: `ClientProxy` is the
    /// real client's, `ProxyServer` smtptap's own).
    pub fn client_hello_on(&self, leg: Leg) -> Option<&'a ClientHelloInfo> {
        self.events.iter().find_map(|e| match &e.kind {
            EventKind::Tls(TlsEvent::ClientHello(ch)) if e.leg == Some(leg) => Some(&**ch),
            _ => None,
        })
    }

    /// The version and suite the server chose (its ServerHello; never one
    /// smtptap sent as the server of the client↔smtptap leg).
    pub fn negotiated(&self) -> Option<Negotiated<'a>> {
        self.events.iter().find_map(|e| match &e.kind {
            EventKind::Tls(TlsEvent::ServerHello {
                version,
                cipher_suite,
                ..
            }) if presented_by_peer(Side::Server, e.leg) => Some(Negotiated {
                version,
                cipher_suite,
            }),
            _ => None,
        })
    }

    /// The leaf certificate (index 0) `side` presented, if seen.
    pub fn leaf(&self, side: Side) -> Option<&'a CertInfo> {
        self.certs().find_map(|c| match c {
            CertEvent::Info {
                side: s,
                index: 0,
                info,
                ..
            } if *s == side => Some(&**info),
            _ => None,
        })
    }

    /// The server's leaf certificate, if seen.
    pub fn server_leaf(&self) -> Option<&'a CertInfo> {
        self.leaf(Side::Server)
    }
}

/// Whose chain a certificate fact is about.
fn cert_side(c: &CertEvent) -> Side {
    match c {
        CertEvent::Info { side, .. }
        | CertEvent::ParseError { side, .. }
        | CertEvent::Chain { side, .. }
        | CertEvent::Crl { side, .. }
        | CertEvent::Names { side, .. } => *side,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reply_line_keeps_the_enhanced_status_code() {
        let with = Some("4.7.0".to_string());
        assert_eq!(
            Reply::new(454, &with, "TLS not available due to local problem").line(),
            "454 4.7.0 TLS not available due to local problem"
        );
        assert_eq!(
            Reply::new(250, &None, "mx.example.test").line(),
            "250 mx.example.test"
        );
        let empty = Some(String::new());
        assert_eq!(Reply::new(250, &empty, "ok").line(), "250 ok");
        assert_eq!(Reply::new(221, &None, "").line(), "221");
    }

    #[test]
    fn only_smtptap_itself_is_not_a_peer() {
        assert!(presented_by_peer(Side::Server, None));
        assert!(presented_by_peer(Side::Server, Some(Leg::EndToEnd)));
        assert!(presented_by_peer(Side::Server, Some(Leg::ProxyServer)));
        assert!(!presented_by_peer(Side::Server, Some(Leg::ClientProxy)));
        assert!(presented_by_peer(Side::Client, Some(Leg::ClientProxy)));
        assert!(!presented_by_peer(Side::Client, Some(Leg::ProxyServer)));
    }
}
