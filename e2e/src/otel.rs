//! A real OpenTelemetry Collector (OTLP receiver, file exporter; built from its Go modules
//! by the collector's builder, cached by version) for the trace tests: what wa8s exports is
//! read back from the collector's JSON file. Stopped by PID when dropped.

use std::path::PathBuf;
use std::time::Duration;

use crate::process::{Lifetime, eventually, spawn, terminate};

/// Errors starting the collector or reading what it received.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Binaries(#[from] crate::binaries::Error),
    #[error("otelcol: {what}: {source}")]
    Io {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("the collector did not listen within {0:?}; its log:\n{1}")]
    NotReady(Duration, String),
}

fn io(what: &'static str) -> impl FnOnce(std::io::Error) -> Error {
    move |source| Error::Io { what, source }
}

/// One span as the collector wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Span {
    pub trace_id: String,
    pub span_id: String,
    pub parent_span_id: String,
    pub name: String,
    /// OTLP's enum: 2 server, 3 client.
    pub kind: i64,
    pub service: String,
    /// The resource's string attributes (`service.name`, `k8s.pod.name`, ...).
    pub resource: std::collections::BTreeMap<String, String>,
}

/// OTLP span kinds.
pub const SERVER: i64 = 2;
pub const CLIENT: i64 = 3;

/// A running collector.
#[derive(Debug)]
pub struct Collector {
    pid: u32,
    exe: PathBuf,
    ip: std::net::IpAddr,
    port: u16,
    dir: tempfile::TempDir,
}

impl Collector {
    /// Starts a collector receiving OTLP/HTTP on a free loopback port.
    pub fn start() -> Result<Collector, Error> {
        Self::start_on(std::net::Ipv4Addr::LOCALHOST.into())
    }

    /// Starts a collector receiving OTLP/HTTP on a free port of `ip` (`0.0.0.0` for pods to
    /// export to through a node address that may not exist yet).
    pub fn start_on(ip: std::net::IpAddr) -> Result<Collector, Error> {
        let bins = crate::binaries::ensure(&["otelcol"])?;
        let exe = bins["otelcol"].clone();
        let dir = tempfile::tempdir().map_err(io("making its directory"))?;
        let port = std::net::TcpListener::bind((ip, 0))
            .and_then(|l| l.local_addr())
            .map_err(io("finding a free port"))?
            .port();
        let out = dir.path().join("traces.json");
        let config = format!(
            r#"receivers:
  otlp:
    protocols:
      http:
        endpoint: {ip}:{port}
exporters:
  file:
    path: {out}
    flush_interval: 100ms
service:
  telemetry:
    metrics:
      level: none
  pipelines:
    traces:
      receivers: [otlp]
      exporters: [file]
"#,
            out = out.display()
        );
        let file = dir.path().join("config.yaml");
        std::fs::write(&file, config).map_err(io("writing its configuration"))?;
        let mut cmd = std::process::Command::new(&exe);
        cmd.arg(format!("--config={}", file.display()));
        let log = dir.path().join("otelcol.log");
        let pid = spawn(cmd, &log, Lifetime::Attached).map_err(io("starting it"))?;
        let me = Collector {
            pid,
            exe,
            ip,
            port,
            dir,
        };
        let limit = Duration::from_secs(60);
        eventually(limit, Duration::from_millis(100), || {
            std::net::TcpStream::connect((ip, port)).ok()
        })
        .ok_or_else(|| Error::NotReady(limit, me.log()))?;
        Ok(me)
    }

    /// `OTEL_EXPORTER_OTLP_ENDPOINT` for it.
    pub fn endpoint(&self) -> String {
        format!(
            "http://{}",
            std::net::SocketAddr::from((self.ip, self.port))
        )
    }

    /// The port it receives on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("otelcol.log")).unwrap_or_default()
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<Span> {
        let text = std::fs::read_to_string(self.dir.path().join("traces.json")).unwrap_or_default();
        text.lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .flat_map(|doc| spans_of(&doc))
            .collect()
    }
}

fn spans_of(doc: &serde_json::Value) -> Vec<Span> {
    let mut found = Vec::new();
    for rs in doc["resourceSpans"].as_array().into_iter().flatten() {
        let resource: std::collections::BTreeMap<String, String> = rs["resource"]["attributes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|a| {
                let value = a["value"]["stringValue"].as_str()?;
                Some((a["key"].as_str()?.to_owned(), value.to_owned()))
            })
            .collect();
        let service = resource.get("service.name").cloned().unwrap_or_default();
        for ss in rs["scopeSpans"].as_array().into_iter().flatten() {
            for s in ss["spans"].as_array().into_iter().flatten() {
                let text = |k: &str| s[k].as_str().unwrap_or_default().to_owned();
                found.push(Span {
                    trace_id: text("traceId"),
                    span_id: text("spanId"),
                    parent_span_id: text("parentSpanId"),
                    name: text("name"),
                    kind: s["kind"].as_i64().unwrap_or_default(),
                    service: service.clone(),
                    resource: resource.clone(),
                });
            }
        }
    }
    found
}

impl Drop for Collector {
    fn drop(&mut self) {
        terminate(self.pid, Some(&self.exe), Duration::from_secs(10));
    }
}
