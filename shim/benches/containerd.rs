//! Shim benchmarks against a real containerd 2.2, driven with `ctr`:
//!
//!     cargo bench -p wa8s-shim --bench containerd [-- ROUNDS]
//!
//! 1. `ctr run -d` of the HTTP component (in its own network namespace, as a pod gets) to the
//!    first 200, with a warm precompile cache; beside it the same for a static C HTTP server
//!    under runc (`e2e/bench/hello-server.c`), what containerd and `ctr` cost on their own.
//! 2. PSS per pod with 20 idle HTTP pods (each its own shim, as with one pod per shim).
//! 3. 200 sequential and 50 concurrent `ctr run --rm` of the hello cli component.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use wa8s_e2e::containerd::Containerd;
use wa8s_e2e::netns::Netns;
use wa8s_e2e::process::eventually;
use wa8s_test_components as guests;

const RUNTIME: &str = "io.containerd.wa8s.v1";
/// How long a started pod may take to answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);
/// Between probes: fine enough not to blur a start of tens of milliseconds.
const POLL: Duration = Duration::from_millis(1);

/// Whether `GET http://127.0.0.1:8080/` inside `ns` answers 200. The client is a thread of
/// this process that joins the namespace, so no client process start (`ip netns exec curl`
/// costs several ms) is counted as the server's.
fn answers(ns: &Netns) -> bool {
    let path = ns.path();
    std::thread::spawn(move || get_in(&path))
        .join()
        .ok()
        .flatten()
        .is_some_and(|head| head.starts_with(b"HTTP/1.1 200"))
}

#[allow(unsafe_code)]
fn get_in(netns: &std::path::Path) -> Option<Vec<u8>> {
    let ns = std::fs::File::open(netns).ok()?;
    // SAFETY: setns on a valid descriptor moves only this (short-lived) thread.
    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return None;
    }
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], 8080));
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(b"GET / HTTP/1.1\r\nhost: 127.0.0.1:8080\r\nconnection: close\r\n\r\n")
        .ok()?;
    let mut reply = Vec::new();
    s.read_to_end(&mut reply).ok()?;
    Some(reply)
}

/// Start to first 200 of `image` under `runtime`, `rounds` times after one unmeasured run:
/// (time `ctr run -d` took, time to the first 200) per round.
fn start_to_200(
    c: &Containerd,
    runtime: &str,
    image: &str,
    rounds: usize,
) -> Result<Vec<(Duration, Duration)>> {
    let mut times = Vec::new();
    for i in 0..=rounds {
        let ns = Netns::new(&format!("wa8sb-{}-{i}", std::process::id()))?;
        let id = format!("first-{i}");
        let start = Instant::now();
        c.ctr_ok(&[
            "run",
            "-d",
            "--runtime",
            runtime,
            "--with-ns",
            &ns.ctr_spec(),
            image,
            &id,
        ])?;
        let returned = start.elapsed();
        let answered = eventually(ANSWER_TIMEOUT, POLL, || {
            answers(&ns).then(|| start.elapsed())
        })
        .with_context(|| format!("no 200 from {id} within {ANSWER_TIMEOUT:?}"))?;
        // The first run fills the precompile cache (wa8s) or the page cache (both).
        if i > 0 {
            times.push((returned, answered));
        }
        ensure!(c.remove(&id), "task {id} could not be deleted");
    }
    Ok(times)
}

fn report(what: &str, times: &[(Duration, Duration)]) {
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let answered: Vec<Duration> = times.iter().map(|t| t.1).collect();
    let (lo, hi) = (
        answered.iter().min().copied().unwrap_or_default(),
        answered.iter().max().copied().unwrap_or_default(),
    );
    println!(
        "{what}: ctr run -d → first 200 median {:.1} ms (min {:.1}, max {:.1}); ctr run -d itself median {:.1} ms; {} rounds",
        ms(median(answered)),
        ms(lo),
        ms(hi),
        ms(median(times.iter().map(|t| t.0).collect())),
        times.len()
    );
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

    let runc_image = "docker.io/wa8s-bench/c-server:latest";
    c.import(
        &wa8s_e2e::image::hello_server(runc_image)?,
        &wa8s_e2e::image::linux_platform(),
    )?;

    // 1. Start to first 200 (the first run compiles and fills the precompile cache).
    report(
        "wa8s (HTTP component)",
        &start_to_200(&c, RUNTIME, http, rounds)?,
    );
    report(
        "runc (static C server)",
        &start_to_200(&c, "io.containerd.runc.v2", runc_image, rounds)?,
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
        eventually(ANSWER_TIMEOUT, POLL, || answers(&ns).then_some(()))
            .with_context(|| format!("no 200 from {id} within {ANSWER_TIMEOUT:?}"))?;
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
