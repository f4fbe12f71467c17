//! A throwaway PKI for a test control plane: a CA, the API server's serving certificate, an
//! admin client certificate (group `system:masters`), the kubelet's client certificate, the
//! service-account signing key, and the front-proxy CA and client certificate the API
//! server's aggregation layer presents to extension API servers (metrics-server).

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
    /// The CA extension API servers trust for requests the aggregator forwards.
    pub front_proxy_ca: PathBuf,
    /// The aggregator's client certificate (CN [`FRONT_PROXY_CLIENT`]).
    pub front_proxy_client_cert: PathBuf,
    /// Key of `front_proxy_client_cert`.
    pub front_proxy_client_key: PathBuf,
}

/// The aggregator's client name, the only one extension API servers accept headers from.
pub const FRONT_PROXY_CLIENT: &str = "front-proxy-client";

impl Pki {
    /// Creates a fresh PKI under `dir`. The API server certificate is valid for loopback and
    /// the in-cluster names of the `kubernetes` Service (`service_ip`).
    pub fn generate(dir: &Path, service_ip: &str) -> Result<Self, Error> {
        let ca = certificate_authority("wa8s-test-ca")?;

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

        // A CA of its own, as kubeadm makes: a client certificate of the cluster CA must not
        // be able to pose as the aggregator.
        let fp_ca = certificate_authority("wa8s-test-front-proxy-ca")?;
        let mut fp_client = CertificateParams::new(Vec::<String>::new())?;
        fp_client
            .distinguished_name
            .push(DnType::CommonName, FRONT_PROXY_CLIENT);
        fp_client.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let fp_client_key = KeyPair::generate()?;
        let fp_client_cert = fp_client.signed_by(&fp_client_key, &fp_ca)?;

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
            front_proxy_ca: dir.join("front-proxy-ca.crt"),
            front_proxy_client_cert: dir.join("front-proxy-client.crt"),
            front_proxy_client_key: dir.join("front-proxy-client.key"),
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
        write(&pki.front_proxy_ca, &fp_ca.pem())?;
        write(&pki.front_proxy_client_cert, &fp_client_cert.pem())?;
        write(&pki.front_proxy_client_key, &fp_client_key.serialize_pem())?;
        Ok(pki)
    }
}

/// A fresh self-signed CA named `name`.
fn certificate_authority(name: &str) -> Result<CertifiedIssuer<'static, KeyPair>, Error> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    Ok(CertifiedIssuer::self_signed(params, KeyPair::generate()?)?)
}

fn write(path: &Path, contents: &str) -> Result<(), Error> {
    std::fs::write(path, contents).map_err(|source| Error::Write {
        path: path.to_owned(),
        source,
    })
}
