//! Serving a wasi:http component: one pre-instantiated component, a fresh store per request,
//! bounded concurrency, a per-request deadline, and graceful shutdown.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, oneshot, watch};
use tokio::task::JoinSet;
use wasmtime::Store;
use wasmtime_wasi_http::WasiHttpView;
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;

use crate::program::Inner;
use crate::run::yield_every_tick;
use crate::state::GuestState;
use crate::{Error, Grants, Program};

/// Where and how to serve.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Address to listen on.
    pub addr: SocketAddr,
    /// How long in-flight requests may finish after shutdown starts.
    pub shutdown_grace: Duration,
}

/// A bound HTTP server for one wasi:http program.
#[derive(Debug)]
pub struct Server {
    // Kept as the std type until `run`, so a server can be made outside an async runtime
    // (the shim's guest binds before it starts any thread).
    listener: std::net::TcpListener,
    shared: Arc<Shared>,
    grace: Duration,
    // Set once the grace period is over: guests still running are stopped at their next
    // epoch yield.
    kill: watch::Sender<bool>,
}

/// Live counters of a server, for tests, readiness and metrics.
#[derive(Debug, Clone, Default)]
pub struct ServeStats {
    in_flight: Arc<AtomicUsize>,
    guests: Arc<AtomicUsize>,
    served: Arc<AtomicU64>,
}

/// Counts one unit while alive, so an aborted task cannot leave a count behind.
struct Counted(Arc<AtomicUsize>);

impl Counted {
    fn new(counter: &Arc<AtomicUsize>) -> Self {
        counter.fetch_add(1, Ordering::Relaxed);
        Counted(counter.clone())
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl ServeStats {
    /// Requests being handled now.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Guest instances alive now (a guest may outlive its request while it streams the body).
    pub fn guests(&self) -> usize {
        self.guests.load(Ordering::Relaxed)
    }

    /// Requests answered so far (any status).
    pub fn served(&self) -> u64 {
        self.served.load(Ordering::Relaxed)
    }
}

struct Shared {
    stats: ServeStats,
    pre: ProxyPre<GuestState>,
    // The HostEngine, not just the wasmtime Engine: it owns the epoch ticker that makes
    // deadlines fire, which must live as long as the server.
    engine: crate::HostEngine,
    grants: Grants,
    quotas: crate::quota::Quotas,
    permits: Arc<Semaphore>,
    max_concurrent: u32,
    killed: watch::Receiver<bool>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("grants", &self.grants)
            .finish()
    }
}

impl Server {
    /// Validates the program and the grants, then binds the address. Nothing is bound if the
    /// program cannot be served or a grant cannot be applied.
    pub async fn bind(
        program: &Program,
        grants: Grants,
        options: ServeOptions,
    ) -> Result<Self, Error> {
        Self::check(program, &grants)?;
        let listener = TcpListener::bind(options.addr)
            .await
            .and_then(|l| l.into_std())
            .map_err(|source| Error::Bind {
                addr: options.addr,
                source,
            })?;
        Self::on_listener(program, grants, listener, options.shutdown_grace)
    }

    /// A server on `listener`, bound beforehand (for instance before the process gave up the
    /// privileges a low port needs). Needs no async runtime until [`Server::run`].
    pub fn on_listener(
        program: &Program,
        grants: Grants,
        listener: std::net::TcpListener,
        shutdown_grace: Duration,
    ) -> Result<Self, Error> {
        let pre = Self::check(program, &grants)?;
        // Resolve the bounds and build one store's state up front, so unusable grants fail
        // now, not per request.
        let quotas = crate::quota::Quotas::new(&grants)?;
        GuestState::new(&grants, quotas.clone())?;
        listener.set_nonblocking(true)?;
        let max_concurrent = grants
            .limits
            .max_concurrent_requests
            .clamp(1, u32::MAX as usize) as u32;
        let (kill, killed) = watch::channel(false);
        Ok(Server {
            listener,
            grace: shutdown_grace,
            kill,
            shared: Arc::new(Shared {
                stats: ServeStats::default(),
                pre,
                engine: program.engine.clone(),
                permits: Arc::new(Semaphore::new(max_concurrent as usize)),
                max_concurrent,
                killed,
                grants,
                quotas,
            }),
        })
    }

    fn check(program: &Program, grants: &Grants) -> Result<ProxyPre<GuestState>, Error> {
        let Inner::Http(pre) = &program.inner else {
            return Err(Error::WrongKind(
                "this program does not export wasi:http/incoming-handler: run it without --listen"
                    .into(),
            ));
        };
        grants.validate()?;
        Ok(pre.clone())
    }

    /// Counters that stay valid while the server runs.
    pub fn stats(&self) -> ServeStats {
        self.shared.stats.clone()
    }

    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> Result<SocketAddr, Error> {
        Ok(self.listener.local_addr()?)
    }

    /// Serves until `shutdown` resolves, then stops accepting, lets in-flight requests finish
    /// for up to the grace period, and drops whatever is left.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), Error> {
        self.shared.engine.ensure_ticking()?;
        let listener = TcpListener::from_std(self.listener)?;
        self.shared.grants.telemetry.started_now();
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut connections = JoinSet::new();
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                accepted = listener.accept() => {
                    let (socket, _) = match accepted {
                        Ok(a) => a,
                        Err(e) => {
                            tracing::warn!("accept failed: {e}");
                            continue;
                        }
                    };
                    // Small responses should not wait for Nagle.
                    let _ = socket.set_nodelay(true);
                    let shared = self.shared.clone();
                    let mut stop = stop_rx.clone();
                    connections.spawn(async move {
                        let service = service_fn(move |req| handle(shared.clone(), req));
                        let conn = http1::Builder::new()
                            .keep_alive(true)
                            .serve_connection(TokioIo::new(socket), service);
                        tokio::pin!(conn);
                        tokio::select! {
                            _ = conn.as_mut() => {}
                            _ = stop.changed() => {
                                conn.as_mut().graceful_shutdown();
                                let _ = conn.await;
                            }
                        }
                    });
                }
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
            }
        }
        drop(listener);
        let _ = stop_tx.send(true);
        let drained = tokio::time::timeout(self.grace, async {
            while connections.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                "{} connection(s) still busy after the {:?} grace period; closing them",
                connections.len(),
                self.grace
            );
            connections.abort_all();
        }
        // Guests run on their own tasks (they may stream after answering), so closing the
        // connections does not stop them: tell them to stop, and wait until every one has
        // returned its permit, i.e. its store is gone. They notice within one epoch tick.
        let _ = self.kill.send(true);
        let all = self.shared.max_concurrent;
        if tokio::time::timeout(GUEST_STOP, self.shared.permits.acquire_many(all))
            .await
            .is_err()
        {
            tracing::warn!("some guests did not stop within {GUEST_STOP:?} of shutdown");
        }
        Ok(())
    }
}

/// How long stopped guests get to reach their next yield point.
const GUEST_STOP: Duration = Duration::from_secs(2);

async fn handle(
    shared: Arc<Shared>,
    req: hyper::Request<Incoming>,
) -> Result<hyper::Response<HyperOutgoingBody>, Infallible> {
    let stats = shared.stats.clone();
    let telemetry = shared.grants.telemetry.clone();
    let in_flight = Counted::new(&stats.in_flight);
    let arrived = Instant::now();
    telemetry.request_started();
    let trace = telemetry.traces().map(|t| t.server_span(&req));
    let access = telemetry.access(&req);
    let response = match serve_one(shared, req, trace.clone()).await {
        Ok(resp) => resp,
        Err((status, message)) => plain(status, message),
    };
    let status = response.status().as_u16();
    telemetry.request_done(status, arrived.elapsed());
    if let Some(a) = access {
        telemetry.accessed(a, status, trace.as_ref());
    }
    if let Some(cx) = &trace {
        crate::traces::end(cx, Some(status));
    }
    drop(in_flight);
    stats.served.fetch_add(1, Ordering::Relaxed);
    Ok(response)
}

async fn serve_one(
    shared: Arc<Shared>,
    req: hyper::Request<Incoming>,
    trace: Option<opentelemetry::Context>,
) -> Result<hyper::Response<HyperOutgoingBody>, (u16, String)> {
    let internal = |e: Error| (500, wa8s_api::report::report(&e));
    let permit = shared
        .permits
        .clone()
        .acquire_owned()
        .await
        .map_err(|_| (503, "server is shutting down".to_owned()))?;
    let timeout = shared.grants.limits.timeout;
    let mut store = Store::new(
        &shared.engine.engine,
        GuestState::new(&shared.grants, shared.quotas.clone()).map_err(internal)?,
    );
    store.limiter(|s: &mut GuestState| &mut s.limits);
    if let Some(cx) = trace {
        store.data_mut().trace_within(cx);
    }
    let refused = store.data().limits.refused.clone();
    yield_every_tick(&mut store);
    let (tx, rx) = oneshot::channel();
    let wasm_err = |e: wasmtime::Error| (500, wa8s_api::report::report(&*e));
    let request = store
        .data_mut()
        .http()
        .new_incoming_request(Scheme::Http, req)
        .map_err(wasm_err)?;
    let out = store
        .data_mut()
        .http()
        .new_response_outparam(tx)
        .map_err(wasm_err)?;
    let pre = shared.pre.clone();
    // The task holds the engine, not just the store: the epoch ticker lives in the
    // HostEngine, and without ticks a looping guest would never yield, so neither its deadline
    // nor shutdown could stop it.
    let engine = shared.engine.clone();
    let mut killed = shared.killed.clone();
    let telemetry = shared.grants.telemetry.clone();
    let alive = Counted::new(&shared.stats.guests);
    // The guest runs on its own task: it may keep streaming the body after it has set the
    // response, and the store (and the concurrency permit) live until it is done.
    let task = tokio::spawn(async move {
        let _permit = permit;
        let _alive = alive;
        let _ticking = engine;
        let guest = crate::run::within(timeout, &refused, async move {
            let proxy = pre.instantiate_async(&mut store).await?;
            proxy
                .wasi_http_incoming_handler()
                .call_handle(&mut store, request, out)
                .await
                .map(|()| 0)
        });
        let outcome = tokio::select! {
            outcome = guest => outcome,
            _ = killed.wait_for(|k| *k) => {
                Err(Error::ShutDown)
            }
        };
        // Counted here, where every guest ends, also one that failed after it answered.
        if let Err(e) = &outcome {
            telemetry.stopped_by(e);
        }
        outcome
    });
    match rx.await {
        Ok(Ok(response)) => Ok(response),
        Ok(Err(code)) => Err((500, format!("guest returned an error: {code:?}"))),
        Err(_) => {
            // The guest ended without setting a response: report why.
            let why = match task.await {
                Ok(Ok(_)) => Error::NoResponse,
                Ok(Err(e)) => e,
                Err(e) => Error::Task(e),
            };
            let status = if matches!(why, Error::Deadline(_)) {
                503
            } else {
                500
            };
            let why = wa8s_api::report::report(&why);
            tracing::debug!(status, "request failed: {why}");
            Err((status, why))
        }
    }
}

fn plain(status: u16, message: String) -> hyper::Response<HyperOutgoingBody> {
    let body = Full::new(Bytes::from(message + "\n"))
        .map_err(|never| match never {})
        .boxed_unsync();
    let mut resp = hyper::Response::new(body);
    *resp.status_mut() =
        hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// Serves `telemetry` as Prometheus metrics (`GET /metrics`) on `listener` until `shutdown`.
/// Separate from the component's port and outside its concurrency limit, so a saturated or
/// stuck component is still observable.
pub async fn serve_metrics(
    listener: std::net::TcpListener,
    telemetry: crate::Telemetry,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Error> {
    listener.set_nonblocking(true)?;
    let listener = TcpListener::from_std(listener)?;
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => {
                let Ok((socket, _)) = accepted else { continue };
                let telemetry = telemetry.clone();
                connections.spawn(async move {
                    let service = service_fn(move |req: hyper::Request<Incoming>| {
                        let telemetry = telemetry.clone();
                        async move { Ok::<_, Infallible>(metrics_response(&req, &telemetry)) }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(socket), service)
                        .await;
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    connections.abort_all();
    Ok(())
}

fn metrics_response(
    req: &hyper::Request<Incoming>,
    telemetry: &crate::Telemetry,
) -> hyper::Response<Full<Bytes>> {
    let (status, content_type, body) = match (req.method(), req.uri().path()) {
        (&hyper::Method::GET, "/metrics") => (
            hyper::StatusCode::OK,
            crate::OPENMETRICS_CONTENT_TYPE,
            telemetry.encode(),
        ),
        _ => (
            hyper::StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            "metrics are at GET /metrics\n".to_owned(),
        ),
    };
    let mut resp = hyper::Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    resp
}
