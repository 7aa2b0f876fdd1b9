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
