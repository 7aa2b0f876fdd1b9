//! Stub (replaced by the tls work package): the API the session task uses.

use serde::{Deserialize, Serialize};

use crate::event::Side;

/// Events of this module (placeholder).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "event")]
pub enum TlsEvent {
    /// Placeholder.
    #[serde(rename = "tls.placeholder")]
    Placeholder {},
}

/// Observer stub.
#[derive(Debug, Default)]
pub struct TlsObserver {}

impl TlsObserver {
    /// New.
    pub fn new() -> Self {
        TlsObserver {}
    }
    /// Feed.
    pub fn feed(&mut self, _side: Side, _data: &[u8], _out: &mut Vec<TlsEvent>) {}
    /// Desynced.
    pub fn is_desynced(&self) -> bool {
        false
    }
    /// Done.
    pub fn is_done(&self) -> bool {
        false
    }
}
