//! A real Prometheus (built from its Go module, cached by version) for the observability
//! scenarios: it discovers its targets through the cluster's API server and the tests ask
//! its HTTP API what it scraped. Stopped by PID when dropped (and with the test process).

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::process::{Lifetime, eventually, spawn, terminate};

/// Errors starting or asking Prometheus.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Binaries(#[from] crate::binaries::Error),
    #[error("prometheus: {what}: {source}")]
    Io {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("prometheus did not become ready within {0:?}; its log:\n{1}")]
    NotReady(Duration, String),
    #[error("prometheus answered {query:?} with {status}: {body}")]
    Query {
        query: String,
        status: u16,
        body: String,
    },
}

fn io(what: &'static str) -> impl FnOnce(std::io::Error) -> Error {
    move |source| Error::Io { what, source }
}

/// A running Prometheus.
#[derive(Debug)]
pub struct Prometheus {
    pid: u32,
    exe: PathBuf,
    addr: String,
    dir: tempfile::TempDir,
}

/// Scrape configuration for pods that carry the `prometheus.io/scrape` annotations (the
/// operator writes them on every HTTP wasm pod) in `namespace`, and for the endpoints of the
/// Service `service` there, both discovered through the API server `kubeconfig` names.
pub fn kubernetes_config(kubeconfig: &Path, namespace: &str, service: &str) -> String {
    let kubeconfig = kubeconfig.display();
    format!(
        r#"global:
  scrape_interval: 1s
  scrape_timeout: 1s
scrape_configs:
  - job_name: wa8s-pods
    kubernetes_sd_configs:
      - role: pod
        kubeconfig_file: {kubeconfig}
        namespaces: {{names: [{namespace}]}}
    relabel_configs:
      - source_labels: [__meta_kubernetes_pod_annotation_prometheus_io_scrape]
        regex: "true"
        action: keep
      - source_labels: [__meta_kubernetes_pod_ip, __meta_kubernetes_pod_annotation_prometheus_io_port]
        regex: (.+);(.+)
        replacement: $1:$2
        target_label: __address__
      - source_labels: [__meta_kubernetes_pod_annotation_prometheus_io_path]
        regex: (.+)
        target_label: __metrics_path__
      - source_labels: [__meta_kubernetes_namespace]
        target_label: namespace
      - source_labels: [__meta_kubernetes_pod_name]
        target_label: pod
  - job_name: wa8s-operator
    kubernetes_sd_configs:
      - role: endpointslice
        kubeconfig_file: {kubeconfig}
        namespaces: {{names: [{namespace}]}}
    relabel_configs:
      - source_labels: [__meta_kubernetes_service_name]
        regex: {service}
        action: keep
"#
    )
}

impl Prometheus {
    /// Starts Prometheus with `config` (YAML) on a free loopback port and waits until it is
    /// ready.
    pub fn start(config: &str) -> Result<Prometheus, Error> {
        let bins = crate::binaries::ensure(&["prometheus"])?;
        let exe = bins["prometheus"].clone();
        let dir = tempfile::tempdir().map_err(io("making its directory"))?;
        let file = dir.path().join("prometheus.yml");
        std::fs::write(&file, config).map_err(io("writing its configuration"))?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(io("finding a free port"))?
            .port();
        let addr = format!("127.0.0.1:{port}");
        let mut cmd = std::process::Command::new(&exe);
        cmd.arg(format!("--config.file={}", file.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--log.level=warn");
        let log = dir.path().join("prometheus.log");
        let pid = spawn(cmd, &log, Lifetime::Attached).map_err(io("starting it"))?;
        let me = Prometheus {
            pid,
            exe,
            addr,
            dir,
        };
        let limit = Duration::from_secs(60);
        eventually(limit, Duration::from_millis(200), || {
            crate::http::get(&me.addr, "/-/ready", Duration::from_secs(2))
                .ok()
                .filter(|(status, _)| *status == 200)
        })
        .ok_or_else(|| Error::NotReady(limit, me.log()))?;
        Ok(me)
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// The samples an instant query returns: each series' labels and value.
    pub fn query(&self, promql: &str) -> Result<Vec<(serde_json::Value, f64)>, Error> {
        let path = format!("/api/v1/query?query={}", percent_encode(promql));
        let (status, body) = crate::http::get(&self.addr, &path, Duration::from_secs(10))
            .map_err(io("querying it"))?;
        let failed = || Error::Query {
            query: promql.to_owned(),
            status,
            body: body.clone(),
        };
        if status != 200 {
            return Err(failed());
        }
        let doc: serde_json::Value = serde_json::from_str(&body).map_err(|_| failed())?;
        let results = doc["data"]["result"].as_array().ok_or_else(failed)?;
        Ok(results
            .iter()
            .filter_map(|r| {
                let value = r["value"][1].as_str()?.parse().ok()?;
                Some((r["metric"].clone(), value))
            })
            .collect())
    }

    /// The one value `promql` sums to, if it has one yet.
    pub fn value(&self, promql: &str) -> Result<Option<f64>, Error> {
        Ok(self.query(promql)?.first().map(|(_, v)| *v))
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        terminate(self.pid, Some(&self.exe), Duration::from_secs(10));
    }
}

/// Percent-encodes a query parameter (everything but unreserved characters).
fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_query_is_percent_encoded() {
        assert_eq!(
            super::percent_encode(r#"sum(x{a="b"})"#),
            "sum%28x%7Ba%3D%22b%22%7D%29"
        );
    }
}
