//! Name learning: the host names a session announced (banner, EHLO reply,
//! the client's EHLO, SNI) and the list of names a certificate chain is
//! checked against, with where each came from. No I/O.

use std::net::{IpAddr, SocketAddr};

use crate::cert::NameSource;
use crate::config::ProxyConfig;
use crate::event::{EventKind, Side};
use crate::smtp::SmtpEvent;
use crate::tls::TlsEvent;

/// Host names the conversation announced, for the certificate name checks.
#[derive(Debug, Default)]
pub(super) struct LearntNames {
    banner: Option<String>,
    ehlo_reply: Option<String>,
    client_ehlo: Option<String>,
    sni: Option<String>,
}

/// Looks like a host name someone would put in a certificate: a dot, not an
/// IP literal. A bare banner word is not a claim.
fn host_like(n: &str) -> bool {
    n.contains('.') && n.parse::<IpAddr>().is_err() && !n.starts_with('[')
}

impl LearntNames {
    /// Learns from an event about to be recorded.
    pub fn learn(&mut self, kind: &EventKind) {
        match kind {
            EventKind::Smtp(SmtpEvent::Banner { host, .. }) => self.banner = host.clone(),
            EventKind::Smtp(SmtpEvent::Capabilities { host, .. }) if self.ehlo_reply.is_none() => {
                self.ehlo_reply = host.clone();
            }
            EventKind::Smtp(SmtpEvent::Ehlo { name, .. }) if self.client_ehlo.is_none() => {
                self.client_ehlo = Some(name.clone());
            }
            EventKind::Tls(TlsEvent::ClientHello(ch)) => self.sni = ch.sni.clone(),
            _ => {}
        }
    }

    /// The names a chain sent by `side` is checked against, with their source.
    /// `dialled` is the configured upstream host; `upstream` the address
    /// connected to (it selects `[[destination]]` settings).
    pub fn names_for(
        &self,
        side: Side,
        cfg: &ProxyConfig,
        dialled: &str,
        upstream: Option<SocketAddr>,
    ) -> Vec<(NameSource, String)> {
        let mut names = Vec::new();
        let announced = cfg.tls.check_announced_names;
        match side {
            Side::Server => {
                let expected = match upstream {
                    Some(a) => cfg.expect_names_for(a.ip()),
                    None => &cfg.tls.expect_names,
                };
                names.extend(expected.iter().map(|n| (NameSource::Expected, n.clone())));
                // The name the operator configured and dialled is checked even
                // when it has a single label (`localhost`, an internal
                // `mailhub`): the sender dials it and verifies against it.
                if !dialled.is_empty()
                    && dialled.parse::<IpAddr>().is_err()
                    && !dialled.starts_with('[')
                {
                    names.push((NameSource::Upstream, dialled.to_string()));
                }
                if announced {
                    if let Some(b) = self.banner.as_deref().filter(|n| host_like(n)) {
                        names.push((NameSource::Banner, b.to_string()));
                    }
                    if let Some(e) = self.ehlo_reply.as_deref().filter(|n| host_like(n)) {
                        if Some(e) != self.banner.as_deref() {
                            names.push((NameSource::Ehlo, e.to_string()));
                        }
                    }
                }
                if let Some(sni) = &self.sni {
                    names.push((NameSource::Sni, sni.clone()));
                }
            }
            Side::Client => {
                if let Some(e) = self.client_ehlo.as_deref().filter(|n| host_like(n)) {
                    if announced {
                        names.push((NameSource::Ehlo, e.to_string()));
                    }
                }
            }
        }
        names
    }
}
