//! Talking to registries: push, resolve and pull Wasm artifacts.

use std::collections::BTreeMap;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::artifact::{self, WasmConfig, WasmInfo};
use crate::gate::{self, Gate};
use crate::image::{self, Descriptor, Document};
use crate::{BlobCache, Credentials, Error, RegistryConfig, VerifiedBlob};
use oci_client::client::{ClientConfig, ClientProtocol, Config, ImageLayer};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::manifest::{OciDescriptor, OciImageManifest};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};

/// Manifest media types wa8s asks for.
const ACCEPTED: &[&str] = &[
    artifact::OCI_MANIFEST,
    artifact::OCI_INDEX,
    artifact::DOCKER_MANIFEST,
    artifact::DOCKER_LIST,
];

/// Default ceiling for one component (declared or actual size).
pub const DEFAULT_MAX_COMPONENT_BYTES: u64 = 256 << 20;

/// How to reach registries, and whose credentials to present.
#[derive(Debug, Clone, Default)]
pub struct RegistryOptions {
    pub credentials: Credentials,
    pub config: RegistryConfig,
}

/// A client for Wasm artifacts in OCI registries.
#[derive(Debug, Clone)]
pub struct Registry {
    options: RegistryOptions,
    // One client per registry: each loads the system's trust roots, which costs more than
    // a small pull.
    clients: Clients,
}

#[derive(Clone, Default)]
struct Clients(Arc<Mutex<HashMap<String, Client>>>);

impl std::fmt::Debug for Clients {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Clients")
    }
}

/// What a push produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pushed {
    /// The manifest digest (`sha256:…`): pin deployments to `<repo>@<digest>`.
    pub digest: String,
    /// The binary's own digest (the layer).
    pub layer_digest: String,
}

/// A reference resolved to its manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// The reference as given.
    pub reference: String,
    /// The manifest digest (of the platform manifest when the reference names an index).
    pub digest: String,
}

/// What a reference names, from its manifest and config (see [`Registry::describe`]).
#[derive(Debug, Clone)]
pub struct Described {
    pub resolved: Resolved,
    pub config_media_type: String,
    /// The CNCF wasm config, when the artifact has one.
    pub config: Option<WasmConfig>,
    /// The layer that is the binary, when one is (not a `.wasm` inside tar layers).
    pub wasm_layer: Option<Descriptor>,
}

impl Described {
    /// What the binary is, from the manifest and the wasm config alone, when those say it
    /// (a component's imports and exports are in the config; a preview1 module's are not):
    /// nothing of the binary itself is downloaded.
    pub fn info(&self) -> Option<WasmInfo> {
        let config = self.config.as_ref()?;
        let component = config.component.as_ref()?;
        let layer = self.wasm_layer.as_ref()?;
        Some(WasmInfo {
            kind: artifact::Kind::Component,
            digest: layer.digest.clone(),
            size: u64::try_from(layer.size).ok()?,
            imports: component.imports.clone(),
            exports: component.exports.clone(),
        })
    }

    /// Whether the config says the component serves HTTP; `None` when it does not say.
    pub fn serves_http(&self) -> Option<bool> {
        let config = self.config.as_ref()?;
        match &config.component {
            Some(c) => Some(
                c.exports
                    .iter()
                    .any(|e| e.starts_with("wasi:http/incoming-handler")),
            ),
            // A wasip1 module has no component section and cannot serve wasi:http.
            None => Some(false),
        }
    }
}

/// A manifest known to carry WebAssembly, and where it was found.
struct Shaped {
    digest: String,
    at: Reference,
    manifest: image::Manifest,
}

/// A component pulled into a writer (see [`Registry::pull_into`]): everything but the bytes.
#[derive(Debug, Clone)]
pub struct Written {
    pub resolved: Resolved,
    pub info: WasmInfo,
    /// How it was carried: `application/wasm`, the older v1 layer, or `tar`.
    pub carrier: String,
    pub config_media_type: String,
}

impl Written {
    fn with_bytes(self, bytes: Vec<u8>) -> Pulled {
        Pulled {
            resolved: self.resolved,
            bytes,
            info: self.info,
            carrier: self.carrier,
            config_media_type: self.config_media_type,
        }
    }
}

impl Shaped {
    /// Where this artifact's blobs come from, fetched with `client` for `parsed`.
    fn blobs<'a>(&'a self, client: &'a Client, parsed: &'a Reference) -> Blobs<'a> {
        Blobs {
            client,
            parsed,
            at: &self.at,
        }
    }
}

/// A pulled component.
#[derive(Debug, Clone)]
pub struct Pulled {
    pub resolved: Resolved,
    /// The binary.
    pub bytes: Vec<u8>,
    pub info: WasmInfo,
    /// How it was carried: `application/wasm`, the older v1 layer, or `tar`.
    pub carrier: String,
    pub config_media_type: String,
}

/// Parses `ghcr.io/org/app:v1` or `…@sha256:…`, with a clear error.
pub fn parse_reference(reference: &str) -> Result<Reference, Error> {
    let bad = |reason: String| Error::Reference {
        reference: reference.into(),
        reason,
    };
    // Parsed here with the distribution grammar rather than by the client library, whose
    // Unicode regex costs ~15 ms to compile in every process that names a reference.
    let (rest, digest) = match reference.split_once('@') {
        Some((r, d)) => (r, Some(d)),
        None => (reference, None),
    };
    if let Some(d) = digest {
        let Some((algorithm, hex)) = d.split_once(':') else {
            return Err(bad(format!("digest {d:?} has no algorithm (sha256:…)")));
        };
        let want = match algorithm {
            "sha256" => 64,
            "sha512" => 128,
            other => {
                return Err(bad(format!(
                    "digest algorithm {other:?} is not sha256 or sha512"
                )));
            }
        };
        if hex.len() != want || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(bad(format!(
                "digest {d:?} must be {algorithm}: followed by {want} lower-case hex digits"
            )));
        }
    }
    // A ':' after the last '/' starts the tag; one before it is a registry port.
    let (name, tag) = match rest.rfind(':') {
        Some(i) if i > rest.rfind('/').unwrap_or(0) => (&rest[..i], Some(&rest[i + 1..])),
        _ => (rest, None),
    };
    if let Some(t) = tag {
        let first_ok = t
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !first_ok
            || t.len() > 128
            || !t
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
        {
            return Err(bad(format!(
                "tag {t:?} must be letters, digits, '_', '.' or '-' (at most 128, not starting with '.' or '-')"
            )));
        }
    }
    if name.is_empty() {
        return Err(bad("the repository name is empty".into()));
    }
    // Docker's rule: the first component is a registry if it looks like a host.
    let (registry, repository) = match name.split_once('/') {
        Some((first, path)) if first.contains(['.', ':']) || first == "localhost" => {
            let host_ok = first.bytes().all(|b| {
                b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']')
            });
            if !host_ok {
                return Err(bad(format!("registry {first:?} is not a host[:port]")));
            }
            (first.to_owned(), path.to_owned())
        }
        Some(_) => ("docker.io".to_owned(), name.to_owned()),
        None => ("docker.io".to_owned(), format!("library/{name}")),
    };
    // The distribution spec's repository grammar.
    let component_ok = |c: &str| {
        !c.is_empty()
            && c.bytes()
                .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'.' | b'_' | b'-'))
            && c.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
            && c.bytes().last().is_some_and(|b| b.is_ascii_alphanumeric())
    };
    if !repository.split('/').all(component_ok) {
        return Err(bad(format!(
            "repository {repository:?} must be lower-case letters, digits and separators (. _ -)"
        )));
    }
    Ok(match (tag, digest) {
        (Some(t), Some(d)) => {
            Reference::with_tag_and_digest(registry, repository, t.to_owned(), d.to_owned())
        }
        (None, Some(d)) => Reference::with_digest(registry, repository, d.to_owned()),
        (Some(t), None) => Reference::with_tag(registry, repository, t.to_owned()),
        (None, None) => Reference::with_tag(registry, repository, "latest".to_owned()),
    })
}

/// The host of `host[:port]` (brackets kept for IPv6).
pub(crate) fn host_of(registry: &str) -> &str {
    registry
        .rsplit_once(':')
        .filter(|(h, port)| port.bytes().all(|b| b.is_ascii_digit()) && !h.ends_with(':'))
        .map_or(registry, |(h, _)| h)
}

pub(crate) fn is_loopback(registry: &str) -> bool {
    let host = host_of(registry)
        .trim_start_matches('[')
        .trim_end_matches(']');
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Told (bytes done, bytes in all) as a push or pull goes.
pub type Progress = Box<dyn FnMut(u64, u64) + Send + 'static>;

/// The pieces an observed push streams its layer in: the OCI client's own PATCH size (it
/// sends each piece as its own request), so observing a push costs no extra requests
/// (256 KiB pieces made a 20 MiB push 25% slower).
pub const PUSH_PIECE: usize = 4 << 20;

impl Registry {
    pub fn new(options: RegistryOptions) -> Self {
        Registry {
            options,
            clients: Clients::default(),
        }
    }

    /// The client for talking to `registry` on behalf of `source` (the registry a reference
    /// names; a mirror's clients are per source): oci-client keeps the first credentials it
    /// is given per host, so two sources mirrored to one host must not share a client.
    fn client(&self, registry: &str, source: &str) -> Result<Client, Error> {
        let mut clients = self.clients.0.lock().unwrap_or_else(|p| p.into_inner());
        let key = format!("{registry} for {source}");
        if let Some(client) = clients.get(&key) {
            return Ok(client.clone());
        }
        let client = self.new_client(registry)?;
        clients.insert(key, client.clone());
        Ok(client)
    }

    fn new_client(&self, registry: &str) -> Result<Client, Error> {
        let config = &self.options.config;
        let mut insecure = config.insecure.clone();
        let ca = config.ca_certificates.get(registry);
        if config.plain_http(registry) {
            insecure.push(registry.to_owned());
        }
        let gate = config.addresses.gate_for(registry, config.mirrors.values());
        if let Some(gate) = &gate {
            gate.check_host(host_of(registry))
                .map_err(|r| Error::Refused {
                    registry: registry.to_owned(),
                    reason: r.0,
                })?;
        }
        // Only this registry's CA: a private CA is trusted for the registry it was given for.
        // The roots load at the first TLS handshake, so a plain-HTTP registry never reads them.
        let rustls_config = crate::tls::client_config(registry, ca.map(Vec::as_slice))?;
        Client::try_from(ClientConfig {
            protocol: ClientProtocol::HttpsExcept(insecure),
            rustls_config: Some(rustls_config),
            dns_resolver: gate.as_ref().map(Gate::resolver),
            url_gate: gate.as_ref().map(Gate::url_gate),
            // Indexes are resolved here (to a wasm platform), not by the client.
            platform_resolver: None,
            connect_timeout: Some(std::time::Duration::from_secs(10)),
            read_timeout: Some(std::time::Duration::from_secs(60)),
            user_agent: concat!("wa8s/", env!("CARGO_PKG_VERSION")),
            ..ClientConfig::default()
        })
        .map_err(|e| Error::Transport {
            registry: registry.to_owned(),
            doing: "making a client".into(),
            source: Box::new(e),
        })
    }

    /// The reference pulls actually use: the mirror's, if one is configured.
    fn mirrored(&self, reference: &Reference) -> Reference {
        match self
            .options
            .config
            .mirrors
            .get(reference.resolve_registry())
        {
            Some(mirror) => {
                let repo = reference.repository().to_owned();
                match (reference.tag(), reference.digest()) {
                    (Some(t), Some(d)) => Reference::with_tag_and_digest(
                        mirror.clone(),
                        repo,
                        t.to_owned(),
                        d.to_owned(),
                    ),
                    (_, Some(d)) => Reference::with_digest(mirror.clone(), repo, d.to_owned()),
                    (t, None) => {
                        Reference::with_tag(mirror.clone(), repo, t.unwrap_or("latest").to_owned())
                    }
                }
            }
            None => reference.clone(),
        }
    }

    /// Pushes `wasm` as a CNCF wasm artifact (one `application/wasm` layer, a
    /// `vnd.wasm.config.v0` config describing it) and returns the manifest digest.
    pub async fn push(&self, wasm: &[u8], reference: &str) -> Result<Pushed, Error> {
        self.push_annotated(wasm, reference, BTreeMap::new()).await
    }

    /// [`Registry::push`] with manifest annotations (`org.opencontainers.image.source`,
    /// which links a GHCR package to its repository, `revision`, `created`, any other).
    pub async fn push_annotated(
        &self,
        wasm: &[u8],
        reference: &str,
        annotations: BTreeMap<String, String>,
    ) -> Result<Pushed, Error> {
        self.push_observed(wasm, reference, annotations, None).await
    }

    /// [`Registry::push_annotated`], telling `progress` (bytes sent, total) as the layer's
    /// pieces go out: the layer is then streamed in [`PUSH_PIECE`]-byte pieces instead of
    /// being handed over whole.
    pub async fn push_observed(
        &self,
        wasm: &[u8],
        reference: &str,
        annotations: BTreeMap<String, String>,
        progress: Option<Progress>,
    ) -> Result<Pushed, Error> {
        let reference = parse_reference(reference)?;
        let info = artifact::inspect(wasm)?;
        let config = WasmConfig::for_binary(&info);
        let config_json = serde_json::to_vec(&config).map_err(|e| Error::Artifact {
            reference: reference.whole(),
            reason: format!("encoding the config: {e}"),
        })?;
        let layers = vec![ImageLayer::new(
            wasm.to_vec(),
            artifact::WASM_LAYER.to_owned(),
            None,
        )];
        let config = Config::new(config_json, artifact::WASM_CONFIG_V0.to_owned(), None);
        let mut manifest = OciImageManifest::build(
            &layers,
            &config,
            (!annotations.is_empty()).then_some(annotations),
        );
        manifest.media_type = Some(artifact::OCI_MANIFEST.to_owned());
        let registry = reference.resolve_registry().to_owned();
        let auth = self.options.credentials.for_registry(&registry)?;
        let client = self.client(&registry, &registry)?;
        match progress {
            None => client
                .push(&reference, &layers, config, &auth, Some(manifest))
                .await
                .map(drop),
            Some(mut progress) => {
                // What `push` does, with the layer as a stream whose pieces are counted as
                // the client takes them.
                client.store_auth_if_needed(&registry, &auth).await;
                let total = wasm.len() as u64;
                let data = bytes::Bytes::copy_from_slice(wasm);
                let mut sent = 0u64;
                let pieces: Vec<bytes::Bytes> = (0..data.len())
                    .step_by(PUSH_PIECE)
                    .map(|at| data.slice(at..data.len().min(at + PUSH_PIECE)))
                    .collect();
                let stream = futures_util::stream::iter(pieces.into_iter().map(move |piece| {
                    sent += piece.len() as u64;
                    progress(sent, total);
                    Ok(piece)
                }));
                let layer_digest = manifest.layers[0].digest.clone();
                let config_digest = manifest.config.digest.clone();
                async {
                    client
                        .push_blob_stream(&reference, stream, &layer_digest, Some(total))
                        .await?;
                    client
                        .push_blob(&reference, config.data, &config_digest)
                        .await?;
                    client.push_manifest(&reference, &manifest.into()).await
                }
                .await
                .map(drop)
            }
        }
        .map_err(|e| translate(&reference, e))?;
        let digest = client
            .fetch_manifest_digest(&reference, &auth)
            .await
            .map_err(|e| translate(&reference, e))?;
        Ok(Pushed {
            digest,
            layer_digest: info.digest,
        })
    }

    /// The manifest digest `reference` names now (through mirrors), for pinning.
    pub async fn resolve(&self, reference: &str) -> Result<Resolved, Error> {
        let parsed = parse_reference(reference)?;
        let (_, digest, _) = self.manifest(&parsed).await?;
        Ok(Resolved {
            reference: reference.to_owned(),
            digest,
        })
    }

    /// The digest `reference` names now (through mirrors), from a HEAD request (a GET where
    /// the registry's HEAD answer carries no `Docker-Content-Digest`): what polling a tag
    /// for a move costs. For an image index, the index's digest.
    pub async fn current_digest(&self, reference: &str) -> Result<String, Error> {
        let parsed = parse_reference(reference)?;
        let (target, auth, client) = self.mirrored_client(&parsed)?;
        client
            .fetch_manifest_digest(&target, &auth)
            .await
            .map_err(|e| translate(&parsed, e))
    }

    /// Where `parsed` is fetched from (its mirror, if any), the credentials of the registry
    /// it names (a mirror is presented those), and a client for that place.
    fn mirrored_client(
        &self,
        parsed: &Reference,
    ) -> Result<(Reference, RegistryAuth, Client), Error> {
        let target = self.mirrored(parsed);
        let registry = target.resolve_registry().to_owned();
        let auth = self
            .options
            .credentials
            .for_registry(parsed.resolve_registry())?;
        let client = self.client(&registry, parsed.resolve_registry())?;
        Ok((target, auth, client))
    }

    /// A client for where `at` lives, holding the credentials for the registry `parsed`
    /// names (a mirror is presented the original registry's credentials).
    async fn authed_client(&self, parsed: &Reference, at: &Reference) -> Result<Client, Error> {
        let registry = at.resolve_registry().to_owned();
        let client = self.client(&registry, parsed.resolve_registry())?;
        let auth = self
            .options
            .credentials
            .for_registry(parsed.resolve_registry())?;
        client.store_auth_if_needed(&registry, &auth).await;
        Ok(client)
    }

    /// The manifest `parsed` names, checked to carry WebAssembly.
    async fn shaped(&self, parsed: &Reference) -> Result<Shaped, Error> {
        let (manifest, digest, at) = self.manifest(parsed).await?;
        Ok(Shaped {
            digest,
            at,
            manifest,
        })
    }

    /// The manifest `parsed` names, and a client to fetch its blobs with.
    async fn shaped_with_client(&self, parsed: &Reference) -> Result<(Shaped, Client), Error> {
        let shaped = self.shaped(parsed).await?;
        let client = self.authed_client(parsed, &shaped.at).await?;
        Ok((shaped, client))
    }

    /// What `reference` names, without downloading the component: the manifest digest, that
    /// it carries WebAssembly, and what a CNCF wasm config says about it. For the operator,
    /// which pins pods to the digest and needs to know whether to give them a Service.
    pub async fn describe(&self, reference: &str) -> Result<Described, Error> {
        let parsed = parse_reference(reference)?;
        let shaped = self.shaped(&parsed).await?;
        let config = &shaped.manifest.config;
        let mut wasm_config = None;
        if config.media_type == artifact::WASM_CONFIG_V0 {
            let client = self.authed_client(&parsed, &shaped.at).await?;
            let blobs = shaped.blobs(&client, &parsed);
            let raw = blobs.get(config, image::MAX_METADATA_BYTES).await?;
            wasm_config =
                Some(
                    serde_json::from_slice::<WasmConfig>(&raw).map_err(|e| Error::Artifact {
                        reference: parsed.whole(),
                        reason: format!("the wasm config is not valid: {e}"),
                    })?,
                );
        }
        let wasm_layer = match &shaped.manifest.carrier {
            artifact::Carrier::WasmLayer { index } => shaped.manifest.layers.get(*index).cloned(),
            artifact::Carrier::TarLayers { .. } => None,
        };
        Ok(Described {
            wasm_layer,
            config_media_type: config.media_type.clone(),
            resolved: Resolved {
                reference: reference.to_owned(),
                digest: shaped.digest,
            },
            config: wasm_config,
        })
    }

    /// Fetches the manifest (following an index to its wasm platform entry), verifies its
    /// digest when the reference pins one, and checks that it carries WebAssembly.
    async fn manifest(
        &self,
        parsed: &Reference,
    ) -> Result<(image::Manifest, String, Reference), Error> {
        let (target, auth, client) = self.mirrored_client(parsed)?;
        let mut current = target.clone();
        for _ in 0..2 {
            let (raw, digest) = client
                .pull_manifest_raw(&current, &auth, ACCEPTED)
                .await
                .map_err(|e| translate(parsed, e))?;
            let actual = crate::sha256_digest(&raw);
            if let Some(pinned) = current.digest()
                && pinned != actual
            {
                return Err(Error::Digest {
                    what: format!("manifest of {}", parsed.whole()),
                    expected: pinned.to_owned(),
                    actual,
                });
            }
            match image::parse(&parsed.whole(), &raw)? {
                Document::Manifest(manifest) => {
                    let digest = if digest.is_empty() { actual } else { digest };
                    return Ok((manifest, digest, current));
                }
                Document::Index { wasm_manifest } => {
                    current = target.clone_with_digest(wasm_manifest);
                }
            }
        }
        Err(Error::Artifact {
            reference: parsed.whole(),
            reason: "an image index points at another index".into(),
        })
    }

    /// Pulls the component `reference` names, through `cache` when given. Every blob is
    /// verified against its digest; a mismatch is an error and nothing is cached.
    pub async fn pull(&self, reference: &str, cache: Option<&BlobCache>) -> Result<Pulled, Error> {
        let parsed = parse_reference(reference)?;
        let (shaped, client) = self.shaped_with_client(&parsed).await?;
        let blobs = shaped.blobs(&client, &parsed);
        let fetch = |d: Descriptor, limit: u64| async move {
            match cache {
                // `blobs` verifies as it downloads; the cache need not hash again.
                Some(c) => {
                    c.get_or_fetch_verified(&d.digest, || blobs.get(&d, limit))
                        .await
                }
                None => blobs.get(&d, limit).await,
            }
        };
        let (assembled, info) = self.assemble(&parsed, &shaped.manifest, fetch).await?;
        let written = written(reference, shaped, info, assembled.carrier);
        Ok(written.with_bytes(assembled.bytes))
    }

    /// [`Registry::pull`] through `cache`, and the handle on the component there (whose
    /// digest the pull verified): for a process that runs it (see `wa8s_host`'s precompile
    /// cache), which then never hashes it again.
    pub async fn pull_cached(
        &self,
        reference: &str,
        cache: &BlobCache,
    ) -> Result<(Pulled, VerifiedBlob), Error> {
        let pulled = self.pull(reference, Some(cache)).await?;
        // A wasm layer is the component and is cached already; a binary out of a tar layer
        // is stored under the digest inspecting it computed.
        let blob = match cache.verified(&pulled.info.digest)? {
            Some(blob) => blob,
            None => {
                cache
                    .hold(&pulled.info.digest, pulled.bytes.clone())
                    .await?
            }
        };
        Ok((pulled, blob))
    }

    /// Pulls the component `reference` names into `out`, verified like [`Registry::pull`]
    /// but not cached. A component carried in a wasm layer streams into `out` as it
    /// downloads (it is never held in memory whole); one in an image's tar layers is found
    /// in memory first.
    ///
    /// On an error, `out` may hold part of the component, or all of it unverified: write to
    /// a temporary file and keep it only on `Ok`. `out` is written synchronously as pieces
    /// arrive, so it should not block for long (a file, a `Vec`).
    pub async fn pull_into(
        &self,
        reference: &str,
        out: &mut (dyn std::io::Write + Send),
    ) -> Result<Written, Error> {
        self.pull_observed(reference, out, None).await
    }

    /// [`Registry::pull_into`], telling `progress` (bytes received, declared size) as the
    /// component's pieces arrive.
    pub async fn pull_observed(
        &self,
        reference: &str,
        out: &mut (dyn std::io::Write + Send),
        mut progress: Option<Progress>,
    ) -> Result<Written, Error> {
        let parsed = parse_reference(reference)?;
        let (shaped, client) = self.shaped_with_client(&parsed).await?;
        let blobs = shaped.blobs(&client, &parsed);
        let writing = |e| Error::Io {
            what: "writing the pulled component".into(),
            source: e,
        };
        let (info, carrier) = match &shaped.manifest.carrier {
            artifact::Carrier::WasmLayer { index } => {
                let d = &shaped.manifest.layers[*index];
                let mut inspector = artifact::Inspector::default();
                let limit = self.options.config.max_component_bytes;
                let mut received = 0u64;
                blobs
                    .stream(d, limit, &mut |chunk| {
                        received += chunk.len() as u64;
                        // Bytes that are not WebAssembly stop the download where they are
                        // seen, before the digest can be checked: the error says so.
                        inspector.feed(chunk).map_err(|e| Error::Artifact {
                            reference: parsed.whole(),
                            reason: format!(
                                "the layer is not WebAssembly (seen in its first {received} of {} bytes, before its digest was checked): {e}",
                                d.size
                            ),
                        })?;
                        out.write_all(chunk).map_err(writing)?;
                        if let Some(p) = progress.as_mut() {
                            p(received, u64::try_from(d.size).unwrap_or_default());
                        }
                        Ok(())
                    })
                    .await?;
                // The layer was verified against its digest as it arrived.
                let info = inspector
                    .finish(d.digest.clone())
                    .map_err(|e| not_wasm(&parsed, e))?;
                (info, d.media_type.clone())
            }
            artifact::Carrier::TarLayers { .. } => {
                let fetch = |d: Descriptor, limit: u64| async move { blobs.get(&d, limit).await };
                let (assembled, info) = self.assemble(&parsed, &shaped.manifest, fetch).await?;
                out.write_all(&assembled.bytes).map_err(writing)?;
                if let Some(p) = progress.as_mut() {
                    let n = assembled.bytes.len() as u64;
                    p(n, n);
                }
                (info, assembled.carrier)
            }
        };
        Ok(written(reference, shaped, info, carrier))
    }

    /// The binary `manifest` carries, fetched with `fetch`, and what it is.
    async fn assemble<F, Fut>(
        &self,
        parsed: &Reference,
        manifest: &image::Manifest,
        fetch: F,
    ) -> Result<(image::Assembled, WasmInfo), Error>
    where
        F: Fn(Descriptor, u64) -> Fut,
        Fut: Future<Output = Result<Vec<u8>, Error>>,
    {
        let max = self.options.config.max_component_bytes;
        let assembled = image::assemble(&parsed.whole(), manifest, max, fetch).await?;
        // A wasm layer was verified against its digest as it arrived.
        let info = match &assembled.layer_digest {
            Some(digest) => artifact::inspect_with_digest(&assembled.bytes, digest.clone()),
            None => artifact::inspect(&assembled.bytes),
        }
        .map_err(|e| not_wasm(parsed, e))?;
        Ok((assembled, info))
    }
}

/// Where an artifact's blobs are fetched from: `at` (the registry or mirror holding it) with
/// `client`, for the reference `parsed` (named in errors).
#[derive(Clone, Copy)]
struct Blobs<'a> {
    client: &'a Client,
    parsed: &'a Reference,
    at: &'a Reference,
}

impl Blobs<'_> {
    /// Downloads blob `d` into memory (see [`Blobs::stream`]).
    async fn get(&self, d: &Descriptor, limit: u64) -> Result<Vec<u8>, Error> {
        let mut out = Vec::with_capacity(d.checked_size(&self.parsed.whole(), limit)? as usize);
        self.stream(d, limit, &mut |chunk| {
            out.extend_from_slice(chunk);
            Ok(())
        })
        .await?;
        Ok(out)
    }

    /// Downloads blob `d`, handing each piece to `sink` as it arrives: at most `limit` bytes
    /// (declared and actual), verified against the digest in one pass over the bytes. The
    /// last piece is followed by the verdict: `sink` has seen bytes that were not verified
    /// until this returns `Ok`.
    async fn stream(
        &self,
        d: &Descriptor,
        limit: u64,
        sink: &mut (dyn FnMut(&[u8]) -> Result<(), Error> + Send),
    ) -> Result<(), Error> {
        use futures_util::TryStreamExt as _;
        let Blobs { client, parsed, at } = *self;
        let what = parsed.whole();
        let size = d.checked_size(&what, limit)?;
        let registry = || at.resolve_registry().to_owned();
        let desc = OciDescriptor {
            media_type: d.media_type.clone(),
            digest: d.digest.clone(),
            size: d.size,
            ..OciDescriptor::default()
        };
        // The registry sent other bytes than the digest names, or named a digest we cannot
        // check: either way the blob is refused.
        let digest_error = |err: &oci_client::errors::DigestError| Error::Digest {
            what: format!("blob of {what}"),
            expected: d.digest.clone(),
            actual: match err {
                oci_client::errors::DigestError::VerificationError { actual, .. } => actual.clone(),
                other => format!("({other})"),
            },
        };
        let too_long = |got: u64| Error::Artifact {
            reference: what.clone(),
            reason: format!(
                "blob {} declares {} bytes but the registry sends {got} or more",
                d.digest, d.size
            ),
        };
        // oci-client's stream hashes each chunk once and fails at the end on a mismatch;
        // `pull_blob` would hash everything twice when the registry names the digest.
        let mut stream = client
            .pull_blob_stream(at, &desc)
            .await
            .map_err(|e| match e {
                OciDistributionError::DigestError(err) => digest_error(&err),
                other => translate(at, other),
            })?;
        if let Some(len) = stream.content_length
            && len > size
        {
            return Err(too_long(len));
        }
        let mut received = 0u64;
        loop {
            let chunk = stream.stream.try_next().await.map_err(|e| {
                match e
                    .get_ref()
                    .and_then(|inner| inner.downcast_ref::<oci_client::errors::DigestError>())
                {
                    Some(err) => digest_error(err),
                    None => Error::Transport {
                        registry: registry(),
                        doing: format!("reading blob {}", d.digest),
                        source: Box::new(e),
                    },
                }
            })?;
            let Some(chunk) = chunk else { break };
            received += chunk.len() as u64;
            // A registry that sends more than it declared is cut off, not buffered.
            if received > size {
                return Err(too_long(received));
            }
            sink(&chunk)?;
        }
        // oci-client hashed it as it arrived.
        crate::count_hash();
        d.verify_len(&what, received)
    }
}

/// What users (and objects' status) see of a registry's failure: the HTTP status and the
/// OCI error codes, never a body. A registry is outside input, and it may redirect to a
/// service inside the cluster whose answer must not come back through wa8s.
fn translate(reference: &Reference, e: OciDistributionError) -> Error {
    let registry = reference.resolve_registry().to_owned();
    match e {
        OciDistributionError::AuthenticationFailure(_) => Error::Auth {
            registry,
            reason: "the token service refused the credentials".into(),
        },
        OciDistributionError::UnauthorizedError { url } => Error::Auth {
            registry,
            reason: format!("unauthorized at {url}"),
        },
        OciDistributionError::ImageManifestNotFoundError(_) => Error::NotFound {
            reference: reference.whole(),
        },
        OciDistributionError::RegistryError { envelope, .. } => {
            let codes: Vec<&OciErrorCode> = envelope.errors.iter().map(|e| &e.code).collect();
            let named = codes
                .iter()
                .map(|c| format!("{c:?}"))
                .collect::<Vec<_>>()
                .join(", ");
            if codes
                .iter()
                .any(|c| matches!(c, OciErrorCode::Unauthorized | OciErrorCode::Denied))
            {
                Error::Auth {
                    registry,
                    reason: format!("the registry answered {named}"),
                }
            } else if codes.iter().any(|c| {
                matches!(
                    c,
                    OciErrorCode::ManifestUnknown
                        | OciErrorCode::NameUnknown
                        | OciErrorCode::BlobUnknown
                )
            }) {
                Error::NotFound {
                    reference: reference.whole(),
                }
            } else {
                Error::Registry {
                    registry,
                    reason: format!("the registry answered {named}"),
                }
            }
        }
        OciDistributionError::ServerError {
            code: code @ (401 | 403),
            ..
        } => Error::Auth {
            registry,
            reason: format!("the registry answered HTTP {code}"),
        },
        OciDistributionError::ServerError { code: 404, .. } => Error::NotFound {
            reference: reference.whole(),
        },
        OciDistributionError::DigestError(d) => Error::Digest {
            what: reference.whole(),
            expected: String::new(),
            actual: d.to_string(),
        },
        OciDistributionError::ServerError { code, .. } => Error::Registry {
            registry,
            reason: format!("the registry answered HTTP {code}"),
        },
        other => match gate::refusal(&other) {
            Some(reason) => Error::Refused { registry, reason },
            None => Error::Transport {
                registry,
                doing: "the request failed".into(),
                source: Box::new(other),
            },
        },
    }
}

fn not_wasm(parsed: &Reference, e: Error) -> Error {
    Error::Artifact {
        reference: parsed.whole(),
        reason: format!("the layer is not WebAssembly: {e}"),
    }
}

fn written(reference: &str, shaped: Shaped, info: WasmInfo, carrier: String) -> Written {
    Written {
        resolved: Resolved {
            reference: reference.to_owned(),
            digest: shaped.digest,
        },
        info,
        carrier,
        config_media_type: shaped.manifest.config.media_type,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_registries_are_recognized_in_every_spelling() {
        for r in [
            "127.0.0.1:5000",
            "localhost:5000",
            "localhost",
            "[::1]:5000",
            "127.0.0.1",
        ] {
            assert!(is_loopback(r), "{r}");
        }
        for r in ["ghcr.io", "10.0.0.1:5000", "localhost.example.com"] {
            assert!(!is_loopback(r), "{r}");
        }
    }

    #[test]
    fn a_mirror_replaces_the_registry_and_keeps_repository_tag_and_digest() -> Result<(), Error> {
        let registry = Registry::new(RegistryOptions {
            config: RegistryConfig {
                mirrors: [("ghcr.io".to_owned(), "127.0.0.1:5000".to_owned())].into(),
                ..RegistryConfig::default()
            },
            ..RegistryOptions::default()
        });
        let r = registry.mirrored(&parse_reference("ghcr.io/myorg/app:v1")?);
        assert_eq!(r.whole(), "127.0.0.1:5000/myorg/app:v1");
        let d = format!("sha256:{}", "a".repeat(64));
        let r = registry.mirrored(&parse_reference(&format!("ghcr.io/myorg/app@{d}"))?);
        assert_eq!(r.whole(), format!("127.0.0.1:5000/myorg/app@{d}"));
        let r = registry.mirrored(&parse_reference("quay.io/x/y:1")?);
        assert_eq!(r.whole(), "quay.io/x/y:1");
        Ok(())
    }

    #[test]
    fn references_parse_like_the_distribution_grammar() {
        let cases = [
            (
                "ghcr.io/myorg/app:v1",
                "ghcr.io",
                "myorg/app",
                Some("v1"),
                None,
            ),
            (
                "127.0.0.1:5000/a/b",
                "127.0.0.1:5000",
                "a/b",
                Some("latest"),
                None,
            ),
            ("localhost/x:1.0", "localhost", "x", Some("1.0"), None),
            (
                "busybox",
                "docker.io",
                "library/busybox",
                Some("latest"),
                None,
            ),
            ("myorg/app:v2", "docker.io", "myorg/app", Some("v2"), None),
        ];
        for (text, registry, repository, tag, digest) in cases {
            let r = parse_reference(text).expect(text);
            assert_eq!(r.registry(), registry, "{text}");
            assert_eq!(r.repository(), repository, "{text}");
            assert_eq!(r.tag(), tag, "{text}");
            assert_eq!(r.digest(), digest, "{text}");
        }
        let d = format!("sha256:{}", "a".repeat(64));
        let r = parse_reference(&format!("localhost:5000/x:v1@{d}")).expect("tag and digest");
        assert_eq!((r.tag(), r.digest()), (Some("v1"), Some(d.as_str())));
    }

    #[test]
    fn bad_references_are_clear_errors() {
        for bad in [
            "",
            "UPPER/case:tag",
            "ghcr.io/x:bad tag",
            "x@sha256:short",
            "ghcr.io/x@md5:00",
            "ghcr.io/:v1",
            "ghcr.io/a//b:v1",
            "ghcr.io/x:.dot",
        ] {
            let err = parse_reference(bad).expect_err(bad);
            assert!(err.to_string().starts_with("invalid reference"), "{err}");
        }
    }
}
