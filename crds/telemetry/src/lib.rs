//! What every wa8s process does the same way to be observed.
//!
//! - [`init_logging`]: the one log subscriber each process installs (operator, node
//!   installer, CLI, and the shim's guest and precompile processes): text by default, JSON
//!   on request, levels from a `RUST_LOG`-style filter.
//! - [`Throttle`]: at most one line per interval for a repeated notice (a guest's denials),
//!   counting what it held back.
//!
//! The settings are environment variables (flags where a binary has them), so the chart
//! sets them the same way for every process: [`LOG_FILTER_ENV`], [`LOG_FORMAT_ENV`].

use std::str::FromStr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The filter, in `RUST_LOG` syntax (`info`, `wa8s_host=debug,warn`). `RUST_LOG` itself is
/// read when this is unset. `text` (the default) or `json`: [`LOG_FORMAT_ENV`].
pub use wa8s_api::contract::{LOG_FILTER_ENV, LOG_FORMAT_ENV};

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// One human-readable line per event.
    #[default]
    Text,
    /// One JSON object per line, for log pipelines.
    Json,
}

/// A setting that does not parse.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Spans cannot be exported as the `OTEL_*` variables say.
    #[error("exporting spans over OTLP")]
    Otlp(#[source] opentelemetry_otlp::ExporterBuildError),
    /// An unknown log format.
    #[error("log format {0:?}: expected \"text\" or \"json\"")]
    Format(String),
    /// A filter that is not `RUST_LOG` syntax.
    #[error("log filter {filter:?} ({LOG_FILTER_ENV}): {source}")]
    Filter {
        /// The filter as given.
        filter: String,
        /// The parser's reason.
        #[source]
        source: tracing_subscriber::filter::ParseError,
    },
}

impl FromStr for LogFormat {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        match s.trim() {
            "text" | "" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(Error::Format(other.to_owned())),
        }
    }
}

impl LogFormat {
    /// The format [`LOG_FORMAT_ENV`] names, else text.
    pub fn from_env() -> Result<Self, Error> {
        std::env::var(LOG_FORMAT_ENV).unwrap_or_default().parse()
    }
}

/// What a process's log lines look like.
#[derive(Debug, Clone)]
pub struct Logging {
    /// Text or JSON.
    pub format: LogFormat,
    /// The filter when neither [`LOG_FILTER_ENV`] nor `RUST_LOG` is set.
    pub default_filter: &'static str,
    /// A timestamp on each text line (off where the log collector adds its own, as
    /// containerd does for a container's streams).
    pub timestamps: bool,
    /// The module an event came from, on each text line.
    pub targets: bool,
    /// Export this process's spans over OTLP, as this service, when the standard
    /// `OTEL_EXPORTER_OTLP_ENDPOINT` (or `…_TRACES_ENDPOINT`) names a collector.
    pub spans_as: Option<&'static str>,
}

impl Logging {
    /// Text lines with timestamps and targets, at `default_filter`.
    pub fn new(default_filter: &'static str) -> Self {
        Logging {
            format: LogFormat::Text,
            default_filter,
            timestamps: true,
            targets: true,
            spans_as: None,
        }
    }
}

/// The filter from the environment, else `default`.
fn filter(default: &str) -> Result<tracing_subscriber::EnvFilter, Error> {
    let given = std::env::var(LOG_FILTER_ENV)
        .or_else(|_| std::env::var("RUST_LOG"))
        .ok()
        .filter(|f| !f.trim().is_empty());
    let text = given.as_deref().unwrap_or(default);
    tracing_subscriber::EnvFilter::builder()
        .parse(text)
        .map_err(|source| Error::Filter {
            filter: text.to_owned(),
            source,
        })
}

type Layer = Box<dyn tracing_subscriber::Layer<tracing_subscriber::Registry> + Send + Sync>;

/// Installs the process's subscriber, writing to stderr (and exporting spans when
/// [`Logging::spans_as`] asks and a collector is configured). A second call (tests that run
/// several mains in one process) leaves the first in place. Keep the returned [`Spans`]
/// until the process ends: dropping it sends the spans still queued.
pub fn init_logging(logging: &Logging) -> Result<Spans, Error> {
    use tracing_subscriber::Layer as _;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let filter = filter(logging.default_filter)?;
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(false);
    let lines: Layer = match (logging.format, logging.timestamps, logging.targets) {
        (LogFormat::Json, _, _) => fmt
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .boxed(),
        (LogFormat::Text, true, t) => fmt.with_target(t).boxed(),
        (LogFormat::Text, false, t) => fmt.without_time().with_target(t).boxed(),
    };
    let (spans, provider) = match logging.spans_as.map(exporter).transpose()? {
        Some(Some((layer, provider))) => (Some(layer), Some(provider)),
        _ => (None, None),
    };
    let layers: Vec<Layer> = [Some(lines), spans].into_iter().flatten().collect();
    // Already installed: keep the first.
    let _ = tracing_subscriber::registry()
        .with(layers.with_filter(filter))
        .try_init();
    Ok(Spans(provider))
}

/// Spans exported over OTLP, sent when this is dropped.
#[derive(Debug, Default)]
#[must_use = "dropping it stops the span export"]
pub struct Spans(Option<opentelemetry_sdk::trace::SdkTracerProvider>);

impl Spans {
    /// Whether spans are exported.
    pub fn exported(&self) -> bool {
        self.0.is_some()
    }
}

impl Drop for Spans {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = p.shutdown_with_timeout(Duration::from_secs(2));
        }
    }
}

/// The span layer when the environment names a collector.
fn exporter(
    service: &'static str,
) -> Result<Option<(Layer, opentelemetry_sdk::trace::SdkTracerProvider)>, Error> {
    use opentelemetry::trace::TracerProvider as _;
    use tracing_subscriber::Layer as _;
    let configured = wa8s_api::contract::TRACE_ENDPOINT_ENV
        .iter()
        .any(|v| std::env::var_os(v).is_some());
    if !configured {
        return Ok(None);
    }
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .build()
        .map_err(Error::Otlp)?;
    let mut resource = opentelemetry_sdk::Resource::builder();
    if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
        resource = resource.with_service_name(service);
    }
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource.build())
        .build();
    let layer = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer(service))
        .boxed();
    Ok(Some((layer, provider)))
}

/// Lets a repeated notice through at most once per interval, and says how many it held back
/// in between: a guest retrying a denied call in a loop writes one line a second, not
/// thousands, and the count is not lost.
#[derive(Debug)]
pub struct Throttle {
    interval: Duration,
    state: Mutex<(Option<Instant>, u64)>,
}

impl Throttle {
    /// At most one notice per `interval`.
    pub fn new(interval: Duration) -> Self {
        Throttle {
            interval,
            state: Mutex::new((None, 0)),
        }
    }

    /// `Some(held_back)` when this notice may be written now (with how many were held back
    /// since the last one), `None` when it is held back.
    pub fn admit(&self) -> Option<u64> {
        self.admit_at(Instant::now())
    }

    fn admit_at(&self, now: Instant) -> Option<u64> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let (last, held) = &mut *state;
        match last {
            Some(t) if now.duration_since(*t) < self.interval => {
                *held += 1;
                None
            }
            _ => {
                *last = Some(now);
                Some(std::mem::take(held))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_parse_and_an_unknown_one_is_named() {
        assert_eq!("json".parse::<LogFormat>().expect("json"), LogFormat::Json);
        assert_eq!("text".parse::<LogFormat>().expect("text"), LogFormat::Text);
        let e = "yaml".parse::<LogFormat>().expect_err("refused");
        assert_eq!(
            e.to_string(),
            r#"log format "yaml": expected "text" or "json""#
        );
    }

    #[test]
    fn a_throttle_admits_one_notice_per_interval_and_counts_the_rest() {
        let t = Throttle::new(Duration::from_secs(1));
        let t0 = Instant::now();
        assert_eq!(t.admit_at(t0), Some(0));
        assert_eq!(t.admit_at(t0 + Duration::from_millis(10)), None);
        assert_eq!(t.admit_at(t0 + Duration::from_millis(20)), None);
        assert_eq!(t.admit_at(t0 + Duration::from_millis(1001)), Some(2));
        assert_eq!(t.admit_at(t0 + Duration::from_millis(1002)), None);
    }
}
