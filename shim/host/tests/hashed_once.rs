//! A component is hashed once per node: when it arrives in the blob cache. The precompile
//! cache is keyed by the verified digest, and a start that finds the recorded artifact never
//! reads the component. (Its own test binary: the hash counter is process-wide.)

use anyhow::{Context, Result};
use wa8s_host::{PrecompileCache, Source};
use wa8s_oci::BlobCache;
use wa8s_test_components as guests;

mod common;
use common::engine;

#[tokio::test]
async fn a_cold_start_hashes_the_component_once_and_warm_starts_never() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let engine = engine();
    let digest = wa8s_oci::sha256_digest(guests::HELLO_COMPONENT);
    let blobs = BlobCache::new(dir.path().join("components"), 1 << 30)?;
    let precompiled = PrecompileCache::new(dir.path().join("precompiled"))?;
    let before = wa8s_oci::hashes();

    // The steps of the shim's start: the component arrives in the blob cache (from
    // containerd's content store); the guest looks for the recorded artifact; the precompile
    // process compiles it; a new guest loads it. Each process opens the caches anew.
    let start = |precompiled: &PrecompileCache| -> Result<Option<wa8s_host::Program>> {
        let blob = BlobCache::new(dir.path().join("components"), 1 << 30)?
            .verified(&digest)?
            .context("the component is not in the blob cache")?;
        Ok(precompiled.load_recorded(&engine, &blob)?)
    };
    let fetched = blobs
        .get_or_fetch(&digest, || async { Ok(guests::HELLO_COMPONENT.to_vec()) })
        .await?;
    assert_eq!(fetched, guests::HELLO_COMPONENT);
    assert!(start(&precompiled)?.is_none(), "nothing is compiled yet");
    let blob = blobs.verified(&digest)?.context("cached")?;
    assert_eq!(precompiled.ensure(&engine, &blob)?, Source::Compiled);
    assert!(start(&precompiled)?.is_some());
    assert_eq!(wa8s_oci::hashes() - before, 1, "a cold start hashes once");

    // Warm starts: the component is found in the blob cache and the program in the
    // precompile cache, and nothing hashes it.
    for _ in 0..3 {
        // Fetching again would fail: these bytes do not match the digest.
        let cached = blobs
            .get_or_fetch(&digest, || async { Ok(Vec::new()) })
            .await?;
        assert_eq!(cached, guests::HELLO_COMPONENT);
        assert!(start(&precompiled)?.is_some());
    }
    // `wa8s run`'s path: the cache hands over the handle and the program loads from it.
    let (_, source) = precompiled.load(&engine, &blob)?;
    assert_eq!(source, Source::Cache);
    assert_eq!(wa8s_oci::hashes() - before, 1, "warm starts hash nothing");
    Ok(())
}
