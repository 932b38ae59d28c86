//! Outbound TLS — the guide's `SecureHTTPClient`, one policy for every HTTPS
//! connection Frenly makes (gateway upstreams and the alert webhook).
//!
//! Threat: a man in the middle between Frenly and a service it calls
//! (forged or self-signed certificates, a certificate for another host,
//! protocol downgrade). Guarantee: [`client_config`] is the only place a
//! rustls client configuration is built; it accepts TLS 1.2 and 1.3 only,
//! verifies the certificate chain against the system roots (the Debian
//! bundle) — or, when a CA file is configured, against exactly the CAs in
//! that file — and the hostname (or IP address) of the URL against the
//! certificate, with rustls' WebPKI verifier. There is no switch to turn
//! verification off. An optional client certificate and key are presented
//! for mutual TLS.
//!
//! Not covered: certificate revocation (no OCSP/CRL checks), pinning.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use rustls::RootCertStore;

use crate::server::tls::{load_certs, load_key};

/// Where the system's CA bundle may live (Debian first).
const SYSTEM_BUNDLES: [&str; 3] = [
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/cert.pem",
];

/// The trust anchors: every certificate of `ca_file`, or the system bundle.
pub fn root_store(ca_file: Option<&Path>) -> anyhow::Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    match ca_file {
        Some(path) => {
            for cert in load_certs(path)? {
                roots.add(cert).with_context(|| {
                    format!("a certificate in {} is not a usable CA", path.display())
                })?;
            }
        }
        None => {
            let Some(bundle) = SYSTEM_BUNDLES.iter().find_map(|p| std::fs::read(p).ok()) else {
                tracing::warn!(
                    "no system CA bundle found: outbound HTTPS will only work with a configured CA file"
                );
                return Ok(roots);
            };
            let mut reader = bundle.as_slice();
            let certs = rustls_pemfile::certs(&mut reader).filter_map(Result::ok);
            let (added, ignored) = roots.add_parsable_certificates(certs);
            if ignored > 0 {
                tracing::debug!(
                    added,
                    ignored,
                    "system CA bundle: some certificates ignored"
                );
            }
        }
    }
    Ok(roots)
}

/// A rustls client configuration: TLS 1.2+, chain and hostname verified
/// against `ca_file` (or the system roots), optional client certificate.
pub fn client_config(
    ca_file: Option<&Path>,
    client_auth: Option<(&Path, &Path)>,
) -> anyhow::Result<rustls::ClientConfig> {
    let roots = root_store(ca_file)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .context("TLS versions")?
        .with_root_certificates(roots);
    let cfg = match client_auth {
        Some((cert, key)) => builder
            .with_client_auth_cert(load_certs(cert)?, load_key(key)?)
            .context("the client certificate and key do not form a usable pair")?,
        None => builder.with_no_client_auth(),
    };
    Ok(cfg)
}

/// Is this error (or anything it wraps) a TLS failure? Returns its text.
pub fn tls_failure(err: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(t) = e.downcast_ref::<rustls::Error>() {
            return Some(t.to_string());
        }
        // io::Error hides the error it wraps from `source()`: look inside.
        cur = match e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
            None => e.source(),
        };
    }
    None
}
