//! What containerd already pulled: a container's image, read from containerd's content store
//! over its gRPC API (the socket this shim was started with). The kubelet pulled the image
//! with the pod's imagePullSecrets, so reading it here needs no credentials and no second
//! download from the registry.
//!
//! Only the three calls this needs are spelled out (Containers.Get, Images.Get, Content.Read),
//! with message types carrying just the fields read; protobuf skips the rest.

use std::path::PathBuf;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tonic::Code;
use tonic::transport::{Channel, Endpoint};
use wa8s_oci::image::{self, Descriptor, Document};
use wa8s_oci::{BlobCache, VerifiedBlob};

/// How long one call to containerd may take before the shim pulls from the registry instead.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// How long finding and reading a whole component may take (a stalled stream included).
const COMPONENT_TIMEOUT: Duration = Duration::from_secs(120);

/// Errors reading containerd's content store.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// containerd could not be asked (not reachable, or it failed the call).
    #[error("containerd at {address}: {call}")]
    Unavailable {
        address: String,
        call: &'static str,
        #[source]
        source: Why,
    },
    /// What containerd holds is not a component wa8s can run (or does not verify).
    #[error(transparent)]
    Artifact(#[from] wa8s_oci::Error),
    /// A blob the image needs is not in the content store (discarded after unpacking, or
    /// never pulled): the registry may still have it.
    #[error("{0} is not in containerd's content store")]
    Missing(String),
    /// The component's bytes could not be put in the node's blob cache.
    #[error(transparent)]
    Cache(wa8s_oci::Error),
}

/// Why containerd could not be asked.
#[derive(Debug, thiserror::Error)]
pub enum Why {
    #[error("{0}")]
    Said(String),
    /// The connection (a transport error says little by itself; its causes say more).
    #[error(transparent)]
    Transport(#[from] tonic::transport::Error),
    #[error(transparent)]
    Status(#[from] Status),
}

/// A call containerd failed: its code and message, and the cause underneath.
#[derive(Debug)]
pub struct Status(tonic::Status);

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}: {}", self.0.code(), self.0.message())
    }
}

impl std::error::Error for Status {
    // The status's own cause (its Display is not part of ours).
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        std::error::Error::source(&self.0)
    }
}

/// A component found in the content store, now in the node's blob cache.
#[derive(Debug)]
pub struct Found {
    /// The image the container was created from.
    pub image: String,
    /// The binary in the blob cache, under its own (verified) digest.
    pub component: VerifiedBlob,
}

/// containerd's API, for one namespace.
#[derive(Debug, Clone)]
pub struct ContentStore {
    address: String,
    /// The containerd namespace every call is made in (`containerd-namespace` header).
    namespace: tonic::metadata::MetadataValue<tonic::metadata::Ascii>,
    channel: Channel,
}

mod pb {
    //! The message types of containerd's `containers.v1`, `images.v1`, `content.v1` and
    //! `types` packages, with the field numbers of containerd's API 1.x protos.

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct GetContainerRequest {
        #[prost(string, tag = "1")]
        pub id: String,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct GetContainerResponse {
        #[prost(message, optional, tag = "1")]
        pub container: Option<Container>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Container {
        #[prost(string, tag = "1")]
        pub id: String,
        #[prost(string, tag = "3")]
        pub image: String,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct GetImageRequest {
        #[prost(string, tag = "1")]
        pub name: String,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct GetImageResponse {
        #[prost(message, optional, tag = "1")]
        pub image: Option<Image>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Image {
        #[prost(string, tag = "1")]
        pub name: String,
        #[prost(message, optional, tag = "3")]
        pub target: Option<Descriptor>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Descriptor {
        #[prost(string, tag = "1")]
        pub media_type: String,
        #[prost(string, tag = "2")]
        pub digest: String,
        #[prost(int64, tag = "3")]
        pub size: i64,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ReadContentRequest {
        #[prost(string, tag = "1")]
        pub digest: String,
        #[prost(int64, tag = "2")]
        pub offset: i64,
        /// 0: to the end.
        #[prost(int64, tag = "3")]
        pub size: i64,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ReadContentResponse {
        #[prost(int64, tag = "1")]
        pub offset: i64,
        #[prost(bytes = "vec", tag = "2")]
        pub data: Vec<u8>,
    }
}

const GET_CONTAINER: &str = "/containerd.services.containers.v1.Containers/Get";
const GET_IMAGE: &str = "/containerd.services.images.v1.Images/Get";
const READ_CONTENT: &str = "/containerd.services.content.v1.Content/Read";

impl ContentStore {
    /// A client for containerd's gRPC socket `address` (`/run/containerd/containerd.sock`,
    /// optionally `unix://`-prefixed). Nothing is dialled until the first call.
    pub fn new(address: &str, namespace: &str) -> Result<Self, Error> {
        let path = PathBuf::from(address.trim_start_matches("unix://"));
        let unavailable = |source: Why| Error::Unavailable {
            address: address.to_owned(),
            call: "connect",
            source,
        };
        let namespace: tonic::metadata::MetadataValue<tonic::metadata::Ascii> =
            namespace.parse().map_err(|_| {
                unavailable(Why::Said(format!(
                    "namespace {namespace:?} is not a header value"
                )))
            })?;
        // The URI is required by the API and ignored by the connector below.
        let channel = Endpoint::try_from("http://containerd.invalid")
            .map_err(|e| unavailable(e.into()))?
            .connect_timeout(Duration::from_secs(5))
            .timeout(CALL_TIMEOUT)
            .connect_with_connector_lazy(tower::service_fn(move |_| {
                let path = path.clone();
                async move {
                    tokio::net::UnixStream::connect(path)
                        .await
                        .map(TokioIo::new)
                }
            }));
        Ok(ContentStore {
            address: address.to_owned(),
            namespace,
            channel,
        })
    }

    fn request<M>(&self, message: M) -> tonic::Request<M> {
        let mut request = tonic::Request::new(message);
        request
            .metadata_mut()
            .insert("containerd-namespace", self.namespace.clone());
        request
    }

    fn unavailable(&self, call: &'static str, why: impl Into<Why>) -> Error {
        Error::Unavailable {
            address: self.address.clone(),
            call,
            source: why.into(),
        }
    }

    /// A client on the shared channel, once the connection is ready.
    async fn client(&self, call: &'static str) -> Result<tonic::client::Grpc<Channel>, Error> {
        let mut grpc = tonic::client::Grpc::new(self.channel.clone());
        grpc.ready().await.map_err(|e| self.unavailable(call, e))?;
        Ok(grpc)
    }

    /// One unary call; `Ok(None)` when containerd says the object does not exist.
    async fn unary<Req, Resp>(
        &self,
        call: &'static str,
        path: &'static str,
        message: Req,
    ) -> Result<Option<Resp>, Error>
    where
        Req: prost::Message + Send + Sync + 'static,
        Resp: prost::Message + Default + Send + Sync + 'static,
    {
        let mut grpc = self.client(call).await?;
        let path = http::uri::PathAndQuery::from_static(path);
        match grpc
            .unary(
                self.request(message),
                path,
                tonic_prost::ProstCodec::default(),
            )
            .await
        {
            Ok(response) => Ok(Some(response.into_inner())),
            Err(status) if status.code() == Code::NotFound => Ok(None),
            Err(status) => Err(self.unavailable(call, Status(status))),
        }
    }

    /// The image (name) container `id` was created from; `None` when the container is
    /// unknown or names no image.
    pub async fn container_image(&self, id: &str) -> Result<Option<String>, Error> {
        let response: Option<pb::GetContainerResponse> = self
            .unary(
                "Containers.Get",
                GET_CONTAINER,
                pb::GetContainerRequest { id: id.to_owned() },
            )
            .await?;
        Ok(response
            .and_then(|r| r.container)
            .map(|c| c.image)
            .filter(|image| !image.is_empty()))
    }

    /// What image `name` points at.
    pub async fn image_target(&self, name: &str) -> Result<Option<Descriptor>, Error> {
        let response: Option<pb::GetImageResponse> = self
            .unary(
                "Images.Get",
                GET_IMAGE,
                pb::GetImageRequest {
                    name: name.to_owned(),
                },
            )
            .await?;
        Ok(response
            .and_then(|r| r.image)
            .and_then(|i| i.target)
            .map(|t| Descriptor {
                media_type: t.media_type,
                digest: t.digest,
                size: t.size,
            }))
    }

    /// The bytes of blob `digest`, at most `limit` of them; `None` when the content store
    /// does not hold it. Not verified here: the caller checks them against the descriptor it
    /// read `digest` from (once).
    pub async fn read(
        &self,
        what: &str,
        digest: &str,
        limit: u64,
    ) -> Result<Option<Vec<u8>>, Error> {
        let call = "Content.Read";
        let mut grpc = self.client(call).await?;
        let request = self.request(pb::ReadContentRequest {
            digest: digest.to_owned(),
            offset: 0,
            size: 0,
        });
        let mut stream = match grpc
            .server_streaming(
                request,
                http::uri::PathAndQuery::from_static(READ_CONTENT),
                tonic_prost::ProstCodec::<pb::ReadContentRequest, pb::ReadContentResponse>::default(
                ),
            )
            .await
        {
            Ok(response) => response.into_inner(),
            Err(status) if status.code() == Code::NotFound => return Ok(None),
            Err(status) => return Err(self.unavailable(call, Status(status))),
        };
        let mut out = Vec::new();
        loop {
            match stream.message().await {
                Ok(Some(chunk)) => {
                    if (out.len() + chunk.data.len()) as u64 > limit {
                        return Err(Error::Artifact(wa8s_oci::Error::Artifact {
                            reference: what.to_owned(),
                            reason: format!(
                                "blob {digest} in containerd's content store is over the {limit}-byte limit"
                            ),
                        }));
                    }
                    out.extend_from_slice(&chunk.data);
                }
                Ok(None) => break,
                Err(status) if status.code() == Code::NotFound => return Ok(None),
                Err(status) => return Err(self.unavailable(call, Status(status))),
            }
        }
        Ok(Some(out))
    }

    /// The component of container `id`'s image, when containerd holds all of it: `None`
    /// when the container names no image or a blob is not in the store (the caller pulls).
    /// Layers go through `blobs` (a cached layer is not read again) and are verified once,
    /// there.
    pub async fn component(
        &self,
        id: &str,
        max_bytes: u64,
        blobs: &BlobCache,
    ) -> Result<Option<Found>, Error> {
        match tokio::time::timeout(COMPONENT_TIMEOUT, self.find_component(id, max_bytes, blobs))
            .await
        {
            Ok(Err(Error::Missing(_))) => Ok(None),
            Ok(found) => found,
            Err(_) => Err(self.unavailable(
                "reading the image",
                Why::Said(format!("no answer within {COMPONENT_TIMEOUT:?}")),
            )),
        }
    }

    async fn find_component(
        &self,
        id: &str,
        max_bytes: u64,
        blobs: &BlobCache,
    ) -> Result<Option<Found>, Error> {
        let Some(image_name) = self.container_image(id).await? else {
            return Ok(None);
        };
        let Some(mut target) = self.image_target(&image_name).await? else {
            return Ok(None);
        };
        let what = image_name.clone();
        let mut manifest = None;
        for _ in 0..2 {
            let raw = self
                .read(&what, &target.digest, image::MAX_METADATA_BYTES)
                .await?
                .ok_or_else(|| Error::Missing(format!("manifest {}", target.digest)))?;
            image::verify_digest(&what, &target.digest, &raw)?;
            match image::parse(&what, &raw)? {
                Document::Manifest(m) => {
                    manifest = Some(m);
                    break;
                }
                Document::Index { wasm_manifest } => {
                    target = Descriptor {
                        media_type: String::new(),
                        digest: wasm_manifest,
                        size: 0,
                    };
                }
            }
        }
        let Some(manifest) = manifest else {
            return Err(Error::Artifact(wa8s_oci::Error::Artifact {
                reference: what,
                reason: "an image index points at another index".into(),
            }));
        };
        let fetch = |d: Descriptor, limit: u64| {
            let what = &what;
            async move {
                d.checked_size(what, limit)?;
                if let Some(bytes) = blobs.cached(&d.digest).map_err(Error::Cache)? {
                    return Ok(bytes);
                }
                let bytes = self
                    .read(what, &d.digest, limit)
                    .await?
                    .ok_or_else(|| Error::Missing(format!("blob {}", d.digest)))?;
                d.verify_size(what, &bytes)?;
                // The cache checks the digest as it stores them: the one pass over the bytes.
                blobs
                    .get_or_fetch(&d.digest, || async { Ok(bytes) })
                    .await
                    .map_err(|e| match e {
                        e @ wa8s_oci::Error::Digest { .. } => Error::Artifact(e),
                        e => Error::Cache(e),
                    })
            }
        };
        let assembled = image::assemble(&what, &manifest, max_bytes, fetch).await?;
        let cached = match &assembled.layer_digest {
            Some(d) => blobs.verified(d).map_err(Error::Cache)?,
            None => None,
        };
        let component = match cached {
            Some(blob) => blob,
            // Out of a tar layer (or evicted since): the binary itself goes into the cache
            // under its digest.
            None => blobs.insert(assembled.bytes).await.map_err(Error::Cache)?,
        };
        Ok(Some(Found {
            image: image_name,
            component,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::pb;
    use prost::Message as _;

    #[test]
    fn messages_skip_the_fields_they_do_not_carry() {
        // A Container as containerd encodes it, with labels (2) and a runtime (4) before and
        // after the image (3): the decoder keeps the id and the image and skips the rest.
        let mut raw = Vec::new();
        prost::encoding::string::encode(1, &"c1".to_owned(), &mut raw);
        prost::encoding::string::encode(2, &"label-bytes".to_owned(), &mut raw);
        prost::encoding::string::encode(3, &"docker.io/x/y:v1".to_owned(), &mut raw);
        prost::encoding::string::encode(4, &"runtime".to_owned(), &mut raw);
        let c = pb::Container::decode(raw.as_slice()).ok();
        assert_eq!(
            c,
            Some(pb::Container {
                id: "c1".into(),
                image: "docker.io/x/y:v1".into()
            })
        );
    }
}
