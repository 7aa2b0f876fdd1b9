//! The binary as a user runs it: `--check`, config errors, `--help`, a real
//! session through `smtptap proxy`, and SIGTERM with draining.

use std::io::Read;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use smtptap::lab::{self, ClientOptions, LabServer, ServerProfile, StartTls};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_smtptap"))
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn temp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("smtptap-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn check_accepts_the_shipped_config() {
    let out = bin()
        .args(["proxy", "--config"])
        .arg(root().join("config.toml"))
        .arg("--check")
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("configuration is valid"), "{stdout}");
    // The resolved configuration is printed as TOML, not as Rust Debug text.
    let body: String = stdout.lines().skip(1).collect::<Vec<_>>().join("\n");
    let parsed: toml::Value = toml::from_str(&body).expect("--check prints TOML");
    assert_eq!(
        parsed["limits"]["max_sessions"].as_integer(),
        Some(500),
        "{body}"
    );
    assert_eq!(
        parsed["tls"]["mozilla_roots"].as_bool(),
        Some(true),
        "{body}"
    );
    assert!(
        !stdout.contains("Limits {") && !stdout.contains("Some("),
        "{stdout}"
    );
}

#[test]
fn check_rejects_a_bad_config_naming_file_and_key() {
    let d = temp("badcfg");
    let f = d.join("bad.toml");
    std::fs::write(
        &f,
        "listen = [\"127.0.0.1:25\", \"1.2.3.4:99999\"]\nupstream = \"mx.example.test:25\"\n",
    )
    .unwrap();
    let out = bin()
        .args(["proxy", "--config"])
        .arg(&f)
        .arg("--check")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.toml: listen[1]: \"1.2.3.4:99999\" is not a socket address"),
        "{err}"
    );

    std::fs::write(&f, "listen = [\"127.0.0.1:25\"]\nupstream = \"mx.example.test:25\"\n[limits]\nidle_timeout = 5\n").unwrap();
    let out = bin()
        .args(["proxy", "--config"])
        .arg(&f)
        .arg("--check")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.toml: limits") && err.contains("unknown field `idle_timeout`"),
        "{err}"
    );

    // A flag is checked like a file value.
    let out = bin()
        .args([
            "proxy",
            "--listen",
            "nonsense",
            "--upstream",
            "mx:25",
            "--check",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("command line: listen[0]"));
}

#[test]
fn help_documents_every_subcommand_and_flag() {
    let out = bin().args(["proxy", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--config",
        "--check",
        "--listen",
        "--upstream",
        "--implicit-tls",
        "--log",
        "--quiet",
        "--expect-name",
        "--ca-file",
        "--pcap",
        "--idle-timeout",
        "--connect-timeout",
        "--max-sessions",
        "--drain-timeout",
        "--on-upstream-failure",
    ] {
        assert!(help.contains(flag), "proxy --help lacks {flag}");
    }
    let out = bin().args(["headers", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("--mbox") && help.contains("--json"), "{help}");
}

struct Proxy {
    child: Child,
    port: u16,
}

impl Proxy {
    fn start(upstream: &str, log: &std::path::Path, extra: &[&str]) -> Proxy {
        let port = free_port();
        let child = bin()
            .args([
                "proxy",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--upstream",
                upstream,
            ])
            .arg("--log")
            .arg(log)
            .args(["--color", "never"])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "smtptap did not start listening");
            std::thread::sleep(Duration::from_millis(20));
        }
        // that probe connection is a session of its own (closed at once)
        Proxy { child, port }
    }

    fn sigterm(&mut self) {
        let ok = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
    }

    fn wait(mut self, within: Duration) -> (i32, String) {
        let deadline = Instant::now() + within;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                let mut out = String::new();
                self.child
                    .stdout
                    .take()
                    .unwrap()
                    .read_to_string(&mut out)
                    .unwrap();
                return (st.code().unwrap_or(-1), out);
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("smtptap did not exit within {within:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Sends one message through the proxy on `port`, then stops it with
/// SIGTERM; returns the exit code and the console.
async fn one_message_then_sigterm(mut p: Proxy, subject: &str) -> (i32, String) {
    let opts = ClientOptions {
        ehlo: "client.cli.example.test".into(),
        starttls: StartTls::IfOffered,
        tls: None,
        server_name: "mx".into(),
        from: "a@example.test".into(),
        to: vec!["b@example.test".into()],
        body: format!("Subject: {subject}\r\n\r\nhello\r\n").into_bytes(),
        helo: false,
    };
    let r = lab::send(format!("127.0.0.1:{}", p.port).parse().unwrap(), &opts).await;
    assert_eq!(r.error, None);
    tokio::time::sleep(Duration::from_millis(200)).await;
    p.sigterm();
    tokio::task::spawn_blocking(move || p.wait(Duration::from_secs(20)))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_through_the_binary_then_sigterm_flushes_and_exits_zero() {
    let server = LabServer::start(ServerProfile::new("mx.cli.example.test", None))
        .await
        .unwrap();
    let d = temp("session");
    let log = d.join("events.jsonl");
    let p = Proxy::start(&server.addr().to_string(), &log, &[]);
    let (code, console) = one_message_then_sigterm(p, "cli").await;
    assert_eq!(code, 0);
    assert!(
        console.contains(" -> EHLO client.cli.example.test"),
        "{console}"
    );
    assert!(
        console.contains("<-  250 2.0.0 Ok: queued as LAB1"),
        "{console}"
    );
    // Private to its owner: the log names hosts, addresses and envelopes.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&log).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "log file mode {mode:o}");
    let text = std::fs::read_to_string(&log).unwrap();
    let events: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let summaries: Vec<_> = events
        .iter()
        .filter(|e| e["event"] == "session.summary")
        .collect();
    // the readiness probe + the real session
    assert_eq!(summaries.len(), 2, "{text}");
    let real = summaries
        .iter()
        .find(|s| s["messages_accepted"] == 1)
        .expect("the session's summary");
    assert_eq!(real["starttls_offered"], false);
    assert_eq!(real["findings"][0]["id"], "starttls.not_offered");
    // A run is framed by run.start and run.stop (session 0); every line
    // carries the run's id.
    assert_eq!(events[0]["event"], "run.start", "{text}");
    assert_eq!(events[0]["schema"], 1, "{text}");
    assert_eq!(events.last().unwrap()["event"], "run.stop", "{text}");
    let run = events[0]["run"].as_str().unwrap();
    assert!(run.starts_with('r') && run.len() > 10, "{run}");
    for e in &events {
        let ts = e["ts"].as_str().unwrap();
        assert_eq!(ts.len(), "2026-11-23T21:07:14.123456Z".len(), "{ts}");
        assert_eq!(e["run"], run, "{e}");
        let run_level = e["event"].as_str().unwrap().starts_with("run.");
        assert_eq!(e["session"].as_u64().unwrap() == 0, run_level, "{e}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_then_aborts_a_session_that_does_not_finish() {
    let server = LabServer::start(ServerProfile::new("mx.cli.example.test", None))
        .await
        .unwrap();
    let d = temp("drain");
    let log = d.join("events.jsonl");
    let mut p = Proxy::start(&server.addr().to_string(), &log, &["--drain-timeout", "1"]);
    // A client that connects and then just sits there.
    let idle = tokio::net::TcpStream::connect(("127.0.0.1", p.port))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    p.sigterm();
    let (code, _) = tokio::task::spawn_blocking(move || p.wait(Duration::from_secs(20)))
        .await
        .unwrap();
    assert_eq!(code, 0);
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "did not wait for the drain timeout"
    );
    drop(idle);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.lines()
            .any(|l| l.contains("\"event\":\"session.close\"")
                && l.contains("\"reason\":\"shutdown\"")),
        "no session closed by the shutdown: {text}"
    );
}

/// Two runs appending to one `--log` file: each begins with `run.start`, and
/// every (run, session) pair is distinct although session numbers restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_runs_appending_to_one_log_never_collide() {
    let server = LabServer::start(ServerProfile::new("mx.cli.example.test", None))
        .await
        .unwrap();
    let d = temp("two-runs");
    let log = d.join("events.jsonl");
    for _ in 0..2 {
        let p = Proxy::start(&server.addr().to_string(), &log, &[]);
        let (code, _) = one_message_then_sigterm(p, "runs").await;
        assert_eq!(code, 0);
    }
    let text = std::fs::read_to_string(&log).unwrap();
    let events: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let starts: Vec<&serde_json::Value> = events
        .iter()
        .filter(|e| e["event"] == "run.start")
        .collect();
    assert_eq!(starts.len(), 2, "{text}");
    assert_ne!(starts[0]["run"], starts[1]["run"]);
    // Each run's lines follow its run.start, and the first line of each is it.
    let mut current = None;
    let mut pairs = std::collections::HashSet::new();
    let mut summaries = 0;
    for e in &events {
        if e["event"] == "run.start" {
            current = Some(e["run"].clone());
        }
        assert_eq!(
            Some(&e["run"]),
            current.as_ref(),
            "a line before its run.start: {e}"
        );
        if e["event"] == "session.summary" {
            summaries += 1;
            let pair = (e["run"].to_string(), e["session"].as_u64().unwrap());
            assert!(pairs.insert(pair.clone()), "{pair:?} twice");
        }
    }
    // Per run: the readiness probe and the real session, numbered 1 and 2 both times.
    assert_eq!(summaries, 4, "{text}");
    let sessions: std::collections::HashSet<u64> = pairs.iter().map(|(_, s)| *s).collect();
    assert!(
        sessions.len() < pairs.len(),
        "session numbers restart per run"
    );
}
