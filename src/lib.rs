//! smtptap: a transparent, TLS-inspecting SMTP proxy for mail troubleshooting.
//!
//! # Layout
//!
//! Data flows one way; each arrow is a module boundary:
//!
//! ```text
//!  client ──▶ proxy::accept ──▶ proxy::upstream ──▶ server
//!               │ (one task per session)
//!               ▼
//!         proxy::relay ── Chunk{side, ts, Bytes} ──▶ proxy::tap
//!                                                      ├─▶ session (analysis task)
//!                                                      │     ├─▶ smtp::SmtpObserver  (cleartext, sans-IO)
//!                                                      │     ├─▶ tls::TlsObserver    (after STARTTLS, sans-IO)
//!                                                      │     └─▶ cert (chain, trust, names)
//!                                                      └─▶ capture (pcapng frames, own writer task)
//!         session ──▶ Event ──▶ sink::Hub ──▶ json lines, console transcript
//!                         └──▶ diagnose (pure) ──▶ findings in session.summary
//! ```
//!
//! | module | owns | must not |
//! |---|---|---|
//! | [`proxy`] | sockets: listeners, upstream connect, the relay, shutdown | parse protocols, wait on analysis |
//! | [`smtp`] | the sans-IO SMTP observer (commands, replies, DATA/BDAT, STARTTLS) | touch sockets |
//! | [`tls`] | the sans-IO TLS record/handshake observer, JA3/JA4 | touch sockets |
//! | [`cert`] | X.509 fields, chain trust (webpki), RFC 6125 name checks | touch sockets |
//! | [`session`] | one analysis task per session: observers → events → summary | block the relay |
//! | [`diagnose`] | findings as a pure function of a session's events | do I/O |
//! | [`event`] | the event envelope and session-level events | do I/O |
//! | [`sink`] | JSON lines and console transcript writers | block the relay |
//! | [`capture`] | pcapng synthesis and its writer task | block the relay |
//! | [`config`] | `config.toml` parsing and validation into resolved types | guess defaults silently |
//! | [`headers`] | `smtptap headers`: TLS facts from Received headers | — |
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod capture;
pub mod cert;
pub mod cli;
pub mod config;
pub mod diagnose;
pub mod event;
pub mod headers;
pub mod lab;
pub mod proxy;
pub mod session;
pub mod sink;
pub mod smtp;
pub mod summary;
pub mod tls;
