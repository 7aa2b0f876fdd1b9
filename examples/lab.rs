//! The lab: a full smtptap session in one process, on a fresh machine.
//!
//! ```sh
//! cargo run --release --example lab
//! ```
//!
//! 1. Mints a small PKI (root CA → issuing CA → a certificate for a cloud
//!    gateway, `mail.gateway.example.test`).
//! 2. Starts an SMTP server with STARTTLS presenting that certificate (the
//!    "gateway"), and smtptap in front of it, trusting the lab root CA.
//! 3. Session 1: a client sends one message with STARTTLS, TLS 1.2 (as an
//!    Exchange server on Windows Server 2019 would, so the certificate is
//!    visible on the wire). Clean: no warning or error expected.
//! 4. Session 2: the same gateway, but the sender expects its partner's name
//!    (`mail.partner.example.test`), as when a partner's MX was moved behind a
//!    cloud gateway: the diagnosis shows the name mismatch.
//!
//! Prints the transcript, the summaries and the diagnoses; exits 0 when both
//! sessions were diagnosed as expected, 1 otherwise. Also writes every event
//! to `lab-events.jsonl`.

use std::process::ExitCode;
use std::sync::Arc;

use smtptap::cert::mint::{Ca, LeafSpec};
use smtptap::config::RawConfig;
use smtptap::event::Event;
use smtptap::lab::{self, ClientOptions, LabServer, ServerProfile, StartTls};
use smtptap::proxy;
use smtptap::sink::{self, console::Console, Collector, Sinks};

const GATEWAY: &str = "mail.gateway.example.test";
const PARTNER: &str = "mail.partner.example.test";

fn tls12_client() -> Arc<rustls::ClientConfig> {
    // Opportunistic TLS as most MTAs do it (any certificate accepted), but
    // limited to TLS 1.2 so the certificate chain crosses the wire in clear.
    lab::client_config_opportunistic_with(&[&rustls::version::TLS12])
}

async fn session(
    title: &str,
    upstream: &str,
    extra_toml: &str,
    ca_file: &str,
    server_name: &str,
    pcap: &str,
) -> Result<Vec<Event>, String> {
    println!("\n=== {title}\n");
    let _ = std::fs::remove_file(pcap);
    let text = format!(
        "listen = [\"127.0.0.1:0\"]\nupstream = \"{upstream}\"\n[log]\njson = \"lab-events.jsonl\"\n[capture]\nenabled = true\npath = \"{pcap}\"\n[tls]\nca_files = [\"{ca_file}\"]\n{extra_toml}\n"
    );
    let cfg = RawConfig::from_toml(&text, "lab")
        .and_then(|r| r.resolve("lab"))
        .map_err(|e| e.to_string())?;
    let collected: Collector = Default::default();
    let sinks = Sinks {
        json: Some(
            sink::json::open(std::path::Path::new("lab-events.jsonl"))
                .map_err(|e| e.to_string())?,
        ),
        console: Some(Console::new(Box::new(std::io::stdout()), false)),
        memory: Some(collected.clone()),
        json_file: None,
    };
    let running = proxy::spawn(cfg, sinks).await?;
    let addr = running
        .addrs()
        .first()
        .copied()
        .ok_or("the proxy has no listening address")?;
    let opts = ClientOptions {
        ehlo: "exchange.contoso.example.test".into(),
        starttls: StartTls::IfOffered,
        tls: Some(tls12_client()),
        server_name: server_name.into(),
        from: "alice@contoso.example.test".into(),
        to: vec!["bob@partner.example.test".into()],
        body: b"From: alice@contoso.example.test\r\nTo: bob@partner.example.test\r\nSubject: lab\r\n\r\nHello through smtptap.\r\n".to_vec(),
        helo: false,
    };
    let report = lab::send(addr, &opts).await;
    running.stop().await;
    if let Some(e) = report.error {
        return Err(format!("the lab client failed: {e}"));
    }
    let events = collected.lock().map(|v| v.clone()).unwrap_or_default();
    Ok(events)
}

fn findings(events: &[Event]) -> Vec<(String, String)> {
    events
        .iter()
        .filter(|e| e.name() == "session.summary")
        .filter_map(|e| serde_json::to_value(e).ok())
        .flat_map(|v| {
            v["findings"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .map(|f| {
                    (
                        f["id"].as_str().unwrap_or("").to_string(),
                        f["severity"].as_str().unwrap_or("").to_string(),
                    )
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

async fn run() -> Result<(), String> {
    let e = |x: smtptap::cert::CertError| x.to_string();
    let root = Ca::new("smtptap lab root CA").map_err(e)?;
    let issuing = root.intermediate("smtptap lab issuing CA").map_err(e)?;
    let gw = issuing
        .issue(&LeafSpec {
            // Like a public CA's certificate: revocation locations present.
            crl_urls: vec!["http://crl.lab.example.test/issuing.crl".into()],
            ocsp_url: Some("http://ocsp.lab.example.test".into()),
            ..LeafSpec::server([GATEWAY.to_string(), format!("*.{GATEWAY}")]).with_cn(Some(GATEWAY))
        })
        .map_err(e)?;
    let ca_path = std::env::temp_dir().join("smtptap-lab-root-ca.pem");
    std::fs::write(&ca_path, root.pem()).map_err(|x| format!("{}: {x}", ca_path.display()))?;
    let ca_file = ca_path.display().to_string();

    let tls =
        lab::server_config(gw.chain_der.clone(), gw.key_der.clone()).map_err(|x| x.to_string())?;
    let server = LabServer::start(ServerProfile::new(GATEWAY, Some(tls)))
        .await
        .map_err(|x| x.to_string())?;
    let upstream = server.addr().to_string();

    let s1 = session(
        "Session 1: a client sends one message with STARTTLS through smtptap",
        &upstream,
        "",
        &ca_file,
        GATEWAY,
        "lab.pcapng",
    )
    .await?;
    let s2 = session(
        "Session 2: the sender expects its partner's certificate, but the MX now points at a gateway",
        &upstream,
        &format!("expect_names = [\"{PARTNER}\"]"),
        &ca_file,
        PARTNER,
        "lab-mismatch.pcapng",
    )
    .await?;

    println!("\n=== Result\n");
    let f1 = findings(&s1);
    let f2 = findings(&s2);
    let bad1: Vec<_> = f1.iter().collect();
    println!("session 1 findings: {f1:?}");
    println!("session 2 findings: {f2:?}");
    println!("events also written to lab-events.jsonl");
    println!(
        "captures: lab.pcapng and lab-mismatch.pcapng; open them in Wireshark, or:\n  tshark -r lab.pcapng -d tcp.port=={},smtp -Y 'smtp || tls.handshake'",
        server.addr().port()
    );
    if server.received().len() != 2 {
        return Err(format!(
            "the lab server received {} messages, expected 2",
            server.received().len()
        ));
    }
    if !bad1.is_empty() {
        return Err(format!("session 1 should be clean, got {bad1:?}"));
    }
    if !f2.iter().any(|(id, _)| id == "cert.name_mismatch") {
        return Err("session 2 should show cert.name_mismatch".into());
    }
    println!("lab: both sessions diagnosed as expected");
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lab: {e}");
            ExitCode::from(1)
        }
    }
}
