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
//! delivered are logged and counted.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use crate::config::Config;

/// Alerts being delivered at once.
pub const IN_FLIGHT: usize = 8;

/// Handle to the alert sender.
#[derive(Clone)]
pub struct Alerts {
    tx: Option<mpsc::Sender<serde_json::Value>>,
    pub failed: Arc<AtomicU64>,
    pub delivered: Arc<AtomicU64>,
}

impl Alerts {
    /// Start the sender (a no-op handle when no webhook is configured).
    pub fn start(cfg: &Config) -> anyhow::Result<Alerts> {
        let failed = Arc::new(AtomicU64::new(0));
        let delivered = Arc::new(AtomicU64::new(0));
        let Some(url) = cfg.alerts.webhook_url.clone() else {
            return Ok(Alerts {
                tx: None,
                failed,
                delivered,
            });
        };
        let client = http_client(cfg.alerts.ca_file.as_deref())?;
        let (tx, mut rx) = mpsc::channel::<serde_json::Value>(1024);
        let (f, d) = (failed.clone(), delivered.clone());
        let slots = Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT));
        tokio::spawn(async move {
            while let Some(alert) = rx.recv().await {
                let Ok(slot) = slots.clone().acquire_owned().await else {
                    return;
                };
                let (client, url, f, d) = (client.clone(), url.clone(), f.clone(), d.clone());
                tokio::spawn(async move {
                    if deliver(&client, &url, &alert).await {
                        d.fetch_add(1, Ordering::Relaxed);
                    } else {
                        f.fetch_add(1, Ordering::Relaxed);
                        tracing::error!("alert could not be delivered to the webhook");
                    }
                    drop(slot);
                });
            }
        });
        Ok(Alerts {
            tx: Some(tx),
            failed,
            delivered,
        })
    }

    /// Queue an alert; never waits.
    pub fn send(&self, alert: serde_json::Value) {
        if let Some(tx) = &self.tx {
            if tx.try_send(alert).is_err() {
                self.failed.fetch_add(1, Ordering::Relaxed);
                tracing::error!("alert queue full; alert dropped");
            }
        }
    }
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
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

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
        let dir = tempfile::tempdir().unwrap();
        let cfg = crate::config::load(&crate::config::Source {
            file: None,
            data_dir: Some(dir.path().to_path_buf()),
            env: vec![("FRENLY_ALERTS__WEBHOOK_URL".into(), url)],
        })
        .unwrap();
        let alerts = Alerts::start(&cfg).unwrap();
        alerts.send(serde_json::json!({"type": "first"}));
        tokio::time::sleep(Duration::from_millis(100)).await;
        alerts.send(serde_json::json!({"type": "second"}));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
        while alerts.delivered.load(Ordering::Relaxed) == 0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the second alert waited for the first"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
