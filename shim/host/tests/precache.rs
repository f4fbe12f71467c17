//! The precompile cache loads only what it wrote and recorded, for components the blob cache
//! verified.

use anyhow::Result;
use sha2::Digest as _;
use wa8s_host::{Capture, Grants, PrecompileCache, Program, Source, Stdio};
use wa8s_oci::{BlobCache, VerifiedBlob};
use wa8s_test_components as guests;

mod common;
use common::engine;

fn digest(bytes: &[u8]) -> String {
    format!("sha256:{:x}", sha2::Sha256::digest(bytes))
}

/// `bytes` stored in a blob cache in `dir`, and the handle on them.
async fn component(dir: &std::path::Path, bytes: &[u8]) -> Result<VerifiedBlob> {
    let blobs = BlobCache::new(dir.join("components"), 1 << 30)?;
    Ok(blobs.insert(bytes.to_vec()).await?)
}

async fn says_hello(program: &Program) -> Result<bool> {
    let out = Capture::new(1 << 16);
    let grants = Grants {
        args: vec!["hello".into()],
        stdout: Stdio::Capture(out.clone()),
        ..Grants::default()
    };
    program.run(&grants).await?;
    Ok(out.contents() == b"hello from wasm\n")
}

#[tokio::test]
async fn a_planted_precompiled_file_is_never_loaded() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let cache = PrecompileCache::new(dir.path())?;
    let engine = engine();
    let blobs = tempfile::tempdir()?;
    let component = component(blobs.path(), guests::HELLO_COMPONENT).await?;
    let hello = digest(guests::HELLO_COMPONENT);
    let name = format!(
        "{}.{}",
        hello.trim_start_matches("sha256:"),
        engine.compatibility_key()
    );
    // A genuine wasmtime artifact, but of another program (the HTTP component), planted
    // where the hello component's would go, with no record.
    let planted = dir.path().join(format!("{name}.cwasm"));
    std::fs::write(&planted, engine.precompile(guests::HTTP_COMPONENT)?)?;
    assert_eq!(cache.foreign_files(), vec![planted.clone()]);

    let (program, source) = cache.load(&engine, &component)?;
    assert_eq!(source, Source::Compiled, "the planted file was not used");
    assert!(says_hello(&program).await?);
    assert!(
        cache.foreign_files().is_empty(),
        "{:?}",
        cache.foreign_files()
    );

    // Next time the cache's own recorded artifact is used.
    let (program, source) = cache.load(&engine, &component)?;
    assert_eq!(source, Source::Cache);
    assert!(says_hello(&program).await?);

    // Swapping the artifact under a valid record: ignored, recompiled.
    std::fs::write(&planted, engine.precompile(guests::HTTP_COMPONENT)?)?;
    assert_eq!(cache.foreign_files(), vec![planted.clone()]);
    let (program, source) = cache.load(&engine, &component)?;
    assert_eq!(source, Source::Compiled);
    assert!(says_hello(&program).await?);
    Ok(())
}

#[tokio::test]
async fn there_is_no_handle_on_bytes_that_do_not_match_their_digest() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let blobs = BlobCache::new(dir.path(), 1 << 30)?;
    let claimed = digest(guests::HTTP_COMPONENT);
    let err = blobs
        .get_or_fetch(&claimed, || async { Ok(guests::HELLO_COMPONENT.to_vec()) })
        .await
        .expect_err("refused");
    assert!(matches!(err, wa8s_oci::Error::Digest { .. }), "{err}");
    assert_eq!(blobs.verified(&claimed)?, None);
    assert!(blobs.verified("sha256:nothex").is_err());
    Ok(())
}

#[tokio::test]
async fn ensure_compiles_once_and_what_it_wrote_is_what_load_uses() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let cache = PrecompileCache::new(dir.path())?;
    let engine = engine();
    let blobs = tempfile::tempdir()?;
    let hello = component(blobs.path(), guests::HELLO_COMPONENT).await?;
    assert_eq!(cache.ensure(&engine, &hello)?, Source::Compiled);
    assert_eq!(cache.ensure(&engine, &hello)?, Source::Cache);
    assert!(cache.load_recorded(&engine, &hello)?.is_some());
    let (program, source) = cache.load(&engine, &hello)?;
    assert_eq!(source, Source::Cache);
    assert!(says_hello(&program).await?);
    // Another component has no recorded artifact, whatever this one has.
    let http = component(blobs.path(), guests::HTTP_COMPONENT).await?;
    assert!(cache.load_recorded(&engine, &http)?.is_none());
    Ok(())
}

#[tokio::test]
async fn a_record_for_another_component_is_not_used() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let cache = PrecompileCache::new(dir.path())?;
    let engine = engine();
    let blobs = tempfile::tempdir()?;
    let hello = component(blobs.path(), guests::HELLO_COMPONENT).await?;
    let http = component(blobs.path(), guests::HTTP_COMPONENT).await?;
    cache.ensure(&engine, &http)?;
    // The HTTP component's artifact and record, renamed to where the hello component's go:
    // the artifact matches its record, but the record names another component.
    let name = |d: &str| format!("{}.{}", &d[7..], engine.compatibility_key());
    for ext in ["cwasm", "record"] {
        std::fs::rename(
            dir.path().join(format!("{}.{ext}", name(http.digest()))),
            dir.path().join(format!("{}.{ext}", name(hello.digest()))),
        )?;
    }
    assert!(cache.load_recorded(&engine, &hello)?.is_none());
    let (program, source) = cache.load(&engine, &hello)?;
    assert_eq!(source, Source::Compiled);
    assert!(says_hello(&program).await?);
    Ok(())
}
