//! TLS: the self-signed certificate of the embedded default, and the rustls
//! server configuration (TLS 1.2 and 1.3 only, ALPN h2 and http/1.1).

use std::sync::Arc;

use anyhow::Context;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::Config;

/// Generate a self-signed certificate and key when neither is present.
pub fn ensure_certificate(cfg: &Config) -> anyhow::Result<()> {
    if cfg.tls_cert.exists() || cfg.tls_key.exists() {
        return Ok(());
    }
    let mut names = vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ];
    let ip = cfg.network.listen.ip();
    if !ip.is_unspecified() && !names.contains(&ip.to_string()) {
        names.push(ip.to_string());
    }
    let cert = rcgen::generate_simple_self_signed(names).context("generating a certificate")?;
    crate::app::bootstrap::write_secret(&cfg.tls_key, cert.key_pair.serialize_pem().as_bytes())
        .with_context(|| format!("writing {}", cfg.tls_key.display()))?;
    let pem = cert.cert.pem();
    std::fs::write(&cfg.tls_cert, pem)
        .with_context(|| format!("writing {}", cfg.tls_cert.display()))?;
    Ok(())
}

/// Load the certificate chain and key into a rustls server config.
pub fn server_config(cfg: &Config) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    use crate::config::ConfigError;
    let certs = load_certs(&cfg.tls_cert).map_err(|e| {
        ConfigError::unreadable(
            "TLS certificate",
            "network.tls_cert",
            &cfg.tls_cert,
            format!("{e:#}"),
        )
    })?;
    let key = load_key(&cfg.tls_key).map_err(|e| {
        ConfigError::unreadable("TLS key", "network.tls_key", &cfg.tls_key, format!("{e:#}"))
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut sc = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .context("TLS versions")?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| ConfigError::Invalid {
            key: "network.tls_cert".into(),
            reason: format!("it and network.tls_key do not form a usable pair: {e}"),
        })?;
    sc.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(sc))
}

pub fn load_certs(path: &std::path::Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let data = crate::config::read_named_file(path, crate::config::MAX_NAMED_FILE)
        .with_context(|| format!("reading {}", path.display()))?;
    let certs: Vec<_> = rustls_pemfile::certs(&mut data.as_slice())
        .collect::<Result<_, _>>()
        .with_context(|| format!("parsing {}", path.display()))?;
    if certs.is_empty() {
        anyhow::bail!("no certificate in {}", path.display());
    }
    Ok(certs)
}

pub fn load_key(path: &std::path::Path) -> anyhow::Result<PrivateKeyDer<'static>> {
    let data = crate::config::read_named_file(path, crate::config::MAX_NAMED_FILE)
        .with_context(|| format!("reading {}", path.display()))?;
    rustls_pemfile::private_key(&mut data.as_slice())
        .with_context(|| format!("parsing {}", path.display()))?
        .with_context(|| format!("no private key in {}", path.display()))
}
