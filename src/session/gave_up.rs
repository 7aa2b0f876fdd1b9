//! A client that gave up right after the TLS handshake (`tls.client_gave_up`):
//! at close, the end-to-end TLS observer (still running: it stops only once
//! the client sent more than a `QUIT` after the handshake) is asked whether
//! the client sent no command over TLS, given how the connection ended. The
//! rule itself is the TLS observer's ([`crate::tls::TlsObserver::client_gave_up`]);
//! this file supplies the connection facts: who closed first, and whether
//! the whole session was seen. Intercept legs are not judged (on the
//! client↔smtptap leg the certificate is smtptap's own). No I/O.

use crate::event::{EventKind, Leg, SessionEvent, Side, Timestamp};

use super::input::{DirEnd, Ends};
use super::stage::Stage;
use super::SessionAnalyzer;

impl SessionAnalyzer {
    /// Emits `tls.client_gave_up` when the rule holds. `lost`: the driver
    /// stopped feeding bytes (the counts would be incomplete).
    pub(super) fn judge_client_gave_up(&mut self, ts: Timestamp, ends: &Ends, lost: bool) {
        let Stage::Tls(obs) = &self.stage else {
            return; // not TLS, or the observer stopped (desync, or the client sent commands)
        };
        let cut =
            |e: &DirEnd| matches!(e, DirEnd::Idle | DirEnd::Aborted | DirEnd::Deadline { .. });
        if lost || cut(&ends.client_end) || cut(&ends.server_end) {
            return; // smtptap ended it, or did not see all of it
        }
        let ev = obs.client_gave_up(client_closed_first(self, ends));
        if let Some(ev) = ev {
            self.emit(ts, Some(Leg::EndToEnd), ev);
        }
    }
}

/// The client's FIN came before the server's, or (no FIN at all) the
/// client's direction failed first: the client ended the connection.
fn client_closed_first(a: &SessionAnalyzer, ends: &Ends) -> bool {
    let first_fin = a.rec.kept.iter().find_map(|e| match &e.kind {
        EventKind::Session(SessionEvent::HalfClose { side }) => Some(*side),
        _ => None,
    });
    match first_fin {
        Some(side) => side == Side::Client,
        None => {
            matches!(ends.client_end, DirEnd::Error { .. })
                && matches!(ends.server_end, DirEnd::PeerFailed | DirEnd::Fin)
        }
    }
}
