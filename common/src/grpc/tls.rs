//! Optional mutual TLS between components (rustls, through tonic): with
//! `services.tls_cert_file`, `tls_key_file` and `tls_ca_file` set, every
//! server presents its certificate and requires a client certificate signed
//! by the CA, and every client presents its certificate and checks the
//! server's against the same CA. The service credential is still checked on
//! top (docs/security.md).

use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

use crate::config::{ConfigError, ServicesConfig};

/// The PEM files of one component's mutual TLS.
#[derive(Debug, Clone)]
pub struct MutualTls {
    identity: Identity,
    ca: Certificate,
}

impl MutualTls {
    /// Reads the files `[services]` names; `None` when mutual TLS is off
    /// (all three keys empty). An unreadable file, or only some keys set,
    /// names the key.
    pub fn from_config(services: &ServicesConfig) -> Result<Option<Self>, ConfigError> {
        let keys = [
            ("services.tls_cert_file", &services.tls_cert_file),
            ("services.tls_key_file", &services.tls_key_file),
            ("services.tls_ca_file", &services.tls_ca_file),
        ];
        if keys.iter().all(|(_, path)| path.is_empty()) {
            return Ok(None);
        }
        if let Some((key, _)) = keys.iter().find(|(_, path)| path.is_empty()) {
            return Err(ConfigError::new(format!(
                "key `{key}` must be set: mutual TLS needs services.tls_cert_file, \
                 tls_key_file and tls_ca_file together"
            )));
        }
        let mut pem = Vec::with_capacity(3);
        for (key, path) in keys {
            let text = std::fs::read_to_string(path)
                .map_err(|e| ConfigError::new(format!("key `{key}`: cannot read {path}: {e}")))?;
            if !text.contains("-----BEGIN ") {
                return Err(ConfigError::new(format!(
                    "key `{key}`: {path} holds no PEM block"
                )));
            }
            pem.push(text);
        }
        Ok(Some(Self::from_pem(&pem[0], &pem[1], &pem[2])))
    }

    /// From PEM text: this component's certificate and key, and the CA.
    pub fn from_pem(cert: &str, key: &str, ca: &str) -> Self {
        Self {
            identity: Identity::from_pem(cert, key),
            ca: Certificate::from_pem(ca),
        }
    }

    /// The server side: present the certificate, require a client's.
    pub fn server(&self) -> ServerTlsConfig {
        ServerTlsConfig::new()
            .identity(self.identity.clone())
            .client_ca_root(self.ca.clone())
    }

    /// The client side: present the certificate, trust only the CA.
    pub fn client(&self) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .identity(self.identity.clone())
            .ca_certificate(self.ca.clone())
    }
}
