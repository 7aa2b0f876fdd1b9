//! `smtptap probe` against a real Postfix (`scripts/testbed` profile a:
//! `smtpd_tls_security_level = may`, a certificate from the testbed's CA):
//! the version, cipher suite and leaf SHA-256 the probe reports agree with
//! what `posttls-finger` and `openssl s_client -starttls smtp` report for the
//! same server, and `--versions` agrees with `openssl s_client -brief`
//! restricted to each version. Its own testbed (directory and ports), so it runs beside
//! tests/interop.rs. Needs root and `scripts/install-test-deps`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn need(tool: &str, path: &str) {
    assert!(
        Path::new(path).exists(),
        "{tool} ({path}) is missing: run scripts/install-test-deps"
    );
}

struct Bed {
    dir: PathBuf,
    base: u16,
}

impl Bed {
    fn run(&self, args: &[&str]) -> Output {
        Command::new("bash")
            .arg(repo().join("scripts/testbed"))
            .args(args)
            .env("TESTBED_DIR", &self.dir)
            .env("TESTBED_PORT", self.base.to_string())
            .output()
            .expect("run scripts/testbed")
    }
}

impl Drop for Bed {
    fn drop(&mut self) {
        let _ = self.run(&["down"]);
    }
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// OpenSSL cipher names to IANA names (`openssl ciphers -stdname`).
fn iana_names() -> HashMap<String, String> {
    let o = Command::new("openssl")
        .args(["ciphers", "-stdname", "ALL:@SECLEVEL=0"])
        .output()
        .expect("openssl ciphers");
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            let iana = w.next()?;
            let _dash = w.next()?;
            let ossl = w.next()?;
            Some((ossl.to_string(), iana.to_string()))
        })
        .collect()
}

fn hex(fp: &str) -> String {
    fp.replace(':', "").to_lowercase()
}

/// `openssl s_client -brief -starttls smtp ARGS`: the negotiated version
/// and suite (OpenSSL's name), or None when no handshake completed.
fn s_client_brief(port: u16, args: &[&str]) -> Option<(String, String)> {
    let o = Command::new("openssl")
        .args(["s_client", "-brief", "-starttls", "smtp"])
        .args(args)
        .args(["-connect", &format!("127.0.0.1:{port}")])
        .stdin(Stdio::null())
        .output()
        .expect("openssl s_client");
    let t = text(&o);
    let field = |name: &str| {
        t.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_string())
    };
    // OpenSSL says "TLSv1" for TLS 1.0; smtptap says "TLSv1.0".
    let version = field("Protocol version:")?.replace("TLSv1", "TLSv1.0");
    let version = version.replace("TLSv1.0.", "TLSv1.");
    Some((version, field("Ciphersuite:")?))
}

#[test]
fn probe_agrees_with_posttls_finger_and_openssl_s_client_on_postfix() {
    need("postfix", "/usr/sbin/postfix");
    need("posttls-finger", "/usr/sbin/posttls-finger");
    need("openssl", "/usr/bin/openssl");
    let pid = std::process::id();
    let bed = Bed {
        dir: std::env::temp_dir().join(format!("smtptap-interop-probe-{pid}")),
        base: 30000 + (pid % 400) as u16 * 10,
    };
    let up = bed.run(&["up"]);
    assert!(
        up.status.success(),
        "scripts/testbed up failed (root and scripts/install-test-deps needed):\n{}",
        text(&up)
    );
    let port = bed.base; // profile a
    let ca = bed.dir.join("ca/ca.pem");
    let names = iana_names();

    // smtptap probe.
    let p = Command::new(env!("CARGO_BIN_EXE_smtptap"))
        .args([
            "probe",
            &format!("127.0.0.1:{port}"),
            "--json",
            "--timeout",
            "20",
        ])
        .args(["--sni", "mx.smtptap.test", "--ehlo", "probe.smtptap.test"])
        .arg("--ca-file")
        .arg(&ca)
        .output()
        .unwrap();
    assert_eq!(p.status.code(), Some(0), "{}", text(&p));
    let evs: Vec<Value> = String::from_utf8_lossy(&p.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let established = evs
        .iter()
        .find(|e| e["event"] == "tls.established")
        .unwrap_or_else(|| panic!("no tls.established:\n{}", text(&p)));
    let version = established["version"].as_str().unwrap().to_string();
    let suite = established["cipher_suite"].as_str().unwrap().to_string();
    let leaf = evs
        .iter()
        .find(|e| e["event"] == "cert.info" && e["side"] == "server" && e["index"] == 0)
        .unwrap_or_else(|| panic!("no leaf cert.info:\n{}", text(&p)));
    let sha256 = leaf["sha256"].as_str().unwrap().to_string();

    // posttls-finger (its own report line and the leaf's fingerprint).
    let f = Command::new("posttls-finger")
        .env("MAIL_CONFIG", bed.dir.join("a/etc"))
        .args(["-c", "-l", "may", "-d", "sha256"])
        .arg(format!("[127.0.0.1]:{port}"))
        .output()
        .expect("posttls-finger");
    let ft = text(&f);
    let f_line = ft
        .lines()
        .find(|l| l.contains("TLS connection established"))
        .unwrap_or_else(|| panic!("posttls-finger:\n{ft}"));
    // "...: TLSv1.3 with cipher TLS_AES_256_GCM_SHA384 (256/256 bits) ..."
    let after = f_line.rsplit_once("]:").map(|x| x.1).unwrap_or(f_line);
    let mut w = after.split_whitespace();
    let f_version = w.nth(1).unwrap_or("").to_string();
    let f_cipher = w.nth(2).unwrap_or("").to_string();
    let f_fp = ft
        .split("fingerprint=")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .unwrap_or_else(|| panic!("no fingerprint in posttls-finger:\n{ft}"));
    let f_cipher = names.get(&f_cipher).cloned().unwrap_or(f_cipher);

    // openssl s_client -starttls smtp, its leaf through openssl x509.
    let s = Command::new("openssl")
        .args([
            "s_client",
            "-starttls",
            "smtp",
            "-servername",
            "mx.smtptap.test",
        ])
        .args(["-connect", &format!("127.0.0.1:{port}")])
        .stdin(Stdio::null())
        .output()
        .expect("openssl s_client");
    let st = text(&s);
    // Version and suite from `-brief` ("Protocol version: TLSv1.3",
    // "Ciphersuite: …"; the "New, …" line of the long form names the
    // cipher's own version, not the negotiated one).
    let (s_version, s_cipher) = s_client_brief(port, &["-servername", "mx.smtptap.test"])
        .unwrap_or_else(|| panic!("s_client -brief negotiated nothing"));
    let s_cipher = names.get(&s_cipher).cloned().unwrap_or(s_cipher);
    let pem_start = st.find("-----BEGIN CERTIFICATE-----").expect("leaf PEM");
    let pem_end = st.find("-----END CERTIFICATE-----").expect("leaf PEM end") + 25;
    let mut x = Command::new("openssl")
        .args(["x509", "-noout", "-fingerprint", "-sha256"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    x.stdin
        .take()
        .unwrap()
        .write_all(&st.as_bytes()[pem_start..pem_end])
        .unwrap();
    let xo = x.wait_with_output().unwrap();
    let s_fp = String::from_utf8_lossy(&xo.stdout)
        .trim()
        .rsplit('=')
        .next()
        .unwrap()
        .to_string();

    // openssl says "TLSv1.3"; smtptap and Postfix say "TLSv1.3" too (1.2 likewise).
    assert_eq!(version, f_version, "probe vs posttls-finger version\n{ft}");
    assert_eq!(version, s_version, "probe vs s_client version\n{st}");
    assert_eq!(suite, f_cipher, "probe vs posttls-finger cipher\n{ft}");
    assert_eq!(suite, s_cipher, "probe vs s_client cipher\n{st}");
    assert_eq!(sha256, hex(f_fp), "probe vs posttls-finger leaf SHA-256");
    assert_eq!(sha256, hex(&s_fp), "probe vs s_client leaf SHA-256");
    eprintln!("agreed: {version} {suite} leaf sha256 {sha256}");

    // --versions agrees with openssl s_client restricted to each version.
    let v = Command::new(env!("CARGO_BIN_EXE_smtptap"))
        .args([
            "probe",
            &format!("127.0.0.1:{port}"),
            "--versions",
            "--json",
        ])
        .args(["--ehlo", "probe.smtptap.test", "--timeout", "20"])
        .output()
        .unwrap();
    let pv: Vec<Value> = String::from_utf8_lossy(&v.stdout)
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|e| e["event"] == "probe.version")
        .collect();
    assert_eq!(pv.len(), 4, "{}", text(&v));
    let mut any_legacy = false;
    for (flag, ev) in ["-tls1", "-tls1_1", "-tls1_2", "-tls1_3"].iter().zip(&pv) {
        let brief = s_client_brief(port, &[flag, "-cipher", "DEFAULT:@SECLEVEL=0"]);
        assert_eq!(
            ev["accepted"] == true,
            brief.is_some(),
            "{flag}: probe {ev} vs s_client {brief:?}"
        );
        if let Some((sv, _)) = brief {
            assert_eq!(ev["version"], sv.as_str(), "{flag}");
            any_legacy |= matches!(*flag, "-tls1" | "-tls1_1");
        }
    }
    let want = if any_legacy { 1 } else { 0 };
    assert_eq!(v.status.code(), Some(want), "{}", text(&v));
}
