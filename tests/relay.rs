//! The relay's promises, over real sockets on loopback: bytes verbatim both
//! ways, half-close in each direction, upstream failure handling, idle
//! timeout, concurrency, and isolation of a garbage-sending client.

mod common;

use std::time::Duration;

use common::{closed_port, named, scripted_upstream, TestProxy};
use rand::{Rng, RngCore, SeedableRng};
use sha2::{Digest, Sha256};
use smtptap::lab::{self, ClientOptions, LabServer, ServerProfile, StartTls};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn sha(b: &[u8]) -> String {
    format!("{:x}", Sha256::digest(b))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_mib_random_data_and_replies_are_byte_identical() {
    let script: Vec<Vec<u8>> = vec![
        b"220 up.example.test ESMTP\r\n".to_vec(),
        b"250-up.example.test\r\n250-PIPELINING\r\n250 SIZE 10485760\r\n".to_vec(),
        b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 go ahead\r\n".to_vec(),
        b"250 2.0.0 Ok: queued\r\n".to_vec(),
        b"221 2.0.0 Bye\r\n".to_vec(),
    ];
    let server_sent: Vec<u8> = script.concat();
    let (up, up_task) = scripted_upstream(script).await;
    let proxy = TestProxy::start(&up.to_string(), "").await;

    // 5 MiB of random bytes, made into CRLF lines and dot-stuffed.
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    let mut raw = vec![0u8; 5 * 1024 * 1024];
    rng.fill_bytes(&mut raw);
    let mut body = Vec::with_capacity(raw.len() + raw.len() / 50);
    let mut line_start = true;
    for (i, &b) in raw.iter().enumerate() {
        let b = if b == b'\r' || b == b'\n' { b'x' } else { b };
        if line_start && b == b'.' {
            body.push(b'.');
        }
        body.push(b);
        line_start = false;
        if i % 77 == 76 {
            body.extend_from_slice(b"\r\n");
            line_start = true;
        }
    }
    body.extend_from_slice(b"\r\n.\r\n");

    let mut c = TcpStream::connect(proxy.addr).await.unwrap();
    let mut client_sent = Vec::new();
    let mut client_got = Vec::new();
    let mut buf = vec![0u8; 65536];
    async fn read_until(c: &mut TcpStream, got: &mut Vec<u8>, buf: &mut [u8], needle: &[u8]) {
        while !got.windows(needle.len()).any(|w| w == needle) {
            let n = c.read(buf).await.unwrap();
            assert!(n > 0, "proxy closed early");
            got.extend_from_slice(&buf[..n]);
        }
    }
    read_until(&mut c, &mut client_got, &mut buf, b"ESMTP\r\n").await;
    for part in [
        b"EHLO client.example.test\r\n".to_vec(),
        b"MAIL FROM:<a@example.test>\r\nRCPT TO:<b@example.test>\r\nDATA\r\n".to_vec(),
    ] {
        c.write_all(&part).await.unwrap();
        client_sent.extend_from_slice(&part);
        let needle: &[u8] = if part.starts_with(b"EHLO") {
            b"SIZE 10485760\r\n"
        } else {
            b"354 go ahead\r\n"
        };
        read_until(&mut c, &mut client_got, &mut buf, needle).await;
    }
    c.write_all(&body).await.unwrap();
    client_sent.extend_from_slice(&body);
    read_until(&mut c, &mut client_got, &mut buf, b"queued\r\n").await;
    c.write_all(b"QUIT\r\n").await.unwrap();
    client_sent.extend_from_slice(b"QUIT\r\n");
    read_until(&mut c, &mut client_got, &mut buf, b"Bye\r\n").await;
    c.shutdown().await.unwrap();
    let n = c.read(&mut buf).await.unwrap();
    assert_eq!(
        n, 0,
        "server side should close after the client's FIN was passed on"
    );

    let server_got = up_task.await.unwrap();
    assert_eq!(
        sha(&server_got),
        sha(&client_sent),
        "client->server bytes altered"
    );
    assert_eq!(server_got.len(), client_sent.len());
    assert_eq!(
        sha(&client_got),
        sha(&server_sent),
        "server->client bytes altered"
    );

    let events = proxy.wait_summaries(1).await;
    let close = named(&events, 1, "session.close");
    assert_eq!(close[0]["client_bytes"], client_sent.len() as u64);
    assert_eq!(close[0]["server_bytes"], server_sent.len() as u64);
    assert_eq!(close[0]["client_end"], "fin");
    assert_eq!(close[0]["server_end"], "fin");
    proxy.stop().await;
}

#[tokio::test]
async fn client_half_close_is_passed_on_and_server_can_still_answer() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = l.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).await.unwrap(); // sees the client's FIN
                                                // still able to write after the client's FIN
        s.write_all(b"after-your-fin").await.unwrap();
        s.shutdown().await.unwrap();
        got
    });
    let proxy = TestProxy::start(&up.to_string(), "").await;
    let mut c = TcpStream::connect(proxy.addr).await.unwrap();
    c.write_all(b"hello upstream").await.unwrap();
    c.shutdown().await.unwrap();
    let mut back = Vec::new();
    c.read_to_end(&mut back).await.unwrap();
    assert_eq!(back, b"after-your-fin");
    assert_eq!(server.await.unwrap(), b"hello upstream");
    let events = proxy.wait_summaries(1).await;
    let halves = named(&events, 1, "session.half_close");
    assert_eq!(halves.len(), 2);
    assert_eq!(halves[0]["side"], "client");
    assert_eq!(halves[1]["side"], "server");
    proxy.stop().await;
}

/// Bursts sized around the relay's read sizes (its 2 KiB first read, the
/// 16 KiB bulk reads), each followed at once by a FIN: every byte arrives in
/// order before the FIN, both ways, whether the burst fits the first read,
/// fills it exactly or runs past it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bursts_around_the_read_sizes_then_fin_arrive_whole_both_ways() {
    for (i, n) in [1usize, 2047, 2048, 2049, 4096, 16384, 18432, 18433, 70000]
        .into_iter()
        .enumerate()
    {
        let mut rng = rand::rngs::StdRng::seed_from_u64(i as u64);
        let mut up_data = vec![0u8; n];
        rng.fill_bytes(&mut up_data);
        let mut down_data = vec![0u8; n];
        rng.fill_bytes(&mut down_data);
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let up = l.local_addr().unwrap();
        let down = down_data.clone();
        let server = tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut got = Vec::new();
            s.read_to_end(&mut got).await.unwrap();
            s.write_all(&down).await.unwrap();
            s.shutdown().await.unwrap();
            got
        });
        let proxy = TestProxy::start(&up.to_string(), "").await;
        let mut c = TcpStream::connect(proxy.addr).await.unwrap();
        c.write_all(&up_data).await.unwrap();
        c.shutdown().await.unwrap();
        let mut back = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), c.read_to_end(&mut back))
            .await
            .unwrap_or_else(|_| panic!("{n} bytes: no FIN from the proxy within 10 s"))
            .unwrap();
        assert_eq!(
            sha(&server.await.unwrap()),
            sha(&up_data),
            "client to server, {n} bytes"
        );
        assert_eq!(sha(&back), sha(&down_data), "server to client, {n} bytes");
        let events = proxy.wait_summaries(1).await;
        let summary = named(&events, 1, "session.summary");
        assert_eq!(summary[0]["client_bytes"], n as u64, "{n} bytes");
        assert_eq!(summary[0]["server_bytes"], n as u64, "{n} bytes");
        proxy.stop().await;
    }
}

#[tokio::test]
async fn server_half_close_is_passed_on_and_client_can_still_send() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = l.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        s.write_all(b"221 bye-first").await.unwrap();
        s.shutdown().await.unwrap(); // server FIN first
        let mut got = Vec::new();
        s.read_to_end(&mut got).await.unwrap();
        got
    });
    let proxy = TestProxy::start(&up.to_string(), "").await;
    let mut c = TcpStream::connect(proxy.addr).await.unwrap();
    let mut back = Vec::new();
    c.read_to_end(&mut back).await.unwrap(); // sees the server's FIN
    assert_eq!(back, b"221 bye-first");
    c.write_all(b"late words").await.unwrap();
    c.shutdown().await.unwrap();
    assert_eq!(server.await.unwrap(), b"late words");
    let events = proxy.wait_summaries(1).await;
    let halves = named(&events, 1, "session.half_close");
    assert_eq!(halves[0]["side"], "server");
    proxy.stop().await;
}

#[tokio::test]
async fn upstream_refused_gets_421_and_an_event() {
    let port = closed_port();
    let proxy = TestProxy::start(&format!("127.0.0.1:{port}"), "").await;
    let mut c = TcpStream::connect(proxy.addr).await.unwrap();
    let mut got = String::new();
    c.read_to_string(&mut got).await.unwrap();
    assert_eq!(
        got,
        format!("{}\r\n", smtptap::config::DEFAULT_FAILURE_REPLY)
    );
    let events = proxy.wait_summaries(1).await;
    let failed = named(&events, 1, "upstream.failed");
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0]["error"], "refused", "{}", failed[0]);
    assert!(
        failed[0]["detail"]
            .as_str()
            .unwrap()
            .to_lowercase()
            .contains("refused"),
        "{}",
        failed[0]
    );
    assert_eq!(failed[0]["action"], "reply");
    assert_eq!(failed[0]["reply_delivered"], true);
    let summary = named(&events, 1, "session.summary");
    assert_eq!(summary[0]["findings"][0]["id"], "upstream.unreachable");
    proxy.stop().await;
}

#[tokio::test]
async fn upstream_refused_with_close_policy_closes_silently() {
    let port = closed_port();
    let proxy = TestProxy::start(
        &format!("127.0.0.1:{port}"),
        "on_upstream_failure = \"close\"",
    )
    .await;
    let mut c = TcpStream::connect(proxy.addr).await.unwrap();
    let mut got = Vec::new();
    let _ = c.read_to_end(&mut got).await;
    assert!(got.is_empty());
    let events = proxy.wait_summaries(1).await;
    assert_eq!(named(&events, 1, "upstream.failed")[0]["action"], "close");
    proxy.stop().await;
}

#[tokio::test]
async fn idle_session_is_closed_after_the_idle_timeout() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = l.local_addr().unwrap();
    let _server = tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        s.write_all(b"220 hi\r\n").await.unwrap();
        let mut v = Vec::new();
        let _ = s.read_to_end(&mut v).await; // then silence
    });
    let proxy = TestProxy::start(&up.to_string(), "[limits]\nidle_timeout_secs = 1").await;
    let mut c = TcpStream::connect(proxy.addr).await.unwrap();
    let mut got = Vec::new();
    let r = tokio::time::timeout(Duration::from_secs(10), c.read_to_end(&mut got)).await;
    assert!(r.is_ok(), "the proxy did not close the idle session");
    assert_eq!(got, b"220 hi\r\n");
    let events = proxy.wait_summaries(1).await;
    let close = named(&events, 1, "session.close");
    assert_eq!(close[0]["reason"], "idle_timeout");
    let d = close[0]["duration_s"].as_f64().unwrap();
    assert!(d >= 1.0, "closed before the timeout: {d}");
    proxy.stop().await;
}

fn plain_client() -> ClientOptions {
    ClientOptions {
        ehlo: "client.example.test".into(),
        starttls: StartTls::Never,
        tls: None,
        server_name: "up.example.test".into(),
        from: "a@example.test".into(),
        to: vec!["b@example.test".into()],
        body: b"Subject: hi\r\n\r\nhello\r\n.dot line\r\n".to_vec(),
        helo: false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_sessions_all_complete() {
    let server = LabServer::start(ServerProfile::new("up.example.test", None))
        .await
        .unwrap();
    let proxy = TestProxy::start(&server.addr().to_string(), "[log]\nconsole = false").await;
    let mut tasks = Vec::new();
    for i in 0..200 {
        let addr = proxy.addr;
        let mut opts = plain_client();
        opts.body = format!("Subject: {i}\r\n\r\nmessage {i}\r\n").into_bytes();
        tasks.push(tokio::spawn(async move { lab::send(addr, &opts).await }));
    }
    for t in tasks {
        let r = t.await.unwrap();
        assert_eq!(r.error, None);
        assert!(r.data_reply.unwrap().starts_with("250"));
    }
    assert_eq!(server.received().len(), 200);
    let events = proxy.wait_summaries(200).await;
    let summaries: Vec<_> = events
        .iter()
        .filter(|e| e.name() == "session.summary")
        .collect();
    assert_eq!(summaries.len(), 200);
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_client_does_not_disturb_a_concurrent_good_session() {
    let server = LabServer::start(ServerProfile::new("up.example.test", None))
        .await
        .unwrap();
    let proxy = TestProxy::start(&server.addr().to_string(), "").await;
    let paddr = proxy.addr;
    let garbage = tokio::spawn(async move {
        let mut c = TcpStream::connect(paddr).await.unwrap();
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for _ in 0..64 {
            let mut junk = vec![0u8; rng.gen_range(1..8192)];
            rng.fill_bytes(&mut junk);
            if c.write_all(&junk).await.is_err() {
                break;
            }
        }
        let _ = c.shutdown().await;
        let mut sink = Vec::new();
        let _ = c.read_to_end(&mut sink).await;
    });
    let good = lab::send(paddr, &plain_client()).await;
    assert_eq!(good.error, None);
    assert!(good.data_reply.unwrap().starts_with("250 2.0.0"));
    garbage.await.unwrap();
    assert_eq!(server.received().len(), 1);
    assert_eq!(
        server.received()[0].data,
        b"Subject: hi\r\n\r\nhello\r\n.dot line\r\n"
    );
    proxy.wait_summaries(2).await;
    proxy.stop().await;
}

#[tokio::test]
async fn listens_on_ipv6_and_ipv4_at_once() {
    let server = LabServer::start(ServerProfile::new("up.example.test", None))
        .await
        .unwrap();
    let cfg = smtptap::config::RawConfig::from_toml(
        &format!(
            "listen = [\"127.0.0.1:0\", \"[::1]:0\"]\nupstream = \"{}\"\n[log]\nconsole = false\n",
            server.addr()
        ),
        "t",
    )
    .unwrap()
    .resolve("t")
    .unwrap();
    let running = smtptap::proxy::spawn(cfg, smtptap::sink::Sinks::default())
        .await
        .unwrap();
    let addrs = running.addrs().to_vec();
    assert_eq!(addrs.len(), 2);
    assert!(addrs[0].is_ipv4() && addrs[1].is_ipv6());
    for a in &addrs {
        let r = lab::send(*a, &plain_client()).await;
        assert_eq!(r.error, None, "via {a}");
    }
    running.stop().await;
    assert_eq!(server.received().len(), 2);
}

/// A log writer that blocks until released, like a `--log -` pipe nobody reads.
struct BlockedWriter(std::sync::Arc<(std::sync::Mutex<bool>, std::sync::Condvar)>);

impl std::io::Write for BlockedWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let (lock, cv) = &*self.0;
        let mut open = lock.lock().unwrap();
        while !*open {
            open = cv.wait(open).unwrap();
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocked_log_writer_does_not_stop_mail() {
    let server = LabServer::start(ServerProfile::new("up.example.test", None))
        .await
        .unwrap();
    // Two session slots: if finished sessions waited on the stuck log, every
    // later connection would wait in the backlog forever.
    let cfg = smtptap::config::RawConfig::from_toml(
        &format!(
            "listen = [\"127.0.0.1:0\"]\nupstream = \"{}\"\n[limits]\nmax_sessions = 2\n",
            server.addr()
        ),
        "t",
    )
    .unwrap()
    .resolve("t")
    .unwrap();
    let gate = std::sync::Arc::new((std::sync::Mutex::new(false), std::sync::Condvar::new()));
    let sinks = smtptap::sink::Sinks {
        json: Some(Box::new(BlockedWriter(gate.clone()))),
        ..Default::default()
    };
    let running = smtptap::proxy::spawn(cfg, sinks).await.unwrap();
    let addr = running.addrs()[0];
    // Enough sessions to fill the writer's queue many times over.
    let mut tasks = Vec::new();
    for _ in 0..4 {
        tasks.push(tokio::spawn(async move {
            let mut ok = 0;
            for _ in 0..60 {
                let r = lab::send(addr, &plain_client()).await;
                if r.error.is_none() {
                    ok += 1;
                }
            }
            ok
        }));
    }
    let mut delivered = 0;
    for t in tasks {
        delivered += tokio::time::timeout(Duration::from_secs(120), t)
            .await
            .expect("mail stopped behind a blocked log writer")
            .unwrap();
    }
    assert_eq!(delivered, 240);
    assert_eq!(server.received().len(), 240);
    // Let the writer go so the proxy can stop and flush.
    *gate.0.lock().unwrap() = true;
    gate.1.notify_all();
    running.stop().await;
}

/// A server answering every NOOP with a ~40 KB multi-line reply: all of it
/// is relayed and logged, but the session keeps at most a few MB of events
/// for its diagnosis (the summary counts the rest).
#[tokio::test]
async fn huge_replies_are_relayed_and_logged_but_not_all_kept() {
    const N: usize = 200;
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = l.local_addr().unwrap();
    let mut reply = String::new();
    for i in 0..399 {
        reply.push_str(&format!("250-{i:04} {}\r\n", "x".repeat(90)));
    }
    reply.push_str("250 2.0.0 Ok\r\n");
    let reply_len = reply.len();
    assert!(reply_len > 38_000);
    let server = tokio::spawn(async move {
        let (s, _) = l.accept().await.unwrap();
        let mut s = tokio::io::BufReader::new(s);
        s.get_mut().write_all(b"220 up ESMTP\r\n").await.unwrap();
        let mut line = String::new();
        use tokio::io::AsyncBufReadExt;
        while s.read_line(&mut line).await.unwrap_or(0) > 0 {
            if line.starts_with("QUIT") {
                let _ = s.get_mut().write_all(b"221 2.0.0 Bye\r\n").await;
                return;
            }
            let answer = reply.clone();
            if s.get_mut().write_all(answer.as_bytes()).await.is_err() {
                return;
            }
            line.clear();
        }
    });
    let proxy = TestProxy::start(&up.to_string(), "").await;
    let mut c = TcpStream::connect(proxy.addr).await.unwrap();
    let mut got = vec![0u8; 14];
    c.read_exact(&mut got).await.unwrap();
    let mut total = 0;
    for _ in 0..N {
        c.write_all(b"NOOP\r\n").await.unwrap();
        let mut buf = vec![0u8; reply_len];
        c.read_exact(&mut buf).await.unwrap();
        assert!(buf.ends_with(b"250 2.0.0 Ok\r\n"));
        total += buf.len();
    }
    c.write_all(b"QUIT\r\n").await.unwrap();
    let mut bye = Vec::new();
    c.read_to_end(&mut bye).await.unwrap();
    assert_eq!(bye, b"221 2.0.0 Bye\r\n");
    drop(c);
    assert_eq!(total, N * reply_len);
    server.await.unwrap();
    proxy.wait_summaries(1).await;
    let events = proxy.stop().await;
    // Every reply reached the log ...
    assert_eq!(named(&events, 1, "smtp.reply").len(), N + 1);
    // ... but not every one was kept for the diagnosis: ~8 MB of replies
    // against a 4 MiB budget.
    let sum = &named(&events, 1, "session.summary")[0];
    let not_kept = sum["events_not_kept"].as_u64().unwrap();
    assert!(
        not_kept > (N / 4) as u64 && not_kept < N as u64,
        "events_not_kept = {not_kept}"
    );
    // Small events still fit after the big ones no longer do.
    assert_eq!(sum["commands"], N + 1);
    assert_eq!(sum["last_reply"], "221 2.0.0 Bye");
}

/// 700 messages over one connection (about 7,000 events, more than a
/// session keeps for its diagnosis): the summary's counts and last reply are
/// still exact.
#[tokio::test]
async fn a_long_session_is_counted_exactly_beyond_the_kept_events() {
    const N: usize = 700;
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = l.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (s, _) = l.accept().await.unwrap();
        let mut s = tokio::io::BufReader::new(s);
        s.get_mut().write_all(b"220 up ESMTP\r\n").await.unwrap();
        let mut line = String::new();
        let mut in_data = false;
        let mut n = 0;
        use tokio::io::AsyncBufReadExt;
        while s.read_line(&mut line).await.unwrap_or(0) > 0 {
            let reply: &[u8] = if in_data {
                if line == ".\r\n" {
                    in_data = false;
                    n += 1;
                    // Every 7th message is refused.
                    if n % 7 == 0 {
                        b"554 5.7.1 Rejected\r\n"
                    } else {
                        b"250 2.0.0 Ok: queued\r\n"
                    }
                } else {
                    b""
                }
            } else if line.starts_with("DATA") {
                in_data = true;
                b"354 End data with <CR><LF>.<CR><LF>\r\n"
            } else if line.starts_with("QUIT") {
                let _ = s.get_mut().write_all(b"221 2.0.0 Bye\r\n").await;
                return;
            } else {
                b"250 2.1.0 Ok\r\n"
            };
            if !reply.is_empty() && s.get_mut().write_all(reply).await.is_err() {
                return;
            }
            line.clear();
        }
    });
    let proxy = TestProxy::start(&up.to_string(), "").await;
    let c = TcpStream::connect(proxy.addr).await.unwrap();
    let mut c = tokio::io::BufReader::new(c);
    use tokio::io::AsyncBufReadExt;
    let mut line = String::new();
    c.read_line(&mut line).await.unwrap();
    for i in 0..N {
        for cmd in [
            "MAIL FROM:<a@example.test>\r\n".to_string(),
            "RCPT TO:<b@example.test>\r\n".to_string(),
            "DATA\r\n".to_string(),
            format!("Subject: {i}\r\n\r\nbody {i}\r\n.\r\n"),
        ] {
            c.get_mut().write_all(cmd.as_bytes()).await.unwrap();
            line.clear();
            c.read_line(&mut line).await.unwrap();
        }
    }
    c.get_mut().write_all(b"QUIT\r\n").await.unwrap();
    line.clear();
    c.read_line(&mut line).await.unwrap();
    assert_eq!(line, "221 2.0.0 Bye\r\n");
    drop(c);
    server.await.unwrap();
    proxy.wait_summaries(1).await;
    let events = proxy.stop().await;
    let sum = &named(&events, 1, "session.summary")[0];
    assert!(sum["events_not_kept"].as_u64().unwrap() > 1000, "{sum}");
    assert_eq!(sum["commands"], 3 * N + 1);
    assert_eq!(sum["messages_accepted"], N - N / 7);
    assert_eq!(sum["messages_rejected"], N / 7);
    assert_eq!(sum["last_reply"], "221 2.0.0 Bye");
}

/// Reads from `c` until `needle` arrived (or EOF).
async fn read_to(c: &mut TcpStream, needle: &[u8]) {
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !got.windows(needle.len()).any(|w| w == needle) {
        let n = tokio::time::timeout(Duration::from_secs(10), c.read(&mut buf))
            .await
            .expect("peer silent")
            .unwrap();
        assert!(n > 0, "closed before {needle:?}");
        got.extend_from_slice(&buf[..n]);
    }
}

/// Many MTAs reset the connection after QUIT and its 221: the session
/// `completed`, and the reset is kept as a detail. Before the 221 a reset is
/// an error.
#[tokio::test]
async fn a_client_reset_after_quit_and_221_is_a_completed_session() {
    for quit in [true, false] {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let up = l.local_addr().unwrap();
        let _server = tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            s.write_all(b"220 mx.example.test ESMTP\r\n").await.unwrap();
            let mut buf = [0u8; 1024];
            loop {
                let n = s.read(&mut buf).await.unwrap_or(0);
                if n == 0 {
                    return;
                }
                let reply: &[u8] = if buf[..n].starts_with(b"QUIT") {
                    b"221 2.0.0 Bye\r\n"
                } else {
                    b"250 mx.example.test\r\n"
                };
                if s.write_all(reply).await.is_err() {
                    return;
                }
            }
        });
        let proxy = TestProxy::start(&up.to_string(), "").await;
        let mut c = TcpStream::connect(proxy.addr).await.unwrap();
        read_to(&mut c, b"ESMTP\r\n").await;
        c.write_all(b"EHLO client.example.test\r\n").await.unwrap();
        read_to(&mut c, b"250 mx.example.test\r\n").await;
        if quit {
            c.write_all(b"QUIT\r\n").await.unwrap();
            read_to(&mut c, b"221 2.0.0 Bye\r\n").await;
        }
        // A reset: SO_LINGER 0, then close.
        c.set_zero_linger().unwrap();
        drop(c);
        let events = proxy.wait_summaries(1).await;
        proxy.stop().await;
        let close = &named(&events, 1, "session.close")[0];
        let summary = &named(&events, 1, "session.summary")[0];
        assert_eq!(close["error"], "reset", "{close}");
        if quit {
            assert_eq!(close["reason"], "completed", "{close}");
            assert_eq!(summary["close_reason"], "completed", "{summary}");
            let d = close["detail"].as_str().unwrap();
            assert!(d.contains("after QUIT and its 221: a normal end"), "{d}");
        } else {
            assert_eq!(close["reason"], "error", "{close}");
            assert_eq!(summary["close_reason"], "error", "{summary}");
        }
    }
}
