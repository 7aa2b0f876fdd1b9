//! Stub: owned by the tls work package.

use serde::{Deserialize, Serialize};

/// Events of this module (placeholder).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "event")]
pub enum TlsEvent {
    /// Placeholder.
    #[serde(rename = "tls.placeholder")]
    Placeholder {},
}
