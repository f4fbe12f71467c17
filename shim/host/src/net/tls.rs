//! Trust for a guest's https requests: Mozilla's roots (compiled in, so a guest needs no
//! certificate files from the node) plus the CAs the operator of the node or of `wa8s run`
//! adds. The crypto provider is named here, not taken from the process: the process may hold
//! two (ring and aws-lc-rs come with different dependencies), and then rustls cannot pick one.

use std::sync::{Arc, OnceLock};

use rustls::ClientConfig;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject as _;

use crate::Error;

/// The roots a guest's https requests are verified against.
#[derive(Clone)]
pub struct TrustRoots {
    config: Arc<ClientConfig>,
    extra: usize,
}

impl std::fmt::Debug for TrustRoots {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrustRoots")
            .field("extra_cas", &self.extra)
            .finish()
    }
}

impl Default for TrustRoots {
    fn default() -> Self {
        static DEFAULT: OnceLock<TrustRoots> = OnceLock::new();
        DEFAULT
            .get_or_init(|| {
                // Mozilla's roots alone always make a valid config.
                Self::build(Vec::new()).unwrap_or_else(|_| unreachable!("no extra roots"))
            })
            .clone()
    }
}

impl TrustRoots {
    /// Mozilla's roots plus the CA certificates in `pem` (`source` names it in errors).
    pub fn with_extra_pem(source: &str, pem: &[u8]) -> Result<Self, Error> {
        let bad = |reason: String| Error::Grant {
            what: format!("TLS trust roots {source}"),
            reason,
        };
        let certs = CertificateDer::pem_slice_iter(pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad(format!("the certificates do not parse: {e}")))?;
        if certs.is_empty() {
            return Err(bad("no PEM certificate in it".into()));
        }
        Self::build(certs).map_err(bad)
    }

    fn build(extra: Vec<CertificateDer<'static>>) -> Result<Self, String> {
        let mut roots = rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.into(),
        };
        let count = extra.len();
        for cert in extra {
            roots
                .add(cert)
                .map_err(|e| format!("a certificate is not a usable CA: {e}"))?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
        // The client speaks HTTP/1.1 only.
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(TrustRoots {
            config: Arc::new(config),
            extra: count,
        })
    }

    pub(crate) fn client_config(&self) -> Arc<ClientConfig> {
        self.config.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_without_certificates_is_refused_naming_it() {
        let err =
            TrustRoots::with_extra_pem("/etc/ca.pem", b"not a certificate\n").expect_err("refused");
        assert!(err.to_string().contains("/etc/ca.pem"), "{err}");
        assert!(err.to_string().contains("no PEM certificate"), "{err}");
    }

    #[test]
    fn the_default_roots_build_without_a_process_wide_provider() {
        // Would panic if rustls had to choose between ring and aws-lc-rs by itself.
        let roots = TrustRoots::default();
        assert_eq!(roots.extra, 0);
        assert!(!roots.client_config().alpn_protocols.is_empty());
    }
}
