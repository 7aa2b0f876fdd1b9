//! The docs are part of the contract: every event the code can emit is
//! documented in docs/log-schema.md, every finding id in docs/findings.md, and
//! the README shows the two commands CI relies on.

use std::fs;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// Every `#[serde(rename = "x.y")]` in src/ whose name is an event name.
fn event_names() -> Vec<String> {
    let mut files = Vec::new();
    rust_files(&root().join("src"), &mut files);
    let prefixes = [
        "run.",
        "session.",
        "upstream.",
        "smtp.",
        "tls.",
        "cert.",
        "capture.",
        "observer.",
        "headers.",
        "probe.",
        "intercept.",
    ];
    let mut names = Vec::new();
    for f in files {
        let text = fs::read_to_string(&f).unwrap();
        for line in text.lines() {
            let l = line.trim();
            if let Some(rest) = l.strip_prefix("#[serde(rename = \"") {
                let name = rest.split('"').next().unwrap_or("");
                if prefixes.iter().any(|p| name.starts_with(p)) && !name.ends_with("placeholder") {
                    names.push(name.to_string());
                }
            }
        }
    }
    names.sort();
    names.dedup();
    names
}

/// Every event of the JSON log (schema v1), by its dotted name.
const ALL_EVENTS: &[&str] = &[
    "run.start",
    "run.stop",
    "run.reopen",
    "run.log_recovered",
    "run.log_rotated",
    "session.open",
    "upstream.connected",
    "upstream.loop_refused",
    "upstream.failed",
    "tls.started",
    "tls.side_probe",
    "session.prior_tls_failure",
    "session.half_close",
    "observer.lagged",
    "session.close",
    "session.summary",
    "smtp.banner",
    "smtp.ehlo",
    "smtp.capabilities",
    "smtp.command",
    "smtp.reply",
    "smtp.data",
    "smtp.bdat",
    "smtp.message",
    "smtp.auth",
    "smtp.auth_data",
    "smtp.starttls",
    "smtp.masked",
    "smtp.bare_lf",
    "smtp.desync",
    "tls.client_hello",
    "tls.server_hello",
    "tls.hello_retry_request",
    "tls.certificate",
    "tls.certificate_hidden",
    "tls.certificate_request",
    "tls.server_key_exchange",
    "tls.change_cipher_spec",
    "tls.alert",
    "tls.established",
    "tls.desync",
    "tls.client_gave_up",
    "cert.info",
    "cert.parse_error",
    "cert.chain",
    "cert.crl",
    "cert.names",
    "capture.file",
    "capture.error",
    "capture.truncated",
    "capture.dropped",
    "probe.version",
    "capture.deleted",
    "intercept.decision",
    "intercept.handshake",
];

/// The name of every variant of every event enum, written out without a
/// wildcard: a new variant does not compile here until it is named, and
/// then added to [`ALL_EVENTS`] (and documented, with an example).
fn variant_name(kind: &smtptap::event::EventKind) -> &'static str {
    use smtptap::capture::CaptureEvent as Cap;
    use smtptap::cert::CertEvent as Cert;
    use smtptap::event::{EventKind as K, SessionEvent as S};
    use smtptap::smtp::SmtpEvent as Smtp;
    use smtptap::tls::TlsEvent as Tls;
    match kind {
        K::Session(e) => match e {
            S::RunStart { .. } => "run.start",
            S::RunStop { .. } => "run.stop",
            S::RunReopen { .. } => "run.reopen",
            S::RunLogRecovered { .. } => "run.log_recovered",
            S::RunLogRotated { .. } => "run.log_rotated",
            S::Open { .. } => "session.open",
            S::UpstreamConnected { .. } => "upstream.connected",
            S::UpstreamLoopRefused { .. } => "upstream.loop_refused",
            S::UpstreamFailed { .. } => "upstream.failed",
            S::TlsStarted { .. } => "tls.started",
            S::SideProbe { .. } => "tls.side_probe",
            S::PriorTlsFailure { .. } => "session.prior_tls_failure",
            S::HalfClose { .. } => "session.half_close",
            S::ObserverLagged { .. } => "observer.lagged",
            S::Close { .. } => "session.close",
            S::Summary { .. } => "session.summary",
            S::ProbeVersion { .. } => "probe.version",
            S::InterceptDecision { .. } => "intercept.decision",
            S::InterceptHandshake { .. } => "intercept.handshake",
        },
        K::Smtp(e) => match e {
            Smtp::Banner { .. } => "smtp.banner",
            Smtp::Ehlo { .. } => "smtp.ehlo",
            Smtp::Capabilities { .. } => "smtp.capabilities",
            Smtp::Command { .. } => "smtp.command",
            Smtp::Reply { .. } => "smtp.reply",
            Smtp::Data { .. } => "smtp.data",
            Smtp::Bdat { .. } => "smtp.bdat",
            Smtp::Message { .. } => "smtp.message",
            Smtp::Auth { .. } => "smtp.auth",
            Smtp::AuthData { .. } => "smtp.auth_data",
            Smtp::StartTls { .. } => "smtp.starttls",
            Smtp::Masked { .. } => "smtp.masked",
            Smtp::BareLf { .. } => "smtp.bare_lf",
            Smtp::Desync { .. } => "smtp.desync",
        },
        K::Tls(e) => match e {
            Tls::ClientHello { .. } => "tls.client_hello",
            Tls::ServerHello { .. } => "tls.server_hello",
            Tls::HelloRetryRequest { .. } => "tls.hello_retry_request",
            Tls::Certificate { .. } => "tls.certificate",
            Tls::CertificateHidden { .. } => "tls.certificate_hidden",
            Tls::CertificateRequest { .. } => "tls.certificate_request",
            Tls::ServerKeyExchange { .. } => "tls.server_key_exchange",
            Tls::ChangeCipherSpec { .. } => "tls.change_cipher_spec",
            Tls::Alert { .. } => "tls.alert",
            Tls::Established { .. } => "tls.established",
            Tls::Desync { .. } => "tls.desync",
            Tls::ClientGaveUp { .. } => "tls.client_gave_up",
        },
        K::Cert(e) => match e {
            Cert::Info { .. } => "cert.info",
            Cert::ParseError { .. } => "cert.parse_error",
            Cert::Chain { .. } => "cert.chain",
            Cert::Crl { .. } => "cert.crl",
            Cert::Names { .. } => "cert.names",
        },
        K::Capture(e) => match e {
            Cap::File { .. } => "capture.file",
            Cap::Error { .. } => "capture.error",
            Cap::Truncated { .. } => "capture.truncated",
            Cap::Dropped { .. } => "capture.dropped",
            Cap::Deleted { .. } => "capture.deleted",
        },
    }
}

/// The list above is the code's: every event name declared in src/ (but
/// `smtptap headers`' own output) is in it, and nothing else.
#[test]
fn the_event_list_is_the_codes() {
    let declared: Vec<String> = event_names()
        .into_iter()
        .filter(|n| !n.starts_with("headers."))
        .collect();
    let mut listed: Vec<String> = ALL_EVENTS.iter().map(|n| n.to_string()).collect();
    listed.sort();
    assert_eq!(
        declared, listed,
        "ALL_EVENTS differs from the events in src/"
    );
}

#[test]
fn every_event_is_documented_in_the_log_schema() {
    let doc = fs::read_to_string(root().join("docs/log-schema.md")).unwrap();
    let names = event_names();
    assert!(names.len() >= 8, "found too few events: {names:?}");
    let missing: Vec<_> = names
        .iter()
        .filter(|n| !doc.contains(&format!("### `{n}`")))
        .collect();
    assert!(
        missing.is_empty(),
        "events missing from docs/log-schema.md: {missing:?}"
    );
}

#[test]
fn every_finding_id_is_documented() {
    // The ids are the constants of `diagnose::ids`; every one must have its
    // section in docs/findings.md, and no rule spells an id outside them.
    let doc = fs::read_to_string(root().join("docs/findings.md")).unwrap();
    let ids = smtptap::diagnose::ids::ALL;
    assert!(ids.len() >= 30, "found too few finding ids: {ids:?}");
    let missing: Vec<_> = ids
        .iter()
        .filter(|i| !doc.contains(&format!("`{i}`")))
        .collect();
    assert!(
        missing.is_empty(),
        "finding ids missing from docs/findings.md: {missing:?}"
    );
}

#[test]
fn readme_shows_the_lab_and_the_test_command() {
    let readme = fs::read_to_string(root().join("README.md")).unwrap();
    assert!(readme.contains("cargo run --release --example lab"));
    assert!(readme.contains("bash scripts/test"));
    let ci = fs::read_to_string(root().join(".ci/run")).unwrap();
    assert!(ci.contains("bash scripts/test"));
    assert!(ci.contains("cargo fmt --check"));
    assert!(ci.contains("cargo clippy --all-targets -- -D warnings"));
}

/// Whether `run` looks like a run id: `r20261123T205812Z-4c1f`.
fn is_run_id(run: &str) -> bool {
    let b = run.as_bytes();
    b.len() == 22
        && b[0] == b'r'
        && b[1..9].iter().all(u8::is_ascii_digit)
        && b[9] == b'T'
        && b[10..16].iter().all(u8::is_ascii_digit)
        && &b[16..18] == b"Z-"
        && b[18..]
            .iter()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(c))
}

/// Every example line in docs/log-schema.md is a real event of schema v1: it
/// parses as one, serialises back to exactly the same line (the schema is the
/// code's, field order included), carries a run id (and a `leg` exactly on
/// `tls.*`/`cert.*`/`intercept.handshake` events), and the console renders it as at least one line
/// of its own (not the generic `name key=value` fallback). Every event has at
/// least one example.
#[test]
fn every_schema_example_parses_round_trips_and_renders_on_the_console() {
    use smtptap::event::{Event, SCHEMA_VERSION};
    use smtptap::sink::console::render;
    let doc = fs::read_to_string(root().join("docs/log-schema.md")).unwrap();
    let lines: Vec<&str> = doc.lines().filter(|l| l.starts_with("{\"ts\"")).collect();
    assert!(lines.len() >= 30, "too few example lines: {}", lines.len());
    let mut problems = Vec::new();
    let mut shown = std::collections::BTreeSet::new();
    for line in &lines {
        let ev: Event = match serde_json::from_str(line) {
            Ok(e) => e,
            Err(e) => {
                problems.push(format!("does not parse ({e}): {line}"));
                continue;
            }
        };
        let back: serde_json::Value = serde_json::to_value(&ev).unwrap();
        let doc_value: serde_json::Value = serde_json::from_str(line).unwrap();
        if back != doc_value {
            problems.push(format!(
                "does not round-trip:\n  doc:  {doc_value}\n  code: {back}"
            ));
        } else if serde_json::to_string(&ev).unwrap() != *line {
            problems.push(format!(
                "fields in another order (or numbers spelt otherwise) than the code writes them:\n  doc:  {line}\n  code: {}",
                serde_json::to_string(&ev).unwrap()
            ));
        }
        let name = doc_value["event"].as_str().unwrap_or("").to_string();
        if ev.name() != name || variant_name(&ev.kind) != name {
            problems.push(format!(
                "event {name} parsed as {} ({})",
                ev.name(),
                variant_name(&ev.kind)
            ));
        }
        shown.insert(ev.name());
        if !is_run_id(&ev.run) {
            problems.push(format!("no run id like r20261123T205812Z-4c1f: {line}"));
        }
        let on_leg =
            name.starts_with("tls.") || name.starts_with("cert.") || name == "intercept.handshake";
        if ev.leg.is_some() != on_leg {
            problems.push(format!(
                "{name}: `leg` must be {}: {line}",
                if on_leg { "present" } else { "absent" }
            ));
        }
        if name.starts_with("run.") && ev.session != 0 {
            problems.push(format!("{name} is a fact of the run: session 0"));
        }
        if name == "run.start" && doc_value["schema"] != SCHEMA_VERSION {
            problems.push(format!("run.start: schema is {SCHEMA_VERSION}: {line}"));
        }
        let out = render(&ev);
        // Shown by other lines (see console.rs): the EHLO and BDAT command
        // lines, the STARTTLS reply, ChangeCipherSpec.
        let silent = [
            "smtp.ehlo",
            "smtp.bdat",
            "smtp.starttls",
            "tls.change_cipher_spec",
        ];
        if out.is_empty() && !silent.contains(&name.as_str()) {
            problems.push(format!("renders nothing: {name}"));
        }
        if out.iter().any(|(_, t)| t.starts_with(&format!("{name} "))) {
            problems.push(format!(
                "renders through the generic fallback: {name}: {out:?}"
            ));
        }
    }
    let missing: Vec<_> = ALL_EVENTS.iter().filter(|n| !shown.contains(*n)).collect();
    if !missing.is_empty() {
        problems.push(format!("events without an example: {missing:?}"));
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
