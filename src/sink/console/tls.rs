//! TLS handshake lines: hellos, certificates as sent, key exchange, alerts,
//! the established session.

use super::LineKind::{Fact, Problem};
use super::Lines;
use crate::tls::{ClientHelloInfo, TlsEvent};

pub(super) fn render(e: &TlsEvent) -> Lines {
    match e {
        TlsEvent::ClientHello(h) => client_hello(h),
        TlsEvent::ServerHello {
            version,
            cipher_suite,
            group,
            resumed,
            ..
        } => vec![(
            Fact,
            format!(
                "TLS ServerHello: {version}, {cipher_suite}{}{}",
                group
                    .as_ref()
                    .map(|g| format!(", group {g}"))
                    .unwrap_or_default(),
                if *resumed { " (resumed session)" } else { "" }
            ),
        )],
        TlsEvent::HelloRetryRequest { group, .. } => vec![(
            Fact,
            format!(
                "TLS HelloRetryRequest: the server asks for key share {}",
                group.as_deref().unwrap_or("")
            ),
        )],
        TlsEvent::Certificate {
            side, count, bytes, ..
        } => vec![(
            Fact,
            format!("TLS Certificate from the {side}: {count} certificate(s), {bytes} bytes"),
        )],
        TlsEvent::CertificateHidden { version, .. } => vec![(
            Fact,
            format!("{version}: the certificate is encrypted and cannot be seen passively"),
        )],
        TlsEvent::CertificateRequest { .. } => {
            vec![(Fact, "the server asks for a client certificate".into())]
        }
        // Shown by what follows it (the encrypted Finished, tls.established).
        TlsEvent::ChangeCipherSpec { .. } => Vec::new(),
        TlsEvent::ServerKeyExchange {
            kind,
            group,
            dh_bits,
        } => vec![(
            Fact,
            format!(
                "TLS key exchange: {kind}{}{}",
                group
                    .as_ref()
                    .map(|g| format!(", group {g}"))
                    .unwrap_or_default(),
                dh_bits.map(|b| format!(", {b}-bit DH")).unwrap_or_default()
            ),
        )],
        TlsEvent::Alert {
            side,
            level,
            description,
            encrypted,
            ..
        } => vec![(
            if description == "close_notify" {
                Fact
            } else {
                Problem
            },
            format!(
                "TLS alert from the {side}: {level} {description}{}",
                if *encrypted { " (encrypted)" } else { "" }
            ),
        )],
        TlsEvent::Established {
            version,
            cipher_suite,
        } => vec![(Fact, format!("TLS established: {version}, {cipher_suite}"))],
        TlsEvent::ClientGaveUp { note, .. } => vec![(
            Problem,
            format!("TLS: the client gave up right after the handshake: {note}"),
        )],
        TlsEvent::Desync {
            side,
            reason,
            offset,
        } => vec![super::desync("TLS", *side, *offset, reason)],
    }
}

fn client_hello(h: &ClientHelloInfo) -> Lines {
    vec![
        (
            Fact,
            format!(
                "TLS ClientHello: up to {}, SNI {}, {}, ALPN [{}]",
                h.max_version,
                h.sni.as_deref().unwrap_or("(none)"),
                h.suites_in_words(),
                h.alpn.join(", ")
            ),
        ),
        (Fact, format!("    JA4 {}  JA3 {}", h.ja4, h.ja3)),
    ]
}
