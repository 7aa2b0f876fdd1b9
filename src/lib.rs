//! smtptap: a transparent, TLS-inspecting SMTP proxy for mail troubleshooting.
//!
//! # Layout
//!
//! Data flows one way; each arrow is a module boundary:
//!
//! ```text
//!  client ──▶ proxy (accept; transparent: original destination) ──▶ proxy::upstream ──▶ server
//!               │ one controller task per session
//!               ▼
//!         proxy::relay ── TapMsg{Chunk{side, ts, Bytes} | Eof} ──try_send──▶ session (analysis task)
//!               (never waits; on overflow the tap stops and says so)          ├─▶ smtp::SmtpObserver (cleartext, sans-IO)
//!                                                                              ├─▶ tls::TlsObserver   (after STARTTLS, sans-IO)
//!                                                                              ├─▶ cert (chain, trust, names, CRLs)
//!                                                                              └─▶ capture::SessionCapture ──▶ writer thread ──▶ pcapng
//!         session ──▶ Event ──▶ sink (writer thread) ──▶ JSON lines, console transcript
//!                      └──▶ diagnose (pure) ──▶ findings ──▶ summary ──▶ session.summary
//! ```
//!
//! | module | owns | must not |
//! |---|---|---|
//! | [`proxy`] | sockets: listeners, upstream connect, transparent interception, the relay, shutdown | parse protocols, wait on analysis |
//! | [`session`] | one analysis task per session: observers → events → summary | touch sockets, block the relay |
//! | [`smtp`] | the sans-IO SMTP observer (commands, replies, DATA/BDAT, AUTH redaction, STARTTLS) | touch sockets |
//! | [`tls`] | the sans-IO TLS record/handshake observer, JA3/JA4 | touch sockets |
//! | [`cert`] | X.509 fields, chain trust (webpki), RFC 6125 name checks, CRLs, minting | touch the relay |
//! | [`diagnose`] | findings as a pure function of a session's events | do I/O |
//! | [`summary`] | the `session.summary` fields, derived from the events | do I/O |
//! | [`event`] | the event envelope and session-level events | do I/O |
//! | [`sink`] | JSON lines and console transcript writers (own thread) | block the relay |
//! | [`capture`] | pcapng synthesis (sans-IO flows) and its writer thread | block the relay |
//! | [`net`] | IP networks (CIDR) for filters and per-destination settings | — |
//! | [`config`] | `config.toml` parsing and validation into resolved types | guess defaults silently |
//! | [`cli`] | argument parsing and wiring for the binary | hold logic the library lacks |
//! | [`headers`] | `smtptap headers`: TLS facts from Received headers | — |
//! | [`lab`] | a real SMTP server and client for the lab demo and tests | be used by the proxy |
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
pub mod net;
pub mod proxy;
pub mod session;
pub mod sink;
pub mod smtp;
pub mod summary;
pub mod tls;
