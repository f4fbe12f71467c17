//! Components built by toolchains users use — componentize-py (Python), componentize-js
//! (JavaScript) and Rust's wasm32-wasip2 target (the `examples/hello-rust` crate, when the
//! target is installed) — served by the host, and the outbound policy enforced on a real
//! guest's wasi:http requests. The Python and JS toolchains are installed on first use by
//! `shim/test-components/guests/build.sh` (pinned versions, cached under ~/.cache/wa8s).

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use wa8s_host::{Grants, NetworkPolicy};

mod common;
use common::{get, serve, upstream};

const GRACE: Duration = Duration::from_secs(5);

/// Builds a guest once per test process (Python and JS builds take a while).
fn guest(kind: &'static str) -> Result<Vec<u8>> {
    static PY: OnceLock<Result<Vec<u8>, String>> = OnceLock::new();
    static JS: OnceLock<Result<Vec<u8>, String>> = OnceLock::new();
    let cell = if kind == "python" { &PY } else { &JS };
    cell.get_or_init(|| build(kind).map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(anyhow::Error::msg)
}

fn build(kind: &str) -> Result<Vec<u8>> {
    let script =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../test-components/guests/build.sh");
    let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("guest-{kind}.wasm"));
    let status = Command::new("bash")
        .arg(&script)
        .arg(kind)
        .arg(&out)
        .status()
        .with_context(|| format!("running {}", script.display()))?;
    ensure!(
        status.success(),
        "building the {kind} guest failed ({status})"
    );
    std::fs::read(&out).with_context(|| format!("reading {}", out.display()))
}

fn grants(allowed_hosts: &[String]) -> Result<Grants> {
    let mut g = Grants::default();
    g.limits.timeout = Some(Duration::from_secs(20));
    g.limits.memory_bytes = Some(256 << 20);
    g.network = NetworkPolicy::new(allowed_hosts, wa8s_host::NodeAddresses::default())?;
    Ok(g)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_javascript_component_serves_hello() -> Result<()> {
    let server = serve(&guest("js")?, grants(&[])?, GRACE).await?;
    assert_eq!(
        get(server.addr, "/").await?,
        (200, "hello from javascript\n".into())
    );
    server.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_component_serves_hello_and_sees_only_granted_env() -> Result<()> {
    let mut g = grants(&[])?;
    g.env = vec![("CACHE_SIZE".into(), "100".into())];
    let server = serve(&guest("python")?, g, GRACE).await?;
    assert_eq!(
        get(server.addr, "/").await?,
        (200, "hello from python\n".into())
    );
    assert_eq!(
        get(server.addr, "/env/CACHE_SIZE").await?,
        (200, "100\n".into())
    );
    // PATH is set in this test process; the guest must not see it.
    assert!(std::env::var_os("PATH").is_some());
    assert_eq!(
        get(server.addr, "/env/PATH").await?,
        (200, "<unset>\n".into())
    );
    server.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_requests_reach_only_granted_hosts() -> Result<()> {
    let (up, hits) = upstream().await?;
    let listed = format!("127.0.0.1:{}", up.port());
    let server = serve(
        &guest("python")?,
        grants(&[listed.clone(), "*.example.com".into()])?,
        GRACE,
    )
    .await?;

    // Listed literally: reached.
    let (status, body) = get(server.addr, &format!("/fetch/{listed}/ping")).await?;
    assert_eq!(
        (status, body.as_str()),
        (200, "upstream 200: upstream says hi"),
        "{body}"
    );
    assert_eq!(hits.load(Ordering::SeqCst), 1);

    // Not listed: denied by name, before any lookup or connection.
    let (status, body) = get(server.addr, "/fetch/api.other.org/x").await?;
    assert_eq!(
        (status, body.trim()),
        (502, "refused: ErrorCode_HttpRequestDenied")
    );
    // Cloud metadata: denied.
    let (status, body) = get(server.addr, "/fetch/169.254.169.254/latest/meta-data").await?;
    assert_eq!(status, 502, "{body}");
    assert!(body.contains("ErrorCode_HttpRequestDenied"), "{body}");
    // The same loopback server on another spelling is not the literal grant: not reached.
    let (status, body) = get(server.addr, &format!("/fetch/localhost:{}/x", up.port())).await?;
    assert_eq!(status, 502, "{body}");
    assert_eq!(
        hits.load(Ordering::SeqCst),
        1,
        "the loopback server was reached without a literal grant"
    );
    server.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_network_grant_nothing_leaves_the_guest() -> Result<()> {
    let (up, hits) = upstream().await?;
    let server = serve(&guest("python")?, grants(&[])?, GRACE).await?;
    for target in [
        format!("127.0.0.1:{}", up.port()),
        "example.com".into(),
        "169.254.169.254".into(),
    ] {
        let (status, body) = get(server.addr, &format!("/fetch/{target}/x")).await?;
        assert_eq!(
            (status, body.trim()),
            (502, "refused: ErrorCode_HttpRequestDenied"),
            "{target}"
        );
    }
    assert_eq!(hits.load(Ordering::SeqCst), 0);
    server.shutdown().await
}

fn wasip2_target_installed() -> bool {
    Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .is_ok_and(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .any(|l| l == "wasm32-wasip2")
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rust_example_serves_its_greeting_and_the_env_its_object_sets() -> Result<()> {
    if !wasip2_target_installed() {
        // Rust's wasm32 targets are not on every machine (e2e/scripts/prerequisites.sh adds
        // it where rustup can download it).
        eprintln!("skipped: the wasm32-wasip2 target is not installed");
        return Ok(());
    }
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let script =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples/hello-rust/build.sh");
    let out = dir.join("hello-rust.wasm");
    let status = Command::new("bash")
        .arg(&script)
        .arg(&out)
        .env("CARGO_TARGET_DIR", dir.join("hello-rust-target"))
        .status()
        .with_context(|| format!("running {}", script.display()))?;
    ensure!(
        status.success(),
        "building the Rust example failed ({status})"
    );
    let mut g = grants(&[])?;
    g.env = vec![("CACHE_SIZE".into(), "100".into())];
    let server = serve(&std::fs::read(&out)?, g, GRACE).await?;
    assert_eq!(
        get(server.addr, "/greet").await?,
        (
            200,
            "hello from wa8s (rust) at /greet: CACHE_SIZE=100\n".into()
        )
    );
    server.shutdown().await
}
