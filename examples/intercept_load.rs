//! Intercept-mode load: N concurrent clients, each session EHLO, STARTTLS,
//! TLS 1.3, one message, QUIT, through smtptap in passthrough and in
//! intercept mode, in one run, side by side (both proxies in this process,
//! against the same lab server).
//!
//! ```sh
//! cargo run --release --example intercept_load -- [SESSIONS] [SIZE_BYTES] [CONCURRENCY]
//! cargo run --release --example intercept_load -- 2000 1024 32
//! cargo run --release --example intercept_load -- 40 10485760 4
//! ```
//!
//! Prints a Markdown table (sessions/s and MB/s of message data); see
//! docs/performance.md.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use smtptap::cert::mint::{Ca, LeafSpec};
use smtptap::config::RawConfig;
use smtptap::lab::{self, ClientOptions, LabServer, ServerProfile, StartTls};

async fn load(addr: SocketAddr, sessions: usize, size: usize, conc: usize) -> (f64, usize) {
    let mut body = Vec::with_capacity(size);
    while body.len() < size {
        body.extend_from_slice(
            b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789\r\n",
        );
    }
    body.truncate(size);
    let opts = Arc::new(ClientOptions {
        ehlo: "load.example.test".into(),
        starttls: StartTls::Required,
        tls: Some(lab::client_config_opportunistic_with(&[
            &rustls::version::TLS13,
        ])),
        server_name: "mx.example.test".into(),
        from: "a@example.test".into(),
        to: vec!["b@example.test".into()],
        body,
        helo: false,
    });
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..conc {
        let opts = opts.clone();
        let next = next.clone();
        tasks.push(tokio::spawn(async move {
            let mut failed = 0;
            while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < sessions {
                let r = lab::send(addr, &opts).await;
                if r.error.is_some() || !r.tls {
                    eprintln!(
                        "failed session: {:?} (last replies {:?})",
                        r.error,
                        r.replies.iter().rev().take(3).collect::<Vec<_>>()
                    );
                    failed += 1;
                }
            }
            failed
        }));
    }
    let mut failed = 0;
    for t in tasks {
        failed += t.await.unwrap_or(1);
    }
    (started.elapsed().as_secs_f64(), failed)
}

async fn proxy(upstream: SocketAddr, extra: &str) -> Result<smtptap::proxy::Running, String> {
    let text = format!(
        "listen = [\"127.0.0.1:0\"]\nupstream = \"{upstream}\"\n{extra}\n[limits]\nmax_sessions = 2000\n"
    );
    let cfg = RawConfig::from_toml(&text, "intercept_load")
        .and_then(|r| r.resolve("intercept_load"))
        .map_err(|e| e.to_string())?;
    let mut sinks = smtptap::sink::Sinks::default();
    // SMTPTAP_LOAD_LOG=FILE: the intercept proxy's JSON events, to look into a slow session.
    if let (Ok(path), false) = (std::env::var("SMTPTAP_LOAD_LOG"), extra.is_empty()) {
        sinks.json = Some(
            smtptap::sink::json::open(std::path::Path::new(&path)).map_err(|e| e.to_string())?,
        );
    }
    smtptap::proxy::spawn(cfg, sinks).await
}

#[tokio::main]
async fn main() -> Result<(), String> {
    let args: Vec<String> = std::env::args().collect();
    let arg = |i: usize, d: usize| args.get(i).and_then(|s| s.parse().ok()).unwrap_or(d);
    let (sessions, size, conc) = (arg(1, 1000), arg(2, 1024), arg(3, 32));

    let ca = Ca::new("Load Upstream CA").map_err(|e| e.to_string())?;
    let leaf = ca
        .issue(&LeafSpec::server(["mx.example.test"]))
        .map_err(|e| e.to_string())?;
    let tls = lab::server_config(leaf.chain_der.clone(), leaf.key_der.clone())
        .map_err(|e| e.to_string())?;
    let server = LabServer::start(ServerProfile::new("mx.example.test", Some(tls)))
        .await
        .map_err(|e| e.to_string())?;
    let dir = std::env::temp_dir().join(format!("smtptap-intercept-load-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let (crt, key) = smtptap::cli::ca_init(&dir, "smtptap load CA")?;
    let intercept = format!(
        "mode = \"intercept\"\n[intercept]\nca_cert = \"{}\"\nca_key = \"{}\"\n",
        crt.display(),
        key.display()
    );

    println!("{sessions} sessions of {size} bytes, {conc} concurrent, STARTTLS + TLS 1.3\n");
    println!("| path | sessions/s | MB/s (message data) | failed |");
    println!("|---|---:|---:|---:|");
    for (name, extra) in [
        ("smtptap passthrough", ""),
        ("smtptap intercept", intercept.as_str()),
    ] {
        let p = proxy(server.addr(), extra).await?;
        let addr = p.addrs()[0];
        // Warm-up (minting cache, connection setup).
        let _ = load(addr, conc.min(sessions), size.min(4096), conc).await;
        let (secs, failed) = load(addr, sessions, size, conc).await;
        p.stop().await;
        let rate = sessions as f64 / secs;
        let mbs = (sessions * size) as f64 / secs / 1e6;
        println!("| {name} | {rate:.0} | {mbs:.1} | {failed} |");
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
