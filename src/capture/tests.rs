//! Unit tests of the capture module.
