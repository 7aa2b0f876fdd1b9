//! Relay findings: the upstream could not be reached, the analysis fell
//! behind, or a transparent redirect looped back to smtptap.

use super::{ids, Finding, SessionView, Severity};
use crate::event::SessionEvent;

pub(super) fn rules(v: &SessionView, out: &mut Vec<Finding>) {
    out.extend(upstream_unreachable(v));
    out.extend(observer_lagged(v));
    out.extend(upstream_loop(v));
}

fn upstream_unreachable(v: &SessionView) -> Option<Finding> {
    let (upstream, detail, tried, reply) = v.session().find_map(|e| match e {
        SessionEvent::UpstreamFailed {
            upstream,
            detail,
            tried,
            reply,
            ..
        } => Some((upstream, detail, tried, reply)),
        _ => None,
    })?;
    let mut ev = vec![format!("upstream {upstream}: {detail}")];
    ev.extend(tried.iter().map(|t| format!("tried {t}")));
    match reply {
        Some(r) => ev.push(format!("told the client: {r}")),
        None => ev.push("closed the client connection without a reply".into()),
    }
    Some(Finding::new(
        ids::UPSTREAM_UNREACHABLE,
        Severity::Error,
        format!("smtptap could not reach the upstream server {upstream}"),
        ev,
        "Check the upstream host and port in the configuration, DNS for the host name, and that \
         a firewall lets this machine reach it (from this machine: nc -vz HOST PORT). The client \
         was given a temporary failure, so it keeps the message queued and retries.",
    ))
}

fn observer_lagged(v: &SessionView) -> Option<Finding> {
    let (side, bytes) = v.session().find_map(|e| match e {
        SessionEvent::ObserverLagged {
            side,
            bytes_not_analysed,
            ..
        } => Some((side, bytes_not_analysed)),
        _ => None,
    })?;
    Some(Finding::new(
        ids::OBSERVER_LAGGED,
        Severity::Warning,
        "Part of this session was relayed but not analysed",
        vec![format!(
            "{bytes} bytes not analysed, starting with bytes from the {side}"
        )],
        "Mail was not affected. The analysis could not keep up (an overloaded machine or a slow \
         log disk): raise limits.observer_queue, log to a faster disk, or lower limits.max_sessions. \
         Facts after that point are missing from this session's report.",
    ))
}

fn upstream_loop(v: &SessionView) -> Option<Finding> {
    let (dst, reason) = v.session().find_map(|e| match e {
        SessionEvent::UpstreamLoopRefused {
            original_dst,
            reason,
        } => Some((original_dst, reason)),
        _ => None,
    })?;
    Some(Finding::new(
        ids::UPSTREAM_LOOP,
        Severity::Error,
        "The connection's original destination is smtptap itself",
        vec![format!("original destination {dst}: {reason}")],
        "The redirect rule also catches traffic addressed to the proxy (or the proxy's own \
         upstream connections). Exclude the proxy's address and its own outbound traffic from \
         the REDIRECT/TPROXY rule (see the README's recipes).",
    ))
}
