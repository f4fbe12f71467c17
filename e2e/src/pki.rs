//! A throwaway PKI for a test control plane: a CA, the API server's serving certificate, an
//! admin client certificate (group `system:masters`), the kubelet's client certificate and
//! the service-account signing key.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};

/// The name of the local cluster's one node (its kubelet's identity).
pub const NODE_NAME: &str = "wa8s-node";

/// Errors while creating the PKI.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Key or certificate generation failed.
    #[error("generating certificates: {0}")]
    Rcgen(#[from] rcgen::Error),
    /// A file could not be written.
    #[error("writing {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

/// Paths of the generated files.
#[derive(Debug, Clone)]
pub struct Pki {
    /// CA certificate (trusted by clients, and for client certificates by the API server).
    pub ca_cert: PathBuf,
    /// API server serving certificate and key.
    pub apiserver_cert: PathBuf,
    /// Key of `apiserver_cert`.
    pub apiserver_key: PathBuf,
    /// Admin client certificate (CN `wa8s-admin`, O `system:masters`).
    pub admin_cert: PathBuf,
    /// Key of `admin_cert`.
    pub admin_key: PathBuf,
    /// The kubelet's client certificate (CN `system:node:<node>`, O `system:nodes`).
    pub node_cert: PathBuf,
    /// Key of `node_cert`.
    pub node_key: PathBuf,
    /// Service-account token signing key (private).
    pub service_account_key: PathBuf,
    /// Its public key, which the API server uses to verify tokens.
    pub service_account_pub: PathBuf,
}

impl Pki {
    /// Creates a fresh PKI under `dir`. The API server certificate is valid for loopback and
    /// the in-cluster names of the `kubernetes` Service (`service_ip`).
    pub fn generate(dir: &Path, service_ip: &str) -> Result<Self, Error> {
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "wa8s-test-ca");
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate()?)?;

        let mut server = CertificateParams::new(vec![
            "localhost".to_owned(),
            "kubernetes".to_owned(),
            "kubernetes.default".to_owned(),
            "kubernetes.default.svc".to_owned(),
            "kubernetes.default.svc.cluster.local".to_owned(),
        ])?;
        for ip in ["127.0.0.1", service_ip] {
            if let Ok(addr) = ip.parse() {
                server.subject_alt_names.push(SanType::IpAddress(addr));
            }
        }
        server
            .distinguished_name
            .push(DnType::CommonName, "kube-apiserver");
        server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let server_key = KeyPair::generate()?;
        let server_cert = server.signed_by(&server_key, &ca)?;

        let mut admin = CertificateParams::new(Vec::<String>::new())?;
        admin
            .distinguished_name
            .push(DnType::CommonName, "wa8s-admin");
        admin
            .distinguished_name
            .push(DnType::OrganizationName, "system:masters");
        admin.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let admin_key = KeyPair::generate()?;
        let admin_cert = admin.signed_by(&admin_key, &ca)?;

        let mut node = CertificateParams::new(Vec::<String>::new())?;
        node.distinguished_name
            .push(DnType::CommonName, format!("system:node:{NODE_NAME}"));
        node.distinguished_name
            .push(DnType::OrganizationName, "system:nodes");
        node.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let node_key = KeyPair::generate()?;
        let node_cert = node.signed_by(&node_key, &ca)?;

        let sa_key = KeyPair::generate()?;

        let pki = Pki {
            ca_cert: dir.join("ca.crt"),
            apiserver_cert: dir.join("apiserver.crt"),
            apiserver_key: dir.join("apiserver.key"),
            admin_cert: dir.join("admin.crt"),
            admin_key: dir.join("admin.key"),
            node_cert: dir.join("node.crt"),
            node_key: dir.join("node.key"),
            service_account_key: dir.join("sa.key"),
            service_account_pub: dir.join("sa.pub"),
        };
        write(&pki.ca_cert, &ca.pem())?;
        write(&pki.apiserver_cert, &server_cert.pem())?;
        write(&pki.apiserver_key, &server_key.serialize_pem())?;
        write(&pki.admin_cert, &admin_cert.pem())?;
        write(&pki.admin_key, &admin_key.serialize_pem())?;
        write(&pki.node_cert, &node_cert.pem())?;
        write(&pki.node_key, &node_key.serialize_pem())?;
        write(&pki.service_account_key, &sa_key.serialize_pem())?;
        write(&pki.service_account_pub, &sa_key.public_key_pem())?;
        Ok(pki)
    }
}

fn write(path: &Path, contents: &str) -> Result<(), Error> {
    std::fs::write(path, contents).map_err(|source| Error::Write {
        path: path.to_owned(),
        source,
    })
}
