//! What the analysis of every session of one run shares: the run id, the
//! resolved configuration, the trust store, the capture, and the little
//! cross-session memory the fallback diagnosis needs ("this client failed a
//! TLS handshake shortly before"). That memory is kept in event time, so a
//! capture read offline behaves as live traffic did. No I/O, no clock.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;

use crate::capture::Capture;
use crate::cert::{TrustOptions, TrustStore};
use crate::config::ProxyConfig;
use crate::event::{RunId, SessionId, Timestamp};

/// How long a failed TLS handshake from a client is remembered (event time),
/// to recognise a cleartext retry from the same client (opportunistic fallback).
pub const FALLBACK_WINDOW: Duration = Duration::from_secs(600);

/// Most clients remembered at once (bounded whatever the traffic).
const MAX_REMEMBERED: usize = 10_000;

/// An earlier session of the same client whose TLS handshake failed.
#[derive(Debug, Clone, PartialEq)]
pub struct PriorFailure {
    /// That session.
    pub session: SessionId,
    /// Seconds between its failure and now (event time).
    pub ago_s: f64,
    /// Its diagnosis title.
    pub reason: String,
}

/// Shared by every session of a run.
#[derive(Debug)]
pub struct Analysis {
    /// This run's identifier, stamped on every event.
    pub run: RunId,
    /// The resolved configuration (TLS settings, destinations, capture policy).
    pub cfg: ProxyConfig,
    /// Trust anchors for certificate verification. None: certificates are
    /// described but chains are not verified (tests only).
    pub trust: Option<TrustStore>,
    /// The pcapng writer, when capture is on.
    pub capture: Option<Capture>,
    /// Recent failed TLS handshakes by client IP: when (event time), which session, why.
    recent_tls_failures: Mutex<HashMap<IpAddr, (Timestamp, SessionId, String)>>,
}

impl Analysis {
    /// Settings only: no trust store, no capture.
    pub fn bare(run: RunId, cfg: ProxyConfig) -> Self {
        Analysis {
            run,
            cfg,
            trust: None,
            capture: None,
            recent_tls_failures: Mutex::new(HashMap::new()),
        }
    }

    /// Builds the shared analysis state from a configuration: loads the
    /// trust store and CRL files, and starts the capture writer.
    pub fn from_config(cfg: &ProxyConfig, run: RunId) -> Result<Self, String> {
        let mut a = Analysis::bare(run, cfg.clone());
        let opts = TrustOptions {
            mozilla: cfg.tls.mozilla_roots,
            system: cfg.tls.system_roots,
            ca_files: cfg.tls.ca_files.clone(),
        };
        let mut store =
            TrustStore::new(&opts).map_err(|e| format!("cannot load the trust store: {e}"))?;
        store
            .add_crl_files(&cfg.tls.crl_files)
            .map_err(|e| format!("cannot load the CRL files: {e}"))?;
        a.trust = Some(store);
        if let Some(c) = &cfg.capture {
            a.capture = Some(
                Capture::start(c.clone()).map_err(|e| format!("cannot start the capture: {e}"))?,
            );
        }
        Ok(a)
    }

    /// The last TLS failure of `ip` within [`FALLBACK_WINDOW`] before `now`.
    pub fn prior_failure(&self, ip: IpAddr, now: Timestamp) -> Option<PriorFailure> {
        let mut map = self.recent_tls_failures.lock().ok()?;
        let window = FALLBACK_WINDOW.as_secs_f64();
        map.retain(|_, (t, _, _)| now.since(*t) < window);
        map.get(&ip).map(|(t, id, why)| PriorFailure {
            session: *id,
            ago_s: now.since(*t),
            reason: why.clone(),
        })
    }

    /// Records how a session's TLS ended for its client: a failure is
    /// remembered, a success forgets earlier failures.
    pub fn record_tls_outcome(
        &self,
        ip: IpAddr,
        session: SessionId,
        at: Timestamp,
        failure: Option<String>,
    ) {
        if let Ok(mut map) = self.recent_tls_failures.lock() {
            match failure {
                Some(why) => {
                    if map.len() < MAX_REMEMBERED || map.contains_key(&ip) {
                        map.insert(ip, (at, session, why));
                    }
                }
                None => {
                    map.remove(&ip);
                }
            }
        }
    }
}
