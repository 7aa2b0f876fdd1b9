//! Stub: owned by the capture work package.

use serde::{Deserialize, Serialize};

/// Events of this module (placeholder).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "event")]
pub enum CaptureEvent {
    /// Placeholder.
    #[serde(rename = "capture.placeholder")]
    Placeholder {},
}

/// `[capture]` (placeholder).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaptureSection {}

/// Resolved capture config (placeholder).
#[derive(Debug, Clone)]
pub struct CaptureConfig {}

impl CaptureSection {
    /// Placeholder.
    pub fn resolve(&self, _prefix: &str) -> Result<Option<CaptureConfig>, String> {
        Ok(None)
    }
}
