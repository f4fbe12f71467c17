//! `wa8s-operator`: flags → settings, then leader election, the health/metrics endpoint and
//! the controller. Everything else lives in the library.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result, anyhow};
use clap::Parser;
use k8s_openapi::api::coordination::v1::Lease;
use kube::{Api, Client};
use wa8s_api::contract::RuntimeSetting;
use wa8s_api::contract::parse_duration_ms;
use wa8s_oci::RegistryConfig;
use wa8s_operator::controller::{self, Context, Settings};
use wa8s_operator::desired::Config as DesiredConfig;
use wa8s_operator::http::{self, Readiness};
use wa8s_operator::leader::LeaderElection;
use wa8s_operator::metrics::Metrics;
use wa8s_operator::resolve::OciResolver;

#[derive(Parser, Debug)]
#[command(
    name = "wa8s-operator",
    version,
    about = "Reconciles WebAssembly objects into Deployments, Services and HPAs"
)]
struct Args {
    /// Log lines as `text` or `json` (levels: WA8S_LOG, in RUST_LOG syntax).
    #[arg(long, default_value = "text", env = "WA8S_LOG_FORMAT")]
    log_format: wa8s_telemetry::LogFormat,
    /// RuntimeClass the pods ask for.
    #[arg(long, default_value = "wa8s", env = "WA8S_RUNTIME_CLASS")]
    runtime_class: String,
    /// How often tags are resolved again (a moved tag rolls the pods), e.g. 5m, 30s.
    #[arg(long, default_value = "5m", env = "WA8S_RESOLVE_INTERVAL")]
    resolve_interval: String,
    /// Pull from MIRROR whenever a module names REGISTRY (air-gapped clusters), e.g.
    /// ghcr.io=registry.internal:5000. Repeatable.
    #[arg(long = "mirror", value_name = "REGISTRY=MIRROR")]
    mirrors: Vec<String>,
    /// Speak plain HTTP to this registry. Repeatable.
    #[arg(long = "insecure-registry", value_name = "HOST")]
    insecure: Vec<String>,
    /// Trust the CA certificates in FILE (PEM) for REGISTRY. Repeatable.
    #[arg(long = "registry-ca", value_name = "REGISTRY=FILE")]
    registry_ca: Vec<String>,
    /// A registry (`host[:port]`) objects may name even at a loopback, link-local or denied
    /// address (one inside the cluster). Mirrors are always allowed. Repeatable.
    #[arg(long = "private-registry", value_name = "HOST")]
    private_registries: Vec<String>,
    /// A network (CIDR) no registry request may reach unless the registry is private: the
    /// cluster's pod and service networks, the nodes' subnet. Repeatable.
    #[arg(long = "denied-network", value_name = "CIDR")]
    denied_networks: Vec<String>,
    /// A runtime setting written into every wasm pod (WA8S_LOG, WA8S_LOG_FORMAT,
    /// WA8S_ACCESS_LOG or OTEL_*, e.g. OTEL_EXPORTER_OTLP_ENDPOINT=http://collector:4318);
    /// an object's own env entry of the same name wins. Repeatable.
    #[arg(long = "pod-env", value_name = "NAME=VALUE")]
    pod_env: Vec<RuntimeSetting>,
    /// Watch only this namespace (default: all).
    #[arg(long = "watch-namespace", env = "WA8S_WATCH_NAMESPACE")]
    namespace: Option<String>,
    /// Serve /metrics, /healthz and /readyz here.
    #[arg(long, default_value = "0.0.0.0:8080")]
    http_addr: SocketAddr,
    /// Elect a leader among replicas through a Lease.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    leader_elect: bool,
    /// Namespace of the Lease (default: the pod's namespace).
    #[arg(long, env = "POD_NAMESPACE", default_value = "wa8s-system")]
    lease_namespace: String,
    /// This replica's identity (default: the pod name, else the host name).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Reconciles in flight at once (at least 1).
    #[arg(long, default_value_t = controller::DEFAULT_CONCURRENCY,
          value_parser = clap::value_parser!(u16).range(1..))]
    max_concurrent_reconciles: u16,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let logging = wa8s_telemetry::Logging {
        format: args.log_format,
        // Reconciles are spans, exported when OTEL_EXPORTER_OTLP_ENDPOINT names a collector.
        spans_as: Some("wa8s-operator"),
        ..wa8s_telemetry::Logging::new("info")
    };
    let _spans = match wa8s_telemetry::init_logging(&logging) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("wa8s-operator: {}", wa8s_api::report::report(&e));
            return ExitCode::from(2);
        }
    };
    wa8s_operator::install_crypto_provider();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!("starting the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::from(1)
        }
    }
}

async fn run(args: Args) -> Result<()> {
    let interval_ms = parse_duration_ms(&args.resolve_interval)
        .filter(|ms| *ms >= 1000)
        .ok_or_else(|| {
            anyhow!(
                "--resolve-interval {:?}: expected a duration of at least 1s, such as 30s or 5m",
                args.resolve_interval
            )
        })?;
    // Objects name their registries, so requests are gated: no loopback, link-local or
    // denied address unless the deployer listed the registry.
    let mut registry = RegistryConfig {
        insecure: args.insecure.clone(),
        ..RegistryConfig::default()
    };
    for m in &args.mirrors {
        registry.add_mirror_setting(m)?;
    }
    for c in &args.registry_ca {
        registry.add_ca_setting(c)?;
    }
    registry.gate_addresses(args.private_registries.clone(), &args.denied_networks)?;
    // Objects naming the same tag share one poll per half interval.
    let resolver = OciResolver::new(registry, Duration::from_millis(interval_ms / 2));
    let identity = args
        .identity
        .clone()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| format!("wa8s-operator-{}", std::process::id()));
    let client = Client::try_default()
        .await
        .context("connecting to the Kubernetes API (in-cluster config or KUBECONFIG)")?;
    let metrics = Arc::new(Metrics::new());
    let ready = Readiness::default();
    let bound = http::serve(args.http_addr, metrics.clone(), ready.clone())
        .await
        .with_context(|| format!("binding --http-addr {}", args.http_addr))?;
    tracing::info!(%bound, "serving /metrics, /healthz and /readyz");
    // A standby replica is ready: it is healthy and waiting for the lease.
    ready.set(true);

    let election = args.leader_elect.then(|| {
        LeaderElection::new(
            Api::<Lease>::namespaced(client.clone(), &args.lease_namespace),
            "wa8s-operator",
            &identity,
            Duration::from_secs(15),
        )
    });
    if let Some(e) = &election {
        e.acquire().await?;
    }
    let ctx = Arc::new(Context::new(
        client,
        Arc::new(resolver),
        Settings {
            desired: DesiredConfig {
                runtime_class: args.runtime_class,
                runtime_settings: args.pod_env,
                ..DesiredConfig::default()
            },
            resolve_interval: Duration::from_millis(interval_ms),
            namespace: args.namespace,
            instance: Some(identity),
            concurrency: args.max_concurrent_reconciles,
        },
        metrics,
    ));
    let controller = controller::run(ctx, shutdown_signal());
    match election {
        Some(e) => tokio::select! {
            () = controller => Ok(()),
            lost = e.hold() => Err(lost.into()),
        },
        None => {
            controller.await;
            Ok(())
        }
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    if let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    } else {
        std::future::pending::<()>().await;
    }
    tracing::info!("shutting down");
}
