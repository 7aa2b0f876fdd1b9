//! Left running for hours: the real binary with SIGHUP (logrotate), stopping
//! by itself (`--duration`, `--max-sessions-total`), the JSON log rotated by
//! size, the capture kept under `capture.max_total_bytes`, `--check`'s path
//! and DNS checks, and a full disk for real (a small tmpfs, mounted here: the
//! tests run as root) under the JSON log and under the capture.

use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use smtptap::lab::{self, ClientOptions, LabServer, ServerProfile, StartTls};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_smtptap"))
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn temp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("smtptap-unattended-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn mode(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

/// Every line of a JSON lines file, parsed (a line that is not JSON fails).
fn events(p: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(p).unwrap_or_default();
    text.lines()
        .map(|l| {
            serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("{}: not a JSON line ({e}): {l:?}", p.display()))
        })
        .collect()
}

fn named<'a>(evs: &'a [serde_json::Value], name: &str) -> Vec<&'a serde_json::Value> {
    evs.iter().filter(|e| e["event"] == name).collect()
}

/// The binary, console off, stderr to a file (read while it runs).
struct Proxy {
    child: Child,
    port: u16,
    stderr: PathBuf,
}

impl Proxy {
    fn start(upstream: &str, dir: &Path, args: &[&str]) -> Proxy {
        let port = free_port();
        let stderr = dir.join("stderr.txt");
        let child = bin()
            .args([
                "proxy",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--upstream",
                upstream,
                "--quiet",
            ])
            .args(args)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .unwrap();
        let mut p = Proxy {
            child,
            port,
            stderr,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        // Readiness: a connection that is a session of its own (closed at once).
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                p.child.try_wait().unwrap().is_none(),
                "smtptap exited: {}",
                p.stderr_text()
            );
            assert!(Instant::now() < deadline, "smtptap did not start listening");
            std::thread::sleep(Duration::from_millis(20));
        }
        p
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    fn stderr_text(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(ok.success(), "kill -{sig}");
    }

    fn running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// Waits for the exit; returns the status code.
    fn wait(&mut self, within: Duration) -> i32 {
        let deadline = Instant::now() + within;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st.code().unwrap_or(-1);
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!(
                    "smtptap did not exit within {within:?}: {}",
                    self.stderr_text()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if self.running() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn opts(subject: &str) -> ClientOptions {
    ClientOptions {
        ehlo: "client.unattended.example.test".into(),
        starttls: StartTls::Never,
        tls: None,
        server_name: "mx".into(),
        from: "a@example.test".into(),
        to: vec!["b@example.test".into()],
        body: format!("Subject: {subject}\r\n\r\nhello\r\n").into_bytes(),
        helo: false,
    }
}

async fn one_message(addr: SocketAddr, subject: &str) {
    let r = lab::send(addr, &opts(subject)).await;
    assert_eq!(r.error, None, "{subject}: {:?}", r.replies);
    assert!(
        r.data_reply.as_deref().unwrap_or("").starts_with("250"),
        "{subject}: {:?}",
        r.data_reply
    );
}

async fn lab_server() -> LabServer {
    LabServer::start(ServerProfile::new("mx.unattended.example.test", None))
        .await
        .unwrap()
}

/// A hand-driven SMTP client, for a session held open across a signal.
struct Manual {
    r: BufReader<tokio::net::tcp::OwnedReadHalf>,
    w: tokio::net::tcp::OwnedWriteHalf,
}

impl Manual {
    async fn connect(addr: SocketAddr) -> Manual {
        let s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (r, w) = s.into_split();
        let mut m = Manual {
            r: BufReader::new(r),
            w,
        };
        let banner = m.reply().await;
        assert!(banner.starts_with("220"), "{banner}");
        m
    }

    async fn reply(&mut self) -> String {
        let mut all = String::new();
        loop {
            let mut line = String::new();
            let n = tokio::time::timeout(Duration::from_secs(20), self.r.read_line(&mut line))
                .await
                .expect("a reply within 20 s")
                .unwrap();
            assert!(n > 0, "connection closed; so far: {all}");
            all.push_str(&line);
            if line.len() < 4 || line.as_bytes()[3] == b' ' {
                return all;
            }
        }
    }

    async fn cmd(&mut self, line: &str) -> String {
        self.w
            .write_all(format!("{line}\r\n").as_bytes())
            .await
            .unwrap();
        self.reply().await
    }

    /// MAIL, RCPT, DATA, QUIT: the rest of a session.
    async fn finish_message(mut self) {
        assert!(self
            .cmd("MAIL FROM:<a@example.test>")
            .await
            .starts_with("250"));
        assert!(self
            .cmd("RCPT TO:<b@example.test>")
            .await
            .starts_with("250"));
        assert!(self.cmd("DATA").await.starts_with("354"));
        let r = self
            .cmd("Subject: held\r\n\r\nacross the signal\r\n.")
            .await;
        assert!(r.starts_with("250"), "{r}");
        assert!(self.cmd("QUIT").await.starts_with("221"));
    }
}

async fn wait_for(what: &str, within: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn is_pcapng(p: &Path) -> bool {
    let b = std::fs::read(p).unwrap_or_default();
    b.len() > 28 && b[..4] == [0x0a, 0x0d, 0x0d, 0x0a]
}

/// logrotate's convention: the files are renamed, SIGHUP, and the next
/// lines go to fresh files at the configured paths, while the process and a
/// session open across the signal go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reopens_the_log_and_the_capture_and_sessions_go_on() {
    let server = lab_server().await;
    let d = temp("hup");
    let log = d.join("events.jsonl");
    let cap = d.join("cap.pcapng");
    let mut p = Proxy::start(
        &server.addr().to_string(),
        &d,
        &[
            "--log",
            log.to_str().unwrap(),
            "--pcap",
            cap.to_str().unwrap(),
        ],
    );
    one_message(p.addr(), "before").await;
    // A session open across the signal.
    let mut held = Manual::connect(p.addr()).await;
    assert!(held.cmd("EHLO held.example.test").await.starts_with("250"));
    // The capture's per-run file is flushed every second; let it catch up.
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let old_log = d.join("events.jsonl.1");
    let old_cap = d.join("cap.pcapng.1");
    std::fs::rename(&log, &old_log).unwrap();
    std::fs::rename(&cap, &old_cap).unwrap();
    p.signal("HUP");
    wait_for("the reopened log", Duration::from_secs(10), || {
        named(&events(&log), "run.reopen").len() == 1
    })
    .await;
    assert!(p.running(), "SIGHUP killed smtptap: {}", p.stderr_text());

    held.finish_message().await;
    one_message(p.addr(), "after").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(p.running(), "{}", p.stderr_text());
    p.signal("TERM");
    assert_eq!(p.wait(Duration::from_secs(30)), 0, "{}", p.stderr_text());
    assert_eq!(server.received().len(), 3, "every message delivered");

    // The old file is complete up to the signal: run.start, the first
    // session's summary; nothing after the rename.
    let old = events(&old_log);
    assert_eq!(old[0]["event"], "run.start");
    let old_summaries = named(&old, "session.summary");
    assert!(
        old_summaries.iter().any(|s| s["messages_accepted"] == 1),
        "{old:#?}"
    );
    assert!(named(&old, "run.reopen").is_empty() && named(&old, "run.stop").is_empty());
    // The new file begins with run.reopen, mode 0600, and holds the rest:
    // the held session's summary (message accepted), the later session,
    // and run.stop.
    let new = events(&log);
    assert_eq!(new[0]["event"], "run.reopen", "{new:#?}");
    assert_eq!(new[0]["signal"], "SIGHUP");
    assert_eq!(new[0]["log"], log.to_str().unwrap());
    assert_eq!(mode(&log), 0o600);
    let new_summaries = named(&new, "session.summary");
    assert_eq!(
        new_summaries
            .iter()
            .filter(|s| s["messages_accepted"] == 1)
            .count(),
        2,
        "the held session and the later one: {new:#?}"
    );
    let stop = named(&new, "run.stop");
    assert_eq!(stop.len(), 1);
    assert_eq!(stop[0]["reason"], "sigterm");
    // One run across both files.
    assert!(new.iter().all(|e| e["run"] == old[0]["run"]));

    // Captures: the renamed file is left as it was (a valid pcapng), a new
    // one (0600) is opened at the configured path, and the log says so.
    assert!(is_pcapng(&old_cap) && is_pcapng(&cap));
    assert_eq!(mode(&cap), 0o600);
    let all: Vec<serde_json::Value> = old.into_iter().chain(new).collect();
    let files = named(&all, "capture.file");
    assert!(
        files
            .iter()
            .any(|e| e["reason"] == "reopened" && e["path"] == cap.to_str().unwrap()),
        "{files:#?}"
    );
    let _ = std::fs::remove_dir_all(&d);
}

/// `--duration` stops the run by itself, draining like SIGTERM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duration_stops_the_run_by_itself() {
    let server = lab_server().await;
    let d = temp("duration");
    let log = d.join("events.jsonl");
    let mut p = Proxy::start(
        &server.addr().to_string(),
        &d,
        &["--log", log.to_str().unwrap(), "--duration", "3s"],
    );
    one_message(p.addr(), "in time").await;
    assert_eq!(p.wait(Duration::from_secs(30)), 0, "{}", p.stderr_text());
    let evs = events(&log);
    let stop = named(&evs, "run.stop");
    assert_eq!(stop.len(), 1, "{evs:#?}");
    assert_eq!(stop[0]["reason"], "duration");
    assert_eq!(evs.last().unwrap()["event"], "run.stop");
    assert_eq!(
        named(&evs, "run.start")[0]["config"]["limits"]["duration_s"],
        3.0
    );
    let _ = std::fs::remove_dir_all(&d);
}

/// `--max-sessions-total` stops once that many sessions were accepted; the
/// last one still completes (drained as on SIGTERM).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_sessions_total_stops_after_that_many_sessions() {
    let server = lab_server().await;
    let d = temp("total");
    let log = d.join("events.jsonl");
    // The readiness probe of Proxy::start is session 1.
    let mut p = Proxy::start(
        &server.addr().to_string(),
        &d,
        &["--log", log.to_str().unwrap(), "--max-sessions-total", "3"],
    );
    one_message(p.addr(), "two").await;
    one_message(p.addr(), "three").await;
    assert_eq!(p.wait(Duration::from_secs(30)), 0, "{}", p.stderr_text());
    assert!(
        std::net::TcpStream::connect(p.addr()).is_err(),
        "still listening after the last session"
    );
    let evs = events(&log);
    let stop = named(&evs, "run.stop");
    assert_eq!(stop.len(), 1, "{evs:#?}");
    assert_eq!(stop[0]["reason"], "max_sessions_total");
    assert_eq!(stop[0]["sessions"], 3);
    assert_eq!(named(&evs, "session.summary").len(), 3);
    assert_eq!(server.received().len(), 2);
    let _ = std::fs::remove_dir_all(&d);
}

/// `log.max_bytes` rotates the JSON log: `log` → `log.1` → `log.2`, at most
/// `log.keep` old files, each new file starting with `run.log_rotated`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_json_log_rotates_by_size_and_keeps_log_keep_files() {
    let server = lab_server().await;
    let d = temp("rotate");
    let log = d.join("events.jsonl");
    let cfg = d.join("smtptap.toml");
    std::fs::write(
        &cfg,
        format!(
            "[log]\njson = {:?}\nmax_bytes = 8192\nkeep = 2\n",
            log.to_str().unwrap()
        ),
    )
    .unwrap();
    let mut p = Proxy::start(
        &server.addr().to_string(),
        &d,
        &["--config", cfg.to_str().unwrap()],
    );
    for i in 0..12 {
        one_message(p.addr(), &format!("m{i}")).await;
    }
    p.signal("TERM");
    assert_eq!(p.wait(Duration::from_secs(30)), 0, "{}", p.stderr_text());
    let one = d.join("events.jsonl.1");
    let two = d.join("events.jsonl.2");
    assert!(one.exists() && two.exists(), "rotated files missing");
    assert!(
        !d.join("events.jsonl.3").exists(),
        "more than log.keep files"
    );
    for f in [&log, &one, &two] {
        assert!(
            std::fs::metadata(f).unwrap().len() <= 8192,
            "{}",
            f.display()
        );
        assert_eq!(mode(f), 0o600, "{}", f.display());
        let evs = events(f);
        assert!(!evs.is_empty());
        if f != &two {
            assert_eq!(evs[0]["event"], "run.log_rotated", "{}", f.display());
        }
    }
    let first = events(&log);
    assert_eq!(first[0]["previous"], one.to_str().unwrap());
    assert_eq!(first.last().unwrap()["event"], "run.stop");
    let _ = std::fs::remove_dir_all(&d);
}

/// `capture.max_total_bytes`: past it, the oldest capture files of the run
/// are deleted, said on stderr and as `capture.deleted` in the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_capture_stays_under_max_total_bytes_deleting_the_oldest() {
    let server = lab_server().await;
    let d = temp("capcap");
    let log = d.join("events.jsonl");
    let caps = d.join("caps");
    let cfg = d.join("smtptap.toml");
    let cap_bytes = 65536u64;
    std::fs::write(
        &cfg,
        format!(
            "[log]\njson = {:?}\n[capture]\nenabled = true\npath = \"{}/\"\nper_session = true\nmax_total_bytes = {cap_bytes}\n",
            log.to_str().unwrap(),
            caps.to_str().unwrap()
        ),
    )
    .unwrap();
    let mut p = Proxy::start(
        &server.addr().to_string(),
        &d,
        &["--config", cfg.to_str().unwrap()],
    );
    for i in 0..60 {
        one_message(p.addr(), &format!("m{i}")).await;
    }
    p.signal("TERM");
    assert_eq!(p.wait(Duration::from_secs(30)), 0, "{}", p.stderr_text());
    let evs = events(&log);
    let deleted = named(&evs, "capture.deleted");
    assert!(!deleted.is_empty(), "no file deleted");
    for e in &deleted {
        assert_eq!(e["reason"], "max_total_bytes");
        assert!(!Path::new(e["path"].as_str().unwrap()).exists(), "{e}");
    }
    let total: u64 = std::fs::read_dir(&caps)
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    assert!(total <= cap_bytes, "{total} bytes of captures kept");
    // The newest session's file is kept.
    let last = named(&evs, "capture.file")
        .into_iter()
        .rfind(|e| e["reason"] == "closed")
        .cloned()
        .unwrap();
    assert!(Path::new(last["path"].as_str().unwrap()).exists());
    assert!(
        p.stderr_text().contains("capture.max_total_bytes"),
        "{}",
        p.stderr_text()
    );
    let _ = std::fs::remove_dir_all(&d);
}

/// `--check` verifies that the log and capture paths can be created (and
/// leaves nothing behind), and resolves the upstream (a warning only).
#[test]
fn check_verifies_paths_and_resolves_the_upstream() {
    let d = temp("check");
    let run = |args: &[&str]| {
        let out = bin()
            .args(["proxy", "--listen", "127.0.0.1:2525", "--check"])
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let good_log = d.join("events.jsonl");
    let good_cap = d.join("caps/");
    let (code, out, err) = run(&[
        "--upstream",
        "localhost:25",
        "--log",
        good_log.to_str().unwrap(),
        "--pcap",
        good_cap.to_str().unwrap(),
    ]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("# upstream localhost:25 resolves to"), "{out}");
    assert!(err.is_empty(), "{err}");
    assert_eq!(
        std::fs::read_dir(&d).unwrap().count(),
        0,
        "--check left files behind"
    );

    let (code, _, err) = run(&[
        "--upstream",
        "localhost:25",
        "--log",
        d.join("no/such/dir/events.jsonl").to_str().unwrap(),
    ]);
    assert_eq!(code, Some(2));
    assert!(
        err.contains("log.json:") && err.contains("does not exist"),
        "{err}"
    );

    let (code, _, err) = run(&[
        "--upstream",
        "localhost:25",
        "--pcap",
        d.join("no/such/dir/cap.pcapng").to_str().unwrap(),
    ]);
    assert_eq!(code, Some(2));
    assert!(err.contains("capture.path:"), "{err}");

    // A directory given as the log file.
    let (code, _, err) = run(&["--upstream", "localhost:25", "--log", d.to_str().unwrap()]);
    assert_eq!(code, Some(2));
    assert!(err.contains("is a directory"), "{err}");

    // A name that does not resolve is a warning, not an error.
    let (code, out, err) = run(&["--upstream", "mx.does-not-exist.invalid:25"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("configuration is valid"));
    assert!(
        err.contains("warning: upstream: mx.does-not-exist.invalid:25: the name does not resolve"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&d);
}

/// A small tmpfs mounted for one test, unmounted when dropped (also when
/// the test fails).
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(dir).unwrap();
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(dir)
            .output()
            .unwrap_or_else(|e| {
                panic!("cannot run mount(8) ({e}): install util-linux (apt-get install mount)")
            });
        assert!(
            out.status.success(),
            "cannot mount a tmpfs at {} for the disk-full test (it needs root or CAP_SYS_ADMIN; run the tests as root): {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs(dir.to_path_buf())
    }

    /// Fills the file system; returns the filler file.
    fn fill(&self) -> PathBuf {
        let filler = self.0.join("filler");
        let mut f = std::fs::File::create(&filler).unwrap();
        let chunk = vec![0u8; 4096];
        loop {
            match f.write(&chunk) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) => {
                    assert_eq!(e.raw_os_error(), Some(28), "filling the tmpfs: {e}");
                    break;
                }
            }
        }
        // Whatever single bytes are left.
        while f.write(&[0]).map(|n| n > 0).unwrap_or(false) {}
        filler
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// The JSON log's disk fills up, then space returns: writing resumes by
/// itself, `run.log_recovered` says how many events were lost, stderr said
/// so at both ends, and the file holds only whole JSON lines.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_json_log_recovers_when_its_full_disk_has_space_again() {
    let server = lab_server().await;
    let d = temp("logfull");
    let fs = Tmpfs::mount(&d.join("mnt"), "256k");
    let log = fs.0.join("events.jsonl");
    let mut p = Proxy::start(
        &server.addr().to_string(),
        &d,
        &["--log", log.to_str().unwrap()],
    );
    one_message(p.addr(), "before").await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let filler = fs.fill();
    // Sessions while the disk is full: mail flows, their events are lost.
    for i in 0..3 {
        one_message(p.addr(), &format!("full {i}")).await;
    }
    let addr = p.addr();
    wait_for("the error on stderr", Duration::from_secs(10), || {
        p.stderr_text().contains("cannot write the JSON log")
    })
    .await;
    std::fs::remove_file(&filler).unwrap();
    // The next events after the back-off are written again.
    let mut n = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    while named(&events(&log), "run.log_recovered").is_empty() {
        assert!(
            Instant::now() < deadline,
            "the log never recovered: {}",
            p.stderr_text()
        );
        one_message(addr, &format!("after {n}")).await;
        n += 1;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    one_message(addr, "last").await;
    p.signal("TERM");
    assert_eq!(p.wait(Duration::from_secs(30)), 0, "{}", p.stderr_text());
    assert_eq!(server.received().len(), 5 + n, "no message lost");

    let evs = events(&log); // every line is whole JSON
    let rec = named(&evs, "run.log_recovered");
    assert_eq!(rec.len(), 1, "{evs:#?}");
    assert!(rec[0]["lost_events"].as_u64().unwrap() > 0, "{}", rec[0]);
    assert_eq!(rec[0]["error"], "no_space");
    assert_eq!(evs.last().unwrap()["event"], "run.stop");
    // The last session is in the log, whole.
    assert!(named(&evs, "session.summary").len() >= 2);
    let err = p.stderr_text();
    assert!(err.contains("the JSON log is written again"), "{err}");
    drop(fs);
    let _ = std::fs::remove_dir_all(&d);
}

/// The capture's disk fills while a session is open: stderr says so at once
/// and the log has `capture.error` before that session ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_capture_write_error_is_reported_before_the_session_ends() {
    let server = lab_server().await;
    let d = temp("capfull");
    let fs = Tmpfs::mount(&d.join("mnt"), "256k");
    let cap = fs.0.join("cap.pcapng");
    let log = d.join("events.jsonl");
    let mut p = Proxy::start(
        &server.addr().to_string(),
        &d,
        &[
            "--log",
            log.to_str().unwrap(),
            "--pcap",
            cap.to_str().unwrap(),
        ],
    );
    let mut held = Manual::connect(p.addr()).await;
    assert!(held.cmd("EHLO held.example.test").await.starts_with("250"));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let _filler = fs.fill();
    // Traffic in the open session: the writer's next flush fails.
    for _ in 0..80 {
        assert!(held.cmd("NOOP").await.starts_with("250"));
    }
    wait_for(
        "the capture error on stderr",
        Duration::from_secs(10),
        || p.stderr_text().contains("cannot write the capture"),
    )
    .await;
    wait_for("capture.error in the log", Duration::from_secs(10), || {
        let evs = events(&log);
        !named(&evs, "capture.error").is_empty()
            && evs
                .iter()
                .any(|e| e.to_string().contains("held.example.test"))
    })
    .await;
    // The held session (the one that said EHLO held.example.test) has not
    // ended yet.
    let evs = events(&log);
    let held_id = evs
        .iter()
        .find(|e| e.to_string().contains("held.example.test"))
        .map(|e| e["session"].clone())
        .expect("the held session's EHLO is in the log");
    assert!(
        !evs.iter()
            .any(|e| e["event"] == "session.close" && e["session"] == held_id),
        "the session ended before the error was reported"
    );
    held.finish_message().await;
    p.signal("TERM");
    assert_eq!(p.wait(Duration::from_secs(30)), 0, "{}", p.stderr_text());
    assert_eq!(server.received().len(), 1, "mail flows without the capture");
    let evs = events(&log);
    let errs = named(&evs, "capture.error");
    assert_eq!(errs.len(), 1, "{evs:#?}");
    assert_eq!(errs[0]["error"], "no_space");
    drop(fs);
    let _ = std::fs::remove_dir_all(&d);
}

/// `proxy --help` documents every signal and the ways to stop by itself.
#[test]
fn help_documents_signals_and_stopping_by_itself() {
    let out = bin().args(["proxy", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "SIGTERM",
        "SIGINT",
        "SIGHUP",
        "reopen the JSON log and the capture files",
        "--duration",
        "--max-sessions-total",
    ] {
        assert!(help.contains(needle), "proxy --help lacks {needle}: {help}");
    }
}
