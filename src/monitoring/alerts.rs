//! The alert channel: incidents and monitor findings are POSTed as JSON to
//! `alerts.webhook_url`.
//!
//! Threat: an alert pipeline that blocks requests when the receiver is slow,
//! or that silently loses alerts. Guarantee: [`Alerts::send`] never blocks
//! the caller (a bounded queue feeds one sender task); each alert is retried
//! with exponential backoff (5 tries); HTTPS receivers are verified against
//! the system roots or `alerts.ca_file` by the shared outbound TLS policy
//! (`gateway::tls`). Alerts that cannot be queued or
//! delivered are logged and counted.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use crate::config::Config;

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
        tokio::spawn(async move {
            while let Some(alert) = rx.recv().await {
                if deliver(&client, &url, &alert).await {
                    d.fetch_add(1, Ordering::Relaxed);
                } else {
                    f.fetch_add(1, Ordering::Relaxed);
                    tracing::error!("alert could not be delivered to the webhook");
                }
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
            Err(e) => tracing::warn!(error = %e, "alert webhook failed"),
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
