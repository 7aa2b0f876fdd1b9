//! Capture through the real proxy: sessions relayed over loopback with
//! `[capture]` on, then read back by tshark. Needs tshark (scripts/install-test-deps).

mod common;

use common::{frame_comments, named, scripted_upstream, temp_dir, tshark, TestProxy};
use smtptap::cert::mint::{Ca, LeafSpec};
use smtptap::lab::{self, ClientOptions, LabServer, ServerProfile, StartTls};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn hex_decode(s: &str) -> Vec<u8> {
    (0..s.len() / 2)
        .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap())
        .collect()
}

/// `tshark -z follow,tcp,raw,0`: (bytes sent by node 0, bytes sent by node 1).
/// Node 0 is the side that sent the SYN (the client); tshark indents node 1's lines.
fn follow_raw(file: &str, port: u16) -> (Vec<u8>, Vec<u8>) {
    let out = tshark(&[
        "-r",
        file,
        "-d",
        &format!("tcp.port=={port},smtp"),
        "-q",
        "-z",
        "follow,tcp,raw,0",
    ]);
    let mut first = Vec::new();
    let mut second = Vec::new();
    let mut in_body = false;
    for line in out.lines() {
        if line.starts_with("Node 1:") {
            in_body = true;
            continue;
        }
        if !in_body || line.starts_with("====") || line.trim().is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix('\t') {
            second.extend(hex_decode(rest.trim()));
        } else {
            first.extend(hex_decode(line.trim()));
        }
    }
    (first, second)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxied_session_is_captured_byte_identical_per_direction() {
    let dir = temp_dir("capture-proxy-raw");
    let file = dir.join("raw.pcapng");
    let script: Vec<Vec<u8>> = vec![
        b"220 up.example.test ESMTP\r\n".to_vec(),
        b"250-up.example.test\r\n250-PIPELINING\r\n250 SIZE 10485760\r\n".to_vec(),
        b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 go ahead\r\n".to_vec(),
        b"250 2.0.0 Ok: queued\r\n".to_vec(),
        b"221 2.0.0 Bye\r\n".to_vec(),
    ];
    let server_sent = script.concat();
    let (up, up_task) = scripted_upstream(script).await;
    let proxy = TestProxy::start(
        &up.to_string(),
        &format!(
            "[capture]\nenabled = true\nbodies = true\npath = \"{}\"\n",
            file.display()
        ),
    )
    .await;

    let mut body = Vec::new();
    for i in 0..17_000 {
        body.extend_from_slice(
            format!("line {i:06} of a one mebibyte message .........................\r\n")
                .as_bytes(),
        );
    }
    body.extend_from_slice(b".\r\n");
    let mut c = TcpStream::connect(proxy.addr).await.unwrap();
    let mut sent = Vec::new();
    let mut got = Vec::new();
    let mut buf = vec![0u8; 65536];
    for (part, until) in [
        (
            b"EHLO c.example.test\r\n".to_vec(),
            &b"SIZE 10485760\r\n"[..],
        ),
        (
            b"MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\n".to_vec(),
            b"go ahead\r\n",
        ),
        (body.clone(), b"queued\r\n"),
        (b"QUIT\r\n".to_vec(), b"Bye\r\n"),
    ] {
        if got.is_empty() {
            while !got.ends_with(b"ESMTP\r\n") {
                let n = c.read(&mut buf).await.unwrap();
                got.extend_from_slice(&buf[..n]);
            }
        }
        c.write_all(&part).await.unwrap();
        sent.extend_from_slice(&part);
        while !got.ends_with(until) {
            let n = c.read(&mut buf).await.unwrap();
            assert!(n > 0);
            got.extend_from_slice(&buf[..n]);
        }
    }
    c.shutdown().await.unwrap();
    let _ = c.read_to_end(&mut got).await;
    assert!(
        up_task.await.unwrap() == sent,
        "the upstream did not get the client's bytes"
    );
    assert!(sent.len() > 1024 * 1024);
    proxy.wait_summaries(1).await;
    let events = proxy.stop().await;
    assert!(
        named(&events, 1, "capture.error").is_empty(),
        "unexpected capture error"
    );
    // A megabyte in one write: the analysis keeps up (the relay lets it
    // take its turn before the tap queue fills), so nothing is left out.
    assert!(
        named(&events, 1, "observer.lagged").is_empty(),
        "the analysis fell behind: {:?}",
        named(&events, 1, "observer.lagged")
    );

    // Private to its owner: a capture holds whole conversations.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "capture file mode {mode:o}");
    let f = file.display().to_string();
    let (from_client, from_server) = follow_raw(&f, up.port());
    // Compare lengths, then contents with assert! (assert_eq! on megabytes is unreadable).
    assert_eq!(
        from_client.len(),
        sent.len(),
        "client->server length differs in the capture"
    );
    assert!(
        from_client == sent,
        "client->server bytes differ in the capture"
    );
    assert_eq!(
        from_server.len(),
        server_sent.len(),
        "server->client length differs"
    );
    assert!(
        from_server == server_sent,
        "server->client bytes differ in the capture"
    );
    let cmds = tshark(&[
        "-r",
        &f,
        "-d",
        &format!("tcp.port=={},smtp", up.port()),
        "-Y",
        "smtp.req",
        "-T",
        "fields",
        "-e",
        "smtp.req.command",
    ]);
    let cmds: Vec<&str> = cmds
        .lines()
        .flat_map(|l| l.split(","))
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    assert!(
        cmds.contains(&"EHLO") && cmds.contains(&"MAIL") && cmds.contains(&"DATA"),
        "{cmds:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starttls_session_capture_dissects_smtp_and_the_tls12_handshake() {
    let dir = temp_dir("capture-proxy-tls");
    let file = dir.join("tls.pcapng");
    let ca = Ca::new("capture test CA").unwrap();
    let leaf = ca
        .issue(&LeafSpec::server(["mx.capture.example.test".to_string()]))
        .unwrap();
    let tls = lab::server_config(leaf.chain_der.clone(), leaf.key_der.clone()).unwrap();
    let server = LabServer::start(ServerProfile::new("mx.capture.example.test", Some(tls)))
        .await
        .unwrap();
    let proxy = TestProxy::start(
        &server.addr().to_string(),
        &format!(
            "[capture]\nenabled = true\nbodies = true\npath = \"{}\"\n",
            file.display()
        ),
    )
    .await;
    let mut body = Vec::new();
    for i in 0..17_000 {
        body.extend_from_slice(
            format!("line {i:06} of a one mebibyte message .........................\r\n")
                .as_bytes(),
        );
    }
    let opts = ClientOptions {
        ehlo: "client.example.test".into(),
        starttls: StartTls::Required,
        tls: Some(lab::client_config_opportunistic_with(&[
            &rustls::version::TLS12,
        ])),
        server_name: "mx.capture.example.test".into(),
        from: "a@example.test".into(),
        to: vec!["b@example.test".into()],
        body: body.clone(),
        helo: false,
    };
    let r = lab::send(proxy.addr, &opts).await;
    assert_eq!(r.error, None);
    assert!(r.tls);
    assert_eq!(server.received()[0].data.len(), body.len());
    proxy.wait_summaries(1).await;
    proxy.stop().await;

    let f = file.display().to_string();
    let port = server.addr().port();
    let decode = format!("tcp.port=={port},smtp");
    let fields = |filter: &str, field: &str| -> Vec<String> {
        tshark(&[
            "-r", &f, "-d", &decode, "-Y", filter, "-T", "fields", "-e", field,
        ])
        .lines()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
        .collect()
    };
    let cmds = fields("smtp.req", "smtp.req.command");
    assert!(cmds.iter().any(|c| c.starts_with("STAR")), "{cmds:?}");
    let codes = fields("smtp.response", "smtp.response.code");
    assert!(codes.iter().any(|c| c == "220"), "{codes:?}");
    let hs = fields("tls.handshake", "tls.handshake.type").join(",");
    for t in ["1", "2", "11"] {
        assert!(
            hs.split(',').any(|x| x == t),
            "handshake type {t} (ClientHello=1, ServerHello=2, Certificate=11) missing: {hs}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_capture_disk_does_not_disturb_the_relay() {
    let server = LabServer::start(ServerProfile::new("mx.example.test", None))
        .await
        .unwrap();
    // /dev/full accepts the open and fails every write with ENOSPC.
    let proxy = TestProxy::start(
        &server.addr().to_string(),
        "[capture]\nenabled = true\npath = \"/dev/full\"\n",
    )
    .await;
    let opts = ClientOptions {
        ehlo: "client.example.test".into(),
        starttls: StartTls::Never,
        tls: None,
        server_name: "mx.example.test".into(),
        from: "a@example.test".into(),
        to: vec!["b@example.test".into()],
        body: b"Subject: x\r\n\r\nhello\r\n".to_vec(),
        helo: false,
    };
    for _ in 0..3 {
        let r = lab::send(proxy.addr, &opts).await;
        assert_eq!(r.error, None);
        assert!(r.data_reply.unwrap().starts_with("250"));
    }
    proxy.wait_summaries(3).await;
    let events = proxy.stop().await;
    assert_eq!(server.received().len(), 3);
    let errors: Vec<_> = events
        .iter()
        .filter(|e| e.name() == "capture.error")
        .collect();
    assert_eq!(errors.len(), 1, "exactly one capture.error expected");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_an_smtp_desync_credentials_stay_out_of_the_capture() {
    let dir = temp_dir("capture-blind");
    let file = dir.join("blind.pcapng");
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = l.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        s.write_all(b"220 up.example.test ESMTP\r\n").await.unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).await.unwrap();
        got
    });
    let proxy = TestProxy::start(
        &up.to_string(),
        &format!(
            "[capture]\nenabled = true\nbodies = true\npath = \"{}\"\n",
            file.display()
        ),
    )
    .await;
    let mut c = TcpStream::connect(proxy.addr).await.unwrap();
    let mut banner = [0u8; 27];
    c.read_exact(&mut banner).await.unwrap();
    // An over-long line makes the SMTP observer give up; then credentials follow.
    let mut sent = b"EHLO c.example.test\r\n".to_vec();
    sent.extend(std::iter::repeat_n(b'A', 6000));
    sent.extend_from_slice(b"\r\nAUTH PLAIN AHVzZXIAc2VjcmV0cGFzcw==\r\n");
    c.write_all(&sent).await.unwrap();
    c.shutdown().await.unwrap();
    let mut rest = Vec::new();
    let _ = c.read_to_end(&mut rest).await;
    // The relay is untouched: the upstream got every byte, secret included.
    assert!(server.await.unwrap() == sent);
    let events = {
        proxy.wait_summaries(1).await;
        proxy.stop().await
    };
    assert_eq!(named(&events, 1, "smtp.desync").len(), 1);
    let (from_client, _) = follow_raw(&file.display().to_string(), up.port());
    let text = String::from_utf8_lossy(&from_client);
    assert!(
        text.starts_with("EHLO c.example.test"),
        "{}",
        &text[..40.min(text.len())]
    );
    assert!(
        !text.contains("AHVzZXIAc2VjcmV0cGFzcw"),
        "the credential reached the capture"
    );
    let comments = frame_comments(&file);
    assert!(comments.contains("could not be redacted"), "{comments}");
}

/// After a 220 to STARTTLS the client carries on in cleartext (a broken
/// client, or a middlebox that answered STARTTLS itself): the TLS observer
/// meets cleartext, and the AUTH line that follows stays out of the capture.
#[tokio::test]
async fn cleartext_after_starttls_keeps_credentials_out_of_the_capture() {
    let dir = temp_dir("capture-tls-blind");
    let file = dir.join("tls-blind.pcapng");
    let (up, server) = starttls_upstream(b"220 2.0.0 Ready to start TLS\r\n").await;
    let proxy = TestProxy::start(
        &up.to_string(),
        &format!(
            "[capture]\nenabled = true\nbodies = true\npath = \"{}\"\n",
            file.display()
        ),
    )
    .await;
    let (sent, _) = client_script(
        proxy.addr,
        &[
            ("EHLO c.example.test\r\n", 2),
            ("STARTTLS\r\n", 1),
            ("AUTH PLAIN AHVzZXIAc2VjcmV0cGFzcw==\r\n", 1),
            ("QUIT\r\n", 1),
        ],
    )
    .await;
    // The relay is untouched: the upstream got every byte, secret included.
    assert!(server.await.unwrap() == sent);
    let events = {
        proxy.wait_summaries(1).await;
        proxy.stop().await
    };
    let desync = named(&events, 1, "tls.desync");
    assert_eq!(desync.len(), 1, "{events:?}");
    let reason = desync[0]["reason"].as_str().unwrap();
    assert!(reason.contains("'AUTH…'"), "{reason}");
    assert!(!reason.contains("AHVz"), "{reason}");
    let (from_client, _) = follow_raw(&file.display().to_string(), up.port());
    let text = String::from_utf8_lossy(&from_client);
    assert!(
        text.starts_with("EHLO c.example.test\r\nSTARTTLS\r\n"),
        "{text}"
    );
    assert!(
        !text.contains("AHVzZXIAc2VjcmV0cGFzcw"),
        "the credential reached the capture"
    );
    let comments = frame_comments(&file);
    assert!(comments.contains("could not be redacted"), "{comments}");
}

/// A client that sends AUTH right behind STARTTLS, without waiting for the
/// reply (RFC 3207 forbids it), to a server that refuses STARTTLS: those
/// bytes were held back from the capture until the reply, and then left out.
#[tokio::test]
async fn bytes_pipelined_after_a_refused_starttls_stay_out_of_the_capture() {
    let dir = temp_dir("capture-held");
    let file = dir.join("held.pcapng");
    let (up, server) =
        starttls_upstream(b"454 4.7.0 TLS not available due to local problem\r\n").await;
    let proxy = TestProxy::start(
        &up.to_string(),
        &format!(
            "[capture]\nenabled = true\nbodies = true\npath = \"{}\"\n",
            file.display()
        ),
    )
    .await;
    let (sent, last) = client_script(
        proxy.addr,
        &[
            ("EHLO c.example.test\r\n", 2),
            ("STARTTLS\r\nAUTH PLAIN AHVzZXIAc2VjcmV0cGFzcw==\r\n", 2),
            ("QUIT\r\n", 1),
        ],
    )
    .await;
    assert_eq!(last, "221 2.0.0 Bye\r\n");
    // The relay is untouched: the upstream got every byte, secret included.
    assert!(server.await.unwrap() == sent);
    let events = {
        proxy.wait_summaries(1).await;
        proxy.stop().await
    };
    let st = named(&events, 1, "smtp.starttls");
    assert_eq!(st[0]["accepted"], false, "{st:?}");
    // The observer still read the AUTH as a command, redacted.
    let auth: Vec<_> = named(&events, 1, "smtp.command")
        .into_iter()
        .filter(|c| c["verb"] == "AUTH")
        .collect();
    assert_eq!(auth[0]["arg"], "PLAIN [redacted]", "{auth:?}");
    let (from_client, _) = follow_raw(&file.display().to_string(), up.port());
    let text = String::from_utf8_lossy(&from_client);
    assert!(
        text.starts_with("EHLO c.example.test\r\nSTARTTLS\r\n"),
        "{text}"
    );
    assert!(
        !text.contains("AHVzZXIAc2VjcmV0cGFzcw"),
        "the credential reached the capture"
    );
    let comments = frame_comments(&file);
    assert!(
        comments.contains("after STARTTLS, before the server's reply, are left out"),
        "{comments}"
    );
}

/// A line-by-line scripted upstream: greets, offers STARTTLS, answers it
/// with `starttls_reply`, accepts AUTH, says 221 to QUIT and closes; returns
/// every line it received (cleartext only: it never speaks TLS).
async fn starttls_upstream(
    starttls_reply: &'static [u8],
) -> (std::net::SocketAddr, tokio::task::JoinHandle<Vec<u8>>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = l.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (s, _) = l.accept().await.unwrap();
        let mut s = tokio::io::BufReader::new(s);
        s.get_mut()
            .write_all(b"220 up.example.test ESMTP\r\n")
            .await
            .unwrap();
        let mut got = Vec::new();
        let mut line = String::new();
        use tokio::io::AsyncBufReadExt;
        while s.read_line(&mut line).await.unwrap_or(0) > 0 {
            got.extend_from_slice(line.as_bytes());
            let reply: &[u8] = if line.starts_with("EHLO") {
                b"250-up.example.test\r\n250 STARTTLS\r\n"
            } else if line.starts_with("STARTTLS") {
                starttls_reply
            } else if line.starts_with("AUTH") {
                b"235 2.7.0 Authentication successful\r\n"
            } else if line.starts_with("QUIT") {
                let _ = s.get_mut().write_all(b"221 2.0.0 Bye\r\n").await;
                break;
            } else {
                b"502 5.5.2 Error\r\n"
            };
            let _ = s.get_mut().write_all(reply).await;
            line.clear();
        }
        got
    });
    (up, server)
}

/// A client that reads the greeting, then sends each `(bytes, replies)` step
/// and reads that many reply lines, then closes and drains the connection.
/// Returns what it sent and the last reply line.
async fn client_script(proxy: std::net::SocketAddr, steps: &[(&str, usize)]) -> (Vec<u8>, String) {
    use tokio::io::AsyncBufReadExt;
    let c = TcpStream::connect(proxy).await.unwrap();
    let mut c = tokio::io::BufReader::new(c);
    let mut line = String::new();
    c.read_line(&mut line).await.unwrap();
    let mut sent = Vec::new();
    for (cmd, replies) in steps {
        c.get_mut().write_all(cmd.as_bytes()).await.unwrap();
        sent.extend_from_slice(cmd.as_bytes());
        for _ in 0..*replies {
            line.clear();
            c.read_line(&mut line).await.unwrap();
        }
    }
    c.get_mut().shutdown().await.unwrap();
    let mut rest = Vec::new();
    let _ = c.read_to_end(&mut rest).await;
    (sent, line)
}
