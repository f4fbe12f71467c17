//! From an image manifest to the Wasm binary it carries, whatever store holds the blobs: a
//! registry (see [`crate::Registry::pull`]) or containerd's content store (the shim reads
//! what the kubelet already pulled). One place decides what a manifest means.

use std::future::Future;

use serde::Deserialize;

use crate::Error;
use crate::artifact::{self, Carrier, ManifestShape};

/// Largest manifest or image config read.
pub const MAX_METADATA_BYTES: u64 = 1 << 20;

/// A blob a manifest points at.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    pub media_type: String,
    pub digest: String,
    pub size: i64,
}

impl Descriptor {
    /// The declared size, refused when over `limit` (before anything is downloaded).
    pub fn checked_size(&self, what: &str, limit: u64) -> Result<u64, Error> {
        let size = u64::try_from(self.size).map_err(|_| Error::Artifact {
            reference: what.to_owned(),
            reason: format!("blob {} declares a negative size", self.digest),
        })?;
        if size > limit {
            return Err(Error::Artifact {
                reference: what.to_owned(),
                reason: format!(
                    "blob {} declares {} bytes, over the {limit}-byte limit",
                    self.digest, self.size
                ),
            });
        }
        Ok(size)
    }

    /// Checks fetched `bytes` against this descriptor: the declared size and the digest.
    pub fn verify(&self, what: &str, bytes: &[u8]) -> Result<(), Error> {
        self.verify_size(what, bytes)?;
        verify_digest(what, &self.digest, bytes)
    }

    /// `bytes` are as many as the descriptor declares (the digest is checked elsewhere,
    /// e.g. by the blob cache that stores them).
    pub fn verify_size(&self, what: &str, bytes: &[u8]) -> Result<(), Error> {
        self.verify_len(what, bytes.len() as u64)
    }

    /// A blob of `len` bytes is as long as the descriptor declares.
    pub fn verify_len(&self, what: &str, len: u64) -> Result<(), Error> {
        if i64::try_from(len).ok() != Some(self.size) {
            return Err(Error::Artifact {
                reference: what.to_owned(),
                reason: format!(
                    "blob {} declares {} bytes but has {len}",
                    self.digest, self.size
                ),
            });
        }
        Ok(())
    }
}

/// Checks that `bytes` hash to `digest` (`sha256:…` or `sha512:…`).
pub fn verify_digest(what: &str, digest: &str, bytes: &[u8]) -> Result<(), Error> {
    let actual = if digest.starts_with("sha512:") {
        use sha2::Digest as _;
        format!("sha512:{:x}", sha2::Sha512::digest(bytes))
    } else {
        crate::sha256_digest(bytes)
    };
    if actual != digest {
        return Err(Error::Digest {
            what: what.to_owned(),
            expected: digest.to_owned(),
            actual,
        });
    }
    Ok(())
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawManifest {
    #[serde(default)]
    media_type: Option<String>,
    #[serde(default)]
    config: Option<Descriptor>,
    #[serde(default)]
    layers: Option<Vec<Descriptor>>,
    #[serde(default)]
    manifests: Option<Vec<RawIndexEntry>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawIndexEntry {
    digest: String,
    #[serde(default)]
    platform: Option<RawPlatform>,
}

#[derive(Deserialize)]
struct RawPlatform {
    #[serde(default)]
    os: String,
    #[serde(default)]
    architecture: String,
}

/// An OCI/docker image config: lower-case `config`, upper-case fields inside it.
#[derive(Deserialize, Default)]
struct ImageConfig {
    #[serde(default)]
    config: Option<ImageRuntimeConfig>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
struct ImageRuntimeConfig {
    #[serde(default)]
    entrypoint: Option<Vec<String>>,
    #[serde(default)]
    cmd: Option<Vec<String>>,
}

/// What a manifest document is.
#[derive(Debug)]
pub enum Document {
    /// An image index: the digest of its wasm platform's manifest.
    Index { wasm_manifest: String },
    /// An image manifest that carries WebAssembly.
    Manifest(Manifest),
}

/// An image manifest known to carry WebAssembly, and where in it the binary is.
#[derive(Debug, Clone)]
pub struct Manifest {
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
    pub carrier: Carrier,
}

/// Whether `digest` is `sha256:` with 64 lower-case hex digits or `sha512:` with 128: digests
/// from a manifest go into URLs, API calls and cache paths.
fn well_formed(digest: &str) -> bool {
    let hex = |h: &str, n: usize| {
        h.len() == n
            && h.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    match digest.split_once(':') {
        Some(("sha256", h)) => hex(h, 64),
        Some(("sha512", h)) => hex(h, 128),
        _ => false,
    }
}

/// Reads a manifest or index (`what` names it in errors). An index must have a wasm platform
/// entry; a manifest must carry WebAssembly, or the error says precisely why not.
pub fn parse(what: &str, raw: &[u8]) -> Result<Document, Error> {
    let artifact_error = |reason: String| Error::Artifact {
        reference: what.to_owned(),
        reason,
    };
    let checked = |digest: &str| {
        if well_formed(digest) {
            Ok(())
        } else {
            Err(artifact_error(format!(
                "the manifest names a malformed digest {digest:?}"
            )))
        }
    };
    let manifest: RawManifest = serde_json::from_slice(raw)
        .map_err(|e| artifact_error(format!("the manifest is not valid JSON: {e}")))?;
    let is_index = manifest.manifests.is_some()
        || matches!(
            manifest.media_type.as_deref(),
            Some(artifact::OCI_INDEX | artifact::DOCKER_LIST)
        );
    if is_index {
        let entries = manifest.manifests.unwrap_or_default();
        return match entries.iter().find(|e| {
            e.platform
                .as_ref()
                .is_some_and(|p| artifact::is_wasm_platform(&p.os, &p.architecture))
        }) {
            Some(entry) => {
                checked(&entry.digest)?;
                Ok(Document::Index {
                    wasm_manifest: entry.digest.clone(),
                })
            }
            None => {
                let platforms: Vec<String> = entries
                    .iter()
                    .filter_map(|e| e.platform.as_ref())
                    .map(|p| format!("{}/{}", p.os, p.architecture))
                    .collect();
                Err(artifact_error(format!(
                    "the image index has no wasm platform (wasip1, wasip2, wasi or \
                     architecture wasm); it has: {}",
                    if platforms.is_empty() {
                        "none".into()
                    } else {
                        platforms.join(", ")
                    }
                )))
            }
        };
    }
    let config = manifest
        .config
        .ok_or_else(|| artifact_error("the manifest has no config".into()))?;
    let layers = manifest.layers.unwrap_or_default();
    for d in std::iter::once(&config).chain(&layers) {
        checked(&d.digest)?;
    }
    let carrier = artifact::carrier(&ManifestShape {
        config_media_type: &config.media_type,
        layer_media_types: layers.iter().map(|l| l.media_type.as_str()).collect(),
    })
    .map_err(artifact_error)?;
    Ok(Document::Manifest(Manifest {
        config,
        layers,
        carrier,
    }))
}

/// The binary a manifest carries.
#[derive(Debug, Clone)]
pub struct Assembled {
    pub bytes: Vec<u8>,
    /// How it was carried: the layer's media type, or `tar`.
    pub carrier: String,
    /// The wasm layer's digest, which is the binary's own (already verified as it arrived);
    /// `None` when the binary came out of a tar layer.
    pub layer_digest: Option<String>,
}

/// Gets the binary out of `manifest`, fetching blobs with `fetch(descriptor, limit)`. The
/// fetcher verifies what it returns (declared size within `limit`, digest); its errors (`E`,
/// the store's own) pass through.
pub async fn assemble<F, Fut, E>(
    what: &str,
    manifest: &Manifest,
    max_component_bytes: u64,
    fetch: F,
) -> Result<Assembled, E>
where
    F: Fn(Descriptor, u64) -> Fut,
    Fut: Future<Output = Result<Vec<u8>, E>>,
    E: From<Error>,
{
    match &manifest.carrier {
        Carrier::WasmLayer { index } => {
            let d = manifest.layers[*index].clone();
            let (carrier, digest) = (d.media_type.clone(), d.digest.clone());
            Ok(Assembled {
                bytes: fetch(d, max_component_bytes).await?,
                carrier,
                layer_digest: Some(digest),
            })
        }
        Carrier::TarLayers { indexes } => {
            let image_config: ImageConfig = {
                let raw = fetch(manifest.config.clone(), MAX_METADATA_BYTES).await?;
                serde_json::from_slice(&raw).unwrap_or_default()
            };
            let entrypoint = image_config.config.and_then(|c| {
                c.entrypoint
                    .into_iter()
                    .chain(c.cmd)
                    .flatten()
                    .find(|a| a.ends_with(".wasm"))
            });
            // Declared sizes first: layers are held in memory while the binary is searched.
            let declared: u64 = indexes
                .iter()
                .map(|i| u64::try_from(manifest.layers[*i].size).unwrap_or(u64::MAX))
                .fold(0, u64::saturating_add);
            if declared > max_component_bytes {
                return Err(E::from(Error::Artifact {
                    reference: what.to_owned(),
                    reason: format!(
                        "the image's file-system layers declare {declared} bytes together, over the {max_component_bytes}-byte limit"
                    ),
                }));
            }
            let mut tars = Vec::new();
            for i in indexes {
                let d = manifest.layers[*i].clone();
                let gz = d.media_type.ends_with("gzip");
                tars.push((fetch(d, max_component_bytes).await?, gz));
            }
            let bytes = artifact::wasm_from_tars(&tars, entrypoint.as_deref(), max_component_bytes)
                .map_err(|reason| {
                    E::from(Error::Artifact {
                        reference: what.to_owned(),
                        reason,
                    })
                })?;
            Ok(Assembled {
                bytes,
                carrier: "tar".to_owned(),
                layer_digest: None,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(media_type: &str, bytes: &[u8]) -> Descriptor {
        Descriptor {
            media_type: media_type.into(),
            digest: crate::sha256_digest(bytes),
            size: bytes.len() as i64,
        }
    }

    #[test]
    fn an_index_names_its_wasm_platform_manifest_or_lists_the_platforms_it_has() {
        let (a, b) = ("a".repeat(64), "b".repeat(64));
        let index = format!(
            r#"{{"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[
            {{"digest":"sha256:{a}","platform":{{"os":"linux","architecture":"amd64"}}}},
            {{"digest":"sha256:{b}","platform":{{"os":"wasip2","architecture":"wasm"}}}}]}}"#
        );
        assert!(matches!(
            parse("x", index.as_bytes()),
            Ok(Document::Index { wasm_manifest }) if wasm_manifest == format!("sha256:{b}")
        ));
        let malformed = br#"{"manifests":[{"digest":"sha256:../../etc","platform":{"os":"wasip2","architecture":"wasm"}}]}"#;
        let err = parse("x", malformed).err().map(|e| e.to_string());
        assert!(
            err.as_deref()
                .is_some_and(|e| e.contains("malformed digest")),
            "{err:?}"
        );
        let linux_only = br#"{"manifests":[{"digest":"sha256:aa","platform":{"os":"linux","architecture":"arm64"}}]}"#;
        let err = parse("x", linux_only).err().map(|e| e.to_string());
        assert!(
            err.as_deref().is_some_and(|e| e.contains("linux/arm64")),
            "{err:?}"
        );
    }

    #[test]
    fn a_manifest_without_config_or_with_two_wasm_layers_is_refused_by_name() {
        let no_config = br#"{"layers":[]}"#;
        let e = parse("x", no_config).err().map(|e| e.to_string());
        assert!(
            e.as_deref().is_some_and(|e| e.contains("no config")),
            "{e:?}"
        );
        let (a, b, c) = ("a".repeat(64), "b".repeat(64), "c".repeat(64));
        let two = format!(
            r#"{{"config":{{"mediaType":"application/vnd.wasm.config.v0+json","digest":"sha256:{c}","size":2}},
            "layers":[{{"mediaType":"application/wasm","digest":"sha256:{a}","size":1}},
                      {{"mediaType":"application/wasm","digest":"sha256:{b}","size":1}}]}}"#
        );
        let e = parse("x", two.as_bytes()).err().map(|e| e.to_string());
        assert!(
            e.as_deref().is_some_and(|e| e.contains("2 layers")),
            "{e:?}"
        );
        assert!(parse("x", b"not json").is_err());
    }

    #[test]
    fn descriptors_refuse_oversized_declarations_and_bytes_that_do_not_match() {
        let good = d("application/wasm", b"abc");
        assert_eq!(good.checked_size("x", 3).ok(), Some(3));
        assert!(good.checked_size("x", 2).is_err());
        assert!(good.verify("x", b"abc").is_ok());
        assert!(matches!(
            good.verify("x", b"abd"),
            Err(Error::Digest { .. })
        ));
        assert!(matches!(
            good.verify("x", b"abcd"),
            Err(Error::Artifact { .. })
        ));
        let negative = Descriptor {
            size: -1,
            ..good.clone()
        };
        assert!(negative.checked_size("x", 10).is_err());
    }
}
