//! Fuzzes the configuration parser and validator: arbitrary text as
//! `config.toml`, parsed (`RawConfig::from_toml`) then resolved. Checks: no
//! panic; an error names the file; a resolved configuration turns into its
//! JSON form (`run.start`'s `config`).
//!
//! Run: `cargo fuzz run config --sanitizer none -- -max_total_time=60`
//! (seed: `config.toml` at the crate root).
#![no_main]

use libfuzzer_sys::fuzz_target;
use smtptap::config::RawConfig;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match RawConfig::from_toml(text, "fuzz.toml").and_then(|r| r.resolve("fuzz.toml")) {
        Ok(cfg) => {
            let json = cfg.resolved_json();
            assert!(json.is_object());
        }
        Err(e) => assert!(e.to_string().contains("fuzz.toml")),
    }
});
