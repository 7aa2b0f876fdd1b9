//! The one TLS crypto provider: rustls with *ring*, chosen here and nowhere
//! else. Every rustls configuration smtptap builds (intercept mode's two
//! legs, the probe and the side-probe, the lab's server and client) and
//! every certificate check that needs signature algorithms takes them from
//! [`provider`], so a change of provider is one line.
//!
//! Owns that choice only; must not do I/O.

use std::sync::Arc;

/// The crypto provider for every TLS configuration smtptap makes.
///
/// Newer rustls releases mark `ring::default_provider` deprecated because
/// *ring* offers no post-quantum key exchange. smtptap keeps *ring*: it
/// observes and reproduces what mail servers negotiate today, and it keeps
/// one provider and a build without a C/CMake toolchain for aws-lc. The
/// allowance is here, in one place.
#[allow(deprecated)]
pub fn provider() -> rustls::crypto::CryptoProvider {
    rustls::crypto::ring::default_provider()
}

/// [`provider`] behind an `Arc`, as the rustls builders take it.
pub fn shared() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(provider())
}
