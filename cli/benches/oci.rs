//! Registry and cache benchmarks, on this machine, against a real registry on loopback.
//!
//!     cargo bench -p wa8s-cli --bench oci [-- ROUNDS]
//!
//! 1. `wa8s pull` of a 10 MiB component vs `curl` of the same blob from the same registry,
//!    both as fresh processes writing a file, alternated so they share the machine's noise.
//! 2. The cache-hit path to ready-to-instantiate: read the component from the node cache
//!    (digest verified) and load its recorded precompiled artifact, for the hello component.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use wa8s_host::{EngineConfig, HostEngine, PrecompileCache, Source};
use wa8s_oci::{BlobCache, Registry, RegistryOptions, sha256_digest};
use wa8s_test_components as guests;

fn timed(mut cmd: Command) -> Result<Duration> {
    let start = Instant::now();
    let out = cmd.output().context("spawning")?;
    let took = start.elapsed();
    ensure!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(took)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn main() -> Result<()> {
    let rounds: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(30);
    let reg = wa8s_e2e::Registry::start()?;
    let runtime = tokio::runtime::Runtime::new()?;
    let dir = tempfile::tempdir()?;

    // 1. Pull vs curl.
    let big = guests::padded(guests::HTTP_COMPONENT, 10 << 20);
    let reference = format!("{}/bench/big:v1", reg.addr());
    let registry = Registry::new(RegistryOptions::default());
    runtime.block_on(registry.push(&big, &reference))?;
    let blob_url = format!(
        "http://{}/v2/bench/big/blobs/{}",
        reg.addr(),
        sha256_digest(&big)
    );
    let (out_a, out_b) = (dir.path().join("a.wasm"), dir.path().join("b.wasm"));
    let pull = || {
        let mut c = Command::new(env!("CARGO_BIN_EXE_wa8s"));
        c.args(["pull", &reference, "-o"]).arg(&out_a);
        c
    };
    let curl = || {
        let mut c = Command::new("curl");
        c.args(["-sSf", "-o"]).arg(&out_b).arg(&blob_url);
        c
    };
    // Like for like: wa8s verifies the digest of what it downloads; plain curl does not.
    let curl_verified = || {
        let mut c = Command::new("sh");
        c.arg("-c").arg(format!(
            "curl -sSf -o {0} {blob_url} && sha256sum {0} >/dev/null",
            out_b.display()
        ));
        c
    };
    // Warm-up: page cache, registry, binaries.
    timed(pull())?;
    timed(curl())?;
    ensure!(
        std::fs::read(&out_a)? == big && std::fs::read(&out_b)? == big,
        "a pull or the curl did not produce the pushed bytes"
    );
    let (mut pulls, mut curls, mut verified) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds {
        pulls.push(timed(pull())?);
        curls.push(timed(curl())?);
        verified.push(timed(curl_verified())?);
    }
    pulls.sort();
    curls.sort();
    verified.sort();
    let (p50, c50) = (percentile(&pulls, 0.5), percentile(&curls, 0.5));
    println!(
        "pull of a {:.1} MiB component, {rounds} rounds: wa8s pull median {:.1} ms (p90 {:.1}), \
         curl of the blob median {:.1} ms (p90 {:.1}); ratio {:.2}x",
        big.len() as f64 / (1 << 20) as f64,
        ms(p50),
        ms(percentile(&pulls, 0.9)),
        ms(c50),
        ms(percentile(&curls, 0.9)),
        p50.as_secs_f64() / c50.as_secs_f64()
    );
    let v50 = percentile(&verified, 0.5);
    println!(
        "  curl + sha256sum of the blob median {:.1} ms (p90 {:.1}); wa8s pull / that {:.2}x",
        ms(v50),
        ms(percentile(&verified, 0.9)),
        p50.as_secs_f64() / v50.as_secs_f64()
    );

    // 2. Cache hit to ready-to-instantiate.
    let blobs = BlobCache::new(dir.path().join("components"), u64::MAX)?;
    let digest = sha256_digest(guests::HTTP_COMPONENT);
    runtime
        .block_on(blobs.get_or_fetch(&digest, || async { Ok(guests::HTTP_COMPONENT.to_vec()) }))?;
    let engine = HostEngine::new(&EngineConfig::default())?;
    let precompiled = PrecompileCache::new(dir.path().join("precompiled"))?;
    let component = blobs.verified(&digest)?.context("cache miss")?;
    let (_, first) = precompiled.load(&engine, &component)?;
    ensure!(first == Source::Compiled, "the first load should compile");
    let mut hits = Vec::new();
    for _ in 0..(rounds * 10) {
        let start = Instant::now();
        let component = blobs.verified(&digest)?.context("cache miss")?;
        let (program, source) = precompiled.load(&engine, &component)?;
        hits.push(start.elapsed());
        ensure!(source == Source::Cache, "expected a cache hit");
        drop(program);
    }
    hits.sort();
    println!(
        "cache hit -> ready to instantiate (hello http component, {} bytes), {} rounds: \
         median {:.2} ms, p90 {:.2} ms, max {:.2} ms",
        guests::HTTP_COMPONENT.len(),
        hits.len(),
        ms(percentile(&hits, 0.5)),
        ms(percentile(&hits, 0.9)),
        ms(*hits.last().context("no rounds")?)
    );
    Ok(())
}
