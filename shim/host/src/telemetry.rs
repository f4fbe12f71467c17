//! What a program's guests did, as Prometheus metrics and as the denial lines operators read
//! in `kubectl logs`.
//!
//! One [`Telemetry`] per program (a pod's guest process, a `wa8s run`): the server counts
//! requests and stops, the network gate and the directory bounds report [`Denial`]s. A
//! denial is counted always and written as one line naming what was refused and which grant
//! would allow it, at most once a second per kind (the line says how many were held back).
//! Never the guest's data: names, addresses and sizes only.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use wa8s_telemetry::Throttle;

/// The kinds of denial, a label of `wa8s_guest_denials_total`.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum DenialKind {
    /// An outgoing wasi:http request to a host no rule names.
    outbound_http,
    /// A granted host that resolved only to addresses the rule does not open (loopback,
    /// link-local, the node's own, ...).
    restricted_address,
    /// A wasi:sockets name lookup no rule allows.
    name_lookup,
    /// A wasi:sockets connect or send to an address no rule (or granted name) opens.
    socket,
    /// A write that would take a directory past its `maxSize`.
    max_size,
}

const KINDS: [DenialKind; 5] = [
    DenialKind::outbound_http,
    DenialKind::restricted_address,
    DenialKind::name_lookup,
    DenialKind::socket,
    DenialKind::max_size,
];

/// Something a guest's grants did not allow, with what would allow it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denial {
    /// `scheme://host:port` is named by no `allowedHosts` rule.
    OutboundHttp {
        scheme: &'static str,
        host: String,
        port: u16,
    },
    /// `host:port` is granted, but resolved only to addresses its rule does not open.
    RestrictedAddress { host: String, port: u16 },
    /// A name lookup of `name`, which no rule names.
    NameLookup { name: String },
    /// A `proto` connection (or datagram) to `addr`.
    Socket {
        proto: &'static str,
        addr: std::net::SocketAddr,
    },
    /// A write to the directory `dir` (as the guest sees it), which holds `max` bytes.
    MaxSize { dir: String, max: u64 },
}

impl Denial {
    /// The metric label.
    pub fn kind(&self) -> DenialKind {
        match self {
            Denial::OutboundHttp { .. } => DenialKind::outbound_http,
            Denial::RestrictedAddress { .. } => DenialKind::restricted_address,
            Denial::NameLookup { .. } => DenialKind::name_lookup,
            Denial::Socket { .. } => DenialKind::socket,
            Denial::MaxSize { .. } => DenialKind::max_size,
        }
    }
}

impl fmt::Display for Denial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Denial::OutboundHttp { scheme, host, port } => write!(
                f,
                "outbound to {scheme}://{host}:{port} denied: not in spec.wasi.network allowedHosts"
            ),
            Denial::RestrictedAddress { host, port } => write!(
                f,
                "outbound to {host}:{port} denied: it resolves only to restricted addresses \
                 (loopback, link-local, the node's own), which spec.wasi.network allowedHosts \
                 opens only when a rule names the address itself"
            ),
            Denial::NameLookup { name } => write!(
                f,
                "name lookup of {name} denied: not in spec.wasi.network allowedHosts"
            ),
            Denial::Socket { proto, addr } => write!(
                f,
                "{proto} to {addr} denied: not in spec.wasi.network allowedHosts (sockets reach \
                 the addresses a rule names and those a granted name resolved to)"
            ),
            Denial::MaxSize { dir, max } => write!(
                f,
                "write to {dir} denied: the directory holds its spec.wasi.fs maxSize of {max} bytes"
            ),
        }
    }
}

/// How a request ended, a label of `wa8s_http_requests_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CodeClass {
    code: &'static str,
}

/// Why a guest was stopped, a label of `wa8s_guest_stops_total`.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum Stop {
    /// It trapped (a bug in the component, or stack exhaustion).
    trap,
    /// It ran past its request deadline.
    deadline,
    /// Its memory limit refused a growth and it gave up.
    memory_limit,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StopLabel {
    reason: Stop,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: DenialKind,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

struct Inner {
    registry: Registry,
    /// Indexed by status class (1xx..5xx): handles kept so a request costs one atomic add.
    requests: [Counter; 5],
    duration: Histogram,
    in_flight: Gauge,
    stops: [Counter; 3],
    denials: [Counter; 5],
    throttles: [Throttle; 5],
    start_time: Gauge<f64, std::sync::atomic::AtomicU64>,
    precompile: Family<ResultLabel, Counter>,
    /// Set once, when export is configured (after the guest's confinement: the exporter
    /// runs on a thread of its own, and privileges are dropped while there is only one).
    traces: std::sync::OnceLock<crate::traces::Traces>,
    /// Set once when the access log is on.
    access: std::sync::OnceLock<AccessLog>,
    access_dropped: Counter,
}

/// One JSON line per request, written by a thread of its own: a request only queues its
/// line (and the line is dropped, and counted, when the queue is full), so a slow reader of
/// the container's log never holds up a request.
struct AccessLog {
    lines: std::sync::mpsc::SyncSender<String>,
}

/// One request, as the access log records it.
pub(crate) struct Access {
    method: String,
    path: String,
    started: std::time::Instant,
    at: time::OffsetDateTime,
}

impl Access {
    pub(crate) fn of<B>(req: &hyper::Request<B>) -> Self {
        Access {
            method: req.method().to_string(),
            // The path only: a query string may carry what its caller would not want logged.
            path: req.uri().path().to_owned(),
            started: std::time::Instant::now(),
            at: time::OffsetDateTime::now_utc(),
        }
    }
}

/// A program's metrics and denial reporting; cheap to clone (one shared set).
#[derive(Clone)]
pub struct Telemetry(Arc<Inner>);

impl fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Telemetry")
    }
}

impl Default for Telemetry {
    fn default() -> Self {
        Self::new()
    }
}

impl Telemetry {
    /// Exports request traces over OTLP from now on when this process's environment names
    /// an endpoint (`OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`);
    /// `service` names the spans' service unless `OTEL_SERVICE_NAME` does. Returns whether
    /// export is on. Starts the exporter's thread.
    /// Collectors reached over https are checked against `trust` (the guest's roots: Mozilla's
    /// and the node's `guestCaFile`).
    pub fn export_traces_from_env(
        &self,
        service: &'static str,
        trust: &crate::TrustRoots,
    ) -> Result<bool, crate::traces::TracesError> {
        match crate::traces::Traces::from_env(service, trust)? {
            Some(t) => {
                let _ = self.0.traces.set(t);
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Writes an access log line per request to stderr from now on when `WA8S_ACCESS_LOG`
    /// is `json` in this process's environment. Returns whether it is on. Starts the writer's
    /// thread; anything else in the variable is refused by name.
    pub fn log_access_from_env(&self) -> Result<bool, crate::Error> {
        let var = wa8s_api::contract::ACCESS_LOG_ENV;
        match std::env::var(var).as_deref() {
            Err(_) | Ok("") | Ok("off") => return Ok(false),
            Ok("json") => {}
            Ok(other) => {
                return Err(crate::Error::Engine(format!(
                    "{var}={other:?}: expected \"json\" (or unset)"
                )));
            }
        }
        let (lines, queue) = std::sync::mpsc::sync_channel::<String>(4096);
        std::thread::Builder::new()
            .name("wa8s-access-log".into())
            .spawn(move || {
                use std::io::Write as _;
                // Locked per line, never across the wait: the process's other writers
                // (its log lines) share stderr.
                for line in queue {
                    let _ = writeln!(std::io::stderr().lock(), "{line}");
                }
            })
            .map_err(|e| crate::Error::Engine(format!("starting the access log: {e}")))?;
        let _ = self.0.access.set(AccessLog { lines });
        Ok(true)
    }

    /// The request's record, when the access log is on.
    pub(crate) fn access<B>(&self, req: &hyper::Request<B>) -> Option<Access> {
        self.0.access.get().map(|_| Access::of(req))
    }

    /// Queues the line of a request that ended with `status`.
    pub(crate) fn accessed(&self, a: Access, status: u16, trace: Option<&opentelemetry::Context>) {
        let Some(log) = self.0.access.get() else {
            return;
        };
        let at =
            a.at.format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default();
        let mut line = serde_json::json!({
            "time": at,
            "method": a.method,
            "path": a.path,
            "status": status,
            "duration_ms": (a.started.elapsed().as_secs_f64() * 1e6).round() / 1e3,
        });
        if let Some(cx) = trace {
            use opentelemetry::trace::TraceContextExt as _;
            line["trace_id"] = cx.span().span_context().trace_id().to_string().into();
        }
        if log.lines.try_send(line.to_string()).is_err() {
            self.0.access_dropped.inc();
        }
    }

    /// Sends the spans still queued (at most `within`); call once serving is over.
    pub fn flush(&self, within: Duration) {
        if let Some(t) = self.0.traces.get() {
            t.shutdown(within);
        }
    }

    pub(crate) fn traces(&self) -> Option<&crate::traces::Traces> {
        self.0.traces.get()
    }

    /// A fresh set, every series at zero, no traces.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("wa8s");
        let requests_family = Family::<CodeClass, Counter>::default();
        let requests = ["1xx", "2xx", "3xx", "4xx", "5xx"]
            .map(|code| requests_family.get_or_create(&CodeClass { code }).clone());
        registry.register(
            "http_requests",
            "Requests the component answered, by status class",
            requests_family,
        );
        // 0.25 ms to about 16 s.
        let duration = Histogram::new(exponential_buckets(0.000_25, 2.0, 17));
        registry.register(
            "http_request_duration_seconds",
            "Time from a request's arrival to its response head",
            duration.clone(),
        );
        let in_flight = Gauge::default();
        registry.register(
            "http_requests_in_flight",
            "Requests being handled now",
            in_flight.clone(),
        );
        let stops_family = Family::<StopLabel, Counter>::default();
        let stops = [Stop::trap, Stop::deadline, Stop::memory_limit]
            .map(|reason| stops_family.get_or_create(&StopLabel { reason }).clone());
        registry.register(
            "guest_stops",
            "Guest instances stopped before they finished: trapped, past their deadline, or at their memory limit",
            stops_family,
        );
        let denials_family = Family::<KindLabel, Counter>::default();
        let denials = KINDS.map(|kind| denials_family.get_or_create(&KindLabel { kind }).clone());
        registry.register(
            "guest_denials",
            "Things a guest asked for that its grants do not allow, by kind",
            denials_family,
        );
        let start_time = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        registry.register(
            "instance_start_time_seconds",
            "When this runtime started serving, in seconds since the Unix epoch",
            start_time.clone(),
        );
        let precompile = Family::<ResultLabel, Counter>::default();
        registry.register(
            "precompile_cache_lookups",
            "Whether the node's precompile cache held the component's native code at start (hit) or it was compiled for this start (miss)",
            precompile.clone(),
        );
        let access_dropped = Counter::default();
        registry.register(
            "access_log_dropped_lines",
            "Access log lines dropped because the container's log was not read fast enough",
            access_dropped.clone(),
        );
        Telemetry(Arc::new(Inner {
            registry,
            requests,
            duration,
            in_flight,
            stops,
            denials,
            throttles: KINDS.map(|_| Throttle::new(Duration::from_secs(1))),
            start_time,
            precompile,
            traces: std::sync::OnceLock::new(),
            access: std::sync::OnceLock::new(),
            access_dropped,
        }))
    }

    /// Reports a denial: counted, and written to the log unless one of its kind was written
    /// less than a second ago.
    pub fn deny(&self, denial: Denial) {
        let i = denial.kind() as usize;
        self.0.denials[i].inc();
        if let Some(held_back) = self.0.throttles[i].admit() {
            if held_back > 0 {
                tracing::warn!(
                    target: "wa8s::denial",
                    "{denial} ({held_back} more like it in the last second not shown)"
                );
            } else {
                tracing::warn!(target: "wa8s::denial", "{denial}");
            }
        }
    }

    /// How many denials of `kind` so far.
    pub fn denials(&self, kind: DenialKind) -> u64 {
        self.0.denials[kind as usize].get()
    }

    /// A guest stopped.
    pub(crate) fn stopped(&self, why: Stop) {
        self.0.stops[why as usize].inc();
    }

    /// The stop an error is, if it is one.
    pub(crate) fn stopped_by(&self, e: &crate::Error) {
        match e {
            crate::Error::Deadline(_) => self.stopped(Stop::deadline),
            crate::Error::OutOfMemory { .. } => self.stopped(Stop::memory_limit),
            crate::Error::Trap(_) => self.stopped(Stop::trap),
            _ => {}
        }
    }

    pub(crate) fn request_started(&self) {
        self.0.in_flight.inc();
    }

    pub(crate) fn request_done(&self, status: u16, took: Duration) {
        self.0.in_flight.dec();
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        self.0.requests[class].inc();
        self.0.duration.observe(took.as_secs_f64());
    }

    /// Marks the moment serving began.
    pub fn started_now(&self) {
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or_default();
        self.0.start_time.set(now);
    }

    /// Records whether the precompile cache held the component at start.
    pub fn precompile_cache(&self, hit: bool) {
        let result = if hit { "hit" } else { "miss" };
        self.0
            .precompile
            .get_or_create(&ResultLabel { result })
            .inc();
    }

    /// The metrics in the OpenMetrics text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.0.registry);
        out
    }
}

/// The content type of [`Telemetry::encode`]'s output.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_series_is_exported_at_zero_before_anything_happens() {
        let text = Telemetry::new().encode();
        for line in [
            "wa8s_http_requests_total{code=\"2xx\"} 0",
            "wa8s_http_requests_total{code=\"5xx\"} 0",
            "wa8s_http_requests_in_flight 0",
            "wa8s_guest_stops_total{reason=\"deadline\"} 0",
            "wa8s_guest_stops_total{reason=\"memory_limit\"} 0",
            "wa8s_guest_denials_total{kind=\"outbound_http\"} 0",
            "wa8s_guest_denials_total{kind=\"max_size\"} 0",
            "wa8s_http_request_duration_seconds_count 0",
        ] {
            assert!(text.contains(line), "{line} missing from:\n{text}");
        }
    }

    #[test]
    fn requests_count_by_class_and_denials_by_kind() {
        let t = Telemetry::new();
        t.request_started();
        t.request_done(204, Duration::from_millis(3));
        t.request_started();
        t.request_done(503, Duration::from_millis(3));
        t.request_started();
        t.deny(Denial::NameLookup {
            name: "db.internal".into(),
        });
        t.deny(Denial::NameLookup {
            name: "db.internal".into(),
        });
        let text = t.encode();
        assert!(
            text.contains("wa8s_http_requests_total{code=\"2xx\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("wa8s_http_requests_total{code=\"5xx\"} 1"),
            "{text}"
        );
        assert!(text.contains("wa8s_http_requests_in_flight 1"), "{text}");
        assert!(
            text.contains("wa8s_guest_denials_total{kind=\"name_lookup\"} 2"),
            "{text}"
        );
        assert_eq!(t.denials(DenialKind::name_lookup), 2);
    }

    #[test]
    fn a_denial_names_what_was_refused_and_the_grant_that_would_allow_it() {
        let d = Denial::OutboundHttp {
            scheme: "https",
            host: "api.example.com".into(),
            port: 443,
        };
        assert_eq!(
            d.to_string(),
            "outbound to https://api.example.com:443 denied: not in spec.wasi.network allowedHosts"
        );
        let d = Denial::MaxSize {
            dir: "/data".into(),
            max: 1024,
        };
        assert_eq!(
            d.to_string(),
            "write to /data denied: the directory holds its spec.wasi.fs maxSize of 1024 bytes"
        );
    }
}
