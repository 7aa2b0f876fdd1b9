//! Shared test support: run the proxy in-process on 127.0.0.1:0 with events
//! collected in memory.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use smtptap::config::RawConfig;
use smtptap::event::Event;
use smtptap::proxy::{self, Running};
use smtptap::sink::{Collector, Sinks};

pub struct TestProxy {
    pub addr: SocketAddr,
    pub events: Collector,
    running: Running,
}

impl TestProxy {
    /// Starts a proxy in front of `upstream` with extra TOML lines appended to the config.
    pub async fn start(upstream: &str, extra: &str) -> TestProxy {
        let text = format!("listen = [\"127.0.0.1:0\"]\nupstream = \"{upstream}\"\n{extra}\n");
        let cfg = RawConfig::from_toml(&text, "test")
            .unwrap()
            .resolve("test")
            .unwrap();
        let events: Collector = Default::default();
        let sinks = Sinks {
            memory: Some(events.clone()),
            ..Default::default()
        };
        let running = proxy::spawn(cfg, sinks).await.unwrap();
        TestProxy {
            addr: running.addrs()[0],
            events,
            running,
        }
    }

    /// Stops the proxy (drain) and waits until every event is written.
    pub async fn stop(self) -> Vec<Event> {
        tokio::time::timeout(Duration::from_secs(60), self.running.stop())
            .await
            .expect("proxy did not stop");
        self.events.lock().unwrap().clone()
    }

    /// Waits until `n` session.summary events were written (or panics after 20 s).
    pub async fn wait_summaries(&self, n: usize) -> Vec<Event> {
        for _ in 0..2000 {
            let evs = self.events.lock().unwrap().clone();
            if evs.iter().filter(|e| e.name() == "session.summary").count() >= n {
                return evs;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("fewer than {n} session summaries after 20 s");
    }
}

/// Events of one session, by name.
pub fn named(events: &[Event], session: u64, name: &str) -> Vec<serde_json::Value> {
    events
        .iter()
        .filter(|e| e.session == session && e.name() == name)
        .map(|e| serde_json::to_value(e).unwrap())
        .collect()
}

/// A free loopback port nobody listens on (bound then released).
pub fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}
