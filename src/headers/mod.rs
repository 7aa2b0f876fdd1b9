//! Stub: owned by the headers work package (issue 6).
