//! `smtptap headers` run in-process through `headers::run`, as the CLI does:
//! exit codes, console and JSON output, input errors.
use std::path::PathBuf;

use smtptap::headers::{run, HeadersArgs};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("src/headers/fixtures")
        .join(name)
}

fn go(input: PathBuf, mbox: bool, json: bool) -> (i32, String) {
    let args = HeadersArgs { input, mbox, json };
    let mut out = Vec::new();
    let code = run(&args, &mut out);
    (code, String::from_utf8(out).expect("utf-8 output"))
}

#[test]
fn clean_message_exits_0() {
    let (code, out) = go(fixture("exo_to_postfix.eml"), false, false);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("=== 6 Received hop(s), in transit order"),
        "{out}"
    );
    assert!(
        out.contains("=== info headers.tls_every_hop: TLS on every hop"),
        "{out}"
    );
    assert!(
        out.contains("=== summary: 6 hop(s): 4 with TLS, 0 without TLS, 2 local, 0 unknown"),
        "{out}"
    );
    assert!(!out.contains("***"), "{out}");
}

#[test]
fn verify_not_is_info_and_exits_0() {
    let (code, out) = go(fixture("sendmail_verify_not.eml"), false, false);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("=== info headers.cert_not_verified"), "{out}");
}

#[test]
fn cleartext_hop_exits_1_with_a_problem_line() {
    let (code, out) = go(fixture("cleartext_hop.eml"), false, false);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("*** warning headers.hop_without_tls: hop 1 (app01.example.com [192.0.2.17] -> gw.example.com) used no TLS"), "{out}");
    assert!(
        out.contains("      evidence: Received: from app01.example.com"),
        "{out}"
    );
}

#[test]
fn legacy_tls_exits_1() {
    let (code, out) = go(fixture("tls10_hop.eml"), false, true);
    assert_eq!(code, 1, "{out}");
    let findings: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("JSON line"))
        .filter(|v| v["event"] == "headers.finding")
        .collect();
    let ids: Vec<&str> = findings.iter().filter_map(|f| f["id"].as_str()).collect();
    assert_eq!(
        ids,
        vec![
            "headers.legacy_tls_version",
            "headers.legacy_tls_version",
            "headers.weak_cipher",
            "headers.tls_every_hop"
        ]
    );
}

#[test]
fn mbox_reports_each_message() {
    let (code, out) = go(fixture("three.mbox"), true, false);
    assert_eq!(code, 1, "{out}");
    for i in 1..=3 {
        assert!(out.contains(&format!("=== message {i} of 3")), "{out}");
    }
    let (code, out) = go(fixture("three.mbox"), true, true);
    assert_eq!(code, 1);
    let messages: Vec<u64> = out
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("JSON line"))
        .filter(|v| v["event"] == "headers.summary")
        .filter_map(|v| v["message"].as_u64())
        .collect();
    assert_eq!(messages, vec![1, 2, 3]);
}

#[test]
fn missing_file_exits_2_with_a_clear_error() {
    let (code, out) = go(fixture("does-not-exist.eml"), false, false);
    assert_eq!(code, 2);
    assert!(out.starts_with("*** error: cannot read "), "{out}");
    assert!(out.contains("does-not-exist.eml"), "{out}");
    let (code, out) = go(fixture("does-not-exist.eml"), false, true);
    assert_eq!(code, 2);
    let v: serde_json::Value = serde_json::from_str(out.trim()).expect("JSON line");
    assert_eq!(v["event"], "headers.input_error");
}

#[test]
fn empty_input_and_mbox_without_separator_exit_2() {
    let dir = std::env::temp_dir().join(format!("smtptap-headers-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let empty = dir.join("empty.eml");
    std::fs::write(&empty, b"\r\n  \n").expect("write");
    let (code, out) = go(empty, false, false);
    assert_eq!(code, 2);
    assert!(out.contains("is empty"), "{out}");
    let (code, out) = go(fixture("cleartext_hop.eml"), true, false);
    assert_eq!(code, 2);
    assert!(out.contains("drop --mbox"), "{out}");
    let junk = dir.join("junk.bin");
    std::fs::write(
        &junk,
        [0u8, 159, 146, 150, 0xff, 0x0d, 0x0a, 0x0d, 0x0a, 1, 2],
    )
    .expect("write");
    let (code, out) = go(junk, false, false);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("headers.no_received"), "{out}");
    let _ = std::fs::remove_dir_all(&dir);
}
