//! End-to-end relay benchmark: the same SMTP load sent directly to a lab
//! server, through smtptap, and through smtptap with pcapng capture on — in
//! one run, side by side.
//!
//! ```sh
//! cargo run --release --example relay_bench -- [MESSAGES] [SIZE_BYTES] [CONCURRENCY]
//! cargo run --release --example relay_bench -- 2000 10240 16
//! ```
//!
//! Each message is one full SMTP session (banner, EHLO, MAIL, RCPT, DATA,
//! QUIT) in cleartext, so the figures include connection setup. Results go to
//! stdout as a Markdown table (see docs/performance.md).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use smtptap::config::RawConfig;
use smtptap::lab::{self, ClientOptions, LabServer, ServerProfile, StartTls};
use smtptap::proxy;
use smtptap::sink::Sinks;

async fn load(addr: SocketAddr, messages: usize, size: usize, conc: usize) -> (f64, usize) {
    let mut body = Vec::with_capacity(size);
    while body.len() < size {
        body.extend_from_slice(
            b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789\r\n",
        );
    }
    body.truncate(size);
    let opts = Arc::new(ClientOptions {
        ehlo: "bench.example.test".into(),
        starttls: StartTls::Never,
        tls: None,
        server_name: "bench".into(),
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
            while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < messages {
                let r = lab::send(addr, &opts).await;
                if r.error.is_some() {
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

async fn through_proxy(
    upstream: SocketAddr,
    capture: Option<&str>,
    messages: usize,
    size: usize,
    conc: usize,
) -> Result<(f64, usize), String> {
    let mut text =
        format!("listen = [\"127.0.0.1:0\"]\nupstream = \"{upstream}\"\n[log]\nconsole = false\n");
    if let Some(dir) = capture {
        text.push_str(&format!("[capture]\nenabled = true\npath = \"{dir}\"\n"));
    }
    let cfg = RawConfig::from_toml(&text, "bench")
        .and_then(|r| r.resolve("bench"))
        .map_err(|e| e.to_string())?;
    let running = proxy::spawn(cfg, Sinks::default()).await?;
    let addr = running.addrs()[0];
    let r = load(addr, messages, size, conc).await;
    running.stop().await;
    Ok(r)
}

#[tokio::main]
async fn main() -> Result<(), String> {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let messages = args.first().copied().unwrap_or(2000);
    let size = args.get(1).copied().unwrap_or(10 * 1024);
    let conc = args.get(2).copied().unwrap_or(16);
    let server = LabServer::start(ServerProfile::new("bench.example.test", None))
        .await
        .map_err(|e| e.to_string())?;
    let up = server.addr();
    let cap_dir = std::env::temp_dir().join(format!("smtptap-bench-{}", std::process::id()));
    std::fs::create_dir_all(&cap_dir).map_err(|e| e.to_string())?;
    let cap = format!("{}/", cap_dir.display());

    // warm-up
    let _ = load(up, 100, size, conc).await;
    println!("{messages} messages of {size} bytes, {conc} concurrent connections, one session per message\n");
    println!("| path | seconds | messages/s | MiB/s | vs direct | failed |");
    println!("|---|---|---|---|---|---|");
    let (direct, f0) = load(up, messages, size, conc).await;
    let row = |name: &str, secs: f64, failed: usize| {
        let mps = messages as f64 / secs;
        let mibs = (messages * size) as f64 / secs / 1024.0 / 1024.0;
        println!(
            "| {name} | {secs:.2} | {mps:.0} | {mibs:.1} | {:.2} | {failed} |",
            direct / secs
        );
    };
    row("direct (client → lab server)", direct, f0);
    let (p, f1) = through_proxy(up, None, messages, size, conc).await?;
    row("through smtptap", p, f1);
    let (pc, f2) = through_proxy(up, Some(&cap), messages, size, conc).await?;
    row("through smtptap, capture on", pc, f2);
    let bytes: u64 = std::fs::read_dir(&cap_dir)
        .map(|d| {
            d.filter_map(|e| e.ok()?.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0);
    println!(
        "\ncapture written: {:.1} MiB in {}",
        bytes as f64 / 1048576.0,
        cap_dir.display()
    );
    let _ = std::fs::remove_dir_all(&cap_dir);
    Ok(())
}
