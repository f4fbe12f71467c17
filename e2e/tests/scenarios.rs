//! End-to-end scenarios on a real single-node cluster (see `wa8s_e2e::scenario`): the users'
//! manifest verbatim, grants inside real pods, scale and delete, a moved tag rolled out under
//! load through the Service, and bad modules. Each test
//! uses its own namespace; the cluster is shared and stopped when the test process exits.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use wa8s_e2e::Kubectl;
use wa8s_e2e::guests::{built, python_guest};
use wa8s_e2e::otel::Collector;
use wa8s_e2e::prometheus::{Prometheus, kubernetes_config};
use wa8s_e2e::scenario::{Cluster, HttpResponder, Load, Upstream, manifest, variant};

/// A GET to a test server or a port-forward (a guest may take a while on its first call).
fn http_get(addr: &str, path: &str) -> std::io::Result<(u16, String)> {
    wa8s_e2e::http::get(addr, path, Duration::from_secs(60))
}

/// How long an applied object may take to become Ready (pull, compile, start).
const READY: Duration = Duration::from_secs(240);

fn cluster() -> Result<&'static Cluster> {
    Cluster::shared().map_err(anyhow::Error::msg)
}

/// `(status, reason, message)` of condition `type_` of WebAssembly `name`.
fn condition(
    k: &Kubectl,
    ns: &str,
    name: &str,
    type_: &str,
) -> Result<Option<(String, String, String)>> {
    let out = jsonpath(
        k,
        ns,
        &format!("webassembly/{name}"),
        &format!(
            "{{range .status.conditions[?(@.type==\"{type_}\")]}}{{.status}}{{\"\\t\"}}{{.reason}}{{\"\\t\"}}{{.message}}{{end}}"
        ),
    )?;
    let mut parts = out.splitn(3, '\t');
    Ok(match (parts.next(), parts.next(), parts.next()) {
        (Some(s), Some(r), Some(m)) if !s.is_empty() => Some((s.into(), r.into(), m.into())),
        _ => None,
    })
}

fn jsonpath(k: &Kubectl, ns: &str, object: &str, path: &str) -> Result<String> {
    Ok(k.ok(&["get", object, "-n", ns, "-o", &format!("jsonpath={path}")])?)
}

#[test]
fn the_users_manifest_runs_verbatim_from_the_mirrored_registry_and_answers_through_its_service()
-> Result<()> {
    let c = cluster()?;
    let k = c.kubectl();
    let ns = k.namespace("seed")?;
    let n = ns.name();
    // The component the manifest names, as ghcr.io/myorg/image-processor:v1.2.3 through the
    // mirror, as an air-gapped cluster would have it.
    let digest = c.push(
        wa8s_test_components::HTTP_COMPONENT,
        "myorg/image-processor:v1.2.3",
    )?;
    let seed = std::fs::read_to_string(wa8s_e2e::shared_dir().join("fixtures/seed-deploy.yaml"))?;
    let applied = k.apply(n, &seed)?;
    assert!(applied.success, "seed manifest refused: {}", applied.stderr);
    c.wait_ready(n, "image-processor", READY)?;

    assert_eq!(
        jsonpath(
            &k,
            n,
            "webassembly/image-processor",
            "{.status.module.digest}"
        )?,
        digest
    );
    let pods = k.eventually(Duration::from_secs(60), "2 running pods", |k| {
        let phases = k
            .ok(&[
                "get",
                "pods",
                "-n",
                n,
                "-l",
                "app.kubernetes.io/instance=image-processor",
                "-o",
                "jsonpath={.items[*].status.phase}",
            ])
            .ok()?;
        (phases
            .split_whitespace()
            .filter(|p| *p == "Running")
            .count()
            == 2)
            .then_some(phases)
    })?;
    assert_eq!(pods.split_whitespace().count(), 2, "{pods}");
    let hpa = jsonpath(
        &k,
        n,
        "hpa/image-processor",
        "{.spec.minReplicas} {.spec.maxReplicas} {.spec.metrics[0].resource.name} {.spec.metrics[0].resource.target.averageUtilization}",
    )?;
    assert_eq!(hpa, "2 100 memory 80");
    let image = jsonpath(
        &k,
        n,
        "deploy/image-processor",
        "{.spec.template.spec.containers[0].image}",
    )?;
    assert_eq!(image, format!("ghcr.io/myorg/image-processor@{digest}"));

    let forward = k.port_forward(n, "svc/image-processor", 80)?;
    let (status, body) = http_get(forward.addr(), "/")?;
    assert_eq!((status, body.trim()), (200, "hello from wasm"));

    // Under the users' 32Mi, one request that wants 40 MB fails alone, and fifty at once that
    // want 1 MiB each share the budget: the ones past it fail, the replica is never
    // OOM-killed, and it goes on serving.
    let (status, body) = http_get(forward.addr(), "/m40")?;
    assert!(
        status == 500 && body.contains("ran out of memory"),
        "{status} {body}"
    );
    let addr = forward.addr().to_owned();
    let answers: Vec<(u16, String)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..50)
            .map(|_| s.spawn(|| http_get(&addr, "/m1")))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("request thread"))
            .collect::<std::io::Result<_>>()
    })?;
    for (status, body) in &answers {
        assert!(
            *status == 200 || (*status == 500 && body.contains("ran out of memory")),
            "{status} {body}"
        );
    }
    let served = answers.iter().filter(|(s, _)| *s == 200).count();
    eprintln!("50 concurrent 1 MiB requests under 32Mi: {served} served, the rest refused");
    assert!(served > 0, "not one 1 MiB request was served");
    let (status, _) = http_get(forward.addr(), "/")?;
    assert_eq!(status, 200);
    let restarts = jsonpath(
        &k,
        n,
        "pods",
        "{.items[*].status.containerStatuses[0].restartCount} {.items[*].status.containerStatuses[0].lastState.terminated.reason}",
    )?;
    assert_eq!(restarts.trim(), "0 0", "a replica restarted: {restarts}");
    Ok(())
}

#[test]
fn the_cli_example_runs_as_a_worker_whose_output_is_the_pods_log() -> Result<()> {
    let c = cluster()?;
    let k = c.kubectl();
    let ns = k.namespace("cli")?;
    let n = ns.name();
    c.push(
        &built("examples/hello-cli/build.sh", &[])?,
        "myorg/hello-cli:v1",
    )?;
    let manifest =
        std::fs::read_to_string(wa8s_e2e::repo_root().join("examples/hello-cli/webassembly.yaml"))?;
    let applied = k.apply(n, &manifest)?;
    assert!(applied.success, "{}", applied.stderr);
    c.wait_ready(n, "hello-cli", READY)?;
    let logs = k.eventually(
        Duration::from_secs(90),
        "a heartbeat in kubectl logs",
        |k| {
            let out = k.ok(&["logs", "-n", n, "deploy/hello-cli"]).ok()?;
            out.contains("heartbeat 1").then_some(out)
        },
    )?;
    // Only what the object grants: its own variable, /tmp; no /config.
    for line in [
        "hello from wa8s (cli): cpython on wasi",
        "environment: HEARTBEAT_SECONDS\n",
        "/config: not granted",
        "/tmp: 0 entries",
    ] {
        assert!(logs.contains(line), "{line:?} not in the log:\n{logs}");
    }
    // A worker: no Service, no restarts.
    assert!(!k.run(&["get", "service", "-n", n, "hello-cli"])?.success);
    assert_eq!(
        jsonpath(
            &k,
            n,
            "pods",
            "{.items[0].status.containerStatuses[0].restartCount}"
        )?,
        "0"
    );
    Ok(())
}

#[test]
fn a_pods_refused_name_lookup_and_socket_are_lines_in_kubectl_logs_and_args_reach_the_component()
-> Result<()> {
    let c = cluster()?;
    let k = c.kubectl();
    let ns = k.namespace("sockets")?;
    let n = ns.name();
    // A wasi:cli command that does what its arguments say with wasi:sockets, once.
    c.push(
        wa8s_test_components::SOCKPROBE_COMPONENT,
        "myorg/sockprobe:v1",
    )?;
    let object = |name: &str, args: &str| {
        format!(
            r#"
apiVersion: wa8s.reconciler.io/v1
kind: WebAssembly
metadata:
  name: {name}
spec:
  module:
    registry: ghcr.io/myorg/sockprobe
    tag: v1
  args: {args}
  wasi:
    network:
      - outbound: true
        allowedHosts: ["api.example.com:443"]
"#
        )
    };
    let manifest = [
        object("lookup", r#"["lookup", "db.not-granted.example"]"#),
        object("connect", r#"["connect", "192.0.2.7", "5432"]"#),
    ]
    .join("---\n");
    let applied = k.apply(n, &manifest)?;
    assert!(applied.success, "{}", applied.stderr);
    let expected = [
        (
            "lookup",
            "lookup=err",
            "name lookup of db.not-granted.example denied: not in spec.wasi.network allowedHosts",
        ),
        (
            "connect",
            "connect=err",
            "tcp to 192.0.2.7:5432 denied: not in spec.wasi.network allowedHosts",
        ),
    ];
    for (name, printed, denial) in expected {
        // The command exits after one try and its pod restarts; the log of its latest run
        // (or, between runs, the previous one) holds both lines.
        let deploy = format!("deploy/{name}");
        let logs = k.eventually(Duration::from_secs(120), "the probe's log", |k| {
            [
                &["logs", "-n", n, &deploy][..],
                &["logs", "-p", "-n", n, &deploy],
            ]
            .iter()
            .filter_map(|args| k.ok(args).ok())
            .find(|out| out.contains(printed) && out.contains(denial))
        });
        let logs = logs
            .with_context(|| format!("{name}: {printed:?} and {denial:?} not both in its log"))?;
        eprintln!("kubectl logs {deploy}:\n{logs}");
    }
    Ok(())
}

#[test]
fn a_platform_teams_pod_settings_reach_the_pods_and_http_probes_and_the_disruption_budget_work()
-> Result<()> {
    let c = cluster()?;
    let k = c.kubectl();
    let ns = k.namespace("tuned")?;
    let n = ns.name();
    c.push(wa8s_test_components::HTTP_COMPONENT, "myorg/tuned:v1")?;
    // A PriorityClass is cluster-wide: named after the namespace, removed at the end.
    let priority = format!("{n}-high");
    let made = k.apply(
        n,
        &format!(
            "apiVersion: scheduling.k8s.io/v1\nkind: PriorityClass\nmetadata:\n  name: {priority}\nvalue: 1000\n---\napiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: tuned\n"
        ),
    )?;
    assert!(made.success, "{}", made.stderr);
    let manifest = format!(
        r#"
apiVersion: wa8s.reconciler.io/v1
kind: WebAssembly
metadata:
  name: tuned
  labels:
    cost-center: "4711"
spec:
  module:
    registry: ghcr.io/myorg/tuned
    tag: v1
  replicas: 2
  podLabels:
    team: imaging
  podAnnotations:
    example.com/log-shipper: enabled
  serviceAnnotations:
    example.com/load-balancer: internal
  serviceAccountName: tuned
  priorityClassName: {priority}
  topologySpreadConstraints:
    - maxSkew: 1
      topologyKey: kubernetes.io/hostname
      whenUnsatisfiable: ScheduleAnyway
  readinessProbe:
    httpGet:
      path: /
    periodSeconds: 1
---
apiVersion: wa8s.reconciler.io/v1
kind: WebAssembly
metadata:
  name: unlive
spec:
  module:
    registry: ghcr.io/myorg/tuned
    tag: v1
  # /recurse traps (500): the kubelet restarts the container.
  livenessProbe:
    httpGet:
      path: /recurse
    periodSeconds: 1
    failureThreshold: 1
"#
    );
    let applied = k.apply(n, &manifest)?;
    let cleanup = || k.run(&["delete", "priorityclass", &priority, "--wait=false"]);
    assert!(applied.success, "{}", applied.stderr);
    let ready = c.wait_ready(n, "tuned", READY);
    if ready.is_err() {
        let _ = cleanup();
    }
    ready?;

    let pod = |path: &str| {
        jsonpath(
            &k,
            n,
            "pods",
            &format!(
                r#"{{.items[?(@.metadata.labels.app\.kubernetes\.io/instance=="tuned")]{path}}}"#
            ),
        )
    };
    let checks = [
        (pod(".metadata.labels.team")?, "imaging imaging"),
        (pod(".metadata.labels.cost-center")?, "4711 4711"),
        (
            pod(".metadata.annotations.example\\.com/log-shipper")?,
            "enabled enabled",
        ),
        (pod(".spec.serviceAccountName")?, "tuned tuned"),
        (pod(".spec.priority")?, "1000 1000"),
        (
            pod(".spec.containers[0].readinessProbe.httpGet.path")?,
            "/ /",
        ),
        (
            jsonpath(
                &k,
                n,
                "service/tuned",
                "{.metadata.annotations.example\\.com/load-balancer} {.metadata.labels.cost-center}",
            )?,
            "internal 4711",
        ),
        (
            jsonpath(&k, n, "webassembly/tuned", "{.status.desiredReplicas}")?,
            "2",
        ),
    ];
    let wrong: Vec<_> = checks
        .iter()
        .filter(|(got, want)| got.trim() != *want)
        .collect();
    let _ = cleanup();
    assert!(wrong.is_empty(), "(got, wanted): {wrong:?}");

    // Two pods: a budget of one unavailable, which the disruption controller computes as one
    // disruption allowed once both are healthy.
    let allowed = k.eventually(Duration::from_secs(60), "the budget's allowance", |k| {
        jsonpath(
            k,
            n,
            "pdb/tuned",
            "{.spec.maxUnavailable} {.status.currentHealthy} {.status.disruptionsAllowed}",
        )
        .ok()
        .filter(|s| s.trim() == "1 2 1")
    });
    assert!(allowed.is_ok(), "{allowed:?}");
    // One pod: no budget.
    assert!(!k.run(&["get", "pdb", "-n", n, "unlive"])?.success);

    // The liveness probe reaches the component through the pod network: a failing one
    // restarts the container.
    let restarted = k.eventually(Duration::from_secs(90), "a liveness restart", |k| {
        let count = jsonpath(
            k,
            n,
            "pods",
            r#"{.items[?(@.metadata.labels.app\.kubernetes\.io/instance=="unlive")].status.containerStatuses[0].restartCount}"#,
        )
        .ok()?;
        (count.trim().parse::<i32>().ok()? >= 1).then_some(())
    });
    assert!(restarted.is_ok(), "{restarted:?}");
    Ok(())
}

#[test]
fn grants_hold_inside_real_pods() -> Result<()> {
    let c = cluster()?;
    let k = c.kubectl();
    let ns = k.namespace("grants")?;
    let n = ns.name();
    c.push(&python_guest()?, "myorg/grants-probe:v1")?;
    k.ok(&[
        "create",
        "configmap",
        "origins",
        "-n",
        n,
        "--from-literal=ALLOWED_ORIGINS=https://shop.example.com",
        "--from-literal=NOT_GRANTED=secret",
    ])?;
    let manifest = r#"
apiVersion: wa8s.reconciler.io/v1
kind: WebAssembly
metadata:
  name: probe
spec:
  module:
    registry: ghcr.io/myorg/grants-probe
    tag: v1
  resources:
    memory: "128Mi"
    cpu: "250m"
  env:
    - name: CACHE_SIZE
      value: "100"
  envFrom:
    - configMapRef:
        name: origins
  wasi:
    fs:
      - path: "/config"
        readOnly: true
      - path: "/tmp"
        maxSize: "64Ki"
    env:
      - ALLOWED_ORIGINS
    network:
      - outbound: true
        allowedHosts:
          - "*.internal.example.com"
"#;
    let applied = k.apply(n, manifest)?;
    assert!(applied.success, "{}", applied.stderr);
    c.wait_ready(n, "probe", READY)?;

    // Servers the guest may or may not reach. The upstream is a separate host on the pod
    // network; the node listens on its own address on the pod network (the gateway).
    let node = c.node();
    let upstream_ip = std::net::Ipv4Addr::new(10, 244 + node.network, 0, 250);
    let upstream = Upstream::start(node, upstream_ip, 8080, "upstream ok")?;
    let on_node = HttpResponder::spawn(std::net::TcpListener::bind("0.0.0.0:0")?, "node")?;
    let node_port = on_node.addr().port();
    c.dns().insert("api.internal.example.com", upstream_ip);
    c.dns().insert("other.example.org", upstream_ip);
    c.dns().insert("node.internal.example.com", node.gateway());

    let forward = k.port_forward(n, "svc/probe", 80)?;
    let get = |path: &str| -> Result<(u16, String)> {
        http_get(forward.addr(), path).with_context(|| format!("GET {path}"))
    };

    // Network: the granted name (resolved through the pod's DNS) is reached; a name no rule
    // grants is refused even though it resolves; a granted name pointing at the node is
    // refused, and so is the node's address itself.
    let port = upstream.addr().port();
    assert_eq!(
        get(&format!("/fetch/api.internal.example.com:{port}/"))?,
        (200, "upstream 200: upstream ok".into())
    );
    let (status, body) = get(&format!("/fetch/other.example.org:{port}/"))?;
    assert!(
        status == 502 && body.contains("HttpRequestDenied"),
        "{status} {body}"
    );
    let (status, body) = get(&format!("/fetch/node.internal.example.com:{node_port}/"))?;
    assert!(
        status == 502 && body.contains("DestinationIpProhibited"),
        "{status} {body}"
    );
    let (status, body) = get(&format!("/fetch/{}:{node_port}/", node.gateway()))?;
    assert!(
        status == 502 && body.contains("HttpRequestDenied"),
        "{status} {body}"
    );

    // Files: /tmp takes writes up to its bound and no further; /config is read-only. The
    // host fails the write with ENOSPC; this guest's libc (wasi-libc on wasip2 streams, as
    // componentize-py builds it) reports any failed stream write as EIO.
    assert_eq!(get("/write/40000/tmp/a")?, (200, "wrote 40000\n".into()));
    let (status, body) = get("/write/40000/tmp/b")?;
    assert!(
        status == 500 && (body.trim() == "errno ENOSPC" || body.trim() == "errno EIO"),
        "{status} {body}"
    );
    let held = get("/read/tmp/a")?.1.len() + get("/read/tmp/b")?.1.len();
    assert!(
        held <= 64 * 1024,
        "{held} bytes under /tmp, past its 64Ki bound"
    );
    assert_eq!(get("/write/100/tmp/c")?, (200, "wrote 100\n".into()));
    let (status, body) = get("/write/1/config/x")?;
    assert!(
        status == 500 && body.starts_with("errno"),
        "{status} {body}"
    );

    // Env: the module's own and the granted name; nothing else the pod has.
    assert_eq!(get("/env/CACHE_SIZE")?.1.trim(), "100");
    assert_eq!(
        get("/env/ALLOWED_ORIGINS")?.1.trim(),
        "https://shop.example.com"
    );
    for hidden in ["NOT_GRANTED", "KUBERNETES_SERVICE_HOST", "HOSTNAME", "PATH"] {
        assert_eq!(
            get(&format!("/env/{hidden}"))?.1.trim(),
            "<unset>",
            "{hidden}"
        );
    }

    // What the guest prints is the container's log.
    get("/log/a-line-for-kubectl-logs")?;
    let logs = k.eventually(
        Duration::from_secs(30),
        "the guest's line in kubectl logs",
        |k| {
            let out = k.ok(&["logs", "-n", n, "deploy/probe"]).ok()?;
            out.contains("a-line-for-kubectl-logs").then_some(out)
        },
    )?;
    assert!(logs.contains("a-line-for-kubectl-logs"));

    // Each kind of denial above is a line in the same log, naming what was refused and the
    // grant that would allow it (the guest's data never: no bodies, no file contents).
    let expected = [
        format!(
            "outbound to http://other.example.org:{port} denied: not in spec.wasi.network allowedHosts"
        ),
        format!(
            "outbound to node.internal.example.com:{node_port} denied: it resolves only to restricted addresses"
        ),
        "write to /tmp denied: the directory holds its spec.wasi.fs maxSize of 65536 bytes".into(),
    ];
    let logs = k.eventually(
        Duration::from_secs(30),
        "every denial in kubectl logs",
        |k| {
            let out = k.ok(&["logs", "-n", n, "deploy/probe"]).ok()?;
            expected.iter().all(|l| out.contains(l)).then_some(out)
        },
    );
    assert!(logs.is_ok(), "denial lines missing: {logs:?}");
    Ok(())
}

#[test]
fn prometheus_scrapes_the_operator_and_a_wasm_pod_found_through_the_api_server_and_the_pod_exports_traces()
-> Result<()> {
    let c = cluster()?;
    let k = c.kubectl();
    let ns = k.namespace("observed")?;
    let n = ns.name();
    c.push(&python_guest()?, "myorg/observed:v1")?;
    let operator = c.operator_http().context("the operator serves HTTP")?;
    // Where the pod's runtime sends its traces: a collector reached at the node's address on
    // the pod network (which exists once the node runs a pod, so the collector takes every
    // address).
    let collector = Collector::start_on(std::net::Ipv4Addr::UNSPECIFIED.into())?;
    // The operator runs outside the cluster here, as users may run it: a Service without a
    // selector and an EndpointSlice naming its address let discovery find it the way it
    // finds an operator pod.
    let manifest = format!(
        r#"
apiVersion: v1
kind: Service
metadata:
  name: wa8s-operator
spec:
  ports: [{{name: metrics, port: {port}, targetPort: {port}}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: wa8s-operator
  labels:
    kubernetes.io/service-name: wa8s-operator
addressType: IPv4
ports: [{{name: metrics, port: {port}, protocol: TCP}}]
endpoints: [{{addresses: ["{ip}"]}}]
---
apiVersion: wa8s.reconciler.io/v1
kind: WebAssembly
metadata:
  name: observed
spec:
  module:
    registry: ghcr.io/myorg/observed
    tag: v1
  resources:
    memory: "128Mi"
    cpu: "250m"
  env:
    - name: OTEL_EXPORTER_OTLP_ENDPOINT
      value: "http://{gateway}:{otlp_port}"
    - name: OTEL_SERVICE_NAME
      value: observed
    - name: OTEL_BSP_SCHEDULE_DELAY
      value: "200"
    - name: WA8S_LOG
      value: info
  wasi:
    network:
      - outbound: true
        allowedHosts: ["*.internal.example.com"]
"#,
        port = operator.port(),
        ip = operator.ip(),
        gateway = c.node().gateway(),
        otlp_port = collector.port(),
    );
    let applied = k.apply(n, &manifest)?;
    assert!(applied.success, "{}", applied.stderr);
    c.wait_ready(n, "observed", READY)?;
    let prometheus = Prometheus::start(&kubernetes_config(c.kubeconfig(), n, "wa8s-operator"))?;
    let value = |q: &str| prometheus.value(q).ok().flatten();
    let patience = Duration::from_secs(90);
    k.eventually(
        patience,
        "Prometheus scraping the pod and the operator",
        |_| {
            (value(r#"sum(up{job="wa8s-pods"})"#) == Some(1.0)
                && value(r#"sum(up{job="wa8s-operator"})"#) == Some(1.0))
            .then_some(())
        },
    )
    .with_context(|| format!("Prometheus log:\n{}", prometheus.log()))?;
    assert!(
        value("sum(wa8s_operator_reconciles_total)").is_some_and(|v| v >= 1.0),
        "the operator's reconciles are scraped"
    );

    // Requests through the Service move the pod's counters as Prometheus sees them.
    let forward = k.port_forward(n, "svc/observed", 80)?;
    for _ in 0..20 {
        assert_eq!(http_get(forward.addr(), "/env/HOME")?.0, 200);
    }
    let requests = format!(r#"sum(wa8s_http_requests_total{{namespace="{n}",code="2xx"}})"#);
    k.eventually(patience, "20 requests counted", |_| {
        value(&requests).filter(|v| *v >= 20.0)
    })?;
    // A call the grants do not allow is counted by kind.
    let (status, body) = http_get(forward.addr(), "/fetch/elsewhere.example.org:80/")?;
    assert!(
        status == 502 && body.contains("HttpRequestDenied"),
        "{status} {body}"
    );
    let denials =
        format!(r#"sum(wa8s_guest_denials_total{{namespace="{n}",kind="outbound_http"}})"#);
    k.eventually(patience, "the denial counted", |_| {
        value(&denials).filter(|v| *v >= 1.0)
    })?;

    // The pod's runtime (confined: its own root, seccomp, no privileges) exports a span for
    // a request, continuing the caller's trace.
    let trace_id = "0af7651916cd43dd8448eb211c80319c";
    let traceparent = format!("00-{trace_id}-b7ad6b7169203331-01");
    let (status, body) = wa8s_e2e::http::get_with_headers(
        forward.addr(),
        "/env/HOME",
        &[("traceparent", &traceparent)],
        Duration::from_secs(60),
    )?;
    assert_eq!(status, 200, "{body}");
    let span = k.eventually(patience, "the request's span at the collector", |_| {
        collector
            .spans()
            .into_iter()
            .find(|s| s.trace_id == trace_id && s.kind == wa8s_e2e::otel::SERVER)
    });
    let span = span.with_context(|| {
        let pod_log = k
            .ok(&["logs", "-n", n, "deploy/observed"])
            .unwrap_or_default();
        format!("collector log:\n{}\npod log:\n{pod_log}", collector.log())
    })?;
    assert_eq!(span.parent_span_id, "b7ad6b7169203331");
    assert_eq!(span.service, "observed");

    // The operator's reconciles are spans too, each with its resolve inside.
    let operator_spans = c.operator_spans().context("the operator exports spans")?;
    let (reconcile, resolve) = k.eventually(patience, "reconcile spans", |_| {
        let spans = operator_spans.spans();
        spans
            .iter()
            .filter(|s| s.service == "wa8s-operator" && s.name == "reconcile")
            .find_map(|r| {
                let child = spans
                    .iter()
                    .find(|s| s.name == "resolve" && s.parent_span_id == r.span_id)?;
                Some((r.clone(), child.clone()))
            })
    })?;
    assert_eq!(reconcile.trace_id, resolve.trace_id);
    Ok(())
}

#[test]
fn inside_a_pod_a_granted_name_reaches_only_its_allowed_address_among_loopback_and_mapped_answers()
-> Result<()> {
    use std::net::{Ipv4Addr, SocketAddr, TcpListener};
    let c = cluster()?;
    let k = c.kubectl();
    let ns = k.namespace("dns")?;
    let n = ns.name();
    c.push(&python_guest()?, "myorg/dns-probe:v1")?;
    let manifest = r#"
apiVersion: wa8s.reconciler.io/v1
kind: WebAssembly
metadata:
  name: dns-probe
spec:
  module:
    registry: ghcr.io/myorg/dns-probe
    tag: v1
  resources:
    memory: "128Mi"
    cpu: "250m"
  wasi:
    network:
      - outbound: true
        allowedHosts:
          - "*.dns.example.com"
"#;
    let applied = k.apply(n, manifest)?;
    assert!(applied.success, "{}", applied.stderr);
    c.wait_ready(n, "dns-probe", READY)?;

    // Three servers on one port, so only the address a name resolves to decides which is
    // reached: the upstream (a separate host on the pod network, the one allowed address),
    // the node (on every address of it, the pod network's gateway among them) and the pod's
    // own loopback, where the guest's connections would land for 127.0.0.1.
    let node = c.node();
    let on_node = HttpResponder::spawn(TcpListener::bind("0.0.0.0:0")?, "node")?;
    let port = on_node.addr().port();
    let upstream_ip = Ipv4Addr::new(10, 244 + node.network, 0, 251);
    let _upstream = Upstream::start_labelled(node, "dns", upstream_ip, port, "upstream ok")?;
    let pod_loopback = HttpResponder::spawn_in(
        &c.pod_netns(n)?,
        SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
        "pod loopback",
    )?;

    let names = c
        .dns()
        .hold_hostile("dns.example.com", node.gateway(), upstream_ip);

    let forward = k.port_forward(n, "svc/dns-probe", 80)?;
    let fetch = |name: &str| -> Result<(u16, String)> {
        let path = format!("/fetch/{name}:{port}/");
        http_get(forward.addr(), &path).with_context(|| format!("GET {path}"))
    };
    for name in &names.mixed {
        assert_eq!(
            fetch(name)?,
            (200, "upstream 200: upstream ok".into()),
            "{name}"
        );
    }
    for name in &names.embedded_only {
        let (status, body) = fetch(name)?;
        assert!(
            status == 502 && body.contains("DestinationIpProhibited"),
            "{name}: {status} {body}"
        );
    }
    assert_eq!(
        (pod_loopback.accepted(), on_node.accepted()),
        (0, 0),
        "the pod's loopback or the node was reached"
    );
    Ok(())
}

#[test]
fn kubectl_scale_changes_the_pods_and_kubectl_delete_removes_everything_promptly() -> Result<()> {
    let c = cluster()?;
    let k = c.kubectl();
    let ns = k.namespace("scale")?;
    let n = ns.name();
    c.push(wa8s_test_components::HTTP_COMPONENT, "myorg/scaled:v1")?;
    c.apply_ready(
        n,
        "scaled",
        &manifest("scaled", "myorg/scaled", "v1", 1),
        READY,
    )?;

    k.ok(&["scale", "-n", n, "webassembly/scaled", "--replicas=3"])?;
    k.eventually(READY, "3 ready replicas", |k| {
        let ready = jsonpath(k, n, "webassembly/scaled", "{.status.readyReplicas}").ok()?;
        (ready == "3").then_some(())
    })?;

    // A pod stops well inside its 35 s grace period: after the 5 s preStop sleep the shim
    // ends the guest on SIGTERM (the kubelet would SIGKILL only after the grace period).
    let pod = k.ok(&[
        "get",
        "pods",
        "-n",
        n,
        "-l",
        "app.kubernetes.io/instance=scaled",
        "-o",
        "jsonpath={.items[0].metadata.name}",
    ])?;
    let asked = std::time::Instant::now();
    k.ok(&["delete", "pod", "-n", n, &pod, "--wait=true"])?;
    let took = asked.elapsed();
    assert!(
        took < Duration::from_secs(15),
        "pod {pod} took {took:?} to terminate (grace period 35 s)"
    );

    // Delete: garbage collection removes the Deployment, Service and pods. (The collector
    // learns a newly installed CRD on its next discovery, up to 30 s later.)
    k.ok(&["delete", "-n", n, "webassembly/scaled", "--wait=true"])?;
    let deleted = std::time::Instant::now();
    let gone = k.eventually(
        Duration::from_secs(90),
        "pods, Deployment and Service gone",
        |k| {
            let left = k
                .ok(&[
                    "get",
                    "deploy,svc,pods",
                    "-n",
                    n,
                    "-l",
                    "app.kubernetes.io/instance=scaled",
                    "-o",
                    "name",
                ])
                .ok()?;
            left.trim().is_empty().then_some(())
        },
    );
    if gone.is_err() {
        let left = k.run(&["get", "all", "-n", n, "-o", "wide"])?.stdout;
        bail!("after {:?}, still there:\n{left}", deleted.elapsed());
    }
    Ok(())
}

#[test]
fn a_moved_tag_rolls_the_pods_while_the_service_answers_every_request() -> Result<()> {
    let c = cluster()?;
    let k = c.kubectl();
    let ns = k.namespace("roll")?;
    let n = ns.name();
    let v1 = c.push(
        &variant(wa8s_test_components::HTTP_COMPONENT, "v1"),
        "myorg/moving:stable",
    )?;
    c.apply_ready(
        n,
        "moving",
        &manifest("moving", "myorg/moving", "stable", 2),
        READY,
    )?;
    assert_eq!(
        jsonpath(&k, n, "webassembly/moving", "{.status.module.digest}")?,
        v1
    );

    // Through the Service's cluster IP, as clients in the cluster call it (kube-proxy). The
    // load starts once kube-proxy has the new Service: refusals before that are not the
    // rollout's.
    let ip = jsonpath(&k, n, "svc/moving", "{.spec.clusterIP}")?;
    let service = format!("{ip}:80");
    k.eventually(
        Duration::from_secs(60),
        "kube-proxy routing the Service",
        |_| {
            wa8s_e2e::http::get(&service, "/", Duration::from_secs(5))
                .ok()
                .filter(|(status, _)| *status == 200)
        },
    )?;
    let load = Load::start(service);
    let load_started = std::time::SystemTime::now();
    k.eventually(Duration::from_secs(30), "the Service answering", |_| {
        (load.answered() >= 20).then_some(())
    })?;

    // The tag moves: the operator resolves it again and rolls the Deployment.
    let v2 = c.push(
        &variant(wa8s_test_components::HTTP_COMPONENT, "v2"),
        "myorg/moving:stable",
    )?;
    let rolled = k.eventually(
        READY,
        "both pods on the new digest, the old ones gone",
        |k| {
            let image = jsonpath(
                k,
                n,
                "deploy/moving",
                "{.spec.template.spec.containers[0].image}",
            )
            .ok()?;
            let counts = jsonpath(
                k,
                n,
                "deploy/moving",
                "{.status.replicas} {.status.updatedReplicas} {.status.readyReplicas}",
            )
            .ok()?;
            let pods = k
                .ok(&[
                    "get",
                    "pods",
                    "-n",
                    n,
                    "-l",
                    "app.kubernetes.io/instance=moving",
                    "-o",
                    "name",
                ])
                .ok()?;
            (image.ends_with(&v2) && counts == "2 2 2" && pods.lines().count() == 2).then_some(())
        },
    );
    let seen_after = load.answered();
    // A little longer on the new pods alone.
    k.eventually(Duration::from_secs(30), "requests to the new pods", |_| {
        (load.answered() >= seen_after + 20).then_some(())
    })?;
    let (sent, failures) = load.finish();
    if !failures.is_empty() {
        // What the cluster did meanwhile, to match with the failures' times.
        let events = k
            .run(&["get", "events", "-n", n, "--sort-by=.lastTimestamp"])
            .map(|o| o.stdout)
            .unwrap_or_default();
        eprintln!("load started at {load_started:?}; events:\n{events}");
    }
    rolled?;
    assert_eq!(
        jsonpath(&k, n, "webassembly/moving", "{.status.module.digest}")?,
        v2
    );
    assert!(
        failures.is_empty(),
        "{} of {sent} requests failed during the rollout: {:?}",
        failures.len(),
        &failures[..failures.len().min(10)]
    );
    Ok(())
}

#[test]
fn kubectl_top_shows_the_memory_and_cpu_of_wasm_pods() -> Result<()> {
    let c = cluster()?;
    let k = c.kubectl();
    let ns = k.namespace("top")?;
    let n = ns.name();
    c.push(wa8s_test_components::HTTP_COMPONENT, "myorg/measured:v1")?;
    c.apply_ready(
        n,
        "measured",
        &manifest("measured", "myorg/measured", "v1", 1),
        READY,
    )?;
    // metrics-server scrapes the kubelet every 15 s and needs two scrapes of a new pod.
    let row = k.eventually(
        Duration::from_secs(120),
        "a kubectl top row for the pod",
        |k| {
            let out = k
                .ok(&[
                    "top",
                    "pod",
                    "-n",
                    n,
                    "-l",
                    "app.kubernetes.io/instance=measured",
                    "--containers",
                    "--no-headers",
                ])
                .ok()?;
            out.lines()
                .find(|l| l.split_whitespace().nth(1) == Some("module"))
                .map(str::to_owned)
        },
    )?;
    // POD CONTAINER CPU MEMORY, e.g. "measured-…  module  1m  3Mi".
    let fields: Vec<&str> = row.split_whitespace().collect();
    let memory = fields
        .get(3)
        .and_then(|m| m.strip_suffix("Mi"))
        .and_then(|m| m.parse::<u64>().ok())
        .with_context(|| format!("no memory in MiB in {row:?}"))?;
    assert!(
        (1..=32).contains(&memory),
        "the guest's memory should be measured and within its 32Mi limit: {row:?}"
    );
    assert!(
        fields.get(2).is_some_and(|cpu| cpu.ends_with('m')),
        "no CPU in {row:?}"
    );
    Ok(())
}

#[test]
fn bad_modules_end_in_conditions_that_name_the_cause_and_leave_the_namespace_working() -> Result<()>
{
    let c = cluster()?;
    let k = c.kubectl();
    let ns = k.namespace("bad")?;
    let n = ns.name();
    c.push(wa8s_test_components::HTTP_COMPONENT, "myorg/good:v1")?;
    // A wasm module that is not a component and has no entry point.
    c.push(&wat::parse_str("(module)")?, "myorg/not-a-component:v1")?;
    // A component importing an interface the host does not provide.
    let unsatisfied = wat::parse_str(wa8s_test_components::NEEDS_KEYVALUE_WAT)?;
    c.push(&unsatisfied, "myorg/needs-keyvalue:v1")?;
    let object = |name: &str, repo: &str, tag: &str| {
        format!(
            "apiVersion: wa8s.reconciler.io/v1\nkind: WebAssembly\nmetadata:\n  name: {name}\nspec:\n  module:\n    registry: ghcr.io/myorg/{repo}\n    tag: {tag}\n"
        )
    };
    for (name, repo, tag) in [
        ("good", "good", "v1"),
        ("missing", "missing", "v9"),
        ("core", "not-a-component", "v1"),
        ("keyvalue", "needs-keyvalue", "v1"),
    ] {
        let out = k.apply(n, &object(name, repo, tag))?;
        assert!(out.success, "{name}: {}", out.stderr);
    }

    let (status, reason, message) = k.eventually(READY, "missing: ModuleResolved", |k| {
        condition(k, n, "missing", "ModuleResolved").ok().flatten()
    })?;
    assert_eq!((status.as_str(), reason.as_str()), ("False", "TagNotFound"));
    assert!(message.contains("myorg/missing:v9"), "{message}");

    // An object cannot make the operator a proxy to the cloud's metadata service: the
    // registry address policy refuses before any request, and the condition says why.
    let inside = "apiVersion: wa8s.reconciler.io/v1\nkind: WebAssembly\nmetadata:\n  name: inside\nspec:\n  module:\n    registry: 169.254.169.254/latest/meta-data\n    tag: v1\n";
    let out = k.apply(n, inside)?;
    assert!(out.success, "inside: {}", out.stderr);
    let (status, reason, message) = k.eventually(READY, "inside: ModuleResolved", |k| {
        condition(k, n, "inside", "ModuleResolved").ok().flatten()
    })?;
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "RegistryNotAllowed")
    );
    assert!(
        message.contains("169.254.169.254 is a link-local address"),
        "{message}"
    );

    // Failures only the node can see come back from the shim as the pod's termination
    // message, and the operator puts them on the object.
    for (name, cause) in [
        ("core", "_start"),
        ("keyvalue", "wasi:keyvalue/store@0.2.0-draft"),
    ] {
        let (status, reason, message) = k
            .eventually(READY, &format!("{name}: Degraded naming {cause}"), |k| {
                condition(k, n, name, "Degraded")
                    .ok()
                    .flatten()
                    .filter(|(s, _, m)| s == "True" && m.contains(cause))
            })
            .with_context(|| {
                format!(
                    "conditions of {name}: {}",
                    jsonpath(
                        &k,
                        n,
                        &format!("webassembly/{name}"),
                        "{.status.conditions}"
                    )
                    .unwrap_or_default()
                )
            })?;
        assert_eq!(status, "True");
        assert!(!reason.is_empty(), "{name}: {message}");
    }

    // The healthy neighbour is unaffected.
    c.wait_ready(n, "good", READY)?;
    let forward = k.port_forward(n, "svc/good", 80)?;
    assert_eq!(http_get(forward.addr(), "/")?.0, 200);
    Ok(())
}
