//! TLS for registry clients. The system's trust roots are loaded when a TLS connection
//! first needs them, not when a client is made: reading and parsing them costs about 3 ms
//! per client, which a pull from a plain-HTTP registry (a local or in-cluster one) would
//! otherwise pay for nothing.

use std::sync::{Arc, OnceLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

use crate::Error;

/// Checks the CA certificates (PEM) given for `registry`: at least one, all parseable. The
/// CLI and the operator call it at startup, so a bad file is named there and then.
pub fn check_registry_ca(registry: &str, pem: &[u8]) -> Result<(), Error> {
    ca_certificates(registry, pem).map(drop)
}

fn ca_certificates(registry: &str, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, Error> {
    let bad = |reason: &str| Error::Registry {
        registry: registry.to_owned(),
        reason: reason.to_owned(),
    };
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(&format!("its CA certificates do not parse: {e}")))?;
    if certs.is_empty() {
        return Err(bad("its CA file holds no PEM certificate"));
    }
    Ok(certs)
}

/// The rustls configuration for a registry client: the system's trust roots plus
/// `extra_roots_pem` (a private CA given for this registry), both loaded on first use.
pub(crate) fn client_config(
    registry: &str,
    extra_roots_pem: Option<&[u8]>,
) -> Result<rustls::ClientConfig, Error> {
    let extra = match extra_roots_pem {
        Some(pem) => ca_certificates(registry, pem)?,
        None => Vec::new(),
    };
    // The provider reqwest itself would pick.
    let provider = CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider()));
    let verifier = LazyRoots {
        extra,
        provider: provider.clone(),
        verifier: OnceLock::new(),
    };
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Registry {
            registry: registry.to_owned(),
            reason: format!("TLS setup: {e}"),
        })?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    // The client speaks HTTP/1.1 only, as reqwest offers when it builds the config.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// The platform verifier (system roots + `extra`), made at the first certificate it must
/// check. Signatures are checked with the provider's algorithms, as that verifier does.
#[derive(Debug)]
struct LazyRoots {
    extra: Vec<CertificateDer<'static>>,
    provider: Arc<CryptoProvider>,
    verifier: OnceLock<rustls_platform_verifier::Verifier>,
}

impl LazyRoots {
    fn verifier(&self) -> Result<&rustls_platform_verifier::Verifier, rustls::Error> {
        if let Some(verifier) = self.verifier.get() {
            return Ok(verifier);
        }
        // A failure is not kept: a long-running operator recovers once the node's CA
        // certificates appear, without a restart.
        let verifier = rustls_platform_verifier::Verifier::new_with_extra_roots(
            self.extra.iter().cloned(),
            self.provider.clone(),
        )?;
        Ok(self.verifier.get_or_init(|| verifier))
    }
}

impl ServerCertVerifier for LazyRoots {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.verifier()?.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn making_a_config_reads_no_trust_roots_and_bad_extra_roots_are_named() {
        let config = super::client_config("r.example", None).expect("config");
        assert_eq!(config.alpn_protocols, vec![b"http/1.1".to_vec()]);
        let garbled = b"-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n";
        let err = super::client_config("r.example", Some(garbled)).expect_err("refused");
        assert!(err.to_string().contains("r.example"), "{err}");
        assert!(err.to_string().contains("do not parse"), "{err}");
        let err = super::check_registry_ca("r.example", b"hello").expect_err("refused");
        assert!(
            err.to_string().contains("holds no PEM certificate"),
            "{err}"
        );
    }
}
