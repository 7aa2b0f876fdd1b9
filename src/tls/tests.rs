//! Tests of the TLS observer.
