//! Shim benchmarks against a real containerd 2.2, driven with `ctr`:
//!
//!     cargo bench -p wa8s-shim --bench containerd [-- ROUNDS]
//!
//! 1. `ctr run -d` of the HTTP component (in its own network namespace, as a pod gets) to the
//!    first 200, with a warm precompile cache.
//! 2. PSS per pod with 20 idle HTTP pods (each its own shim, as with one pod per shim).
//! 3. 200 sequential and 50 concurrent `ctr run --rm` of the hello cli component.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use wa8s_e2e::containerd::Containerd;
use wa8s_e2e::netns::Netns;
use wa8s_test_components as guests;

const RUNTIME: &str = "io.containerd.wa8s.v1";

/// 200 from the HTTP component inside `ns`.
fn answers(ns: &Netns) -> bool {
    ns.get("http://127.0.0.1:8080/").is_some()
}

fn pss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .ok()
        .and_then(|t| {
            t.lines().find_map(|l| {
                l.strip_prefix("Pss:")
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            })
        })
        .unwrap_or(0)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() -> Result<()> {
    let rounds: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(20);
    let shim = PathBuf::from(env!("CARGO_BIN_EXE_containerd-shim-wa8s-v1"));
    let c = Containerd::start(shim.parent().context("shim dir")?)?;
    let http = "docker.io/wa8s-bench/http:latest";
    let hello = "docker.io/wa8s-bench/hello:latest";
    for (name, wasm) in [
        (http, guests::HTTP_COMPONENT),
        (hello, guests::HELLO_COMPONENT),
    ] {
        let tar = wa8s_e2e::image::layered(name, "wasip2", &[("app.wasm", wasm)], &["/app.wasm"])?;
        c.import(&tar, "wasip2/wasm")?;
    }

    // 1. Start to first 200 (the first run compiles and fills the precompile cache).
    let mut firsts = Vec::new();
    for i in 0..=rounds {
        let ns = Netns::new(&format!("wa8sb-{}-{i}", std::process::id()))?;
        let id = format!("first-{i}");
        let start = Instant::now();
        c.ctr_ok(&[
            "run",
            "-d",
            "--runtime",
            RUNTIME,
            "--with-ns",
            &ns.ctr_spec(),
            http,
            &id,
        ])?;
        while !answers(&ns) {
            ensure!(
                start.elapsed() < Duration::from_secs(30),
                "no 200 from {id}"
            );
        }
        let took = start.elapsed();
        if i > 0 {
            firsts.push(took);
        }
        ensure!(c.remove(&id), "task {id} could not be deleted");
    }
    let (lo, hi) = (
        firsts.iter().min().copied().unwrap_or_default(),
        firsts.iter().max().copied().unwrap_or_default(),
    );
    println!(
        "ctr run -d → first 200 (warm precompile cache, {rounds} rounds): median {:.1} ms, min {:.1}, max {:.1}",
        median(firsts).as_secs_f64() * 1e3,
        lo.as_secs_f64() * 1e3,
        hi.as_secs_f64() * 1e3
    );

    // 2. PSS with 20 idle pods.
    let pods = 20;
    let mut namespaces = Vec::new();
    for i in 0..pods {
        let ns = Netns::new(&format!("wa8sp-{}-{i}", std::process::id()))?;
        let id = format!("idle-{i}");
        c.ctr_ok(&[
            "run",
            "-d",
            "--runtime",
            RUNTIME,
            "--with-ns",
            &ns.ctr_spec(),
            http,
            &id,
        ])?;
        let start = Instant::now();
        while !answers(&ns) {
            ensure!(
                start.elapsed() < Duration::from_secs(30),
                "no 200 from {id}"
            );
        }
        namespaces.push(ns);
    }
    let pids = c.shim_processes();
    let total: u64 = pids.iter().map(|p| pss_kib(*p)).sum();
    println!(
        "{pods} idle HTTP pods: {} wa8s processes, PSS total {:.1} MiB, per pod {:.2} MiB",
        pids.len(),
        total as f64 / 1024.0,
        total as f64 / 1024.0 / pods as f64
    );
    for i in 0..pods {
        let id = format!("idle-{i}");
        ensure!(c.remove(&id), "task {id} could not be deleted");
    }
    drop(namespaces);

    // 3. Start/stop cycles.
    let n = 200;
    let start = Instant::now();
    let mut failures = 0;
    for i in 0..n {
        let out = c.ctr(&[
            "run",
            "--rm",
            "--runtime",
            RUNTIME,
            hello,
            &format!("seq-{i}"),
        ])?;
        if out.code != Some(0) || out.stdout != "hello from wasm\n" {
            failures += 1;
        }
    }
    let took = start.elapsed();
    println!(
        "{n} sequential ctr run --rm of the hello component: {failures} failures, {:.1} tasks/s",
        n as f64 / took.as_secs_f64()
    );
    let n = 50;
    let start = Instant::now();
    let failures: usize = std::thread::scope(|s| {
        let handles: Vec<_> = (0..n)
            .map(|i| {
                let c = &c;
                s.spawn(move || {
                    c.ctr(&[
                        "run",
                        "--rm",
                        "--runtime",
                        RUNTIME,
                        hello,
                        &format!("par-{i}"),
                    ])
                    .map(|o| usize::from(o.code != Some(0) || o.stdout != "hello from wasm\n"))
                    .unwrap_or(1)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap_or(1)).sum()
    });
    let took = start.elapsed();
    println!(
        "{n} concurrent ctr run --rm of the hello component: {failures} failures, {:.1} tasks/s",
        n as f64 / took.as_secs_f64()
    );
    Ok(())
}
