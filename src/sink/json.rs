//! The JSON lines sink: one event, one line, as documented in docs/log-schema.md.

use std::io::{self, Write};

use crate::event::Event;

/// Writes one event as a JSON line.
pub fn write(w: &mut dyn Write, ev: &Event) -> io::Result<()> {
    let mut line = serde_json::to_vec(ev).map_err(io::Error::other)?;
    line.push(b'\n');
    w.write_all(&line)
}

/// Opens a JSON lines file for appending (created if missing, readable by
/// its owner only: the log names hosts, addresses and mail envelopes).
pub fn open(path: &std::path::Path) -> io::Result<Box<dyn Write + Send>> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
    Ok(Box::new(io::BufWriter::with_capacity(64 * 1024, f)))
}
