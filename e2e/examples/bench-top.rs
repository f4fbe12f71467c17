//! Benchmark: pod memory and CPU from `kubectl top` for the hello wasm component under wa8s,
//! next to the same handler as an ordinary container (a static C HTTP server run by runc,
//! `e2e/bench/hello-server.c`), on the quickstart's cluster (start it first with
//! `e2e/scripts/quickstart.sh`).
//!
//! ```sh
//! cargo run -p wa8s-e2e --example bench-top [-- SAMPLES]
//! ```
//!
//! Both get 1 replica and a 32Mi limit and serve 200 requests before measuring; then
//! `kubectl top pod --containers` is sampled SAMPLES times (default 3), once per new
//! metrics-server window (its resolution is 15 s). Everything it creates is in namespace
//! `wa8s-bench-top`, deleted at the end.

use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use wa8s_e2e::{Kubectl, node};

const NAMESPACE: &str = "wa8s-bench-top";
const CONTAINER_IMAGE: &str = "wa8s.local/hello-server:1";

fn manifests() -> String {
    format!(
        r#"apiVersion: wa8s.reconciler.io/v1
kind: WebAssembly
metadata:
  name: wasm-hello
spec:
  module:
    registry: ghcr.io/myorg/image-processor
    tag: v1.2.3
  replicas: 1
  resources:
    memory: 32Mi
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: container-hello
spec:
  replicas: 1
  selector:
    matchLabels: {{ app: container-hello }}
  template:
    metadata:
      labels: {{ app: container-hello }}
    spec:
      automountServiceAccountToken: false
      enableServiceLinks: false
      containers:
        - name: server
          image: {CONTAINER_IMAGE}
          imagePullPolicy: Never
          ports: [{{ containerPort: 8080 }}]
          readinessProbe:
            tcpSocket: {{ port: 8080 }}
            periodSeconds: 2
          resources:
            limits: {{ memory: 32Mi }}
            requests: {{ memory: 32Mi }}
          securityContext:
            runAsNonRoot: true
            runAsUser: 65532
            allowPrivilegeEscalation: false
            capabilities: {{ drop: [ALL] }}
            readOnlyRootFilesystem: true
"#
    )
}

/// Builds the C server (static) and imports it as an image into the node's containerd.
fn import_container_image(state_dir: &std::path::Path) -> Result<()> {
    let work = tempfile::tempdir()?;
    let path = work.path().join("hello-server.tar");
    std::fs::write(&path, wa8s_e2e::image::hello_server(CONTAINER_IMAGE)?)?;
    node::import_image(state_dir, &path)?;
    Ok(())
}

fn pod_ip(k: &Kubectl, selector: &str) -> Result<String> {
    Ok(
        k.eventually(Duration::from_secs(120), "a running pod", |k| {
            k.ok(&[
                "get",
                "pods",
                "-n",
                NAMESPACE,
                "-l",
                selector,
                "--field-selector=status.phase=Running",
                "-o",
                "jsonpath={.items[0].status.podIP}",
            ])
            .ok()
            .filter(|ip| !ip.is_empty())
        })?,
    )
}

/// The time of the newest pod metrics in the namespace, once both pods have metrics.
fn metrics_window(k: &Kubectl) -> Option<String> {
    let raw = k
        .ok(&[
            "get",
            "--raw",
            &format!("/apis/metrics.k8s.io/v1beta1/namespaces/{NAMESPACE}/pods"),
        ])
        .ok()?;
    let list: serde_json::Value = serde_json::from_str(&raw).ok()?;
    let items = list["items"].as_array().filter(|i| i.len() >= 2)?;
    // RFC 3339 times in one format order as strings.
    items
        .iter()
        .filter_map(|i| i["timestamp"].as_str())
        .max()
        .map(str::to_owned)
}

fn serve_some(addr: &str) -> Result<()> {
    for _ in 0..200 {
        let (status, _) = wa8s_e2e::http::get(addr, "/", Duration::from_secs(5))
            .with_context(|| format!("GET {addr}"))?;
        ensure!(status == 200, "GET {addr}: {status}");
    }
    Ok(())
}

fn main() -> Result<()> {
    let samples: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(3);
    let state_dir = wa8s_e2e::cache_dir().join("run").join("cluster");
    if !wa8s_e2e::control_plane::is_up(&state_dir) {
        bail!("the quickstart cluster is not running: e2e/scripts/quickstart.sh");
    }
    let kubectl_bin = wa8s_e2e::binaries::ensure(&["kubectl"])?["kubectl"].clone();
    let k = Kubectl::new(&kubectl_bin, &state_dir.join("kubeconfig"));
    import_container_image(&state_dir)?;
    let _ = k.run(&["create", "namespace", NAMESPACE]);
    let result = (|| -> Result<()> {
        let applied = k.apply(NAMESPACE, &manifests())?;
        ensure!(applied.success, "{}", applied.stderr);
        for (kind, name) in [
            ("webassembly", "wasm-hello"),
            ("deployment", "container-hello"),
        ] {
            let condition = if kind == "webassembly" {
                "Ready"
            } else {
                "Available"
            };
            k.ok(&[
                "wait",
                "-n",
                NAMESPACE,
                &format!("--for=condition={condition}"),
                "--timeout=180s",
                &format!("{kind}/{name}"),
            ])?;
        }
        serve_some(&format!(
            "{}:8080",
            pod_ip(&k, "app.kubernetes.io/instance=wasm-hello")?
        ))?;
        serve_some(&format!("{}:8080", pod_ip(&k, "app=container-hello")?))?;
        println!("| sample | pod | container | CPU | memory |");
        println!("|---|---|---|---|---|");
        let mut sample = 0;
        let mut window: Option<String> = None;
        while sample < samples {
            // Each sample is a new metrics-server window (its resolution is 15 s), not the
            // previous one read again.
            let newer = k.eventually(
                Duration::from_secs(120),
                "a new metrics window for both pods",
                |k| metrics_window(k).filter(|w| Some(w) != window.as_ref()),
            )?;
            window = Some(newer);
            let top = k.eventually(Duration::from_secs(120), "both pods in kubectl top", |k| {
                let out = k
                    .ok(&[
                        "top",
                        "pod",
                        "-n",
                        NAMESPACE,
                        "--containers",
                        "--no-headers",
                    ])
                    .ok()?;
                (out.lines().count() >= 2).then_some(out)
            })?;
            sample += 1;
            for line in top.lines() {
                let f: Vec<&str> = line.split_whitespace().collect();
                if let [pod, container, cpu, memory] = f[..] {
                    let kind = if pod.starts_with("wasm-hello") {
                        "wa8s (wasm)"
                    } else {
                        "runc (static C)"
                    };
                    println!("| {sample} | {kind}: {pod} | {container} | {cpu} | {memory} |");
                }
            }
        }
        Ok(())
    })();
    let _ = k.run(&["delete", "namespace", NAMESPACE, "--wait=false"]);
    result
}
