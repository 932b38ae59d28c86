//! The alert channel: incidents and monitor findings are POSTed as JSON to
//! `alerts.webhook_url`.
//!
//! Threat: an alert pipeline that blocks requests when the receiver is slow,
//! or that silently loses alerts. Guarantee: [`Alerts::send`] never blocks
//! the caller (a bounded queue feeds one sender task, which delivers up to
//! [`IN_FLIGHT`] alerts at once, so a receiver that stalls on one alert does
//! not hold back the next); each alert is retried
//! with exponential backoff (5 tries); HTTPS receivers are verified against
//! the system roots or `alerts.ca_file` by the shared outbound TLS policy
//! (`gateway::tls`). Alerts that cannot be queued or
//! delivered are logged and counted (`frenly_alerts_*_total`); past
//! [`PER_KIND_PER_MINUTE`] alerts of one type and kind in a minute the rest
//! are counted into one summary alert, so a flood of one kind cannot bury
//! the next alert of another.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use prometheus_client::metrics::counter::Counter;
use tokio::sync::mpsc;

use crate::config::Config;

/// Alerts being delivered at once.
pub const IN_FLIGHT: usize = 8;

/// Alerts of one type and kind sent in a minute; the rest of that minute's
/// are counted and reported in one `alerts_suppressed` alert.
pub const PER_KIND_PER_MINUTE: u32 = 20;

/// Alerts waiting for a sender.
const QUEUE: usize = 1024;

/// The alert channel's counters (exported as Prometheus metrics by the
/// server: `frenly_alerts_{delivered,failed,dropped,suppressed}_total`).
#[derive(Clone, Default)]
pub struct AlertCounters {
    pub delivered: Counter,
    /// Tried five times without success.
    pub failed: Counter,
    /// Not queued: the queue was full.
    pub dropped: Counter,
    /// Over [`PER_KIND_PER_MINUTE`]: counted into a summary alert.
    pub suppressed: Counter,
}

/// One type and kind's sends in the current minute.
struct Window {
    started: tokio::time::Instant,
    sent: u32,
    suppressed: u64,
}

impl Window {
    fn new(now: tokio::time::Instant) -> Window {
        Window {
            started: now,
            sent: 0,
            suppressed: 0,
        }
    }

    /// At `now`, past the window's minute: start a new one, and give the
    /// count of the old one's suppressed alerts if there were any.
    fn roll(&mut self, now: tokio::time::Instant) -> Option<u64> {
        if now.duration_since(self.started) < Duration::from_secs(60) {
            return None;
        }
        let n = self.suppressed;
        *self = Window::new(now);
        (n > 0).then_some(n)
    }
}

/// Handle to the alert sender.
#[derive(Clone)]
pub struct Alerts {
    tx: Option<mpsc::Sender<serde_json::Value>>,
    pub counters: AlertCounters,
    windows: Arc<Mutex<HashMap<String, Window>>>,
}

impl Alerts {
    /// Start the sender (a no-op handle when no webhook is configured).
    pub fn start(cfg: &Config) -> anyhow::Result<Alerts> {
        Self::start_counted(cfg, AlertCounters::default())
    }

    /// [`Alerts::start`], counting into `counters`.
    pub fn start_counted(cfg: &Config, counters: AlertCounters) -> anyhow::Result<Alerts> {
        let windows = Arc::new(Mutex::new(HashMap::new()));
        let Some(url) = cfg.alerts.webhook_url.clone() else {
            return Ok(Alerts {
                tx: None,
                counters,
                windows,
            });
        };
        let client = http_client(cfg.alerts.ca_file.as_deref())?;
        let (tx, mut rx) = mpsc::channel::<serde_json::Value>(QUEUE);
        let c = counters.clone();
        let slots = Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT));
        tokio::spawn(async move {
            while let Some(alert) = rx.recv().await {
                let Ok(slot) = slots.clone().acquire_owned().await else {
                    return;
                };
                let (client, url, c) = (client.clone(), url.clone(), c.clone());
                tokio::spawn(async move {
                    if deliver(&client, &url, &alert).await {
                        c.delivered.inc();
                    } else {
                        c.failed.inc();
                        tracing::error!("alert could not be delivered to the webhook");
                    }
                    drop(slot);
                });
            }
        });
        let alerts = Alerts {
            tx: Some(tx),
            counters,
            windows,
        };
        // a flood's last minute is reported even when nothing follows it;
        // the ticker holds the queue weakly, so it ends with the last handle
        let (weak, counters, windows) = (
            alerts.tx.as_ref().map(mpsc::Sender::downgrade),
            alerts.counters.clone(),
            alerts.windows.clone(),
        );
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(60));
            loop {
                tick.tick().await;
                let Some(tx) = weak.as_ref().and_then(mpsc::WeakSender::upgrade) else {
                    return;
                };
                let ticker = Alerts {
                    tx: Some(tx),
                    counters: counters.clone(),
                    windows: windows.clone(),
                };
                ticker.report_suppressed(tokio::time::Instant::now());
            }
        });
        Ok(alerts)
    }

    /// Queue an alert; never waits. Past [`PER_KIND_PER_MINUTE`] alerts of
    /// its `type` and `kind` this minute it is only counted, and the count
    /// goes out as one `alerts_suppressed` alert when the minute ends: a
    /// flood of one kind (one IDS block from each of a thousand addresses)
    /// cannot fill the queue ahead of the next alert of another kind.
    pub fn send(&self, alert: serde_json::Value) {
        if self.tx.is_none() {
            return;
        }
        let key = format!(
            "{}/{}",
            alert.get("type").and_then(|v| v.as_str()).unwrap_or(""),
            alert.get("kind").and_then(|v| v.as_str()).unwrap_or("")
        );
        let now = tokio::time::Instant::now();
        let summary = {
            let mut windows = self.windows.lock();
            let w = windows
                .entry(key.clone())
                .or_insert_with(|| Window::new(now));
            let summary = w.roll(now);
            if w.sent >= PER_KIND_PER_MINUTE {
                w.suppressed += 1;
                self.counters.suppressed.inc();
                return;
            }
            w.sent += 1;
            summary
        };
        if let Some(n) = summary {
            self.enqueue(suppressed_alert(&key, n));
        }
        self.enqueue(alert);
    }

    /// Send the summaries of windows that ended with alerts suppressed.
    fn report_suppressed(&self, now: tokio::time::Instant) {
        let due: Vec<(String, u64)> = {
            let mut windows = self.windows.lock();
            windows
                .iter_mut()
                .filter(|(_, w)| w.suppressed > 0)
                .filter_map(|(k, w)| w.roll(now).map(|n| (k.clone(), n)))
                .collect()
        };
        for (key, n) in due {
            self.enqueue(suppressed_alert(&key, n));
        }
    }

    fn enqueue(&self, alert: serde_json::Value) {
        if let Some(tx) = &self.tx {
            if tx.try_send(alert).is_err() {
                self.counters.dropped.inc();
                tracing::error!("alert queue full; alert dropped");
            }
        }
    }

    /// Alerts that have come to an end: delivered, failed, dropped or
    /// suppressed (`frenly monitor --once` waits for its own).
    pub fn settled(&self) -> u64 {
        let c = &self.counters;
        c.delivered.get() + c.failed.get() + c.dropped.get() + c.suppressed.get()
    }
}

/// The summary of a minute's suppressed alerts of one `type/kind`.
fn suppressed_alert(key: &str, n: u64) -> serde_json::Value {
    let (kind_type, kind) = key.split_once('/').unwrap_or((key, ""));
    serde_json::json!({
        "source": "frenly",
        "type": "alerts_suppressed",
        "alert_type": kind_type,
        "kind": kind,
        "suppressed": n,
        "window_seconds": 60,
        "created_at": crate::store::rfc3339(crate::store::now_ms()),
    })
}

async fn deliver(client: &reqwest::Client, url: &str, alert: &serde_json::Value) -> bool {
    let mut delay = Duration::from_millis(200);
    for _ in 0..5 {
        match client.post(url).json(alert).send().await {
            Ok(r) if r.status().is_success() => return true,
            Ok(r) => tracing::warn!(status = %r.status(), "alert webhook refused"),
            // the URL may carry the webhook's token (`config show` redacts
            // it): the error is logged without it
            Err(e) => tracing::warn!(error = %e.without_url(), "alert webhook failed"),
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(10));
    }
    false
}

/// The webhook's HTTP client: the shared outbound TLS policy
/// (`gateway::tls`: TLS 1.2+, chain and hostname verified against the
/// system roots or, when given, only the CAs in `ca_file`), no redirects.
pub fn http_client(ca_file: Option<&std::path::Path>) -> anyhow::Result<reqwest::Client> {
    let tls = crate::gateway::tls::client_config(ca_file, None)?;
    Ok(reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .timeout(Duration::from_secs(10))
        .redirect(reqwest::redirect::Policy::none())
        .build()?)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Alerts to the webhook at `url` (with the data dir they need).
    fn alerts_to(url: String) -> (tempfile::TempDir, Alerts) {
        let dir = tempfile::tempdir().unwrap();
        let cfg = crate::config::load(&crate::config::Source {
            file: None,
            data_dir: Some(dir.path().to_path_buf()),
            env: vec![("FRENLY_ALERTS__WEBHOOK_URL".into(), url)],
        })
        .unwrap();
        let alerts = Alerts::start(&cfg).unwrap();
        (dir, alerts)
    }

    /// A receiver that never answers the first alert still gets the second
    /// at once (before, alerts went one at a time: the next waited out the
    /// first one's 10 s timeout and retries).
    #[tokio::test]
    async fn a_stalled_alert_does_not_hold_back_the_next() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        tokio::spawn(async move {
            let mut first = true;
            let mut held = Vec::new();
            loop {
                let (mut c, _) = listener.accept().await.unwrap();
                let mut buf = vec![0u8; 4096];
                let _ = c.read(&mut buf).await;
                if std::mem::take(&mut first) {
                    held.push(c); // never answered
                    continue;
                }
                let _ = c
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                    .await;
            }
        });
        let (_dir, alerts) = alerts_to(url);
        alerts.send(serde_json::json!({"type": "first"}));
        tokio::time::sleep(Duration::from_millis(100)).await;
        alerts.send(serde_json::json!({"type": "second"}));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
        while alerts.counters.delivered.get() == 0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the second alert waited for the first"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// A webhook that answers 200 and keeps each alert's JSON.
    async fn receiver() -> (String, Arc<Mutex<Vec<serde_json::Value>>>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let got = Arc::new(Mutex::new(Vec::new()));
        let keep = got.clone();
        tokio::spawn(async move {
            loop {
                let (mut c, _) = listener.accept().await.unwrap();
                let keep = keep.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    loop {
                        let n = c.read(&mut chunk).await.unwrap_or(0);
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        let text = String::from_utf8_lossy(&buf).to_string();
                        let Some((head, body)) = text.split_once("\r\n\r\n") else {
                            continue;
                        };
                        let len = head
                            .lines()
                            .find_map(|l| {
                                let (k, v) = l.split_once(':')?;
                                k.eq_ignore_ascii_case("content-length")
                                    .then(|| v.trim().parse::<usize>().ok())?
                            })
                            .unwrap_or(0);
                        if body.len() < len {
                            continue;
                        }
                        keep.lock().push(serde_json::from_str(body).unwrap());
                        let _ = c
                            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                            .await;
                        return;
                    }
                });
            }
        });
        (url, got)
    }

    /// A flood of one kind is capped per minute and summed up in one alert;
    /// an alert of another kind after it is not behind it (before, a
    /// thousand decoys filled the queue and the next real alert was dropped
    /// or waited minutes).
    #[tokio::test]
    async fn a_flood_of_one_kind_is_summed_up_and_does_not_bury_another() {
        let (url, got) = receiver().await;
        let (_dir, alerts) = alerts_to(url);
        for i in 0..50 {
            alerts.send(serde_json::json!({"type": "incident", "kind": "ids_block", "n": i}));
        }
        alerts.send(serde_json::json!({"type": "incident", "kind": "brute_force"}));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while alerts.counters.delivered.get() < 21 {
            assert!(tokio::time::Instant::now() < deadline, "not delivered");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(alerts.counters.suppressed.get(), 30);
        assert_eq!(alerts.counters.dropped.get(), 0);
        assert!(got.lock().iter().any(|a| a["kind"] == "brute_force"));
        // the minute ends: one summary with the count
        alerts.report_suppressed(tokio::time::Instant::now() + Duration::from_secs(61));
        while alerts.counters.delivered.get() < 22 {
            assert!(tokio::time::Instant::now() < deadline, "no summary");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let summary = got
            .lock()
            .iter()
            .find(|a| a["type"] == "alerts_suppressed")
            .cloned()
            .unwrap();
        assert_eq!(summary["kind"], "ids_block");
        assert_eq!(summary["alert_type"], "incident");
        assert_eq!(summary["suppressed"], 30);
        assert_eq!(alerts.settled(), 52);
    }
}
