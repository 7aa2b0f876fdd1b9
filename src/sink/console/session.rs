//! Run and session lifecycle lines: `run.*`, `session.*`, `upstream.*`,
//! `observer.*`, `tls.started`, `probe.version` (the summary has its own file).

use super::LineKind::{Fact, Problem, Server};
use super::Lines;
use crate::event::{Event, EventKind, SessionEvent};

pub(super) fn render(ev: &Event, e: &SessionEvent) -> Lines {
    match e {
        SessionEvent::RunStart { .. } => run_start(ev),
        SessionEvent::RunStop {
            sessions,
            aborted_at_shutdown,
            reason,
        } => {
            let (kind, mut line) = run_stop(*sessions, *aborted_at_shutdown);
            if reason != "stopped" {
                line.push_str(&format!(" ({})", stop_reason(reason)));
            }
            vec![(kind, line)]
        }
        SessionEvent::RunReopen { log, .. } => vec![(
            Fact,
            match log {
                Some(p) => format!("SIGHUP: log {p} and capture files reopened"),
                None => "SIGHUP: capture files reopened".to_string(),
            },
        )],
        SessionEvent::RunLogRecovered {
            lost_events,
            detail,
            ..
        } => vec![(
            Problem,
            format!("the JSON log is written again after a failure ({detail}): {lost_events} events were lost"),
        )],
        SessionEvent::RunLogRotated { previous, .. } => {
            vec![(Fact, format!("JSON log rotated; the previous file is {previous}"))]
        }
        SessionEvent::Open {
            client,
            listener,
            upstream,
            implicit_tls,
            ..
        } => vec![(
            Fact,
            format!(
                "session {}: client {client} connected to {listener}; upstream {upstream}{}",
                ev.session,
                if *implicit_tls { " (implicit TLS)" } else { "" }
            ),
        )],
        SessionEvent::UpstreamConnected {
            server,
            local,
            connect_s,
            ..
        } => vec![(
            Fact,
            format!(
                "connected to upstream {server} from {local} in {:.1} ms",
                connect_s * 1000.0
            ),
        )],
        SessionEvent::UpstreamLoopRefused {
            original_dst,
            reason,
        } => vec![(
            Problem,
            format!(
                "refused: the original destination {original_dst} is smtptap itself ({reason})"
            ),
        )],
        SessionEvent::UpstreamFailed {
            upstream,
            error,
            detail,
            reply,
            ..
        } => vec![
            (
                Problem,
                format!("upstream {upstream} unreachable: {}", words(error, detail)),
            ),
            match reply {
                Some(r) => (Server, format!("{r}   (sent by smtptap)")),
                None => (Fact, "closed the client connection without a reply".into()),
            },
        ],
        SessionEvent::TlsStarted { after } => vec![(Fact, tls_started(after).into())],
        SessionEvent::SideProbe {
            server_ip,
            server_port,
            sni,
            ok,
            version,
            cipher,
            chain_len,
            cached,
            age_s,
            error,
            detail,
        } => {
            let to = match sni {
                Some(n) => format!("{server_ip}:{server_port} (SNI {n})"),
                None => format!("{server_ip}:{server_port} (no SNI)"),
            };
            let when = if *cached {
                format!(", cached result from {age_s:.0} s ago")
            } else {
                String::new()
            };
            if *ok {
                vec![(
                    Fact,
                    format!(
                        "side-probe of {to}: {} {}, {chain_len} certificate(s); the certificate                          lines below come from smtptap's own connection{when}",
                        version.as_deref().unwrap_or("?"),
                        cipher.as_deref().unwrap_or("?"),
                    ),
                )]
            } else {
                vec![(
                    Problem,
                    format!(
                        "side-probe of {to} failed: {}{when}",
                        words(
                            error.as_deref().unwrap_or("other"),
                            detail.as_deref().unwrap_or("")
                        )
                    ),
                )]
            }
        }
        SessionEvent::PriorTlsFailure {
            prior_session,
            ago_s,
            reason,
        } => vec![(
            Problem,
            format!(
                "this client's TLS handshake failed {ago_s:.1} s ago (session #{prior_session}: {reason})"
            ),
        )],
        SessionEvent::HalfClose { side } => {
            vec![(Fact, format!("{side} closed its side (FIN)"))]
        }
        SessionEvent::ObserverLagged {
            bytes_not_analysed,
            ..
        } => vec![(
            Problem,
            format!(
                "analysis fell behind: {bytes_not_analysed} bytes relayed but not analysed (mail not affected)"
            ),
        )],
        SessionEvent::Close { .. } => close(e),
        SessionEvent::Summary(s) => super::summary::render(s),
        SessionEvent::ProbeVersion {
            offered, detail, ..
        } => {
            let what = if offered == "legacy" {
                "legacy ClientHello (TLS 1.0 to 1.2, classic suites)".to_string()
            } else {
                format!("{offered} offered")
            };
            vec![(Fact, format!("{what}: {detail}"))]
        }
        SessionEvent::InterceptDecision {
            action, reason, ..
        } => vec![(
            if action == "intercept" { Fact } else { Problem },
            format!("intercept: {action} ({reason})"),
        )],
        SessionEvent::InterceptHandshake {
            ok,
            version,
            cipher_suite,
            error,
            verified,
            verify_error,
            refused,
            presented,
            ..
        } => {
            let leg = match ev.leg {
                Some(crate::event::Leg::ClientProxy) => "client <-> smtptap",
                _ => "smtptap <-> server",
            };
            let mut out = Vec::new();
            if *ok {
                out.push((
                    Fact,
                    format!(
                        "{leg}: TLS established, {} {}",
                        version.as_deref().unwrap_or("?"),
                        cipher_suite.as_deref().unwrap_or("?")
                    ),
                ));
            } else {
                out.push((
                    Problem,
                    format!("{leg}: TLS handshake failed: {}", error.as_deref().unwrap_or("?")),
                ));
            }
            if let Some(p) = presented {
                out.push((Fact, format!("smtptap presented {p}")));
            }
            match (verified, refused) {
                (Some(false), true) => out.push((
                    Problem,
                    format!(
                        "upstream certificate not verified, refused (enforce): {}",
                        verify_error.as_deref().unwrap_or("?")
                    ),
                )),
                (Some(false), false) => out.push((
                    Problem,
                    format!(
                        "upstream certificate not verified (recorded): {}",
                        verify_error.as_deref().unwrap_or("?")
                    ),
                )),
                _ => {}
            }
            out
        }
    }
}

/// `run.stop`'s reason, in words.
fn stop_reason(reason: &str) -> String {
    match reason {
        "sigterm" => "SIGTERM".into(),
        "sigint" => "SIGINT".into(),
        "duration" => "--duration reached".into(),
        "max_sessions_total" => "--max-sessions-total reached".into(),
        other => other.into(),
    }
}

/// What an `error` code means, in words: its `detail`, unless empty.
pub(super) fn words<'a>(error: &'a str, detail: &'a str) -> &'a str {
    if detail.is_empty() {
        error
    } else {
        detail
    }
}

/// `smtptap 0.1.0 run r20261123T210700Z-4c1f: proxy, log schema v1`.
fn run_start(ev: &Event) -> Lines {
    let EventKind::Session(SessionEvent::RunStart {
        version,
        schema,
        mode,
        ..
    }) = &ev.kind
    else {
        return Vec::new();
    };
    let run = if ev.run.is_empty() {
        String::new()
    } else {
        format!(" run {}", ev.run)
    };
    vec![(
        Fact,
        format!("smtptap {version}{run}: {mode}, log schema v{schema}"),
    )]
}

fn run_stop(sessions: u64, aborted_at_shutdown: bool) -> (super::LineKind, String) {
    if aborted_at_shutdown {
        (
            Problem,
            format!(
                "run stopped after {sessions} session(s); sessions still open at the drain timeout were aborted"
            ),
        )
    } else {
        (Fact, format!("run stopped after {sessions} session(s)"))
    }
}

fn close(e: &SessionEvent) -> Lines {
    let SessionEvent::Close {
        reason,
        client_end,
        server_end,
        error,
        detail,
        client_bytes,
        server_bytes,
        ..
    } = e
    else {
        return Vec::new();
    };
    let mut t = format!(
        "session closed ({reason}): client {client_end}, server {server_end}; {client_bytes} bytes from client, {server_bytes} from server"
    );
    // The words of the socket error; its code when there are none.
    if let Some(w) = detail.as_deref().or(error.as_deref()) {
        t.push_str("; ");
        t.push_str(w);
    }
    vec![(Fact, t)]
}

fn tls_started(after: &str) -> &'static str {
    match after {
        "implicit" => "TLS from the first byte (implicit TLS)",
        "implicit_detected" => {
            "the client spoke TLS first and the server answered in TLS: implicit TLS (SMTPS), detected"
        }
        _ => "STARTTLS accepted: the connection is TLS from here on",
    }
}
