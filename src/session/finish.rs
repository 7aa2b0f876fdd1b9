//! The end of a session: the capture closed, `observer.lagged` when the
//! driver lost bytes, `session.close`, the diagnosis (a pure function of
//! the kept events), the client's TLS outcome remembered for the fallback
//! diagnosis, and `session.summary`. No I/O.

use std::net::SocketAddr;

use crate::diagnose::{self, ids, Finding};
use crate::event::{SessionEvent, Side, Timestamp};
use crate::summary;

use super::input::{Ends, UpstreamFailure};
use super::SessionAnalyzer;

impl SessionAnalyzer {
    /// The upstream could not be reached; `reply` is the line sent to the
    /// client and whether it was delivered. Ends the session.
    pub fn upstream_failed(
        &mut self,
        ts: Timestamp,
        failure: UpstreamFailure,
        reply: Option<(String, bool)>,
    ) {
        if self.finished {
            return;
        }
        let (reply_line, delivered) = match reply {
            Some((l, d)) => (Some(l), d),
            None => (None, false),
        };
        self.emit(
            ts,
            None,
            SessionEvent::UpstreamFailed {
                upstream: self.info.upstream.to_string(),
                error: failure.code.into(),
                detail: failure.detail,
                tried: failure.tried,
                action: if reply_line.is_some() {
                    "reply"
                } else {
                    "close"
                }
                .into(),
                reply: reply_line,
                reply_delivered: delivered,
            },
        );
        self.emit(
            ts,
            None,
            SessionEvent::Close {
                reason: "upstream_failed".into(),
                client_end: "closed_by_proxy".into(),
                server_end: "never_connected".into(),
                error: None,
                detail: None,
                duration_s: ts.since(self.info.opened),
                client_bytes: 0,
                server_bytes: 0,
            },
        );
        self.finish(ts, None, 0, 0, "upstream_failed");
    }

    /// The connection ended: `ends` says how each direction ended;
    /// `loss` = the driver stopped feeding bytes from this side after that
    /// many were relayed but not analysed.
    pub fn close(&mut self, ts: Timestamp, ends: Ends, loss: Option<(Side, u64)>) {
        if self.finished {
            return;
        }
        if matches!(self.stage, super::Stage::Sniff(_)) {
            self.sniffed_tls(ts, None);
        }
        // Chains whose CRLs never came back are judged without them.
        for chain in std::mem::take(&mut self.pending) {
            self.analyze_chain(
                chain.ts,
                chain.leg,
                chain.side,
                &chain.ders,
                &[],
                chain.source,
            );
        }
        for e in self.cap.close(ts, &ends, loss) {
            self.emit(ts, None, e);
        }
        if let Some(cap) = &self.shared.capture {
            // Writer events (file rotated, errors) of the run so far.
            for e in cap.take_events() {
                self.rec.pass(e);
            }
        }
        self.judge_client_gave_up(ts, &ends, loss.is_some());
        if let Some((side, bytes)) = loss {
            self.emit(
                ts,
                None,
                SessionEvent::ObserverLagged {
                    side,
                    bytes_not_analysed: bytes,
                    note: "the analysis fell behind and its queue overflowed: bytes from this point were relayed unchanged but not analysed; facts after it are missing".into(),
                },
            );
        }
        let reason = ends.reason(self.quit_answered);
        let mut error = ends.error();
        if reason == "completed" {
            // A reset after QUIT and its 221: kept, as a detail of a normal end.
            if let Some((_, d)) = &mut error {
                d.push_str(" (after QUIT and its 221: a normal end)");
            }
        }
        self.emit(
            ts,
            None,
            SessionEvent::Close {
                reason: reason.into(),
                client_end: ends.client_end.word().into(),
                server_end: ends.server_end.word().into(),
                error: error.as_ref().map(|(c, _)| c.to_string()),
                detail: error.map(|(_, d)| d),
                duration_s: ts.since(self.info.opened),
                client_bytes: ends.client_bytes,
                server_bytes: ends.server_bytes,
            },
        );
        let upstream = self.upstream_addr;
        self.finish(ts, upstream, ends.client_bytes, ends.server_bytes, reason);
    }

    fn finish(
        &mut self,
        ts: Timestamp,
        upstream_addr: Option<SocketAddr>,
        client_bytes: u64,
        server_bytes: u64,
        reason: &str,
    ) {
        let cfg = &self.shared.cfg;
        let expected_names = match upstream_addr.or(self.upstream_addr) {
            Some(a) => cfg.expect_names_for(a.ip()),
            None => &cfg.tls.expect_names,
        }
        .to_vec();
        let host = &self.info.upstream.host;
        let dialled_name = (!host.is_empty()
            && host.parse::<std::net::IpAddr>().is_err()
            && !host.starts_with('['))
        .then(|| host.clone());
        let ctx = diagnose::Context {
            expiry_warning_days: cfg.tls.expiry_warning_days,
            expected_names,
            dialled_name,
            checks_chains: self.shared.trust.is_some(),
        };
        let findings: Vec<Finding> = diagnose::diagnose(&self.rec.kept, &ctx);
        let started = self.rec.kept.iter().any(|e| {
            matches!(
                e.kind,
                crate::event::EventKind::Session(SessionEvent::TlsStarted { .. })
            )
        });
        if started {
            let failed = findings
                .iter()
                .find(|f| f.id == ids::TLS_HANDSHAKE_FAILED || f.id == ids::TLS_NOT_TLS)
                .map(|f| f.title.clone());
            self.shared
                .record_tls_outcome(self.info.client.ip(), self.info.id, ts, failed);
        }
        let summary = summary::summarize(
            &self.info,
            upstream_addr,
            &self.rec.kept,
            summary::Totals {
                duration_s: ts.since(self.info.opened),
                client_bytes,
                server_bytes,
                close_reason: reason.to_string(),
                events_not_kept: self.rec.not_kept,
                counts: std::mem::take(&mut self.rec.counts),
            },
            findings,
        );
        self.emit(ts, None, SessionEvent::Summary(Box::new(summary)));
        self.finished = true;
    }
}
