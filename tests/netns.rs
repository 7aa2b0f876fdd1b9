//! Transparent interception end to end, in three network namespaces built for
//! the test (root needed; CI runs as root):
//!
//! ```text
//!   ns client            ns middle (smtptap)                  ns server
//!   c0 10.77.1.2/24 ──── m1 10.77.1.1/24 | m2 10.77.2.1/24 ──── s0 10.77.2.2/24
//!   lab_peer client      forwarding on; REDIRECT or TPROXY     lab_peer server :25
//!   dials 10.77.2.2:25   rules; smtptap --upstream original-destination
//! ```
//!
//! The addresses exist only inside these namespaces; no packet leaves them.
//! Each test builds its own namespaces (unique names) and a guard tears
//! everything down on drop, also when an assertion fails. Not root, or no
//! `ip netns` → the test fails and says how to fix it.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use sha2::{Digest, Sha256};

const CLIENT_IP: &str = "10.77.1.2";
const MIDDLE_CLIENT_SIDE: &str = "10.77.1.1";
const SERVER_IP: &str = "10.77.2.2";
const PROXY_PORT: u16 = 2525;

fn which(tool: &str) -> bool {
    ["/usr/sbin", "/usr/bin", "/sbin", "/bin"]
        .iter()
        .any(|d| Path::new(d).join(tool).exists())
}

fn require_root_and_tools() {
    let uid = Command::new("id").arg("-u").output().expect("run id -u");
    let uid = String::from_utf8_lossy(&uid.stdout).trim().to_string();
    assert_eq!(
        uid, "0",
        "the network-namespace tests need root (ip netns, iptables, IP_TRANSPARENT); run them as root (CI does)"
    );
    for t in ["ip", "iptables", "ss", "sysctl"] {
        assert!(
            which(t),
            "{t} is missing: run scripts/install-test-deps (apt-get install -y iproute2 iptables procps)"
        );
    }
}

fn run(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The three namespaces, their processes, and a scratch directory; all gone on drop.
struct Lab {
    client: String,
    middle: String,
    server: String,
    dir: PathBuf,
    children: Vec<Child>,
}

impl Lab {
    fn new(tag: &str) -> Lab {
        require_root_and_tools();
        let id = format!("stt{}{tag}", std::process::id());
        let dir = std::env::temp_dir().join(format!("smtptap-netns-{id}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let lab = Lab {
            client: format!("{id}c"),
            middle: format!("{id}m"),
            server: format!("{id}s"),
            dir,
            children: Vec::new(),
        };
        for ns in [&lab.client, &lab.middle, &lab.server] {
            let out = Command::new("ip")
                .args(["netns", "add", ns])
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "cannot create network namespace {ns} ({}): network namespaces are needed (run as root on Linux with CONFIG_NET_NS)",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        // veth pairs created directly inside the namespaces (no name clashes in the root namespace).
        run(&[
            "ip",
            "link",
            "add",
            "c0",
            "netns",
            &lab.client,
            "type",
            "veth",
            "peer",
            "name",
            "m1",
            "netns",
            &lab.middle,
        ]);
        run(&[
            "ip",
            "link",
            "add",
            "s0",
            "netns",
            &lab.server,
            "type",
            "veth",
            "peer",
            "name",
            "m2",
            "netns",
            &lab.middle,
        ]);
        lab.ns(
            &lab.client,
            &["ip", "addr", "add", "10.77.1.2/24", "dev", "c0"],
        );
        lab.ns(
            &lab.middle,
            &["ip", "addr", "add", "10.77.1.1/24", "dev", "m1"],
        );
        lab.ns(
            &lab.middle,
            &["ip", "addr", "add", "10.77.2.1/24", "dev", "m2"],
        );
        lab.ns(
            &lab.server,
            &["ip", "addr", "add", "10.77.2.2/24", "dev", "s0"],
        );
        for (ns, devs) in [
            (&lab.client, &["lo", "c0"][..]),
            (&lab.middle, &["lo", "m1", "m2"][..]),
            (&lab.server, &["lo", "s0"][..]),
        ] {
            for d in devs {
                lab.ns(ns, &["ip", "link", "set", d, "up"]);
            }
        }
        lab.ns(
            &lab.client,
            &["ip", "route", "add", "default", "via", "10.77.1.1"],
        );
        lab.ns(
            &lab.server,
            &["ip", "route", "add", "default", "via", "10.77.2.1"],
        );
        lab.ns(&lab.middle, &["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
        for k in ["all", "default", "m1", "m2"] {
            lab.ns(
                &lab.middle,
                &["sysctl", "-qw", &format!("net.ipv4.conf.{k}.rp_filter=0")],
            );
        }
        lab
    }

    /// Runs a command inside namespace `ns`; panics with its output on failure.
    fn ns(&self, ns: &str, args: &[&str]) {
        let mut full = vec!["ip", "netns", "exec", ns];
        full.extend_from_slice(args);
        run(&full);
    }

    fn spawn(&mut self, ns: &str, args: &[&str], log: &str) -> u32 {
        let err = std::fs::File::create(self.dir.join(log)).unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", ns])
            .args(args)
            .stdin(Stdio::null())
            .stdout(err.try_clone().unwrap())
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {args:?} in {ns}: {e}"));
        let pid = child.id();
        self.children.push(child);
        pid
    }

    /// Waits until something listens on `port` in `ns` (or panics after 20 s, showing `log`).
    fn wait_listening(&self, ns: &str, port: u16, log: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            let out = Command::new("ip")
                .args(["netns", "exec", ns, "ss", "-Hltn"])
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout);
            if text.lines().any(|l| l.contains(&format!(":{port} "))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "nothing listens on port {port} in {ns} after 20 s; {log}:\n{}",
            std::fs::read_to_string(self.dir.join(log)).unwrap_or_default()
        );
    }

    /// Runs the lab client in the client namespace; returns (success, report JSON).
    fn client_send(&self, to: &str, body: &Path) -> (bool, Value) {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.client])
            .arg(lab_peer())
            .args(["client", "--to", to, "--body-file"])
            .arg(body)
            .output()
            .unwrap();
        let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "lab_peer client printed no report ({e}): {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        });
        (out.status.success(), report)
    }

    /// Sends SIGTERM to smtptap and waits for it to exit (it drains and flushes its log).
    fn stop(&mut self, pid: u32) {
        run(&["kill", "-TERM", &pid.to_string()]);
        let deadline = Instant::now() + Duration::from_secs(40);
        let c = self
            .children
            .iter_mut()
            .find(|c| c.id() == pid)
            .expect("smtptap child");
        loop {
            if let Ok(Some(_)) = c.try_wait() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "smtptap did not stop after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn start_server(&mut self) {
        let rec = self.dir.join("server.jsonl");
        let server = self.server.clone();
        self.spawn(
            &server,
            &[
                lab_peer().to_str().unwrap(),
                "server",
                "--listen",
                &format!("{SERVER_IP}:25"),
                "--record",
                rec.to_str().unwrap(),
            ],
            "server.log",
        );
        self.wait_listening(&server, 25, "server.log");
    }

    fn start_smtptap(&mut self, extra: &[&str]) -> u32 {
        let log = self.dir.join("smtptap.jsonl");
        let mut args = vec![
            env!("CARGO_BIN_EXE_smtptap"),
            "proxy",
            "--listen",
            "0.0.0.0:2525",
            "--upstream",
            "original-destination",
            "--log",
            log.to_str().unwrap(),
            "--quiet",
            "--drain-timeout",
            "5",
        ];
        args.extend_from_slice(extra);
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let middle = self.middle.clone();
        let pid = self.spawn(&middle, &args, "smtptap.stderr");
        self.wait_listening(&middle, PROXY_PORT, "smtptap.stderr");
        pid
    }

    /// The policy routing TPROXY needs in the middle: marked packets are
    /// delivered locally (the README's `ip rule` / `ip route` lines).
    fn tproxy_routing(&self, v6: bool) {
        let (fam, any) = if v6 {
            ("-6", "::/0")
        } else {
            ("-4", "0.0.0.0/0")
        };
        let middle = self.middle.clone();
        self.ns(
            &middle,
            &[
                "ip", fam, "rule", "add", "fwmark", "0x1/0x1", "lookup", "100",
            ],
        );
        self.ns(
            &middle,
            &[
                "ip", fam, "route", "add", "local", any, "dev", "lo", "table", "100",
            ],
        );
    }

    /// The README's iptables REDIRECT recipe in the middle (interface m1);
    /// `ip6tables` for IPv6.
    fn iptables_redirect(&self, v6: bool) {
        let tables = if v6 { "ip6tables" } else { "iptables" };
        let middle = self.middle.clone();
        self.ns(
            &middle,
            &[
                tables,
                "-t",
                "nat",
                "-A",
                "PREROUTING",
                "-i",
                "m1",
                "-p",
                "tcp",
                "--dport",
                "25",
                "-j",
                "REDIRECT",
                "--to-ports",
                "2525",
            ],
        );
    }

    /// The README's iptables TPROXY recipe in the middle (interface m1), with
    /// the rule that hands the server's replies to a spoofing socket, and the
    /// policy routing; `ip6tables` and `::` for IPv6.
    fn iptables_tproxy(&self, v6: bool) {
        let (tables, any) = if v6 {
            ("ip6tables", "::")
        } else {
            ("iptables", "0.0.0.0")
        };
        let middle = self.middle.clone();
        // Divert SMTP from the client side to smtptap's transparent listener.
        self.ns(
            &middle,
            &[
                tables,
                "-t",
                "mangle",
                "-A",
                "PREROUTING",
                "-i",
                "m1",
                "-p",
                "tcp",
                "--dport",
                "25",
                "-j",
                "TPROXY",
                "--on-port",
                "2525",
                "--on-ip",
                any,
                "--tproxy-mark",
                "0x1/0x1",
            ],
        );
        // Replies from the server to the (spoofed) client address belong to smtptap's socket.
        self.ns(
            &middle,
            &[
                tables,
                "-t",
                "mangle",
                "-A",
                "PREROUTING",
                "-i",
                "m2",
                "-p",
                "tcp",
                "-m",
                "socket",
                "--transparent",
                "-j",
                "MARK",
                "--set-mark",
                "0x1",
            ],
        );
        self.tproxy_routing(v6);
    }

    /// IPv6 on the same links: client fd77:1::2, middle fd77:1::1 and
    /// fd77:2::1, server fd77:2::2 (no duplicate address detection wait),
    /// default routes through the middle, forwarding on.
    fn add_ipv6(&self) {
        for (ns, addr, dev) in [
            (&self.client, "fd77:1::2/64", "c0"),
            (&self.middle, "fd77:1::1/64", "m1"),
            (&self.middle, "fd77:2::1/64", "m2"),
            (&self.server, "fd77:2::2/64", "s0"),
        ] {
            self.ns(ns, &["ip", "-6", "addr", "add", addr, "dev", dev, "nodad"]);
        }
        self.ns(
            &self.client,
            &["ip", "-6", "route", "add", "default", "via", "fd77:1::1"],
        );
        self.ns(
            &self.server,
            &["ip", "-6", "route", "add", "default", "via", "fd77:2::1"],
        );
        self.ns(
            &self.middle,
            &["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"],
        );
    }

    /// The recording lab server on the server's IPv6 address, port 25.
    fn start_server_v6(&mut self) {
        let rec = self.dir.join("server.jsonl");
        let server = self.server.clone();
        self.spawn(
            &server,
            &[
                lab_peer().to_str().unwrap(),
                "server",
                "--listen",
                "[fd77:2::2]:25",
                "--record",
                rec.to_str().unwrap(),
            ],
            "server.log",
        );
        self.wait_listening(&server, 25, "server.log");
    }

    fn server_records(&self) -> Vec<Value> {
        read_jsonl(&self.dir.join("server.jsonl"))
    }

    fn smtptap_events(&self) -> Vec<Value> {
        read_jsonl(&self.dir.join("smtptap.jsonl"))
    }

    fn body(&self) -> (PathBuf, String) {
        let mut body = String::from(
            "From: alice@client.netns.test\r\nTo: bob@server.netns.test\r\nSubject: through the middle\r\n\r\n",
        );
        for i in 0..200 {
            body.push_str(&format!("line {i}: the quick brown fox\r\n"));
        }
        body.push_str(".a line that starts with a dot\r\n");
        let p = self.dir.join("body.eml");
        std::fs::File::create(&p)
            .unwrap()
            .write_all(body.as_bytes())
            .unwrap();
        (p, format!("{:x}", Sha256::digest(body.as_bytes())))
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for ns in [&self.client, &self.middle, &self.server] {
            // Deleting a namespace deletes its veth ends, addresses, rules and routes.
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
        if std::thread::panicking() {
            eprintln!(
                "netns test failed; its files are kept in {}",
                self.dir.display()
            );
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn read_jsonl(p: &Path) -> Vec<Value> {
    let Ok(f) = std::fs::File::open(p) else {
        return Vec::new();
    };
    std::io::BufReader::new(f)
        .lines()
        .map_while(Result::ok)
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(&l).unwrap_or_else(|e| panic!("bad JSON line {l:?}: {e}")))
        .collect()
}

/// The `lab_peer` example binary, built on demand next to the smtptap binary.
fn lab_peer() -> PathBuf {
    let bin = Path::new(env!("CARGO_BIN_EXE_smtptap"));
    let dir = bin.parent().expect("binary dir");
    let p = dir.join("examples").join("lab_peer");
    static BUILD: std::sync::Once = std::sync::Once::new();
    BUILD.call_once(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        // Built with the profile of the binary under test (`cargo test
        // --release` looks in target/release).
        let mut args = vec!["build", "--example", "lab_peer"];
        if dir.ends_with("release") {
            args.push("--release");
        }
        let st = Command::new(cargo)
            .args(&args)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("run cargo build --example lab_peer");
        assert!(st.success(), "cargo build --example lab_peer failed");
    });
    assert!(
        p.exists(),
        "{} missing after cargo build --example lab_peer",
        p.display()
    );
    p
}

fn events<'a>(evs: &'a [Value], name: &str) -> Vec<&'a Value> {
    evs.iter().filter(|e| e["event"] == name).collect()
}

fn ip_of(addr: &Value) -> String {
    let s = addr.as_str().unwrap_or_default();
    s.rsplit_once(':')
        .map(|(ip, _)| ip.trim_matches(['[', ']']).to_string())
        .unwrap_or_default()
}

#[test]
fn redirect_relays_to_the_original_destination_and_refuses_a_loop() {
    let mut lab = Lab::new("r");
    lab.iptables_redirect(false);
    lab.start_server();
    let pid = lab.start_smtptap(&["--transparent", "redirect"]);
    let (body, sha) = lab.body();

    // 1. The client dials the SERVER's address; the network diverts it to smtptap.
    let (ok, report) = lab.client_send(&format!("{SERVER_IP}:25"), &body);
    assert!(ok, "the message was not accepted through smtptap: {report}");
    assert!(
        report["data_reply"].as_str().unwrap().starts_with("250 "),
        "{report}"
    );

    // 2. The client dials smtptap's own port directly: the original destination
    //    is the proxy itself → refused with a 421, nothing relayed.
    let (ok, report) = lab.client_send(&format!("{MIDDLE_CLIENT_SIDE}:{PROXY_PORT}"), &body);
    assert!(!ok, "a loop must not be relayed: {report}");
    let first = report["replies"][0]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        first.starts_with("421 "),
        "expected the failure reply, got {report}"
    );

    lab.stop(pid);
    let evs = lab.smtptap_events();

    // smtptap's log: session 1 went to the original destination.
    let opens = events(&evs, "session.open");
    assert_eq!(opens.len(), 2, "two sessions expected: {evs:#?}");
    let s1 = &opens[0];
    assert_eq!(s1["upstream"], format!("{SERVER_IP}:25"), "{s1}");
    assert_eq!(ip_of(&s1["client"]), CLIENT_IP, "{s1}");
    let conn = events(&evs, "upstream.connected");
    assert_eq!(conn.len(), 1, "{evs:#?}");
    assert_eq!(conn[0]["server"], format!("{SERVER_IP}:25"));
    assert_eq!(conn[0]["server_port"], 25);
    assert_eq!(conn[0]["session"], s1["session"]);
    // Not spoofed: smtptap connects from its own server-side address.
    assert_eq!(ip_of(&conn[0]["local"]), "10.77.2.1");

    // Session 2: the loop, refused with a clear event.
    let s2 = opens[1]["session"].clone();
    let lr = events(&evs, "upstream.loop_refused");
    assert_eq!(lr.len(), 1, "{evs:#?}");
    assert_eq!(lr[0]["session"], s2);
    assert_eq!(
        lr[0]["original_dst"],
        format!("{MIDDLE_CLIENT_SIDE}:{PROXY_PORT}")
    );
    assert!(
        lr[0]["reason"].as_str().unwrap().contains("loop"),
        "{}",
        lr[0]
    );
    let failed = events(&evs, "upstream.failed");
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0]["session"], s2);
    assert_eq!(failed[0]["action"], "reply");
    assert_eq!(events(&evs, "session.summary").len(), 2);

    // The server saw smtptap (10.77.2.1), once, and the message intact.
    let rec = lab.server_records();
    let peers: Vec<_> = rec.iter().filter(|r| r["kind"] == "peer").collect();
    assert_eq!(peers.len(), 1, "{rec:#?}");
    assert_eq!(ip_of(&peers[0]["peer"]), "10.77.2.1");
    let msgs: Vec<_> = rec.iter().filter(|r| r["kind"] == "message").collect();
    assert_eq!(msgs.len(), 1, "{rec:#?}");
    assert_eq!(msgs[0]["sha256"], sha, "the message was altered in transit");
    assert_eq!(msgs[0]["rcpts"][0], "bob@server.netns.test");
}

#[test]
fn tproxy_with_spoofed_source_shows_the_client_address_to_the_server() {
    let mut lab = Lab::new("t");
    lab.iptables_tproxy(false);
    lab.start_server();
    let pid = lab.start_smtptap(&["--transparent", "tproxy", "--spoof-source"]);
    // Spoofed: smtptap connects from the client's address, and the server sees it.
    relay_one_and_check(
        &mut lab,
        pid,
        &Expect {
            server: &format!("{SERVER_IP}:25"),
            client_ip: CLIENT_IP,
            server_sees: CLIENT_IP,
            tproxy: true,
        },
    );
}

/// How one relayed session must look.
struct Expect<'a> {
    /// The server's address as dialled, `IP:PORT` or `[IPv6]:PORT`.
    server: &'a str,
    /// The client's address as smtptap sees it.
    client_ip: &'a str,
    /// The peer address the server sees (smtptap's own, or the client's when spoofed).
    server_sees: &'a str,
    /// TPROXY: the accepted socket's local address is the server's.
    tproxy: bool,
}

/// Runs one message from the client to `e.server` through an already
/// diverted middle, stops smtptap, then checks its log and what the server
/// saw: the original destination, the addresses, and the message intact.
fn relay_one_and_check(lab: &mut Lab, pid: u32, e: &Expect) {
    let (body, sha) = lab.body();
    let (ok, report) = lab.client_send(e.server, &body);
    assert!(ok, "the message was not accepted through smtptap: {report}");
    lab.stop(pid);
    let evs = lab.smtptap_events();
    let opens = events(&evs, "session.open");
    assert_eq!(opens.len(), 1, "{evs:#?}");
    assert_eq!(opens[0]["upstream"], e.server);
    assert_eq!(ip_of(&opens[0]["client"]), e.client_ip);
    if e.tproxy {
        assert_eq!(opens[0]["listener"], e.server);
    }
    let conn = events(&evs, "upstream.connected");
    assert_eq!(conn.len(), 1, "{evs:#?}");
    assert_eq!(conn[0]["server"], e.server);
    assert_eq!(ip_of(&conn[0]["local"]), e.server_sees);
    assert!(events(&evs, "upstream.loop_refused").is_empty());
    let rec = lab.server_records();
    let peers: Vec<_> = rec.iter().filter(|r| r["kind"] == "peer").collect();
    assert_eq!(peers.len(), 1, "{rec:#?}");
    assert_eq!(ip_of(&peers[0]["peer"]), e.server_sees);
    let msgs: Vec<_> = rec.iter().filter(|r| r["kind"] == "message").collect();
    assert_eq!(msgs.len(), 1, "{rec:#?}");
    assert_eq!(msgs[0]["sha256"], sha, "the message was altered in transit");
}

fn require_nft() {
    assert!(
        which("nft"),
        "nft is missing: run scripts/install-test-deps (apt-get install -y nftables)"
    );
}

/// The README's nft REDIRECT recipe, word for word (interface m1).
#[test]
fn nft_redirect_recipe_from_the_readme_relays() {
    require_nft();
    let mut lab = Lab::new("nr");
    let middle = lab.middle.clone();
    lab.ns(&middle, &["nft", "add", "table", "ip", "smtptap"]);
    lab.ns(
        &middle,
        &[
            "nft",
            "add",
            "chain",
            "ip",
            "smtptap",
            "pre",
            "{ type nat hook prerouting priority dstnat; }",
        ],
    );
    lab.ns(
        &middle,
        &[
            "nft", "add", "rule", "ip", "smtptap", "pre", "iifname", "m1", "tcp", "dport", "25",
            "redirect", "to", ":2525",
        ],
    );
    lab.start_server();
    let pid = lab.start_smtptap(&["--transparent", "redirect"]);
    relay_one_and_check(
        &mut lab,
        pid,
        &Expect {
            server: &format!("{SERVER_IP}:25"),
            client_ip: CLIENT_IP,
            server_sees: "10.77.2.1",
            tproxy: false,
        },
    );
    // The recipe's clean-up works too.
    lab.ns(&middle, &["nft", "delete", "table", "ip", "smtptap"]);
}

/// The README's nft TPROXY recipe, word for word (interface m1), without
/// `--spoof-source`: the server sees smtptap's own address.
#[test]
fn nft_tproxy_recipe_from_the_readme_relays_without_spoofing() {
    require_nft();
    let mut lab = Lab::new("nt");
    let middle = lab.middle.clone();
    lab.ns(&middle, &["nft", "add", "table", "ip", "smtptap"]);
    lab.ns(
        &middle,
        &[
            "nft",
            "add",
            "chain",
            "ip",
            "smtptap",
            "pre",
            "{ type filter hook prerouting priority mangle; }",
        ],
    );
    lab.ns(
        &middle,
        &[
            "nft",
            "add",
            "rule",
            "ip",
            "smtptap",
            "pre",
            "meta",
            "l4proto",
            "tcp",
            "socket",
            "transparent",
            "1",
            "meta",
            "mark",
            "set",
            "0x1",
            "accept",
        ],
    );
    lab.ns(
        &middle,
        &[
            "nft", "add", "rule", "ip", "smtptap", "pre", "iifname", "m1", "tcp", "dport", "25",
            "tproxy", "to", ":2525", "meta", "mark", "set", "0x1", "accept",
        ],
    );
    lab.tproxy_routing(false);
    lab.start_server();
    let pid = lab.start_smtptap(&["--transparent", "tproxy"]);
    relay_one_and_check(
        &mut lab,
        pid,
        &Expect {
            server: &format!("{SERVER_IP}:25"),
            client_ip: CLIENT_IP,
            server_sees: "10.77.2.1",
            tproxy: true,
        },
    );
    lab.ns(&middle, &["nft", "delete", "table", "ip", "smtptap"]);
    lab.ns(
        &middle,
        &["ip", "rule", "del", "fwmark", "0x1/0x1", "lookup", "100"],
    );
}

/// REDIRECT over IPv6 (`ip6tables`, `IP6T_SO_ORIGINAL_DST`): the same three
/// namespaces with IPv6 addresses added; the client dials the server's IPv6
/// address and smtptap, listening on `[::]` too, relays to it.
#[test]
fn redirect_over_ipv6_relays_to_the_original_destination() {
    assert!(
        which("ip6tables"),
        "ip6tables is missing: run scripts/install-test-deps (apt-get install -y iptables)"
    );
    let mut lab = Lab::new("r6");
    lab.add_ipv6();
    lab.iptables_redirect(true);
    lab.start_server_v6();
    let pid = lab.start_smtptap(&["--listen", "[::]:2525", "--transparent", "redirect"]);
    relay_one_and_check(
        &mut lab,
        pid,
        &Expect {
            server: "[fd77:2::2]:25",
            client_ip: "fd77:1::2",
            server_sees: "fd77:2::1",
            tproxy: false,
        },
    );
}

/// TPROXY over IPv6 with `--spoof-source` (ip6tables TPROXY, `ip -6` policy
/// routing; the transparent flag set through `IP_TRANSPARENT` on IPv6
/// sockets): relayed intact, and the server sees the client's IPv6 address.
#[test]
fn tproxy_over_ipv6_with_spoofed_source() {
    assert!(
        which("ip6tables"),
        "ip6tables is missing: run scripts/install-test-deps (apt-get install -y iptables)"
    );
    let mut lab = Lab::new("t6");
    lab.add_ipv6();
    lab.iptables_tproxy(true);
    lab.start_server_v6();
    let pid = lab.start_smtptap(&[
        "--listen",
        "[::]:2525",
        "--transparent",
        "tproxy",
        "--spoof-source",
    ]);
    relay_one_and_check(
        &mut lab,
        pid,
        &Expect {
            server: "[fd77:2::2]:25",
            client_ip: "fd77:1::2",
            server_sees: "fd77:1::2",
            tproxy: true,
        },
    );
}
