//! Pushing and pulling against a real distribution registry on loopback.

use std::sync::Arc;

use anyhow::{Context, Result};
use oci_client::client::{ClientConfig, ClientProtocol, Config, ImageLayer};
use oci_client::manifest::OciImageManifest;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use wa8s_e2e::registry::{Auth, Options, Registry as TestRegistry, Users};
use wa8s_oci::artifact::{self, Kind};
use wa8s_oci::{
    BlobCache, Credentials, DockerConfigSource, Error, Registry, RegistryConfig, RegistryOptions,
};
use wa8s_test_components as guests;

fn anonymous() -> Registry {
    Registry::new(RegistryOptions::default())
}

/// A raw client for shapes wa8s never pushes (old formats, images, broken manifests).
async fn push_raw(
    reg: &TestRegistry,
    repo_tag: &str,
    layers: Vec<ImageLayer>,
    config: Config,
) -> Result<()> {
    let client = Client::new(ClientConfig {
        protocol: ClientProtocol::Http,
        ..ClientConfig::default()
    });
    let reference: Reference = format!("{}/{repo_tag}", reg.addr()).parse()?;
    let mut manifest = OciImageManifest::build(&layers, &config, None);
    manifest.media_type = Some(artifact::OCI_MANIFEST.into());
    client
        .push(
            &reference,
            &layers,
            config,
            &RegistryAuth::Anonymous,
            Some(manifest),
        )
        .await
        .context("raw push")?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pushed_component_pulls_back_byte_identical_by_tag_and_by_digest() -> Result<()> {
    let reg = TestRegistry::start()?;
    let wa8s = anonymous();
    let reference = format!("{}/myorg/hello:v1", reg.addr());
    let pushed = wa8s.push(guests::HTTP_COMPONENT, &reference).await?;
    assert!(pushed.digest.starts_with("sha256:"));
    assert_eq!(
        pushed.layer_digest,
        wa8s_oci::sha256_digest(guests::HTTP_COMPONENT)
    );

    let by_tag = wa8s.pull(&reference, None).await?;
    assert_eq!(by_tag.bytes, guests::HTTP_COMPONENT);
    assert_eq!(by_tag.resolved.digest, pushed.digest);
    assert_eq!(by_tag.carrier, artifact::WASM_LAYER);
    assert_eq!(by_tag.config_media_type, artifact::WASM_CONFIG_V0);
    assert_eq!(by_tag.info.kind, Kind::Component);
    assert!(
        by_tag
            .info
            .exports
            .iter()
            .any(|e| e.starts_with("wasi:http/incoming-handler")),
        "{:?}",
        by_tag.info.exports
    );

    let by_digest = format!("{}/myorg/hello@{}", reg.addr(), pushed.digest);
    assert_eq!(
        wa8s.pull(&by_digest, None).await?.bytes,
        guests::HTTP_COMPONENT
    );
    assert_eq!(wa8s.resolve(&reference).await?.digest, pushed.digest);

    // A core module is pushed as wasip1 and pulls back too.
    let module = format!("{}/myorg/hello-p1:v1", reg.addr());
    wa8s.push(guests::HELLO_CORE, &module).await?;
    let pulled = wa8s.pull(&module, None).await?;
    assert_eq!(pulled.bytes, guests::HELLO_CORE);
    assert_eq!(pulled.info.kind, Kind::Module);

    let missing = wa8s
        .pull(&format!("{}/myorg/hello:v2", reg.addr()), None)
        .await
        .expect_err("no such tag");
    assert!(matches!(missing, Error::NotFound { .. }), "{missing}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_blob_is_refused_and_nothing_is_cached() -> Result<()> {
    let reg = TestRegistry::start()?;
    let wa8s = anonymous();
    let reference = format!("{}/myorg/hello:v1", reg.addr());
    let pushed = wa8s.push(guests::HTTP_COMPONENT, &reference).await?;
    let mut tampered = guests::HTTP_COMPONENT.to_vec();
    let last = tampered.len() - 1;
    tampered[last] ^= 0xff;
    std::fs::write(reg.blob_path(&pushed.layer_digest), &tampered)?;

    let dir = tempfile::tempdir()?;
    let cache = BlobCache::new(dir.path(), 1 << 30)?;
    let err = wa8s
        .pull(&reference, Some(&cache))
        .await
        .expect_err("tampered content refused");
    assert!(matches!(err, Error::Digest { .. }), "{err}");
    assert!(err.to_string().contains("digest mismatch"), "{err}");
    assert_eq!(cache.size(), 0, "nothing cached");
    // Uncached, streaming into a writer: the same refusal, after the last byte.
    let mut out = Vec::new();
    let err = wa8s
        .pull_into(&reference, &mut out)
        .await
        .expect_err("tampered content refused");
    assert!(matches!(err, Error::Digest { .. }), "{err}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_component_streams_into_a_writer_byte_for_byte() -> Result<()> {
    let reg = TestRegistry::start()?;
    let wa8s = anonymous();
    // Many network reads; the inspector keeps the interface sections and skips the padding.
    let big = guests::padded(guests::HTTP_COMPONENT, 12 << 20);
    let reference = format!("{}/myorg/big:v1", reg.addr());
    let pushed = wa8s.push(&big, &reference).await?;
    let mut out = Vec::new();
    let written = wa8s.pull_into(&reference, &mut out).await?;
    assert!(out == big, "the streamed bytes differ from the pushed ones");
    assert_eq!(written.resolved.digest, pushed.digest);
    assert_eq!(written.info.size, big.len() as u64);
    assert!(
        written
            .info
            .exports
            .iter()
            .any(|e| e.starts_with("wasi:http/incoming-handler@")),
        "{:?}",
        written.info
    );
    assert_eq!(written.info, {
        let mut small = artifact::inspect(guests::HTTP_COMPONENT)?;
        small.digest = wa8s_oci::sha256_digest(&big);
        small.size = big.len() as u64;
        small
    });
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_auth_works_from_a_docker_config_and_wrong_credentials_are_named() -> Result<()> {
    let reg = TestRegistry::start_with(Users(vec![("alice".into(), "s3cret".into())]))?;
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("config.json");
    std::fs::write(
        &config,
        format!(
            r#"{{"auths": {{"{}": {{"username": "alice", "password": "s3cret"}}}}}}"#,
            reg.addr()
        ),
    )?;
    let with_config = Registry::new(RegistryOptions {
        credentials: Credentials {
            explicit: None,
            pull_secrets: Vec::new(),
            docker_config: DockerConfigSource::File(config),
        },
        ..RegistryOptions::default()
    });
    let reference = format!("{}/private/hello:v1", reg.addr());
    with_config.push(guests::HTTP_COMPONENT, &reference).await?;
    assert_eq!(
        with_config.pull(&reference, None).await?.bytes,
        guests::HTTP_COMPONENT
    );

    let wrong = Registry::new(RegistryOptions {
        credentials: Credentials {
            explicit: Some(("alice".into(), "wrong".into())),
            pull_secrets: Vec::new(),
            docker_config: DockerConfigSource::Default,
        },
        ..RegistryOptions::default()
    });
    let err = wrong.pull(&reference, None).await.expect_err("refused");
    assert!(matches!(err, Error::Auth { .. }), "{err}");
    assert!(err.to_string().contains("authentication failed"), "{err}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_registry_is_reached_with_its_ca_and_refused_without_it() -> Result<()> {
    let reg = TestRegistry::start_with_options(Options {
        auth: Auth::Anonymous,
        tls: true,
    })?;
    let ca = reg
        .ca_pem()
        .context("the registry has a CA")?
        .as_bytes()
        .to_vec();
    let trusting = Registry::new(RegistryOptions {
        config: RegistryConfig {
            ca_certificates: [(reg.addr().to_owned(), ca.clone())].into(),
            ..RegistryConfig::default()
        },
        ..RegistryOptions::default()
    });
    let reference = format!("{}/secure/hello:v1", reg.addr());
    let pushed = trusting.push(guests::HTTP_COMPONENT, &reference).await?;
    let pulled = trusting.pull(&reference, None).await?;
    assert_eq!(pulled.bytes, guests::HTTP_COMPONENT);
    assert_eq!(pulled.resolved.digest, pushed.digest);
    assert!(
        reg.log().contains("tls"),
        "the registry did not serve TLS:\n{}",
        reg.log()
    );

    // The same CA given for another registry does not make this one trusted: it is spoken
    // to over TLS only when named (else loopback means plain HTTP, which the TLS port refuses),
    // and a certificate from an unknown CA fails verification.
    let elsewhere = Registry::new(RegistryOptions {
        config: RegistryConfig {
            ca_certificates: [("registry.example.com".to_owned(), ca)].into(),
            ..RegistryConfig::default()
        },
        ..RegistryOptions::default()
    });
    let err = elsewhere.pull(&reference, None).await.expect_err("refused");
    assert!(
        matches!(err, Error::Registry { .. } | Error::Transport { .. }),
        "{err}"
    );
    let unknown_ca = wa8s_e2e::registry::Registry::start_with_options(Options {
        auth: Auth::Anonymous,
        tls: true,
    })?;
    let wrong_ca = Registry::new(RegistryOptions {
        config: RegistryConfig {
            ca_certificates: [(
                unknown_ca.addr().to_owned(),
                reg.ca_pem().unwrap_or_default().as_bytes().to_vec(),
            )]
            .into(),
            ..RegistryConfig::default()
        },
        ..RegistryOptions::default()
    });
    let err = wrong_ca
        .push(
            guests::HTTP_COMPONENT,
            &format!("{}/x/y:1", unknown_ca.addr()),
        )
        .await
        .expect_err("an unknown CA is not trusted");
    let message = wa8s_api::report::report(&err);
    assert!(
        message.contains("certificate") || message.contains("UnknownIssuer"),
        "the error should say the certificate is not trusted: {message}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bearer_token_flow_gives_anonymous_pulls_and_authenticated_pushes() -> Result<()> {
    let reg = TestRegistry::start_with_options(Options {
        auth: Auth::Token(Users(vec![("bob".into(), "hunter2".into())])),
        tls: false,
    })?;
    let reference = format!("{}/public/hello:v1", reg.addr());
    let bob = Registry::new(RegistryOptions {
        credentials: Credentials {
            explicit: Some(("bob".into(), "hunter2".into())),
            pull_secrets: Vec::new(),
            docker_config: DockerConfigSource::Default,
        },
        ..RegistryOptions::default()
    });
    let pushed = bob.push(guests::HTTP_COMPONENT, &reference).await?;
    let pushes = reg.token_requests();
    assert!(
        pushes
            .iter()
            .any(|r| r.user.as_deref() == Some("bob") && r.issued),
        "the push did not get a token for bob: {pushes:?}"
    );

    // Like a public GHCR package: no credentials, an anonymous pull token.
    let pulled = anonymous().pull(&reference, None).await?;
    assert_eq!(pulled.bytes, guests::HTTP_COMPONENT);
    assert_eq!(pulled.resolved.digest, pushed.digest);
    let requests = reg.token_requests();
    assert!(
        requests[pushes.len()..]
            .iter()
            .any(|r| r.user.is_none() && r.issued && r.scopes.iter().any(|s| s.ends_with(":pull"))),
        "the pull did not use an anonymous token: {requests:?}"
    );

    // An anonymous token carries pull only: pushing without credentials is refused.
    let err = anonymous()
        .push(
            guests::HTTP_COMPONENT,
            &format!("{}/public/other:v1", reg.addr()),
        )
        .await
        .expect_err("anonymous push refused");
    assert!(matches!(err, Error::Auth { .. }), "{err}");

    // Wrong credentials are refused by the token server, and the error says so.
    let wrong = Registry::new(RegistryOptions {
        credentials: Credentials {
            explicit: Some(("bob".into(), "wrong".into())),
            pull_secrets: Vec::new(),
            docker_config: DockerConfigSource::Default,
        },
        ..RegistryOptions::default()
    });
    let err = wrong.pull(&reference, None).await.expect_err("refused");
    assert!(matches!(err, Error::Auth { .. }), "{err}");
    Ok(())
}

fn tar_gz(files: &[(&str, &[u8])]) -> Result<Vec<u8>> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut tar = tar::Builder::new(gz);
    for (path, bytes) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        tar.append_data(&mut header, path, *bytes)?;
    }
    Ok(tar.into_inner()?.finish()?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn layered_images_and_the_older_artifact_format_yield_the_component() -> Result<()> {
    let reg = TestRegistry::start()?;
    let wa8s = anonymous();

    // A "layered" image: the .wasm in a tar.gz layer, named by the entrypoint.
    let layer = tar_gz(&[
        ("README", b"not the component"),
        ("app/decoy.wasm", guests::HELLO_COMPONENT),
        ("app/main.wasm", guests::HTTP_COMPONENT),
    ])?;
    let image_config = br#"{"architecture":"wasm","os":"wasip2","config":{"Entrypoint":["/app/main.wasm"]},"rootfs":{"type":"layers","diff_ids":[]}}"#;
    push_raw(
        &reg,
        "myorg/layered:v1",
        vec![ImageLayer::new(
            layer,
            "application/vnd.oci.image.layer.v1.tar+gzip".into(),
            None,
        )],
        Config::new(
            image_config.to_vec(),
            "application/vnd.oci.image.config.v1+json".into(),
            None,
        ),
    )
    .await?;
    let pulled = wa8s
        .pull(&format!("{}/myorg/layered:v1", reg.addr()), None)
        .await?;
    assert_eq!(pulled.bytes, guests::HTTP_COMPONENT);
    assert_eq!(pulled.carrier, "tar");
    // Through a cache: the binary out of the tar layer is stored under its own digest, and
    // the handle names it.
    let dir = tempfile::tempdir()?;
    let cache = BlobCache::new(dir.path(), 1 << 30)?;
    let (_, blob) = wa8s
        .pull_cached(&format!("{}/myorg/layered:v1", reg.addr()), &cache)
        .await?;
    assert_eq!(
        blob.digest(),
        wa8s_oci::sha256_digest(guests::HTTP_COMPONENT)
    );
    assert_eq!(blob.read()?, guests::HTTP_COMPONENT);
    assert_eq!(cache.verified(blob.digest())?, Some(blob));

    // The older vnd.wasm.config.v1 / content.layer.v1 artifact.
    push_raw(
        &reg,
        "myorg/old:v1",
        vec![ImageLayer::new(
            guests::HTTP_COMPONENT.to_vec(),
            artifact::WASM_LAYER_V1.into(),
            None,
        )],
        Config::new(b"{}".to_vec(), artifact::WASM_CONFIG_V1.into(), None),
    )
    .await?;
    let pulled = wa8s
        .pull(&format!("{}/myorg/old:v1", reg.addr()), None)
        .await?;
    assert_eq!(pulled.bytes, guests::HTTP_COMPONENT);
    assert_eq!(pulled.carrier, artifact::WASM_LAYER_V1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_artifacts_are_clear_errors() -> Result<()> {
    let reg = TestRegistry::start()?;
    let wa8s = anonymous();
    let wasm_config = || Config::new(b"{}".to_vec(), artifact::WASM_CONFIG_V0.into(), None);
    let layer = |bytes: &[u8], media: &str| ImageLayer::new(bytes.to_vec(), media.into(), None);
    let cases: Vec<(&str, Vec<ImageLayer>, Config, &str)> = vec![
        ("zero:v1", vec![], wasm_config(), "no layers"),
        (
            "two:v1",
            vec![
                layer(guests::HTTP_COMPONENT, artifact::WASM_LAYER),
                layer(guests::HELLO_COMPONENT, artifact::WASM_LAYER),
            ],
            wasm_config(),
            "2 layers",
        ),
        (
            "mediatype:v1",
            vec![layer(guests::HTTP_COMPONENT, "text/plain")],
            wasm_config(),
            "\"text/plain\"",
        ),
        (
            "notwasm:v1",
            vec![layer(b"#!/bin/sh\necho hi\n", artifact::WASM_LAYER)],
            wasm_config(),
            "the layer is not WebAssembly",
        ),
    ];
    for (repo, layers, config, says) in cases {
        push_raw(&reg, &format!("bad/{repo}"), layers, config).await?;
        let err = wa8s
            .pull(&format!("{}/bad/{repo}", reg.addr()), None)
            .await
            .expect_err(repo);
        assert!(matches!(err, Error::Artifact { .. }), "{repo}: {err}");
        assert!(err.to_string().contains(says), "{repo}: {err}");
    }

    // A size limit smaller than the component: refused from the declared size, unfetched.
    wa8s.push(
        guests::HTTP_COMPONENT,
        &format!("{}/ok/hello:v1", reg.addr()),
    )
    .await?;
    let small = Registry::new(RegistryOptions {
        config: RegistryConfig {
            max_component_bytes: 100,
            ..RegistryConfig::default()
        },
        ..RegistryOptions::default()
    });
    let err = small
        .pull(&format!("{}/ok/hello:v1", reg.addr()), None)
        .await
        .expect_err("too big");
    assert!(err.to_string().contains("over the 100-byte limit"), "{err}");
    assert_eq!(
        reg.blob_fetches(&wa8s_oci::sha256_digest(guests::HTTP_COMPONENT)),
        0
    );

    for bad in ["", "ghcr.io/Upper/Case:v1", "ghcr.io/x@sha256:123"] {
        let err = wa8s.pull(bad, None).await.expect_err(bad);
        assert!(matches!(err, Error::Reference { .. }), "{bad}: {err}");
    }
    let err = wa8s
        .push(b"definitely not wasm", &format!("{}/x/y:z", reg.addr()))
        .await
        .expect_err("not wasm");
    assert!(matches!(err, Error::NotWasm(_)), "{err}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_pulls_of_one_digest_fetch_it_once() -> Result<()> {
    let reg = TestRegistry::start()?;
    let wa8s = Arc::new(anonymous());
    let reference = format!("{}/myorg/hello:v1", reg.addr());
    let pushed = wa8s.push(guests::HTTP_COMPONENT, &reference).await?;
    let dir = tempfile::tempdir()?;
    let cache = Arc::new(BlobCache::new(dir.path(), 1 << 30)?);
    let mut pulls = Vec::new();
    for _ in 0..8 {
        let (wa8s, cache, reference) = (wa8s.clone(), cache.clone(), reference.clone());
        pulls.push(tokio::spawn(async move {
            wa8s.pull(&reference, Some(&cache)).await.map(|p| p.bytes)
        }));
    }
    for p in pulls {
        assert_eq!(p.await??, guests::HTTP_COMPONENT);
    }
    assert_eq!(reg.blob_fetches(&pushed.layer_digest), 1, "{}", reg.log());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mirror_serves_pulls_for_the_registry_it_stands_in_for() -> Result<()> {
    let reg = TestRegistry::start()?;
    anonymous()
        .push(
            guests::HTTP_COMPONENT,
            &format!("{}/myorg/image-processor:v1.2.3", reg.addr()),
        )
        .await?;
    let mirrored = Registry::new(RegistryOptions {
        config: RegistryConfig {
            mirrors: [("ghcr.io".to_owned(), reg.addr().to_owned())].into(),
            ..RegistryConfig::default()
        },
        ..RegistryOptions::default()
    });
    let pulled = mirrored
        .pull("ghcr.io/myorg/image-processor:v1.2.3", None)
        .await?;
    assert_eq!(pulled.bytes, guests::HTTP_COMPONENT);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_index_resolves_to_its_wasm_platform_entry() -> Result<()> {
    let reg = TestRegistry::start()?;
    let wa8s = anonymous();
    let pushed = wa8s
        .push(
            guests::HTTP_COMPONENT,
            &format!("{}/myorg/multi:wasm", reg.addr()),
        )
        .await?;
    let client = Client::new(ClientConfig {
        protocol: ClientProtocol::Http,
        ..ClientConfig::default()
    });
    let manifest = client
        .pull_manifest_raw(
            &format!("{}/myorg/multi@{}", reg.addr(), pushed.digest).parse()?,
            &RegistryAuth::Anonymous,
            &[artifact::OCI_MANIFEST],
        )
        .await?
        .0;
    let entry = |digest: &str, os: &str, arch: &str| {
        serde_json::json!({
            "mediaType": artifact::OCI_MANIFEST,
            "digest": digest,
            "size": manifest.len(),
            "platform": {"os": os, "architecture": arch},
        })
    };
    // A linux entry first (pointing anywhere valid): the wasm one must still be chosen.
    let index = |entries: Vec<serde_json::Value>| {
        serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": artifact::OCI_INDEX,
            "manifests": entries,
        }))
    };
    let content_type = http::HeaderValue::from_static(artifact::OCI_INDEX);
    let both = index(vec![
        entry(&pushed.digest, "linux", "amd64"),
        entry(&pushed.digest, "wasip2", "wasm"),
    ])?;
    client
        .push_manifest_raw(
            &format!("{}/myorg/multi:v1", reg.addr()).parse()?,
            both,
            content_type.clone(),
        )
        .await?;
    let pulled = wa8s
        .pull(&format!("{}/myorg/multi:v1", reg.addr()), None)
        .await?;
    assert_eq!(pulled.bytes, guests::HTTP_COMPONENT);
    assert_eq!(pulled.resolved.digest, pushed.digest);

    let linux_only = index(vec![entry(&pushed.digest, "linux", "amd64")])?;
    client
        .push_manifest_raw(
            &format!("{}/myorg/multi:linux", reg.addr()).parse()?,
            linux_only,
            content_type,
        )
        .await?;
    let err = wa8s
        .pull(&format!("{}/myorg/multi:linux", reg.addr()), None)
        .await
        .expect_err("no wasm platform");
    assert!(err.to_string().contains("has no wasm platform"), "{err}");
    assert!(err.to_string().contains("linux/amd64"), "{err}");
    Ok(())
}
