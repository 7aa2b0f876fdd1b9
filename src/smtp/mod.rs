//! Stub: owned by the smtp work package.

use serde::{Deserialize, Serialize};

/// Events of this module (placeholder).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "event")]
pub enum SmtpEvent {
    /// Placeholder.
    #[serde(rename = "smtp.placeholder")]
    Placeholder {},
}
