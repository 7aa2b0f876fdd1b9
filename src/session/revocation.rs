//! Revocation requests (`tls.check_revocation`): which CRL distribution
//! points a chain names, the chains waiting for their CRLs, and turning the
//! driver's results into `cert.crl` events. The fetching itself (network,
//! cache, budget) is the driver's. No I/O.

use crate::cert::{self, CertEvent};
use crate::event::{Leg, Side, Timestamp};

use super::input::{CrlOutcome, RequestId};

/// CRL distribution points fetched per chain, at most.
pub const MAX_CRL_URLS: usize = 8;

/// A certificate chain whose analysis waits for its CRLs.
#[derive(Debug)]
pub(super) struct PendingChain {
    /// The request that fetches its CRLs.
    pub id: RequestId,
    /// When the chain was seen (its events carry this time).
    pub ts: Timestamp,
    /// Who sent it.
    pub side: Side,
    /// Which TLS session it belongs to.
    pub leg: Leg,
    /// The DER certificates, leaf first.
    pub ders: Vec<Vec<u8>>,
    /// Where the chain came from, when not the wire.
    pub source: Option<crate::event::Source>,
}

/// The CRL distribution points named by a chain, in order, deduplicated, at
/// most [`MAX_CRL_URLS`].
pub(super) fn crl_urls(ders: &[Vec<u8>]) -> Vec<String> {
    let mut urls: Vec<String> = Vec::new();
    for der in ders.iter().take(cert::MAX_CHAIN) {
        if let Ok(info) = cert::parse_cert(der) {
            for u in info.crl_urls {
                if !urls.contains(&u) && urls.len() < MAX_CRL_URLS {
                    urls.push(u);
                }
            }
        }
    }
    urls
}

/// One `cert.crl` event per outcome, and the CRLs obtained (DER).
pub(super) fn crl_events(side: Side, outcomes: Vec<CrlOutcome>) -> (Vec<CertEvent>, Vec<Vec<u8>>) {
    let mut events = Vec::new();
    let mut crls = Vec::new();
    for o in outcomes {
        let (ok, error, detail, bytes) = match &o.result {
            Ok(d) => (true, None, None, d.iter().map(Vec::len).sum()),
            Err(e) => (false, Some(e.code.to_string()), Some(e.detail.clone()), 0),
        };
        events.push(CertEvent::Crl {
            side,
            url: o.url,
            ok,
            error,
            detail,
            bytes,
        });
        if let Ok(d) = o.result {
            crls.extend(d);
        }
    }
    (events, crls)
}
