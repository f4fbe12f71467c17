//! wa8s where users run it: a real kind cluster (kind v0.33 with its podman provider, one
//! control-plane node and two workers, systemd in every node, the kubelet's systemd cgroup
//! driver, containerd managed by systemd), set up by `e2e/scripts/kind.sh` from a node image
//! built here from upstream sources. The test does what a platform engineer does: `kind load
//! image-archive` the wa8s images, `helm install` the chart (with chart-wide access logs and
//! traces to a collector beside the cluster), apply the users' manifest verbatim, and then
//! checks what they would: the node installers take turns (a rolling install) restarting
//! containerd through systemd, the guest sits in its pod's slice under its limits, its requests
//! are access-log lines and spans naming their pod, `kubectl top` shows it, a guest past its
//! memory is stopped and the object says so, a worker the chart skips gets no wasm pod, pods
//! spread over the prepared workers and the Service answers from both, a stopped worker's
//! pods come back elsewhere, a restarted node keeps the runtime, and `helm uninstall`
//! gives every node its containerd configuration back byte for byte.
//!
//! One cluster for all of it (building one costs minutes), each object in its own namespace;
//! the steps run in order because they change the cluster's nodes.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use wa8s_e2e::Kubectl;
use wa8s_e2e::helm::Helm;
use wa8s_e2e::kind::KindCluster;

mod kind_common;
use kind_common::{
    RELEASE_NAMESPACE, Steps, containerd_pid, hello_from, helm_uninstall, jsonpath, node_label,
    push, running_pods, wait_ready,
};

const CLUSTER: &str = "wa8s-e2e";
/// The label that tells this install's node installer to leave a node alone.
const SKIP_LABEL: &str = "e2e.wa8s.reconciler.io/skip";
const CONTAINERD_CONFIG: &str = "/etc/containerd/config.toml";
/// The hosts file the node installer writes for ghcr.io (kind names no hosts directory, so
/// the installer sets containerd's default).
const GHCR_HOSTS: &str = "/etc/containerd/certs.d/ghcr.io/hosts.toml";
/// `jsonpath` over the Service's EndpointSlices.
fn endpoint_slices(k: &Kubectl, ns: &str, service: &str, path: &str) -> Result<String> {
    Ok(k.ok(&[
        "get",
        "endpointslices",
        "-n",
        ns,
        "-l",
        &format!("kubernetes.io/service-name={service}"),
        "-o",
        &format!("jsonpath={path}"),
    ])?)
}

/// metrics-server (for `kubectl top`) as kind users add it: its image built here from the
/// static binary, loaded like any image, and its manifest applied.
fn install_metrics_server(c: &KindCluster) -> Result<()> {
    let bins = wa8s_e2e::binaries::ensure(&["metrics-server"])?;
    let binary = std::fs::read(&bins["metrics-server"])?;
    let version = bins["metrics-server"]
        .parent()
        .and_then(|d| d.file_name())
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("metrics-server-"))
        .context("metrics-server's version from its cache directory")?
        .to_owned();
    let name = format!("registry.k8s.io/metrics-server/metrics-server:{version}");
    let tar = wa8s_e2e::image::linux(
        &name,
        &[("metrics-server", &binary, 0o755)],
        &["/metrics-server"],
    )?;
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("metrics-server.tar");
    std::fs::write(&file, tar)?;
    c.load(&[file])?;
    let manifest =
        std::fs::read_to_string(wa8s_e2e::repo_root().join("e2e/kind/metrics-server.yaml"))?
            .replace("METRICS_SERVER_VERSION", &version);
    let apply = |manifest: &str| -> Result<()> {
        let out = c.kubectl().run_with_stdin(
            &[
                "apply",
                "--server-side",
                "--field-manager=wa8s-e2e",
                "-f",
                "-",
            ],
            Some(manifest),
        )?;
        ensure!(out.success, "metrics-server manifest: {}", out.stderr);
        Ok(())
    };
    apply(&manifest)?;
    // The metrics API only once metrics-server serves (see metrics-apiservice.yaml).
    c.kubectl().ok(&[
        "rollout",
        "status",
        "-n",
        "kube-system",
        "deployment/metrics-server",
        "--timeout=240s",
    ])?;
    apply(&std::fs::read_to_string(
        wa8s_e2e::repo_root().join("e2e/kind/metrics-apiservice.yaml"),
    )?)
}

#[test]
fn helm_install_on_a_three_node_kind_cluster_runs_the_users_manifest_and_uninstalls_cleanly()
-> Result<()> {
    let s = Steps(Instant::now());
    s.step("kind create cluster (1 control plane, 2 workers) with the podman provider");
    // A cluster left by a run that was killed (its drop never ran) is not reused.
    KindCluster::remove(CLUSTER)?;
    let c = KindCluster::up(CLUSTER, 2, &["--fast-eviction"])?;
    s.step("cluster up");
    ensure!(
        KindCluster::clusters()?.iter().any(|n| n == CLUSTER),
        "kind get clusters does not list {CLUSTER}"
    );
    let k = c.kubectl().clone();
    let nodes = c.nodes()?;
    let control_plane = format!("{CLUSTER}-control-plane");
    let (w1, w2) = (format!("{CLUSTER}-worker"), format!("{CLUSTER}-worker2"));
    ensure!(
        nodes == vec![control_plane.clone(), w1.clone(), w2.clone()],
        "{nodes:?}"
    );
    // kind's defaults held: every kubelet uses the systemd cgroup driver.
    for node in &nodes {
        let config = c.exec(node, &["cat", "/var/lib/kubelet/config.yaml"])?;
        ensure!(
            config.contains("cgroupDriver: systemd"),
            "{node}'s kubelet is not on the systemd cgroup driver:\n{config}"
        );
    }
    let originals: BTreeMap<String, String> = nodes
        .iter()
        .map(|n| Ok((n.clone(), c.exec(n, &["cat", CONTAINERD_CONFIG])?)))
        .collect::<Result<_>>()?;

    s.step("kind load image-archive: the wa8s images and metrics-server");
    c.load(&wa8s_e2e::image::wa8s_tarballs()?)?;
    install_metrics_server(&c)?;

    s.step("helm install wa8s, told to skip worker2");
    k.ok(&["label", "node", &w2, &format!("{SKIP_LABEL}=true")])?;
    let pids_before: BTreeMap<String, String> = nodes
        .iter()
        .map(|n| Ok((n.clone(), containerd_pid(&c, n)?)))
        .collect::<Result<_>>()?;
    let helm = Helm::new(Some(c.kubeconfig()))?;
    let registry = c.registry_from_nodes().to_owned();
    let affinity = format!(
        r#"installer.affinity={{"nodeAffinity":{{"requiredDuringSchedulingIgnoredDuringExecution":{{"nodeSelectorTerms":[{{"matchExpressions":[{{"key":"{SKIP_LABEL}","operator":"DoesNotExist"}}]}}]}}}}}}"#
    );
    let chart = wa8s_e2e::repo_root().join("charts/wa8s");
    // Chart-wide telemetry, as a platform team sets it: every pod's access log, and traces
    // from the operator and every pod to a collector beside the cluster.
    let collector = wa8s_e2e::otel::Collector::start_on(std::net::Ipv4Addr::UNSPECIFIED.into())?;
    let otlp = format!(
        "traces.otlpEndpoint=http://{}:{}",
        c.host_from_nodes(),
        collector.port()
    );
    helm.ok(&[
        "install",
        "wa8s",
        &chart.to_string_lossy(),
        "--namespace",
        RELEASE_NAMESPACE,
        "--create-namespace",
        "--wait",
        "--timeout",
        "5m",
        "--set",
        &format!("operator.mirrors.ghcr\\.io={registry}"),
        "--set",
        &format!("operator.insecureRegistries[0]={registry}"),
        "--set",
        "installer.uninstallTimeout=4m",
        "--set",
        "workloads.accessLog=true",
        "--set",
        &otlp,
        "--set-string",
        "traces.env.OTEL_BSP_SCHEDULE_DELAY=200",
        "--set-json",
        &affinity,
    ])?;
    for node in [&control_plane, &w1] {
        k.eventually(
            Duration::from_secs(180),
            "the node installer's label",
            |k| (node_label(k, node) == "ready").then_some(()),
        )?;
    }
    ensure!(
        node_label(&k, &w2).is_empty(),
        "worker2 was prepared though skipped"
    );
    // The nodes have no registry configuration of their own (kind.sh): every pull of
    // ghcr.io below goes through the hosts.toml the installer wrote from the chart values.
    for node in [&control_plane, &w1] {
        let hosts = c.exec(node, &["cat", GHCR_HOSTS])?;
        ensure!(
            hosts.contains(&format!("[host.\"http://{registry}\"]")),
            "{node}'s {GHCR_HOSTS} does not name the mirror:\n{hosts}"
        );
    }
    ensure!(
        c.exec(&w2, &["cat", GHCR_HOSTS]).is_err(),
        "worker2 got registry hosts though skipped"
    );

    s.step("a rolling install: the two prepared nodes took turns restarting containerd");
    let installers = k.ok(&[
        "get",
        "pods",
        "-n",
        RELEASE_NAMESPACE,
        "-l",
        "app.kubernetes.io/component=node-installer",
        "-o",
        "jsonpath={range .items[*]}{.metadata.name} {.spec.nodeName}{\"\\n\"}{end}",
    ])?;
    let mut turns = Vec::new();
    for line in installers.lines() {
        let Some((pod, node)) = line.split_once(' ') else {
            continue;
        };
        if node == w2 {
            continue;
        }
        let log = k.ok(&["logs", "-n", RELEASE_NAMESPACE, pod, "--timestamps"])?;
        let at = |what: &str| -> Result<time::OffsetDateTime> {
            let line = log
                .lines()
                .find(|l| l.contains(what))
                .with_context(|| format!("{pod} on {node} never logged {what:?}:\n{log}"))?;
            let stamp = line.split_whitespace().next().unwrap_or_default();
            time::OffsetDateTime::parse(stamp, &time::format_description::well_known::Rfc3339)
                .with_context(|| format!("a timestamp in {line:?}"))
        };
        turns.push((
            node.to_owned(),
            at("took a restart slot")?,
            at("gave the restart slot back")?,
        ));
    }
    ensure!(turns.len() == 2, "{turns:?}");
    let (a, b) = (&turns[0], &turns[1]);
    ensure!(
        a.2 <= b.1 || b.2 <= a.1,
        "both nodes held a restart slot at once (installer.maxUnavailable=1): {turns:?}"
    );

    s.step("the installer restarted containerd through systemd, copying runc's cgroup driver");
    for node in [&control_plane, &w1] {
        let pid = containerd_pid(&c, node)?;
        ensure!(
            pid != pids_before[node.as_str()] && pid != "0",
            "containerd on {node} was not restarted by systemd (MainPID {pid})"
        );
        let config = c.exec(node, &["cat", CONTAINERD_CONFIG])?;
        let table = config
            .split("runtimes.wa8s]")
            .nth(1)
            .with_context(|| format!("no wa8s runtime on {node}:\n{config}"))?;
        ensure!(
            table.contains("io.containerd.wa8s.v1") && table.contains("SystemdCgroup = true"),
            "{node}: {table}"
        );
    }
    ensure!(containerd_pid(&c, &w2)? == pids_before[w2.as_str()]);
    ensure!(c.exec(&w2, &["cat", CONTAINERD_CONFIG])? == originals[w2.as_str()]);

    s.step("the users' manifest, verbatim, through the ghcr.io mirror");
    let digest = push(
        &c,
        wa8s_test_components::HTTP_COMPONENT,
        "myorg/image-processor:v1.2.3",
    )?;
    let seed_ns = k.namespace("seed")?;
    let n = seed_ns.name();
    let seed = std::fs::read_to_string(wa8s_e2e::shared_dir().join("fixtures/seed-deploy.yaml"))?;
    let applied = k.apply(n, &seed)?;
    ensure!(applied.success, "seed manifest refused: {}", applied.stderr);
    wait_ready(&k, n, "image-processor")?;
    ensure!(
        jsonpath(
            &k,
            n,
            "webassembly/image-processor",
            "{.status.module.digest}"
        )? == digest
    );
    let pods = k.eventually(Duration::from_secs(120), "2 running pods", |k| {
        running_pods(k, n, "image-processor")
            .ok()
            .filter(|p| p.len() == 2)
    })?;
    ensure!(
        pods.values().all(|node| *node == w1),
        "wasm pods may only run on the prepared worker: {pods:?}"
    );

    s.step("the guest runs in its pod's systemd slice, under the pod's limits");
    let (pod, node) = pods.iter().next().context("a pod")?;
    let id = jsonpath(
        &k,
        n,
        &format!("pod/{pod}"),
        "{.status.containerStatuses[0].containerID}",
    )?;
    let id = id
        .strip_prefix("containerd://")
        .context("a containerd container id")?;
    let scope = format!("cri-containerd-{id}.scope");
    let found = c.exec(
        node,
        &[
            "find",
            "/sys/fs/cgroup/memory",
            "-type",
            "d",
            "-name",
            &scope,
        ],
    )?;
    let dir = found
        .lines()
        .next()
        .with_context(|| format!("no {scope} under the memory hierarchy of {node}"))?;
    let uid = jsonpath(&k, n, &format!("pod/{pod}"), "{.metadata.uid}")?.replace('-', "_");
    ensure!(
        // kind roots the kubelet's cgroups at kubelet.slice: kubelet-kubepods-…-pod<uid>.slice.
        dir.contains("kubepods") && dir.ends_with(&format!("pod{uid}.slice/{scope}")),
        "the guest's cgroup is not in its pod's slice: {dir}"
    );
    let limit = c.exec(node, &["cat", &format!("{dir}/memory.limit_in_bytes")])?;
    ensure!(
        limit.trim() == (32u64 << 20).to_string(),
        "memory limit {limit}"
    );
    let procs = c.exec(node, &["cat", &format!("{dir}/cgroup.procs")])?;
    let pid = procs
        .lines()
        .next()
        .context("no process in the guest's cgroup")?;
    let cmdline = c.exec(node, &["cat", &format!("/proc/{pid}/cmdline")])?;
    ensure!(cmdline.contains("containerd-shim-wa8s-v1"), "{cmdline:?}");
    let systemd_view = c.exec(node, &["cat", &format!("/proc/{pid}/cgroup")])?;
    ensure!(
        systemd_view
            .lines()
            .any(|l| l.contains("name=systemd") && l.ends_with(&scope)),
        "systemd does not see the guest in its scope:\n{systemd_view}"
    );

    s.step("the Service answers 200");
    let cluster_ip = jsonpath(&k, n, "svc/image-processor", "{.spec.clusterIP}")?;
    hello_from(&c, &control_plane, &format!("http://{cluster_ip}/"))?;

    s.step("the chart's telemetry settings: an access log line and a span from the pods, reconcile spans from the operator");
    let logs = k.eventually(Duration::from_secs(60), "an access log line", |k| {
        let logs = k
            .ok(&[
                "logs",
                "-n",
                n,
                "-l",
                "app.kubernetes.io/instance=image-processor",
            ])
            .ok()?;
        logs.lines()
            .any(|l| l.contains(r#""path":"/""#) && l.contains(r#""status":200"#))
            .then_some(logs)
    })?;
    eprintln!("access log on kind:\n{logs}");
    let span = k
        .eventually(Duration::from_secs(60), "a pod's request span", |_| {
            collector
                .spans()
                .into_iter()
                .find(|s| s.service == "image-processor" && s.kind == wa8s_e2e::otel::SERVER)
        })
        .with_context(|| format!("collector log:\n{}", collector.log()))?;
    ensure!(
        span.resource.get("k8s.namespace.name").map(String::as_str) == Some(n)
            && span
                .resource
                .get("k8s.pod.name")
                .is_some_and(|p| pods.contains_key(p)),
        "the span's resource does not name its pod: {:?}",
        span.resource
    );
    k.eventually(
        Duration::from_secs(60),
        "the operator's reconcile spans",
        |_| {
            collector
                .spans()
                .into_iter()
                .find(|s| s.service == "wa8s-operator" && s.name == "reconcile")
        },
    )?;

    s.step("kubectl top shows the wasm pods' CPU and memory");
    let rows = k.eventually(
        Duration::from_secs(300),
        "kubectl top rows for both pods",
        |k| {
            // A fresh discovery cache: kubectl keeps the API list it read before metrics-server
            // registered metrics.k8s.io, and would say "Metrics API not available" for hours.
            let cache = tempfile::tempdir().ok()?;
            let cache = format!("--cache-dir={}", cache.path().display());
            let out = k
                .ok(&[
                    "top",
                    "pod",
                    "-n",
                    n,
                    "--containers",
                    "--no-headers",
                    &cache,
                ])
                .ok()?;
            (out.lines()
                .filter(|l| l.split_whitespace().nth(1) == Some("module"))
                .count()
                == 2)
                .then_some(out)
        },
    )?;
    for row in rows.lines() {
        let f: Vec<&str> = row.split_whitespace().collect();
        let memory: u64 = f
            .get(3)
            .and_then(|m| m.strip_suffix("Mi"))
            .and_then(|m| m.parse().ok())
            .with_context(|| format!("no memory in MiB in {row:?}"))?;
        ensure!((1..=32).contains(&memory), "{row:?}");
        ensure!(f.get(2).is_some_and(|cpu| cpu.ends_with('m')), "{row:?}");
    }
    eprintln!("kubectl top on kind:\n{rows}");

    s.step("a guest that allocates past resources.memory is stopped, and its object says so");
    push(&c, wa8s_test_components::HOG_COMPONENT, "myorg/hog:v1")?;
    let hog_ns = k.namespace("hog")?;
    let hog = "apiVersion: wa8s.reconciler.io/v1\nkind: WebAssembly\nmetadata:\n  name: hog\nspec:\n  module:\n    registry: ghcr.io/myorg/hog\n    tag: v1\n  replicas: 1\n  resources:\n    memory: 16Mi\n";
    let applied = k.apply(hog_ns.name(), hog)?;
    ensure!(applied.success, "{}", applied.stderr);
    let degraded = k.eventually(Duration::from_secs(180), "the hog's Degraded condition", |k| {
        let text = jsonpath(
            k,
            hog_ns.name(),
            "webassembly/hog",
            "{range .status.conditions[?(@.type==\"Degraded\")]}{.status} {.reason}: {.message}{end}",
        )
        .ok()?;
        text.starts_with("True").then_some(text)
    })?;
    ensure!(
        degraded.contains("out of memory") || degraded.contains("OOMKilled"),
        "the condition does not say the guest ran out of memory: {degraded}"
    );
    eprintln!("hog: {degraded}");
    drop(hog_ns);

    s.step("worker2 is no longer skipped: the installer prepares it");
    let w2_pid = containerd_pid(&c, &w2)?;
    k.ok(&["label", "node", &w2, &format!("{SKIP_LABEL}-")])?;
    k.eventually(Duration::from_secs(180), "worker2 prepared", |k| {
        (node_label(k, &w2) == "ready").then_some(())
    })?;
    ensure!(
        containerd_pid(&c, &w2)? != w2_pid,
        "containerd on worker2 was not restarted"
    );

    s.step("pods of one WebAssembly spread over both workers; the Service answers from both");
    k.ok(&[
        "patch",
        "webassembly/image-processor",
        "-n",
        n,
        "--type=merge",
        "-p",
        r#"{"spec":{"scaling":{"minReplicas":4}}}"#,
    ])?;
    let spread = k.eventually(Duration::from_secs(240), "4 pods on both workers", |k| {
        running_pods(k, n, "image-processor").ok().filter(|p| {
            let on: BTreeSet<&String> = p.values().collect();
            p.len() == 4 && on.contains(&w1) && on.contains(&w2)
        })
    })?;
    eprintln!("spread: {spread:?}");
    wait_ready(&k, n, "image-processor")?;
    let endpoints = k.eventually(Duration::from_secs(120), "4 ready endpoints", |k| {
        let out = endpoint_slices(
            k,
            n,
            "image-processor",
            "{range .items[*].endpoints[?(@.conditions.ready==true)]}{.addresses[0]} {.nodeName}{\"\\n\"}{end}",
        )
        .ok()?;
        (out.lines().count() == 4).then_some(out)
    })?;
    let port = endpoint_slices(&k, n, "image-processor", "{.items[0].ports[0].port}")?;
    for line in endpoints.lines() {
        let (ip, node) = line.split_once(' ').context("address and node")?;
        // From the control-plane node: across the pod network to each worker's pods.
        eprintln!("endpoint {ip} on {node}");
        hello_from(&c, &control_plane, &format!("http://{ip}:{port}/"))?;
    }
    for _ in 0..20 {
        hello_from(&c, &control_plane, &format!("http://{cluster_ip}/"))?;
    }

    s.step("podman stop worker: its pods come back on the other worker and the object is Ready");
    c.podman(&["stop", "-t", "10", &w1])?;
    k.eventually(
        Duration::from_secs(300),
        "4 running pods, none on the stopped worker",
        |k| {
            running_pods(k, n, "image-processor")
                .ok()
                .filter(|p| p.len() == 4 && p.values().all(|node| *node == w2))
        },
    )?;
    wait_ready(&k, n, "image-processor")?;
    hello_from(&c, &control_plane, &format!("http://{cluster_ip}/"))?;

    s.step("podman start worker: the node comes back with the runtime installed");
    c.podman(&["start", &w1])?;
    k.eventually(Duration::from_secs(300), "the worker Ready again", |k| {
        let ready = k
            .ok(&[
                "get",
                "node",
                &w1,
                "-o",
                "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
            ])
            .ok()?;
        (ready == "True").then_some(())
    })?;
    k.eventually(
        Duration::from_secs(120),
        "containerd on the restarted worker knows wa8s",
        |_| {
            let dump = c.exec(&w1, &["containerd", "config", "dump"]).ok()?;
            dump.contains("io.containerd.wa8s.v1").then_some(())
        },
    )?;
    ensure!(node_label(&k, &w1) == "ready");
    ensure!(
        !c.exec(&w1, &["ls", "/usr/local/bin/containerd-shim-wa8s-v1"])?
            .is_empty()
    );

    s.step("helm uninstall restores every node's containerd configuration byte for byte");
    drop(seed_ns);
    helm_uninstall(&helm)?;
    for node in &nodes {
        let now = c.exec(node, &["cat", CONTAINERD_CONFIG])?;
        ensure!(
            now == originals[node.as_str()],
            "{node}'s containerd configuration differs after uninstall:\n{now}"
        );
        ensure!(node_label(&k, node).is_empty(), "{node} still labelled");
        ensure!(
            c.exec(node, &["cat", GHCR_HOSTS]).is_err(),
            "{node} keeps the installer's {GHCR_HOSTS} after uninstall"
        );
    }
    s.step("done; kind delete cluster");
    c.down()?;
    ensure!(
        !KindCluster::clusters()?.iter().any(|n| n == CLUSTER),
        "kind still lists {CLUSTER}"
    );
    Ok(())
}
