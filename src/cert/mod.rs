//! Stub: owned by the cert work package.

use serde::{Deserialize, Serialize};

/// Events of this module (placeholder).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "event")]
pub enum CertEvent {
    /// Placeholder.
    #[serde(rename = "cert.placeholder")]
    Placeholder {},
}
