//! Capture (pcapng) lines: files opened and closed, and what did not make it
//! into them.

use super::LineKind::{Fact, Problem};
use super::Lines;
use crate::capture::CaptureEvent;

pub(super) fn render(e: &CaptureEvent) -> Lines {
    match e {
        CaptureEvent::File { path, reason } => {
            vec![(Fact, format!("capture file {reason}: {path}"))]
        }
        CaptureEvent::Error {
            path,
            error,
            detail,
        } => vec![(
            Problem,
            format!(
                "capture stopped: writing {path} failed: {} (mail is not affected)",
                super::session::words(error, detail)
            ),
        )],
        CaptureEvent::Deleted { path, bytes, .. } => vec![(
            Fact,
            format!("capture file deleted to stay under capture.max_total_bytes: {path} ({bytes} bytes)"),
        )],
        CaptureEvent::Truncated { limit } => vec![(
            Fact,
            format!(
                "capture: this session reached max_bytes_per_session ({limit} bytes); later data is not in the file"
            ),
        )],
        CaptureEvent::Dropped {
            frames,
            bytes,
            reason,
        } => vec![(
            Problem,
            format!(
                "capture: {frames} frames ({bytes} bytes) of this session not written: {reason} (the disk could not keep up; mail is not affected)"
            ),
        )],
    }
}
