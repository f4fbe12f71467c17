//! Benchmark: N `WebAssembly` objects created at once against a real kube-apiserver + etcd
//! and a real registry, reconciled by the operator binary running as its own process.
//! Reports the time until every Deployment exists and every object's status is observed
//! (`observedGeneration` = `generation`, `ModuleResolved=True`), reconciles per second, the
//! operator's resident memory (current and peak), and the registry requests (manifests and
//! blobs, by method) while converging and over two resolve intervals after, and what
//! triggered the reconciles (watch events by kind). `WA8S_BENCH_LOG` sets the operator's
//! `RUST_LOG` (default `warn`).
//!
//! ```sh
//! e2e/scripts/images.sh     # builds target/image/wa8s-operator (optimized, as shipped)
//! cargo run -p wa8s-operator --example bench-objects -- 1000
//! cargo run -p wa8s-operator --example bench-objects -- 10000 --operator target/image/wa8s-operator
//! cargo run -p wa8s-operator --example bench-objects -- 1000 --resolve-interval-seconds 60
//! cargo run -p wa8s-operator --example bench-objects -- 10000 --resolve-interval-seconds 3600 --no-polls
//! ```
//!
//! There is no kubelet or kube-controller-manager here: Deployments get no pods, so this
//! measures the operator and the API path only. Everything it starts stops when it exits.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};
use futures::{StreamExt, TryStreamExt, stream};
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::PostParams;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::core::PartialObjectMeta;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use wa8s_api::WebAssembly;
use wa8s_e2e::control_plane::ControlPlane;
use wa8s_e2e::process::Lifetime;
use wa8s_e2e::registry::Registry;

const NAMESPACE: &str = "bench";

type Counts = std::collections::BTreeMap<String, usize>;
/// Creations in flight at once.
const CONCURRENCY: usize = 16;
/// How long convergence may take before the run is called failed.
const LIMIT: Duration = Duration::from_secs(1800);

/// Kills the operator when the benchmark ends, however it ends.
struct Operator(Child);

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `VmRSS` and `VmHWM` of `pid`, in MiB.
fn memory_mib(pid: u32) -> Result<(f64, f64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> Result<f64> {
        let kib: f64 = status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("no {name} in /proc/{pid}/status"))?;
        Ok(kib / 1024.0)
    };
    Ok((field("VmRSS:")?, field("VmHWM:")?))
}

fn object(i: usize) -> Result<WebAssembly> {
    Ok(serde_json::from_value(serde_json::json!({
        "apiVersion": "wa8s.reconciler.io/v1",
        "kind": "WebAssembly",
        "metadata": { "name": format!("w{i:05}") },
        "spec": {
            "module": { "registry": "ghcr.io/myorg/bench", "tag": "v1" },
            "resources": { "memory": "32Mi" },
        },
    }))?)
}

#[tokio::main]
async fn main() -> Result<()> {
    let mut n = 1000usize;
    let mut operator = wa8s_e2e::repo_root().join("target/image/wa8s-operator");
    let mut interval = 60u64;
    // Convergence only: no waiting out two polls after (for runs longer than the interval).
    let mut polls = true;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--no-polls" => polls = false,
            "--operator" => operator = PathBuf::from(args.next().context("--operator PATH")?),
            "--resolve-interval-seconds" => {
                interval = args
                    .next()
                    .and_then(|s| s.parse().ok())
                    .context("--resolve-interval-seconds N")?;
            }
            other => {
                n = other
                    .parse()
                    .with_context(|| format!("{other:?}: expected N"))?
            }
        }
    }
    ensure!(
        operator.is_file(),
        "{} is missing: e2e/scripts/images.sh builds it (or pass --operator PATH)",
        operator.display()
    );
    wa8s_operator::install_crypto_provider();

    let dir = wa8s_e2e::cache_dir()
        .join("run")
        .join(format!("bench-{}", std::process::id()));
    let cp = ControlPlane::start(&dir, Lifetime::Attached)?;
    let kubectl = cp.kubectl();
    kubectl.install_crd()?;
    kubectl.ok(&["create", "namespace", NAMESPACE])?;
    let registry = Registry::start()?;
    let pushed = wa8s_oci::Registry::new(wa8s_oci::RegistryOptions::default())
        .push(
            wa8s_test_components::HTTP_COMPONENT,
            &format!("{}/myorg/bench:v1", registry.addr()),
        )
        .await?;

    // What the push cost the registry, so only the operator's requests are counted below.
    let pushed_requests = registry.content_requests("myorg/bench");

    let http = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let log = std::fs::File::create(dir.join("wa8s-operator.log"))?;
    let child = Command::new(&operator)
        .env("KUBECONFIG", cp.kubeconfig())
        .env(
            "RUST_LOG",
            std::env::var("WA8S_BENCH_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .arg(format!("--mirror=ghcr.io={}", registry.addr()))
        .arg(format!("--insecure-registry={}", registry.addr()))
        .arg("--leader-elect=false")
        .arg(format!("--resolve-interval={interval}s"))
        .arg(format!("--http-addr={http}"))
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting {}", operator.display()))?;
    let operator = Operator(child);
    let pid = operator.0.id();
    let scrape = || wa8s_e2e::http::get(&http.to_string(), "/metrics", Duration::from_secs(5));
    let started = Instant::now();
    while !wa8s_e2e::http::get(&http.to_string(), "/readyz", Duration::from_secs(2))
        .is_ok_and(|(s, _)| s == 200)
    {
        ensure!(
            started.elapsed() < Duration::from_secs(60),
            "the operator was not ready within 60 s; see {}",
            dir.join("wa8s-operator.log").display()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (idle_rss, _) = memory_mib(pid)?;
    let reconciles_before = wa8s_operator::metrics::reconciles_in(&scrape()?.1);

    let config = kube::Config::from_custom_kubeconfig(
        Kubeconfig::read_from(cp.kubeconfig())?,
        &KubeConfigOptions::default(),
    )
    .await?;
    let client = Client::try_from(config)?;
    let objects: Api<WebAssembly> = Api::namespaced(client.clone(), NAMESPACE);
    let deployments: Api<PartialObjectMeta<Deployment>> = Api::namespaced(client, NAMESPACE);

    let started = Instant::now();
    stream::iter(0..n)
        .map(|i| {
            let api = objects.clone();
            async move {
                api.create(&PostParams::default(), &object(i)?)
                    .await
                    .map_err(anyhow::Error::from)
            }
        })
        .buffer_unordered(CONCURRENCY)
        .try_for_each(|_| async { Ok(()) })
        .await?;
    let created = started.elapsed();

    // Watched, not listed: listing 10,000 objects every second loads the API server that
    // the operator shares the two cores with.
    let mut peak_rss = 0f64;
    let mut deployed = std::collections::HashSet::new();
    let mut observed = std::collections::HashSet::new();
    let mut deployment_events =
        std::pin::pin!(watcher(deployments, watcher::Config::default()).applied_objects());
    let mut object_events =
        std::pin::pin!(watcher(objects, watcher::Config::default()).applied_objects());
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let converged = loop {
        tokio::select! {
            d = deployment_events.next() => {
                let d = d.context("the Deployment watch ended")??;
                deployed.insert(d.metadata.name.unwrap_or_default());
            }
            o = object_events.next() => {
                let o = o.context("the WebAssembly watch ended")??;
                let done = o.status.as_ref().is_some_and(|s| {
                    s.observed_generation == o.metadata.generation
                        && s.module.as_ref().is_some_and(|m| m.digest == pushed.digest)
                });
                let name = o.metadata.name.unwrap_or_default();
                if done {
                    observed.insert(name);
                } else {
                    observed.remove(&name);
                }
            }
            _ = tick.tick() => {
                let (rss, _) = memory_mib(pid)?;
                peak_rss = peak_rss.max(rss);
                if started.elapsed() > LIMIT {
                    bail!(
                        "after {LIMIT:?}: {} of {n} Deployments, {} of {n} statuses observed",
                        deployed.len(),
                        observed.len()
                    );
                }
            }
        }
        if deployed.len() == n && observed.len() == n {
            break started.elapsed();
        }
    };
    let exposition = scrape()?.1;
    let reconciled = wa8s_operator::metrics::reconciles_in(&exposition) - reconciles_before;
    // What triggered them, and what failed.
    let breakdown: Vec<&str> = exposition
        .lines()
        .filter(|l| {
            l.starts_with("wa8s_operator_watch_events_total")
                || l.starts_with("wa8s_operator_reconcile_errors_total")
        })
        .collect();
    let (rss, hwm) = memory_mib(pid)?;
    // Settled: what the operator holds once the burst is over.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let (settled_rss, _) = memory_mib(pid)?;
    let since = |before: &Counts, after: &Counts| -> Counts {
        after
            .iter()
            .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0)))
            .filter(|(_, v)| *v > 0)
            .collect()
    };
    let converged_requests = registry.content_requests("myorg/bench");
    let converging_requests = since(&pushed_requests, &converged_requests);
    // Steady state: every object polls its tag once per interval; count what two intervals
    // of polling cost the registry.
    if polls {
        tokio::time::sleep(Duration::from_secs(2 * interval)).await;
    }
    let polling = since(
        &converged_requests,
        &registry.content_requests("myorg/bench"),
    );

    println!("objects:                       {n}");
    println!(
        "created (API, {CONCURRENCY} at a time):   {:.1} s",
        created.as_secs_f64()
    );
    println!(
        "all Deployments + statuses:    {:.1} s after the first create",
        converged.as_secs_f64()
    );
    println!(
        "reconciles:                    {reconciled} ({:.0}/s over the run)",
        reconciled as f64 / converged.as_secs_f64()
    );
    for line in &breakdown {
        println!("  {line}");
    }
    println!("operator RSS idle:             {idle_rss:.1} MiB");
    println!(
        "operator RSS at convergence:   {rss:.1} MiB (peak seen {:.1}, VmHWM {hwm:.1})",
        peak_rss.max(rss)
    );
    println!("operator RSS 10 s later:       {settled_rss:.1} MiB");
    println!("registry requests, converging: {converging_requests:?}");
    println!("registry requests, 2 polls ({interval} s interval): {polling:?}");
    drop(operator);
    drop(registry);
    drop(cp);
    Ok(())
}
