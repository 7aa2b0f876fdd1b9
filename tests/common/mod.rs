//! Shared test support: run the proxy in-process on 127.0.0.1:0 with events
//! collected in memory.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use smtptap::config::RawConfig;
use smtptap::event::Event;
use smtptap::proxy::{self, Running};
use smtptap::sink::{Collector, Sinks};

pub struct TestProxy {
    pub addr: SocketAddr,
    pub events: Collector,
    running: Running,
}

impl TestProxy {
    /// Starts a proxy in front of `upstream` with extra TOML lines appended to the config.
    pub async fn start(upstream: &str, extra: &str) -> TestProxy {
        let text = format!("listen = [\"127.0.0.1:0\"]\nupstream = \"{upstream}\"\n{extra}\n");
        let cfg = RawConfig::from_toml(&text, "test")
            .unwrap()
            .resolve("test")
            .unwrap();
        let events: Collector = Default::default();
        let sinks = Sinks {
            memory: Some(events.clone()),
            ..Default::default()
        };
        let running = proxy::spawn(cfg, sinks).await.unwrap();
        TestProxy {
            addr: running.addrs()[0],
            events,
            running,
        }
    }

    /// Stops the proxy (drain) and waits until every event is written.
    pub async fn stop(self) -> Vec<Event> {
        tokio::time::timeout(Duration::from_secs(60), self.running.stop())
            .await
            .expect("proxy did not stop");
        self.events.lock().unwrap().clone()
    }

    /// Waits until `n` session.summary events were written (or panics after 20 s).
    pub async fn wait_summaries(&self, n: usize) -> Vec<Event> {
        for _ in 0..2000 {
            let evs = self.events.lock().unwrap().clone();
            if evs.iter().filter(|e| e.name() == "session.summary").count() >= n {
                return evs;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("fewer than {n} session summaries after 20 s");
    }
}

/// Events of one session, by name.
pub fn named(events: &[Event], session: u64, name: &str) -> Vec<serde_json::Value> {
    events
        .iter()
        .filter(|e| e.session == session && e.name() == name)
        .map(|e| serde_json::to_value(e).unwrap())
        .collect()
}

/// A free loopback port nobody listens on (bound then released).
pub fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// A fresh temporary directory for one test. It is left behind for a look
/// after the run; the ones earlier runs left (same name, a process that no
/// longer exists) are removed here, so they do not pile up.
pub fn temp_dir(name: &str) -> std::path::PathBuf {
    let tmp = std::env::temp_dir();
    let prefix = format!("smtptap-itest-{name}-");
    if let Ok(entries) = std::fs::read_dir(&tmp) {
        for e in entries.flatten() {
            let file_name = e.file_name();
            let Some(pid) = file_name
                .to_str()
                .and_then(|n| n.strip_prefix(&prefix))
                .and_then(|p| p.parse::<u32>().ok())
            else {
                continue;
            };
            if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
    let d = tmp.join(format!("{prefix}{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Runs tshark with `args`; fails with installation advice if it is missing.
pub fn tshark(args: &[&str]) -> String {
    let out = match std::process::Command::new("tshark").args(args).output() {
        Ok(o) => o,
        Err(e) => panic!(
            "cannot run tshark ({e}): run scripts/install-test-deps, or \
             DEBIAN_FRONTEND=noninteractive apt-get install -y tshark"
        ),
    };
    assert!(
        out.status.success(),
        "tshark {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The pcapng frame comments of `file` (tshark), one per line.
pub fn frame_comments(file: &std::path::Path) -> String {
    tshark(&[
        "-r",
        &file.display().to_string(),
        "-Y",
        "frame.comment",
        "-T",
        "fields",
        "-e",
        "frame.comment",
    ])
}

/// A scripted upstream that records everything it receives and sends `script`
/// piecewise as client lines arrive; returns what it received.
pub async fn scripted_upstream(
    script: Vec<Vec<u8>>,
) -> (std::net::SocketAddr, tokio::task::JoinHandle<Vec<u8>>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        let mut got = Vec::new();
        let mut buf = vec![0u8; 65536];
        let mut step = 0;
        // banner
        tokio::io::AsyncWriteExt::write_all(&mut s, &script[0])
            .await
            .unwrap();
        step += 1;
        loop {
            let n = tokio::io::AsyncReadExt::read(&mut s, &mut buf)
                .await
                .unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
            // answer once per complete "trigger" seen: count CRLFs outside DATA
            // is overkill here; the script is sent when the expected prefix is in.
            while step < script.len() && ready_for(step, &got) {
                tokio::io::AsyncWriteExt::write_all(&mut s, &script[step])
                    .await
                    .unwrap();
                step += 1;
            }
        }
        got
    });
    (addr, task)
}

/// Steps: 1 EHLO reply, 2 MAIL/RCPT/DATA replies (pipelined), 3 end-of-data reply, 4 QUIT reply.
pub fn ready_for(step: usize, got: &[u8]) -> bool {
    let text = String::from_utf8_lossy(got);
    match step {
        1 => text.contains("EHLO"),
        2 => text.contains("DATA\r\n"),
        3 => got.ends_with(b"\r\n.\r\n"),
        4 => text.ends_with("QUIT\r\n"),
        _ => false,
    }
}

/// An SMTP front on loopback for a TLS-only backend (an `openssl s_server`): banner, EHLO (offering STARTTLS), STARTTLS's
/// 220, then the raw bytes spliced to `backend` (the s_server).
pub async fn starttls_front(backend: u16) -> u16 {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((sock, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut s = BufReader::new(sock);
                let _ = s
                    .get_mut()
                    .write_all(b"220 legacy.example.test ESMTP front\r\n")
                    .await;
                let mut line = String::new();
                loop {
                    line.clear();
                    if s.read_line(&mut line).await.unwrap_or(0) == 0 {
                        return;
                    }
                    let cmd = line.trim().to_ascii_uppercase();
                    let reply: &[u8] = if cmd.starts_with("EHLO") {
                        b"250-legacy.example.test\r\n250 STARTTLS\r\n"
                    } else if cmd == "STARTTLS" {
                        b"220 2.0.0 go ahead\r\n"
                    } else if cmd == "QUIT" {
                        let _ = s.get_mut().write_all(b"221 bye\r\n").await;
                        return;
                    } else {
                        b"502 5.5.2 not here\r\n"
                    };
                    let _ = s.get_mut().write_all(reply).await;
                    if cmd == "STARTTLS" {
                        break;
                    }
                }
                let Ok(mut up) = tokio::net::TcpStream::connect(("127.0.0.1", backend)).await
                else {
                    return;
                };
                let mut sock = s.into_inner();
                let _ = tokio::io::copy_bidirectional(&mut sock, &mut up).await;
            });
        }
    });
    port
}
