//! The layout's promises, checked on the source: the session core and the
//! parsers are sans-IO (no runtime, no sockets, no clock, no threads), and
//! dependencies point down the data flow (the core never uses the proxy).
//! A check that finds a forbidden word names the file and the line.

use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Every `.rs` file under `dir` (or `dir` itself), test files excluded
/// (`tests.rs` and `tests/` may build real peers).
fn sources(dir: &Path) -> Vec<PathBuf> {
    if dir.is_file() {
        return vec![dir.to_path_buf()];
    }
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            if p.file_name()
                .is_some_and(|n| n != "tests" && n != "fixtures")
            {
                out.extend(sources(&p));
            }
        } else if p.extension().is_some_and(|x| x == "rs")
            && p.file_name().is_some_and(|n| n != "tests.rs")
        {
            out.push(p);
        }
    }
    out
}

/// Lines of code (comments skipped) containing one of `words`.
fn offending(files: &[PathBuf], words: &[&str]) -> Vec<String> {
    let mut bad = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(f).unwrap();
        for (i, line) in text.lines().enumerate() {
            let code = line.trim_start();
            // An inline test module (last in the file, by convention) may
            // build real peers and read the clock.
            if code.starts_with("mod tests {") {
                break;
            }
            if code.starts_with("//") {
                continue;
            }
            for w in words {
                if code.contains(w) {
                    bad.push(format!("{}:{}: `{w}` in {code}", f.display(), i + 1));
                }
            }
        }
    }
    bad
}

const SANS_IO: &[&str] = &[
    "src/session",
    "src/smtp",
    "src/tls",
    "src/diagnose",
    "src/diagnose.rs",
    "src/summary.rs",
    "src/cert/mod.rs",
    "src/cert/info.rs",
    "src/cert/names.rs",
    // Not src/cert/trust.rs: it reads anchor and CRL files when the trust
    // store is built at start-up (a driver's job); its verification is pure.
];

fn sans_io_files() -> Vec<PathBuf> {
    let files: Vec<PathBuf> = SANS_IO
        .iter()
        .map(|p| root().join(p))
        .filter(|p| p.exists())
        .flat_map(|p| sources(&p))
        .collect();
    assert!(files.len() >= 20, "the source tree moved: {files:?}");
    files
}

#[test]
fn the_core_and_the_parsers_do_no_io_and_read_no_clock() {
    let bad = offending(
        &sans_io_files(),
        &[
            "tokio",
            "TcpStream",
            "TcpListener",
            "UdpSocket",
            "std::net::Tcp",
            "Instant",
            "SystemTime::now",
            "Timestamp::now",
            "std::thread",
            "std::fs",
            "File::",
        ],
    );
    assert!(
        bad.is_empty(),
        "sans-IO modules doing I/O:\n{}",
        bad.join("\n")
    );
}

#[test]
fn the_core_does_not_depend_on_the_proxy() {
    let bad = offending(
        &sans_io_files(),
        &["crate::proxy", "crate::sink", "crate::cli"],
    );
    assert!(
        bad.is_empty(),
        "dependencies pointing up the data flow:\n{}",
        bad.join("\n")
    );
}

#[test]
fn no_finding_id_literal_outside_the_diagnosis() {
    // Finding ids are constants of the diagnosis; the core refers to them.
    let files: Vec<PathBuf> = sources(&root().join("src/session"));
    let bad = offending(&files, &["\"tls.handshake_failed\"", "\"tls.not_tls\""]);
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}
