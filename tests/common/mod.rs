//! Shared test support: run the proxy in-process on 127.0.0.1:0 with events
//! collected in memory.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use smtptap::config::RawConfig;
use smtptap::event::Event;
use smtptap::proxy::Proxy;
use smtptap::sink::{self, Collector, Sinks};
use tokio::sync::oneshot;

pub struct TestProxy {
    pub addr: SocketAddr,
    pub events: Collector,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
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
        let analysis = smtptap::cli::analysis_for(&cfg).unwrap();
        let (sink, handle) = sink::start(sinks);
        let proxy = Proxy::bind(cfg, sink, analysis).await.unwrap();
        let addr = proxy.local_addrs()[0];
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            proxy
                .run(async {
                    let _ = rx.await;
                })
                .await;
            tokio::task::spawn_blocking(move || handle.finish())
                .await
                .unwrap();
        });
        TestProxy {
            addr,
            events,
            stop: Some(tx),
            task: Some(task),
        }
    }

    /// Stops the proxy (drain) and waits until every event is written.
    pub async fn stop(mut self) -> Vec<Event> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(60), t)
                .await
                .expect("proxy did not stop")
                .unwrap();
        }
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
pub fn named<'a>(events: &'a [Event], session: u64, name: &str) -> Vec<serde_json::Value> {
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
