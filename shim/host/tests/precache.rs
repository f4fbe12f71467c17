//! The precompile cache loads only what it wrote and recorded.

use anyhow::Result;
use sha2::Digest as _;
use wa8s_host::{Capture, Grants, PrecompileCache, Program, Source, Stdio};
use wa8s_test_components as guests;

mod common;
use common::engine;

fn digest(bytes: &[u8]) -> String {
    format!("sha256:{:x}", sha2::Sha256::digest(bytes))
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

    let (program, source) = cache.load(&engine, &hello, guests::HELLO_COMPONENT)?;
    assert_eq!(source, Source::Compiled, "the planted file was not used");
    assert!(says_hello(&program).await?);
    assert!(
        cache.foreign_files().is_empty(),
        "{:?}",
        cache.foreign_files()
    );

    // Next time the cache's own recorded artifact is used.
    let (program, source) = cache.load(&engine, &hello, guests::HELLO_COMPONENT)?;
    assert_eq!(source, Source::Cache);
    assert!(says_hello(&program).await?);

    // Swapping the artifact under a valid record: ignored, recompiled.
    std::fs::write(&planted, engine.precompile(guests::HTTP_COMPONENT)?)?;
    assert_eq!(cache.foreign_files(), vec![planted.clone()]);
    let (program, source) = cache.load(&engine, &hello, guests::HELLO_COMPONENT)?;
    assert_eq!(source, Source::Compiled);
    assert!(says_hello(&program).await?);
    Ok(())
}

#[test]
fn bytes_that_do_not_match_the_digest_are_refused() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let cache = PrecompileCache::new(dir.path())?;
    let err = cache
        .load(&engine(), &digest(b"other"), guests::HELLO_COMPONENT)
        .expect_err("refused");
    assert!(err.to_string().contains("digest mismatch"), "{err}");
    let err = cache
        .load(&engine(), "sha256:nothex", guests::HELLO_COMPONENT)
        .expect_err("refused");
    assert!(err.to_string().contains("is not a sha256 digest"), "{err}");
    Ok(())
}

#[tokio::test]
async fn ensure_compiles_once_and_what_it_wrote_is_what_load_uses() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let cache = PrecompileCache::new(dir.path())?;
    let engine = engine();
    let hello = digest(guests::HELLO_COMPONENT);
    assert_eq!(
        cache.ensure(&engine, &hello, guests::HELLO_COMPONENT)?,
        Source::Compiled
    );
    assert_eq!(
        cache.ensure(&engine, &hello, guests::HELLO_COMPONENT)?,
        Source::Cache
    );
    let (program, source) = cache.load(&engine, &hello, guests::HELLO_COMPONENT)?;
    assert_eq!(source, Source::Cache);
    assert!(says_hello(&program).await?);
    // The digest is checked before anything is written or trusted.
    let wrong = digest(guests::HTTP_COMPONENT);
    let err = cache
        .ensure(&engine, &wrong, guests::HELLO_COMPONENT)
        .expect_err("a digest mismatch must be refused");
    assert!(err.to_string().contains("digest mismatch"), "{err}");
    Ok(())
}
