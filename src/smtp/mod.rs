//! Stub (replaced by the smtp work package): the API the session task uses.

use serde::{Deserialize, Serialize};

use crate::event::Side;

/// Events of this module (placeholder).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "event")]
pub enum SmtpEvent {
    /// Placeholder.
    #[serde(rename = "smtp.placeholder")]
    Placeholder {},
}

/// Limits.
#[derive(Debug, Clone, Default)]
pub struct SmtpLimits {}

/// A mark.
#[derive(Debug, Clone)]
pub struct Mark {
    /// Range.
    pub range: std::ops::Range<usize>,
    /// Kind.
    pub kind: MarkKind,
}

/// Mark kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MarkKind {
    /// Body.
    Body,
    /// Secret.
    Secret,
}

/// Progress.
#[derive(Debug)]
pub enum Progress {
    /// Continue.
    Continue,
    /// StartTls.
    StartTls {
        /// c.
        client_leftover: Vec<u8>,
        /// s.
        server_leftover: Vec<u8>,
    },
}

/// Observer stub.
#[derive(Debug, Default)]
pub struct SmtpObserver {}

impl SmtpObserver {
    /// New.
    pub fn new(_l: SmtpLimits) -> Self {
        SmtpObserver {}
    }
    /// Feed.
    pub fn feed(
        &mut self,
        _side: Side,
        _data: &[u8],
        _out: &mut Vec<SmtpEvent>,
        _marks: &mut Vec<Mark>,
    ) -> Progress {
        Progress::Continue
    }
    /// Desynced.
    pub fn is_desynced(&self) -> bool {
        false
    }
}
