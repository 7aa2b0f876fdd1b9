//! smtptap: a transparent, TLS-inspecting SMTP proxy for mail troubleshooting.
//!
//! # Layout
//!
//! Data flows one way; each arrow is a module boundary, and dependencies
//! point down it (accept → relay → session core → observers → events → sinks):
//!
//! ```text
//!  client ──▶ proxy (accept; transparent: original destination) ──▶ proxy::upstream ──▶ server
//!               │ one task per session: the controller, then the analysis, polled in turn
//!               ▼
//!         proxy::relay ── TapMsg{Chunk | Eof} ──offer──▶ proxy::analysis (driver future)
//!               (never waits; on overflow the tap stops and says so)  │ feeds facts, serves requests (proxy::crl)
//!                                                                      ▼
//!                          session::SessionAnalyzer (sans-IO: bytes(leg, side, ts) in, events + requests out)
//!                            ├─▶ smtp::SmtpObserver (cleartext)      ├─▶ cert (chain, trust, names)
//!                            ├─▶ tls::TlsObserver   (per leg)        └─▶ capture::SessionCapture ──▶ writer thread ──▶ pcapng
//!                            └─▶ diagnose (pure) ──▶ summary ──▶ session.summary
//!         events ──▶ sink (writer thread) ──▶ JSON lines, console transcript
//! ```
//!
//! | module | owns | must not |
//! |---|---|---|
//! | [`proxy`] | sockets and the clock of live sessions: listeners, upstream connect, transparent interception, the relay, intercept mode's two TLS sessions and its cleartext boundary (`proxy::intercept`), the session core's live driver (`proxy::analysis`) and the queue that feeds it (`proxy::tap_queue`), CRL fetching and its cache (`proxy::crl`), run.start/run.stop, shutdown | parse protocols, wait on analysis in the relay |
//! | [`probe`] | `smtptap probe`: its own client connection (socket, SMTP dialogue, rustls client, timeout), fed to the session core as the relay feeds it; the verdict as exit code | judge anything itself, send DATA, be used by the proxy |
//! | [`session`] | the sans-IO session core: one [`session::SessionAnalyzer`] per session (stage machine, capture policy, name learning, revocation requests, kept events, close and summary) | do I/O, read the clock, spawn, depend on `proxy` |
//! | [`smtp`] | the sans-IO SMTP observer (commands, replies, envelope, DATA/BDAT, AUTH redaction, STARTTLS) | touch sockets, read the clock |
//! | [`tls`] | the sans-IO TLS record/handshake observer, JA3/JA4 | touch sockets, read the clock |
//! | [`cert`] | X.509 fields, chain trust (webpki), RFC 6125 name checks, CRL parsing, minting (`cert::mint` reads the clock for validity) | touch sockets or fetch anything |
//! | [`diagnose`] | findings as a pure function of a session's typed events | do I/O |
//! | [`summary`] | the `session.summary` fields, derived from the typed events | do I/O |
//! | [`event`] | the event envelope (run, session, leg), the log schema v1 conventions, session-level events | do I/O |
//! | [`sink`] | JSON lines and console transcript writers (own thread) | block the relay |
//! | [`capture`] | pcapng synthesis (sans-IO flows) and its writer thread (files) | block the relay |
//! | [`net`] | IP networks (CIDR) for filters and per-destination settings | — |
//! | [`crypto`] | the one TLS crypto provider (rustls with *ring*) every TLS configuration takes | do I/O |
//! | [`config`] | `config.toml` parsing and validation into resolved types; the resolved form as JSON | guess defaults silently |
//! | [`cli`] | argument parsing and wiring for the binary | hold logic the library lacks |
//! | [`headers`] | `smtptap headers`: TLS facts from Received headers | do network I/O |
//! | [`lab`] | a real SMTP server and client (sockets) for the lab demo, tests and benchmarks | be used by the proxy |
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod capture;
pub mod cert;
pub mod cli;
pub mod config;
pub mod crypto;
pub mod diagnose;
pub mod event;
pub mod headers;
pub mod lab;
pub mod net;
pub mod probe;
pub mod proxy;
pub mod session;
pub mod sink;
pub mod smtp;
pub mod summary;
pub mod tls;
