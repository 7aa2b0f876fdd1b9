//! Relay findings: the upstream could not be reached (or the proxy host ran
//! out of file descriptors trying), the analysis fell behind, a transparent
//! redirect looped back to smtptap, or the proxy closed the session because
//! a line or the session itself took too long.

use super::{ids, Finding, SessionView, Severity};
use crate::event::SessionEvent;

pub(super) fn rules(v: &SessionView, out: &mut Vec<Finding>) {
    out.extend(upstream_unreachable(v));
    out.extend(observer_lagged(v));
    out.extend(upstream_loop(v));
    out.extend(deadline(v));
}

fn upstream_unreachable(v: &SessionView) -> Option<Finding> {
    let (upstream, error, detail, tried, reply) = v.session().find_map(|e| match e {
        SessionEvent::UpstreamFailed {
            upstream,
            error,
            detail,
            tried,
            reply,
            ..
        } => Some((upstream, error, detail, tried, reply)),
        _ => None,
    })?;
    let mut ev = vec![format!("upstream {upstream}: {detail}")];
    ev.extend(tried.iter().map(|t| format!("tried {t}")));
    match reply {
        Some(r) => ev.push(format!("told the client: {r}")),
        None => ev.push("closed the client connection without a reply".into()),
    }
    if error == "local_resources" {
        // EMFILE/ENFILE: the proxy could not open a socket; the upstream was never tried.
        return Some(Finding::new(
            ids::PROXY_LOCAL_RESOURCES,
            Severity::Error,
            "The proxy host ran out of file descriptors; the upstream was not at fault",
            ev,
            "smtptap could not open a socket toward the upstream because this machine hit its \
             open-file limit (\"Too many open files\"). Raise the limit for the smtptap process \
             (ulimit -n, or LimitNOFILE= in its systemd unit) to at least a few times \
             limits.max_sessions, or lower limits.max_sessions. The client was given a temporary \
             failure, so it keeps the message queued and retries.",
        ));
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
        "Mail was not affected. The analysis was held up while the relay went on: it waited for \
         room in the event log's queue (a slow log disk, or a --log - pipe whose reader stopped, \
         under load). Log to a faster disk or a reader that keeps up, or raise \
         limits.observer_queue. Facts after that point are missing from this session's report.",
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

fn deadline(v: &SessionView) -> Option<Finding> {
    let (reason, detail) = v.session().find_map(|e| match e {
        SessionEvent::Close { reason, detail, .. }
            if reason == "line_timeout" || reason == "session_timeout" =>
        {
            Some((reason.as_str(), detail.clone().unwrap_or_default()))
        }
        _ => None,
    })?;
    let ev = vec![detail];
    if reason == "line_timeout" {
        Some(Finding::new(
            ids::SESSION_LINE_TIMEOUT,
            Severity::Warning,
            "smtptap closed the session: the client left a line unfinished too long",
            ev,
            "The client started a command or a line of message content and did not finish it \
             within limits.line_timeout_secs, though bytes may still have been trickling in: a \
             stalled or very slow client, or a deliberate slow attack that an idle timeout never \
             catches. The connection was closed on both sides without a reply; a message cut \
             short in DATA was not accepted, and a real client retries. If legitimate clients \
             are this slow (a very slow link), raise limits.line_timeout_secs.",
        ))
    } else {
        Some(Finding::new(
            ids::SESSION_DURATION_LIMIT,
            Severity::Warning,
            "smtptap closed the session: it lasted longer than the session limit",
            ev,
            "The session was still open when limits.session_timeout_secs ran out, however busy \
             it was. The connection was closed on both sides without a reply; a message in \
             transit at that moment was not accepted, and a real client retries. If legitimate \
             sessions last this long (huge messages over a slow link, long-lived relays), raise \
             limits.session_timeout_secs or set it to 0.",
        ))
    }
}
