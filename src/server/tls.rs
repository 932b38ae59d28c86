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
    // both or neither: a key alone would keep every later start from
    // generating the pair again
    crate::app::bootstrap::write_new(&cfg.tls_cert, pem.as_bytes(), 0o644)
        .inspect_err(|_| {
            let _ = std::fs::remove_file(&cfg.tls_key);
        })
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
        .map_err(|e| match e {
            // the key itself, not the pair (an RSA key under 2048 bits was
            // reported against network.tls_cert)
            rustls::Error::General(ref m) if m.contains("private key") => ConfigError::Invalid {
                key: "network.tls_key".into(),
                reason: format!(
                    "the key cannot be used ({m}): RSA keys of 2048 to 8192 bits, ECDSA P-256/P-384 and Ed25519 can"
                ),
            },
            e => ConfigError::Invalid {
                key: "network.tls_cert".into(),
                reason: format!("it and network.tls_key do not form a usable pair: {e}"),
            },
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
    let key = rustls_pemfile::private_key(&mut data.as_slice())
        .with_context(|| format!("parsing {}", path.display()))?;
    match key {
        Some(k) => Ok(k),
        // a passphrase-protected key was "no private key in FILE"
        None if data.windows(9).any(|w| w == b"ENCRYPTED") => anyhow::bail!(
            "{} holds a key encrypted with a passphrase; Frenly reads unencrypted keys \
             (openssl pkey -in {0} -out NEW.key, then chmod 600 NEW.key)",
            path.display()
        ),
        None => anyhow::bail!("no private key in {}", path.display()),
    }
}

/// When the first certificate of `path` stops being valid (`None` when it
/// cannot be read or parsed: `server_config` reports that).
pub fn not_after(path: &std::path::Path) -> Option<std::time::SystemTime> {
    use x509_cert::der::Decode;
    let der = load_certs(path).ok()?.into_iter().next()?;
    let cert = x509_cert::Certificate::from_der(der.as_ref()).ok()?;
    Some(std::time::UNIX_EPOCH + cert.tbs_certificate.validity.not_after.to_unix_duration())
}

/// A certificate near or past its end, as `serve` warns of it and
/// `frenly check` reports it (FAIL when expired, WARN when close).
pub enum CertificateEnd {
    Expired,
    /// Ends within [`EXPIRY_WARNING`], after this long.
    Soon(std::time::Duration),
}

impl CertificateEnd {
    /// Of the first certificate in `path`; `None` when it is valid for
    /// longer than [`EXPIRY_WARNING`] or cannot be read.
    pub fn of(path: &std::path::Path) -> Option<CertificateEnd> {
        match not_after(path)?.duration_since(std::time::SystemTime::now()) {
            Err(_) => Some(CertificateEnd::Expired),
            Ok(left) if left < EXPIRY_WARNING => Some(CertificateEnd::Soon(left)),
            Ok(_) => None,
        }
    }

    /// One line naming the certificate `path`.
    pub fn describe(&self, path: &std::path::Path) -> String {
        match self {
            CertificateEnd::Expired => {
                format!("the TLS certificate {} has expired", path.display())
            }
            CertificateEnd::Soon(left) => format!(
                "the TLS certificate {} expires in {} day(s)",
                path.display(),
                left.as_secs() / 86_400
            ),
        }
    }
}

/// The certificate's validity and the key file's mode, as warnings for
/// `serve`'s start (`frenly check` fails what is wrong here): an expired
/// certificate was served silently, a key readable by others used silently.
pub fn start_warnings(cfg: &Config) -> Vec<String> {
    let end = CertificateEnd::of(&cfg.tls_cert).map(|e| e.describe(&cfg.tls_cert));
    let key = crate::monitoring::check::loose_mode_warning(&cfg.tls_key, "TLS private key");
    end.into_iter().chain(key).collect()
}

/// How long before its end a certificate is worth a warning.
pub const EXPIRY_WARNING: std::time::Duration = std::time::Duration::from_secs(30 * 86_400);
