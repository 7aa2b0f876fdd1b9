//! A stand-alone SMTP peer for tests that run processes in other network
//! namespaces (`tests/netns.rs`): the lab server and lab client of
//! `smtptap::lab`, as a command.
//!
//! ```text
//! lab_peer server --listen 10.77.2.2:25 --record /tmp/rec.jsonl [--tls]
//!     serves until killed; appends one JSON line per accepted connection
//!     {"kind":"peer","peer":"10.77.1.2:40000"} and per received message
//!     {"kind":"message","from":..,"rcpts":[..],"sha256":..,"len":..,"tls":..}
//! lab_peer client --to 10.77.2.2:25 --body-file MSG [--starttls]
//!     sends one message; prints the lab client's report as JSON; exit 0 if
//!     the message was accepted (250 to DATA), 1 otherwise
//! ```
//!
//! The server is a thin TCP front that records each client's address (what
//! the server "sees") and relays to an in-process `LabServer` on loopback.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};
use smtptap::lab::{self, ClientOptions, LabServer, ServerProfile, StartTls};

fn usage() -> ExitCode {
    eprintln!(
        "usage: lab_peer server --listen IP:PORT --record FILE [--tls]\n       lab_peer client --to IP:PORT --body-file FILE [--starttls]"
    );
    ExitCode::from(2)
}

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("lab_peer: runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match args.first().map(String::as_str) {
        Some("server") => {
            let (Some(listen), Some(record)) = (arg(&args, "--listen"), arg(&args, "--record"))
            else {
                return usage();
            };
            let Ok(listen) = listen.parse::<SocketAddr>() else {
                return usage();
            };
            let tls = args.iter().any(|a| a == "--tls");
            match rt.block_on(server(listen, PathBuf::from(record), tls)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("lab_peer server: {e}");
                    ExitCode::from(1)
                }
            }
        }
        Some("client") => {
            let (Some(to), Some(body)) = (arg(&args, "--to"), arg(&args, "--body-file")) else {
                return usage();
            };
            let Ok(to) = to.parse::<SocketAddr>() else {
                return usage();
            };
            let body = match std::fs::read(&body) {
                Ok(b) => b,
                Err(e) => {
                    eprintln!("lab_peer client: {body}: {e}");
                    return ExitCode::from(2);
                }
            };
            let starttls = args.iter().any(|a| a == "--starttls");
            let opts = ClientOptions {
                ehlo: "client.netns.test".into(),
                starttls: if starttls {
                    StartTls::Required
                } else {
                    StartTls::Never
                },
                tls: Some(lab::client_config_opportunistic()),
                server_name: "server.netns.test".into(),
                from: "alice@client.netns.test".into(),
                to: vec!["bob@server.netns.test".into()],
                body,
                helo: false,
            };
            let report = rt.block_on(lab::send(to, &opts));
            let ok = report
                .data_reply
                .as_deref()
                .is_some_and(|r| r.starts_with("250"));
            println!(
                "{}",
                serde_json::json!({
                    "replies": report.replies,
                    "tls": report.tls,
                    "data_reply": report.data_reply,
                    "error": report.error,
                })
            );
            if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        _ => usage(),
    }
}

async fn server(listen: SocketAddr, record: PathBuf, tls: bool) -> std::io::Result<()> {
    let tls_cfg = if tls {
        let ck = rcgen::generate_simple_self_signed(vec!["server.netns.test".to_string()])
            .map_err(std::io::Error::other)?;
        Some(
            lab::server_config(vec![ck.cert.der().to_vec()], ck.key_pair.serialize_der())
                .map_err(std::io::Error::other)?,
        )
    } else {
        None
    };
    let inner = LabServer::start(ServerProfile::new("server.netns.test", tls_cfg)).await?;
    let inner_addr = inner.addr();
    let file = Arc::new(Mutex::new(
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&record)?,
    ));
    let write = |file: &Arc<Mutex<std::fs::File>>, v: serde_json::Value| {
        if let Ok(mut f) = file.lock() {
            let _ = writeln!(f, "{v}");
            let _ = f.flush();
        }
    };
    let listener = tokio::net::TcpListener::bind(listen).await?;
    eprintln!("lab_peer server: listening on {listen}");
    let mut seen = 0usize;
    loop {
        tokio::select! {
            r = listener.accept() => {
                let (mut s, peer) = r?;
                write(&file, serde_json::json!({"kind": "peer", "peer": peer.to_string()}));
                tokio::spawn(async move {
                    if let Ok(mut up) = tokio::net::TcpStream::connect(inner_addr).await {
                        let _ = tokio::io::copy_bidirectional(&mut s, &mut up).await;
                    }
                });
            }
            _ = tokio::time::sleep(std::time::Duration::from_millis(50)) => {}
        }
        let got = inner.received();
        for m in got.iter().skip(seen) {
            write(
                &file,
                serde_json::json!({
                    "kind": "message",
                    "from": m.from,
                    "rcpts": m.rcpts,
                    "sha256": format!("{:x}", Sha256::digest(&m.data)),
                    "len": m.data.len(),
                    "tls": m.tls,
                }),
            );
        }
        seen = got.len();
    }
}
