//! End-to-end relay benchmark: the same SMTP load sent directly to a lab
//! server, through the `smtptap` binary (a separate process), through it with
//! pcapng capture on, and through haproxy — in one run, side by side.
//!
//! ```sh
//! cargo build --release    # the smtptap binary the benchmark runs
//! cargo run --release --example relay_bench -- [MESSAGES] [SIZE_BYTES] [CONCURRENCY]
//! cargo run --release --example relay_bench -- 2000 10240 16
//! ```
//!
//! Each message is one full SMTP session (banner, EHLO, MAIL, RCPT, DATA,
//! QUIT) in cleartext, so the figures include connection setup. Results go to
//! stdout as a Markdown table (see docs/performance.md).
//!
//! With `SMTPTAP_BASELINE=/path/to/another/smtptap` the same load also goes
//! through that binary (e.g. a build of an earlier commit), alternated with
//! this one, so a change is measured before and after in one run.
//!
//! When `haproxy` is on the PATH (`apt-get install haproxy`), the same load
//! also goes through haproxy in `mode tcp`, the usual reference for a plain TCP
//! relay; otherwise that row says it was not run.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use smtptap::lab::{self, ClientOptions, LabServer, ServerProfile, StartTls};

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

/// Runs the load through the release `smtptap` binary, as a separate process
/// (like haproxy), optionally capturing to `capture`.
async fn through_proxy(
    baseline: Option<&str>,
    upstream: SocketAddr,
    capture: Option<&str>,
    messages: usize,
    size: usize,
    conc: usize,
) -> Result<(f64, usize), String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let bin = match baseline {
        Some(b) => std::path::PathBuf::from(b),
        None => exe
            .parent()
            .and_then(|p| p.parent())
            .map(|p| p.join("smtptap"))
            .filter(|p| p.exists())
            .ok_or("target/release/smtptap not found: run `cargo build --release` first")?,
    };
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| e.to_string())?;
    let mut cmd = std::process::Command::new(bin);
    cmd.args(["proxy", "--listen", &format!("127.0.0.1:{port}")])
        .args(["--upstream", &upstream.to_string(), "--quiet"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    if let Some(dir) = capture {
        cmd.args(["--pcap", dir]);
    }
    let mut child = cmd.spawn().map_err(|e| e.to_string())?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut up = false;
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            up = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    if !up {
        let _ = child.kill();
        return Err("smtptap did not start listening".into());
    }
    let r = load(addr, messages, size, conc).await;
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
    Ok(r)
}

/// Starts haproxy in `mode tcp` in front of `up`; returns the child and its port.
async fn haproxy(up: SocketAddr) -> Result<(std::process::Child, u16), String> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| e.to_string())?;
    let cfg = format!(
        "global\n  maxconn 4096\ndefaults\n  mode tcp\n  timeout connect 5s\n  timeout client 60s\n  timeout server 60s\n\
         frontend smtp\n  bind 127.0.0.1:{port}\n  default_backend up\nbackend up\n  server s1 {up}\n"
    );
    let path =
        std::env::temp_dir().join(format!("smtptap-bench-haproxy-{}.cfg", std::process::id()));
    std::fs::write(&path, cfg).map_err(|e| e.to_string())?;
    let child = std::process::Command::new("haproxy")
        .arg("-f")
        .arg(&path)
        .arg("-db")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map_err(|e| format!("haproxy not available ({e})"))?;
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return Ok((child, port));
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    Err("haproxy did not start listening".into())
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
    let baseline = std::env::var("SMTPTAP_BASELINE").ok();
    if let Some(b) = baseline.as_deref() {
        let (p, f) = through_proxy(Some(b), up, None, messages, size, conc).await?;
        row("through the baseline smtptap", p, f);
    }
    let (p, f1) = through_proxy(None, up, None, messages, size, conc).await?;
    row("through smtptap", p, f1);
    if let Some(b) = baseline.as_deref() {
        let (p, f) = through_proxy(Some(b), up, None, messages, size, conc).await?;
        row("through the baseline smtptap (again)", p, f);
    }
    let (pc, f2) = through_proxy(None, up, Some(&cap), messages, size, conc).await?;
    row("through smtptap, capture on", pc, f2);
    match haproxy(up).await {
        Ok(mut child) => {
            let port = child.1;
            let (h, f3) = load(
                SocketAddr::from(([127, 0, 0, 1], port)),
                messages,
                size,
                conc,
            )
            .await;
            row("through haproxy 'mode tcp' (reference)", h, f3);
            let _ = child.0.kill();
            let _ = child.0.wait();
        }
        Err(e) => println!("| through haproxy (reference) | not run: {e} | | | | |"),
    }
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
