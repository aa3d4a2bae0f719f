//! TLS to a broker (MQTT, Kafka): the keys `tls`, `ca_file`, `client_cert`, `client_key`,
//! `alpn`, validated the same way for every export that has them, one rustls client
//! configuration on the ring provider (the only one compiled in), and one way to say what a
//! TLS failure means for the operator.

use std::path::PathBuf;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::Errors;

#[derive(Debug, Clone)]
pub struct TlsConfig {
    /// PEM file of the CA(s) to trust; `None` = the system's roots.
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate (chain) and key, for mutual TLS.
    pub client_auth: Option<(PathBuf, PathBuf)>,
    pub alpn: Vec<String>,
}

/// The TLS keys of one export as written.
pub struct RawTls<'a> {
    pub ca_file: Option<&'a String>,
    pub client_cert: Option<&'a String>,
    pub client_key: Option<&'a String>,
    pub alpn: Option<&'a Vec<String>>,
}

impl RawTls<'_> {
    /// `Some` when `tls_on`; with TLS off, every TLS key set is an error ("needs tls = true").
    pub fn validate(&self, path: &str, tls_on: bool, errs: &mut Errors) -> Option<TlsConfig> {
        let client_auth = match (self.client_cert, self.client_key) {
            (Some(c), Some(k)) => Some((PathBuf::from(c), PathBuf::from(k))),
            (None, None) => None,
            (Some(_), None) => {
                errs.push(format!("{path}.client_key"), "is required with client_cert");
                None
            }
            (None, Some(_)) => {
                errs.push(format!("{path}.client_cert"), "is required with client_key");
                None
            }
        };
        if tls_on {
            return Some(TlsConfig {
                ca_file: self.ca_file.map(PathBuf::from),
                client_auth,
                alpn: self.alpn.cloned().unwrap_or_default(),
            });
        }
        for (key, set) in [
            ("ca_file", self.ca_file.is_some()),
            ("client_cert", self.client_cert.is_some()),
            ("client_key", self.client_key.is_some()),
            ("alpn", self.alpn.is_some()),
        ] {
            if set {
                errs.push(format!("{path}.{key}"), "needs tls = true");
            }
        }
        None
    }
}

impl TlsConfig {
    /// The files it reads (key, path), which must exist when the export starts.
    pub fn files(&self) -> Vec<(&'static str, &std::path::Path)> {
        let mut files: Vec<(&'static str, &std::path::Path)> = Vec::new();
        if let Some(ca) = &self.ca_file {
            files.push(("ca_file", ca));
        }
        if let Some((cert, key)) = &self.client_auth {
            files.extend([
                ("client_cert", cert.as_path()),
                ("client_key", key.as_path()),
            ]);
        }
        files
    }

    /// A rustls client configuration on the ring provider.
    pub fn client_config(&self) -> Result<rustls::ClientConfig, TlsError> {
        let mut roots = rustls::RootCertStore::empty();
        match &self.ca_file {
            Some(path) => {
                let certs = CertificateDer::pem_file_iter(path)
                    .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                    .map_err(|source| TlsError::PemFile {
                        key: "ca_file",
                        path: path.clone(),
                        source,
                    })?;
                let (added, _) = roots.add_parsable_certificates(certs);
                if added == 0 {
                    return Err(TlsError::NoCa(path.clone()));
                }
            }
            None => {
                let native = rustls_native_certs::load_native_certs();
                let (added, _) = roots.add_parsable_certificates(native.certs);
                if added == 0 {
                    return Err(TlsError::NoSystemCa(native.errors.len()));
                }
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(TlsError::Tls)?
            .with_root_certificates(roots);
        let mut client_config = match &self.client_auth {
            Some((cert, key)) => {
                let chain = CertificateDer::pem_file_iter(cert)
                    .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                    .map_err(|source| TlsError::PemFile {
                        key: "client_cert",
                        path: cert.clone(),
                        source,
                    })?;
                if chain.is_empty() {
                    return Err(TlsError::NoClientCert(cert.clone()));
                }
                // The key's content never goes into a message, only its path.
                let key_der =
                    PrivateKeyDer::from_pem_file(key).map_err(|source| TlsError::PemFile {
                        key: "client_key",
                        path: key.clone(),
                        source,
                    })?;
                builder
                    .with_client_auth_cert(chain, key_der)
                    .map_err(TlsError::KeyMismatch)?
            }
            None => builder.with_no_client_auth(),
        };
        client_config.alpn_protocols = self.alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
        Ok(client_config)
    }
}

impl TlsError {
    /// The key whose file is at fault.
    pub fn key(&self) -> &'static str {
        match self {
            TlsError::PemFile { key, .. } => key,
            TlsError::NoCa(_) | TlsError::NoSystemCa(_) => "ca_file",
            TlsError::NoClientCert(_) => "client_cert",
            TlsError::Tls(_) | TlsError::KeyMismatch(_) => "client_key",
        }
    }
}

/// Why the TLS client configuration could not be made from the files; the message names the
/// key and the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{key} {}: {source}", .path.display())]
    PemFile {
        key: &'static str,
        path: PathBuf,
        source: rustls::pki_types::pem::Error,
    },
    #[error("ca_file {}: no usable CA certificate in it", .0.display())]
    NoCa(PathBuf),
    #[error("no system CA certificates found ({0} errors); set ca_file")]
    NoSystemCa(usize),
    #[error("client_cert {}: no certificate in it", .0.display())]
    NoClientCert(PathBuf),
    #[error("TLS setup: {0}")]
    Tls(rustls::Error),
    #[error("client_cert/client_key do not fit together: {0}")]
    KeyMismatch(rustls::Error),
}

/// What a TLS failure with `peer` (host:port; `host` is the name checked), a `what` ("broker"),
/// means, in one line.
pub fn describe(r: &rustls::Error, what: &str, peer: &str, host: &str) -> String {
    use rustls::CertificateError as C;
    match r {
        rustls::Error::InvalidCertificate(C::UnknownIssuer) => format!(
            "TLS with {peer}: the {what}'s certificate is not signed by a CA we trust (check ca_file: wrong CA, or a self-signed {what} certificate)"
        ),
        rustls::Error::InvalidCertificate(
            C::NotValidForName | C::NotValidForNameContext { .. },
        ) => {
            format!("TLS with {peer}: the {what}'s certificate is not valid for the name {host}")
        }
        rustls::Error::InvalidCertificate(c @ (C::Expired | C::ExpiredContext { .. })) => {
            format!(
                "TLS with {peer}: the {what}'s certificate has expired ({c:?}); is the gateway's clock right?"
            )
        }
        rustls::Error::InvalidCertificate(c) => {
            format!("TLS with {peer}: the {what}'s certificate was refused: {c}")
        }
        rustls::Error::AlertReceived(alert) => format!(
            "TLS with {peer}: the {what} refused the handshake ({alert:?}); check client_cert and client_key (the {what} must trust their CA, and they must not be expired)"
        ),
        other => format!("TLS with {peer}: {other}"),
    }
}
