//! The docs are part of the contract: every event the code can emit is
//! documented in docs/log-schema.md, every finding id in docs/findings.md, and
//! the README shows the two commands CI relies on.

use std::fs;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// Every `#[serde(rename = "x.y")]` in src/ whose name is an event name.
fn event_names() -> Vec<String> {
    let mut files = Vec::new();
    rust_files(&root().join("src"), &mut files);
    let prefixes = [
        "session.",
        "upstream.",
        "smtp.",
        "tls.",
        "cert.",
        "capture.",
        "observer.",
        "headers.",
    ];
    let mut names = Vec::new();
    for f in files {
        let text = fs::read_to_string(&f).unwrap();
        for line in text.lines() {
            let l = line.trim();
            if let Some(rest) = l.strip_prefix("#[serde(rename = \"") {
                let name = rest.split('"').next().unwrap_or("");
                if prefixes.iter().any(|p| name.starts_with(p)) && !name.ends_with("placeholder") {
                    names.push(name.to_string());
                }
            }
        }
    }
    names.sort();
    names.dedup();
    names
}

#[test]
fn every_event_is_documented_in_the_log_schema() {
    let doc = fs::read_to_string(root().join("docs/log-schema.md")).unwrap();
    let names = event_names();
    assert!(names.len() >= 8, "found too few events: {names:?}");
    let missing: Vec<_> = names
        .iter()
        .filter(|n| !doc.contains(&format!("### `{n}`")))
        .collect();
    assert!(
        missing.is_empty(),
        "events missing from docs/log-schema.md: {missing:?}"
    );
}

#[test]
fn every_finding_id_is_documented() {
    let src = fs::read_to_string(root().join("src/diagnose.rs")).unwrap();
    let doc = fs::read_to_string(root().join("docs/findings.md")).unwrap();
    // ids are the first string literal of f("id", …) calls or of an (id, …) match arm tuple
    let mut ids = Vec::new();
    for piece in src.split('"').skip(1).step_by(2) {
        let looks_like_id = piece.contains('.')
            && !piece.contains(' ')
            && piece
                .chars()
                .all(|c| c.is_ascii_lowercase() || c == '.' || c == '_')
            && [
                "upstream.",
                "observer.",
                "smtp.",
                "starttls.",
                "tls.",
                "cert.",
            ]
            .iter()
            .any(|p| piece.starts_with(p));
        if looks_like_id {
            ids.push(piece.to_string());
        }
    }
    ids.sort();
    ids.dedup();
    // event names used by the rules are not finding ids
    let events = event_names();
    let schema = fs::read_to_string(root().join("docs/log-schema.md")).unwrap();
    let ids: Vec<_> = ids
        .into_iter()
        .filter(|i| !events.contains(i) && !schema.contains(&format!("### `{i}`")))
        .collect();
    assert!(ids.len() >= 20, "found too few finding ids: {ids:?}");
    let missing: Vec<_> = ids
        .iter()
        .filter(|i| !doc.contains(&format!("`{i}`")))
        .collect();
    assert!(
        missing.is_empty(),
        "finding ids missing from docs/findings.md: {missing:?}"
    );
}

#[test]
fn readme_shows_the_lab_and_the_test_command() {
    let readme = fs::read_to_string(root().join("README.md")).unwrap();
    assert!(readme.contains("cargo run --release --example lab"));
    assert!(readme.contains("bash scripts/test"));
    let ci = fs::read_to_string(root().join(".ci/run")).unwrap();
    assert!(ci.contains("bash scripts/test"));
    assert!(ci.contains("cargo fmt --check"));
    assert!(ci.contains("cargo clippy --all-targets -- -D warnings"));
}

/// Every example line in docs/log-schema.md is a real event: it parses as
/// one, serialises back to the same JSON (the schema is the code's), and the
/// console renders it as at least one line of its own (not the generic
/// `name key=value` fallback).
#[test]
fn every_schema_example_parses_round_trips_and_renders_on_the_console() {
    use smtptap::event::Event;
    use smtptap::sink::console::render;
    let doc = fs::read_to_string(root().join("docs/log-schema.md")).unwrap();
    let lines: Vec<&str> = doc.lines().filter(|l| l.starts_with("{\"ts\"")).collect();
    assert!(lines.len() >= 30, "too few example lines: {}", lines.len());
    let mut problems = Vec::new();
    for line in &lines {
        let ev: Event = match serde_json::from_str(line) {
            Ok(e) => e,
            Err(e) => {
                problems.push(format!("does not parse ({e}): {line}"));
                continue;
            }
        };
        let back: serde_json::Value = serde_json::to_value(&ev).unwrap();
        let doc_value: serde_json::Value = serde_json::from_str(line).unwrap();
        if back != doc_value {
            problems.push(format!(
                "does not round-trip:\n  doc:  {doc_value}\n  code: {back}"
            ));
        }
        let name = doc_value["event"].as_str().unwrap_or("").to_string();
        let out = render(&ev);
        // Shown by other lines (see console.rs): the EHLO and BDAT command
        // lines, the STARTTLS reply, ChangeCipherSpec.
        let silent = [
            "smtp.ehlo",
            "smtp.bdat",
            "smtp.starttls",
            "tls.change_cipher_spec",
        ];
        if out.is_empty() && !silent.contains(&name.as_str()) {
            problems.push(format!("renders nothing: {name}"));
        }
        if out.iter().any(|(_, t)| t.starts_with(&format!("{name} "))) {
            problems.push(format!(
                "renders through the generic fallback: {name}: {out:?}"
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
