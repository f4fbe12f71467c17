//! `wa8s`: run WebAssembly components locally with the same grants as the WebAssembly CRD.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use clap::{Parser, Subcommand};
use wa8s_api::contract::parse_duration_ms;
use wa8s_api::{GuestPath, Quantity};
use wa8s_host::{
    DirGrant, EngineConfig, Error as HostError, Grants, HostEngine, Kind, MemoryBudget,
    NetworkPolicy, NodeAddresses, Program, ServeOptions, Server, Stdio, TrustRoots,
};

mod oci;
mod progress;

#[derive(Parser, Debug)]
#[command(
    name = "wa8s",
    version,
    about = "Run WebAssembly components the way wa8s runs them on Kubernetes"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a component: serve it when it exports wasi:http (with --listen), else run it to
    /// completion. Nothing is granted unless a flag grants it.
    ///
    /// Exit status: the guest's own for cli programs; 124 when it ran past --timeout; 134
    /// when it trapped; 2 when wa8s could not start it (bad flag, file, binary or grant).
    Run(Box<RunArgs>),
    /// Push a component to a registry as a CNCF wasm OCI artifact; prints the manifest digest.
    Push(oci::PushArgs),
    /// Pull a component from a registry (wasm artifacts, layered images, image indexes);
    /// every blob is verified against its digest. Prints the manifest digest.
    Pull(oci::PullArgs),
    /// Show what a component is: kind, imports, exports, size, digests, media types.
    Inspect(oci::InspectArgs),
    /// Print a WebAssembly object for a pushed component (its world decides HTTP or worker,
    /// its digest is pinned, nothing is granted), ready for `kubectl apply -f -`.
    Manifest(oci::ManifestArgs),
    /// Print a shell completion script: `wa8s completions bash > /etc/bash_completion.d/wa8s`.
    Completions { shell: clap_complete::Shell },
    /// Print the manual page (roff): `wa8s man | man -l -`.
    Man,
}

#[derive(clap::Args, Debug)]
struct RunArgs {
    /// The component (.wasm) or preview1 command module: a file, or a registry reference
    /// (e.g. ghcr.io/myorg/app:v1), pulled through the local cache and run from its cached
    /// precompiled form after the first time.
    #[arg(value_name = "FILE|REFERENCE")]
    file: PathBuf,
    /// Where pulled components and their precompiled forms are kept (default:
    /// $XDG_CACHE_HOME/wa8s, else ~/.cache/wa8s).
    #[arg(long, value_name = "DIR", env = "WA8S_CACHE_DIR")]
    cache_dir: Option<PathBuf>,
    #[command(flatten)]
    registry: oci::RegistryArgs,
    /// Say nothing of wa8s's own (no timing of slow start steps); the guest's output and
    /// errors still go to stdout and stderr.
    #[arg(long, short = 'q')]
    quiet: bool,
    /// Serve a wasi:http component on this address, e.g. 127.0.0.1:8080.
    #[arg(long, value_name = "ADDR")]
    listen: Option<SocketAddr>,
    /// With --listen: serve Prometheus metrics (requests, stops, denials) at GET /metrics
    /// on this address, e.g. 127.0.0.1:9464.
    #[arg(long, value_name = "ADDR", requires = "listen")]
    metrics_listen: Option<SocketAddr>,
    /// Preopen a host directory: HOST:GUEST, then optionally `:ro` (read-only) and
    /// `:maxSize=QUANTITY` (writes past it fail with ENOSPC in the guest), e.g.
    /// ./scratch:/tmp:maxSize=64Mi.
    #[arg(long = "dir", value_name = "HOST:GUEST[:ro][:maxSize=Q]")]
    dirs: Vec<String>,
    /// Give the guest a variable: K=V.
    #[arg(long = "env", value_name = "K=V")]
    envs: Vec<String>,
    /// Pass this variable from wa8s's own environment (like the CRD's wasi.env).
    #[arg(long = "allow-env", value_name = "NAME")]
    allow_env: Vec<String>,
    /// Allow outbound traffic to a host pattern (like allowedHosts): host, *.suffix, * or an
    /// IP, optional :port and scheme://.
    #[arg(long = "allow-host", value_name = "PATTERN")]
    allow_hosts: Vec<String>,
    /// Trust these CA certificates (PEM) for the guest's https requests, besides Mozilla's
    /// roots (as a node's shim does with `guestCaFile`).
    #[arg(long = "tls-ca", value_name = "FILE")]
    tls_ca: Option<PathBuf>,
    /// Bound the memories and tables of each instance, and of all instances together, e.g. 32Mi.
    #[arg(long, value_name = "QUANTITY")]
    memory: Option<String>,
    /// Deadline per request (serving) or for the whole run, e.g. 5s, 500ms.
    #[arg(long, value_name = "DURATION")]
    timeout: Option<String>,
    /// Most requests handled at once when serving.
    #[arg(long, default_value_t = 100)]
    max_concurrent_requests: usize,
    /// How long in-flight requests may finish after SIGTERM/SIGINT.
    #[arg(long, default_value = "10s", value_name = "DURATION")]
    grace: String,
    /// Arguments for the guest.
    #[arg(last = true)]
    args: Vec<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Diagnostics only (results go to stdout): warnings unless WA8S_LOG asks for more.
    let logging = wa8s_telemetry::LogFormat::from_env().and_then(|format| {
        wa8s_telemetry::init_logging(&wa8s_telemetry::Logging {
            format,
            timestamps: false,
            ..wa8s_telemetry::Logging::new("warn")
        })
    });
    let _spans = match logging {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    // Registry commands do one transfer at a time: a single-threaded runtime spares every
    // chunk a wake-up across threads. `run` serves requests on all cores.
    let runtime = match &cli.command {
        Command::Run(_) => tokio::runtime::Runtime::new(),
        _ => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
    };
    let runtime = match runtime {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match cli.command {
        Command::Run(args) => runtime.block_on(run(*args)),
        Command::Push(args) => registry_command(runtime.block_on(oci::push(args))),
        Command::Pull(args) => registry_command(runtime.block_on(oci::pull(args))),
        Command::Inspect(args) => registry_command(runtime.block_on(oci::inspect(args))),
        Command::Manifest(args) => registry_command(runtime.block_on(oci::manifest(args))),
        Command::Completions { shell } => {
            use clap::CommandFactory as _;
            clap_complete::generate(shell, &mut Cli::command(), "wa8s", &mut std::io::stdout());
            ExitCode::SUCCESS
        }
        Command::Man => {
            use clap::CommandFactory as _;
            match clap_mangen::Man::new(Cli::command()).render(&mut std::io::stdout()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("wa8s: writing the manual page: {e}");
                    ExitCode::from(2)
                }
            }
        }
    }
}

/// Registry commands exit 1 on any failure, with the error chain on stderr.
fn registry_command(result: Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", wa8s_api::report::report(e.as_ref()));
            ExitCode::from(1)
        }
    }
}

async fn run(args: RunArgs) -> ExitCode {
    let (program, grants) = match prepare(&args).await {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {}", wa8s_api::report::report(e.as_ref()));
            return ExitCode::from(2);
        }
    };
    match (args.listen, program.kind()) {
        (Some(addr), _) => serve(&program, grants, addr, args.metrics_listen, &args.grace).await,
        (None, Kind::Http) => {
            eprintln!(
                "error: {} exports wasi:http/incoming-handler: serve it with --listen ADDR",
                args.file.display()
            );
            ExitCode::from(2)
        }
        (None, _) => match program.run(&grants).await {
            Ok(status) => ExitCode::from(u8::try_from(status.code() & 0xff).unwrap_or(1)),
            Err(e) => {
                eprintln!("error: {}", wa8s_api::report::report(&e));
                ExitCode::from(match e {
                    HostError::Deadline(_) => 124,
                    e if e.is_trap() => 134,
                    _ => 2,
                })
            }
        },
    }
}

async fn serve(
    program: &Program,
    grants: Grants,
    addr: SocketAddr,
    metrics: Option<SocketAddr>,
    grace: &str,
) -> ExitCode {
    let result: Result<()> = async {
        let grace = duration(grace).context("--grace")?;
        // Standard OTEL_EXPORTER_OTLP_* variables turn request traces on. The exporter's
        // client is a blocking one with a runtime of its own, made outside this one's tasks.
        let traced = tokio::task::block_in_place(|| {
            grants
                .telemetry
                .export_traces_from_env("wa8s-run", &grants.trust)
        })?;
        if traced {
            eprintln!("exporting request traces over OTLP");
        }
        // WA8S_ACCESS_LOG=json: a JSON line per request on stderr.
        grants.telemetry.log_access_from_env()?;
        let telemetry = grants.telemetry.clone();
        if let Some(metrics) = metrics {
            let listener = std::net::TcpListener::bind(metrics)
                .with_context(|| format!("--metrics-listen {metrics}"))?;
            eprintln!("metrics at http://{}/metrics", listener.local_addr()?);
            tokio::spawn(wa8s_host::serve_metrics(
                listener,
                grants.telemetry.clone(),
                std::future::pending(),
            ));
        }
        let server = Server::bind(
            program,
            grants,
            ServeOptions {
                addr,
                shutdown_grace: grace,
            },
        )
        .await?;
        eprintln!("serving http://{}", server.local_addr()?);
        server.run(shutdown_signal()).await?;
        tokio::task::block_in_place(|| telemetry.flush(Duration::from_secs(2)));
        Ok(())
    }
    .await;
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", wa8s_api::report::report(e.as_ref()));
            ExitCode::from(2)
        }
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => std::future::pending().await,
    }
    eprintln!("shutting down: finishing in-flight requests");
}

async fn prepare(args: &RunArgs) -> Result<(Program, Grants)> {
    let mut grants = Grants {
        args: std::iter::once(
            args.file
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "main".into()),
        )
        .chain(args.args.iter().cloned())
        .collect(),
        stdout: Stdio::Inherit,
        stderr: Stdio::Inherit,
        ..Grants::default()
    };
    for kv in &args.envs {
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| anyhow!("--env {kv:?}: expected NAME=VALUE"))?;
        grants.env.push((k.to_owned(), v.to_owned()));
    }
    for name in &args.allow_env {
        if let Ok(v) = std::env::var(name) {
            grants.env.push((name.clone(), v));
        }
    }
    for d in &args.dirs {
        grants
            .dirs
            .push(dir_grant(d).with_context(|| format!("--dir {d:?}"))?);
    }
    // The machine's own addresses stay closed, as a node's do for a pod: a granted name
    // pointed at this machine must not reach its local services.
    let own = if args.allow_hosts.is_empty() {
        NodeAddresses::default()
    } else {
        NodeAddresses::of_this_namespace().context("listing this machine's addresses")?
    };
    grants.network = NetworkPolicy::new(&args.allow_hosts, own)?;
    if let Some(ca) = &args.tls_ca {
        let pem = std::fs::read(ca).with_context(|| format!("--tls-ca {}", ca.display()))?;
        grants.trust = TrustRoots::with_extra_pem(&ca.display().to_string(), &pem)?;
    }
    if let Some(m) = &args.memory {
        let q = Quantity::from(m.as_str());
        let bytes = q
            .to_bytes()
            .filter(|b| *b > 0)
            .ok_or_else(|| anyhow!("--memory {m:?}: expected a positive quantity such as 32Mi"))?;
        // As in a pod: the bound of one instance, and of all of them together.
        grants.limits.memory_bytes = Some(bytes);
        grants.limits.budget = Some(MemoryBudget::new(bytes));
    }
    if let Some(t) = &args.timeout {
        grants.limits.timeout = Some(duration(t).context("--timeout")?);
    }
    grants.limits.max_concurrent_requests = args.max_concurrent_requests;
    grants.validate()?;

    let engine = HostEngine::new(&EngineConfig {
        pooled_instances: args.listen.map(|_| {
            u32::try_from(args.max_concurrent_requests)
                .unwrap_or(u32::MAX)
                .clamp(1, 1000)
        }),
        ..EngineConfig::default()
    })?;
    let began = std::time::Instant::now();
    let program = if args.file.exists() || !oci::looks_like_reference(&args.file) {
        let bytes = std::fs::read(&args.file)
            .with_context(|| format!("reading {}", args.file.display()))?;
        let program = Program::load(&engine, &bytes)
            .with_context(|| format!("loading {}", args.file.display()))?;
        // Compiling a big component takes seconds on a small machine; say where they went.
        slow(
            args.quiet,
            began,
            &format!(
                "compiling {} ({} MiB); a registry reference is compiled once and cached",
                args.file.display(),
                bytes.len() >> 20
            ),
        );
        program
    } else {
        let reference = args.file.to_string_lossy();
        let cache_dir = match &args.cache_dir {
            Some(d) => d.clone(),
            None => default_cache_dir()?,
        };
        let program = oci::load_reference(&engine, &args.registry, &reference, &cache_dir)
            .await
            .with_context(|| format!("loading {reference}"))?;
        slow(
            args.quiet,
            began,
            &format!("pulling and compiling {reference} (the next run starts from the cache)"),
        );
        program
    };
    Ok((program, grants))
}

/// Tells on stderr how long a start step took, when it took a second or more.
fn slow(quiet: bool, began: std::time::Instant, what: &str) {
    let took = began.elapsed();
    if !quiet && took >= Duration::from_secs(1) {
        eprintln!("wa8s: {what} took {:.1} s", took.as_secs_f64());
    }
}

fn default_cache_dir() -> Result<PathBuf> {
    if let Some(xdg) = std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(xdg).join("wa8s"));
    }
    let home = std::env::var_os("HOME")
        .filter(|v| !v.is_empty())
        .ok_or_else(|| anyhow!("no cache directory: set --cache-dir, XDG_CACHE_HOME or HOME"))?;
    Ok(PathBuf::from(home).join(".cache/wa8s"))
}

fn dir_grant(spec: &str) -> Result<DirGrant> {
    let mut parts = spec.split(':');
    let (Some(host), Some(guest)) = (parts.next(), parts.next()) else {
        bail!("expected HOST:GUEST[:ro][:maxSize=QUANTITY]");
    };
    GuestPath::validate(guest).map_err(|e| anyhow!(e))?;
    let mut grant = DirGrant {
        host: PathBuf::from(host),
        guest: guest.to_owned(),
        read_only: false,
        max_bytes: None,
        bound_by_kernel: false,
    };
    for option in parts {
        match option.split_once('=') {
            None if option == "ro" => grant.read_only = true,
            None if option == "rw" => grant.read_only = false,
            Some(("maxSize", q)) => {
                let bytes = Quantity::from(q)
                    .to_bytes()
                    .filter(|b| *b > 0)
                    .ok_or_else(|| {
                        anyhow!("maxSize {q:?}: expected a positive quantity such as 64Mi")
                    })?;
                grant.max_bytes = Some(bytes);
            }
            _ => bail!("unknown directory option {option:?}: expected ro, rw or maxSize=QUANTITY"),
        }
    }
    Ok(grant)
}

fn duration(text: &str) -> Result<Duration> {
    parse_duration_ms(text)
        .filter(|ms| *ms > 0)
        .map(Duration::from_millis)
        .ok_or_else(|| anyhow!("{text:?} is not a positive duration such as 500ms, 30s or 1m"))
}
