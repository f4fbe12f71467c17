//! Request traces: a server span per request (continuing the caller's W3C `traceparent`)
//! and a client span per outgoing wasi:http request the guest makes (which carries the
//! `traceparent` on), exported over OTLP/HTTP when the standard `OTEL_EXPORTER_OTLP_*`
//! variables name an endpoint.
//!
//! Host code, outside the guest's grants: the guest neither sees nor controls the export.
//! Spans are handed to a batch processor on its own thread, which drops spans rather than
//! wait when its queue is full, so a slow or absent collector never holds up a request.

use std::borrow::Cow;
use std::time::Duration;

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{SpanKind, Status, TraceContextExt, Tracer as _, TracerProvider as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_http::{HeaderExtractor, HeaderInjector};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};

/// Why traces cannot be exported as configured.
#[derive(Debug, thiserror::Error)]
pub enum TracesError {
    /// The exporter's HTTP client cannot be made.
    #[error("exporting traces over OTLP: making the HTTP client")]
    Client(#[source] reqwest::Error),
    /// The exporter refused its settings (an endpoint that is not a URL, ...).
    #[error("exporting traces over OTLP")]
    Exporter(#[source] opentelemetry_otlp::ExporterBuildError),
}

/// A tracer exporting to the configured collector.
#[derive(Clone)]
pub(crate) struct Traces {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
    propagator: std::sync::Arc<TraceContextPropagator>,
}

impl std::fmt::Debug for Traces {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Traces")
    }
}

impl Traces {
    /// A tracer when this process's environment names an OTLP endpoint, else `None`. The
    /// exporter reads the rest of the standard variables itself (headers, timeout,
    /// protocol), and the resource `OTEL_SERVICE_NAME` / `OTEL_RESOURCE_ATTRIBUTES`.
    pub(crate) fn from_env(
        default_service: &'static str,
        trust: &crate::TrustRoots,
    ) -> Result<Option<Self>, TracesError> {
        if !wa8s_api::contract::TRACE_ENDPOINT_ENV
            .iter()
            .any(|v| std::env::var_os(v).is_some())
        {
            return Ok(None);
        }
        use opentelemetry_otlp::{WithExportConfig as _, WithHttpConfig as _};
        let client = reqwest::blocking::Client::builder()
            .use_preconfigured_tls((*trust.client_config()).clone())
            .timeout(Duration::from_secs(5))
            .build()
            .map_err(TracesError::Client)?;
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_http_client(client)
            .with_timeout(Duration::from_secs(5))
            .build()
            .map_err(TracesError::Exporter)?;
        let mut resource = opentelemetry_sdk::Resource::builder();
        if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
            resource = resource.with_service_name(default_service);
        }
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource.build())
            .build();
        let tracer = provider.tracer("wa8s");
        Ok(Some(Traces {
            provider,
            tracer,
            propagator: std::sync::Arc::new(TraceContextPropagator::new()),
        }))
    }

    /// Starts the span of an incoming request, as a child of its `traceparent` if it has one.
    pub(crate) fn server_span(&self, req: &http::Request<hyper::body::Incoming>) -> Context {
        let parent = self.propagator.extract(&HeaderExtractor(req.headers()));
        let span = self
            .tracer
            .span_builder(req.method().to_string())
            .with_kind(SpanKind::Server)
            .with_attributes([
                KeyValue::new("http.request.method", req.method().to_string()),
                KeyValue::new("url.path", req.uri().path().to_owned()),
            ])
            .start_with_context(&self.tracer, &parent);
        parent.with_span(span)
    }

    /// Starts the span of an outgoing request within `parent` and writes its `traceparent`
    /// into the request's headers.
    pub(crate) fn client_span(
        &self,
        parent: &Context,
        req: &mut http::Request<impl Sized>,
    ) -> Context {
        let host = req.uri().host().unwrap_or_default().to_owned();
        let span = self
            .tracer
            .span_builder(req.method().to_string())
            .with_kind(SpanKind::Client)
            .with_attributes([
                KeyValue::new("http.request.method", req.method().to_string()),
                KeyValue::new("server.address", host),
            ])
            .start_with_context(&self.tracer, parent);
        let cx = parent.with_span(span);
        self.propagator
            .inject_context(&cx, &mut HeaderInjector(req.headers_mut()));
        cx
    }

    /// Sends what is queued and stops the exporter (at most `within`).
    pub(crate) fn shutdown(&self, within: Duration) {
        if let Err(e) = self.provider.shutdown_with_timeout(within) {
            tracing::warn!("flushing traces: {e}");
        }
    }
}

/// Ends a span with the response's status (an error status from 500 up, or when there was
/// no response).
pub(crate) fn end(cx: &Context, status: Option<u16>) {
    let span = cx.span();
    match status {
        Some(code) => {
            span.set_attribute(KeyValue::new("http.response.status_code", i64::from(code)));
            if code >= 500 {
                span.set_status(Status::Error {
                    description: Cow::Borrowed(""),
                });
            }
        }
        None => span.set_status(Status::Error {
            description: Cow::Borrowed("no response"),
        }),
    }
    span.end();
}
