//! Faults on a real single-node cluster: the registry stopped and started again, containerd
//! restarted while pods serve, the operator stopped in the middle of a rollout. Each ends
//! with everything `Ready` again and nothing lost.
//!
//! The cluster belongs to this test process (`Cluster::own`) because its parts are stopped;
//! the tests take turns with it (a lock), each in its own namespace.

use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use wa8s_e2e::Kubectl;
use wa8s_e2e::scenario::{Cluster, Load, variant};

/// The hello component with a new digest naming `tag`.
fn hello_variant(tag: &str) -> Vec<u8> {
    variant(wa8s_test_components::HTTP_COMPONENT, tag)
}

/// How long an object may take to become Ready again (retries back off up to minutes).
const READY: Duration = Duration::from_secs(240);

fn cluster() -> Result<MutexGuard<'static, Cluster>> {
    static CLUSTER: OnceLock<Result<Mutex<Cluster>, String>> = OnceLock::new();
    let cluster = CLUSTER
        .get_or_init(|| Cluster::own().map(Mutex::new).map_err(|e| format!("{e:#}")))
        .as_ref()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    // A test that failed while holding it leaves the cluster usable for the next.
    Ok(cluster.lock().unwrap_or_else(|p| p.into_inner()))
}

fn manifest(name: &str, repository: &str, tag: &str) -> String {
    wa8s_e2e::scenario::manifest(name, repository, tag, 1)
}

fn jsonpath(k: &Kubectl, ns: &str, object: &str, path: &str) -> Result<String> {
    Ok(k.ok(&["get", object, "-n", ns, "-o", &format!("jsonpath={path}")])?)
}

/// Pushes the hello component as `repository:v1`, applies WebAssembly `name` for it in
/// `ns` and waits until it is Ready.
fn run_hello(c: &Cluster, ns: &str, name: &str, repository: &str) -> Result<()> {
    c.push(
        wa8s_test_components::HTTP_COMPONENT,
        &format!("{repository}:v1"),
    )?;
    c.apply_ready(ns, name, &manifest(name, repository, "v1"), READY)
}

/// The address (`ip:8080`) of the running pod of WebAssembly `name`.
fn pod_addr(k: &Kubectl, ns: &str, name: &str) -> Result<String> {
    let ip = k.eventually(Duration::from_secs(60), "a pod IP", |k| {
        k.ok(&[
            "get",
            "pods",
            "-n",
            ns,
            "-l",
            &format!("wa8s.reconciler.io/webassembly={name}"),
            "--field-selector=status.phase=Running",
            "-o",
            "jsonpath={.items[0].status.podIP}",
        ])
        .ok()
        .filter(|ip| !ip.is_empty())
    })?;
    Ok(format!("{ip}:8080"))
}

fn get_200(addr: &str) -> Result<()> {
    let (status, body) = wa8s_e2e::http::get(addr, "/", Duration::from_secs(10))
        .with_context(|| format!("GET {addr}"))?;
    ensure!(status == 200, "GET {addr}: {status} {body}");
    Ok(())
}

#[test]
fn a_registry_outage_keeps_pods_serving_and_objects_applied_during_it_converge_when_it_returns()
-> Result<()> {
    let mut c = cluster()?;
    let k = c.kubectl();
    let ns = k.namespace("outage")?;
    let n = ns.name();
    run_hello(&c, n, "serving", "myorg/outage")?;
    let digest = jsonpath(&k, n, "webassembly/serving", "{.status.module.digest}")?;

    c.stop_registry()?;
    let result = (|| -> Result<()> {
        ensure!(
            k.apply(n, &manifest("newcomer", "myorg/outage", "v1"))?
                .success
        );
        // The newcomer says why it cannot start.
        let message = k.eventually(Duration::from_secs(60), "ModuleResolved=False", |k| {
            let status = jsonpath(
                k,
                n,
                "webassembly/newcomer",
                "{.status.conditions[?(@.type==\"ModuleResolved\")].status}",
            )
            .ok()?;
            (status == "False").then(|| {
                jsonpath(
                    k,
                    n,
                    "webassembly/newcomer",
                    "{.status.conditions[?(@.type==\"ModuleResolved\")].reason}: {.status.conditions[?(@.type==\"ModuleResolved\")].message}",
                )
                .unwrap_or_default()
            })
        })?;
        ensure!(
            message.starts_with("RegistryUnavailable") && message.contains(c.registry()),
            "the condition does not name the unreachable registry: {message}"
        );
        // The one already running outlives re-resolution (every 10 s here) during the outage:
        // it keeps its digest, stays Ready and answers.
        std::thread::sleep(Duration::from_secs(15));
        let ready = jsonpath(
            &k,
            n,
            "webassembly/serving",
            "{.status.conditions[?(@.type==\"Ready\")].status}",
        )?;
        ensure!(ready == "True", "serving is not Ready during the outage");
        ensure!(jsonpath(&k, n, "webassembly/serving", "{.status.module.digest}")? == digest);
        get_200(&pod_addr(&k, n, "serving")?)?;
        Ok(())
    })();
    c.start_registry()?;
    result?;

    c.wait_ready(n, "newcomer", READY)?;
    c.wait_ready(n, "serving", READY)?;
    get_200(&pod_addr(&k, n, "newcomer")?)?;
    let objects = k.ok(&["get", "webassembly,deploy,svc", "-n", n, "-o", "name"])?;
    for o in [
        "webassembly.wa8s.reconciler.io/serving",
        "webassembly.wa8s.reconciler.io/newcomer",
        "deployment.apps/serving",
        "deployment.apps/newcomer",
        "service/serving",
        "service/newcomer",
    ] {
        ensure!(
            objects.lines().any(|l| l == o),
            "{o} is missing:\n{objects}"
        );
    }
    Ok(())
}

#[test]
fn restarting_containerd_while_pods_serve_loses_no_request_and_the_pods_stay_manageable()
-> Result<()> {
    let mut c = cluster()?;
    let k = c.kubectl();
    let ns = k.namespace("containerd")?;
    let n = ns.name();
    run_hello(&c, n, "steady", "myorg/steady")?;
    let addr = pod_addr(&k, n, "steady")?;
    let pod = k.ok(&[
        "get",
        "pods",
        "-n",
        n,
        "-l",
        "wa8s.reconciler.io/webassembly=steady",
        "-o",
        "jsonpath={.items[0].metadata.name}",
    ])?;

    let load = Load::start(addr.clone());
    std::thread::sleep(Duration::from_secs(2));
    let restarted = c.restart_containerd();
    std::thread::sleep(Duration::from_secs(5));
    let (sent, failures) = load.finish();
    restarted?;
    ensure!(
        failures.is_empty(),
        "{} of {sent} requests failed across the containerd restart: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );

    // The kubelet still sees the same container running, not restarted.
    let restarts = jsonpath(
        &k,
        n,
        &format!("pod/{pod}"),
        "{.status.containerStatuses[0].restartCount}",
    )?;
    ensure!(
        restarts == "0",
        "the container was restarted {restarts} times"
    );
    c.wait_ready(n, "steady", READY)?;
    // The new containerd reached the pod's shim: deleting the pod stops it, and its
    // replacement starts and serves.
    k.ok(&[
        "delete",
        "pod",
        "-n",
        n,
        &pod,
        "--wait=true",
        "--timeout=60s",
    ])?;
    k.eventually(READY, "the replacement pod answering", |k| {
        let addr = pod_addr(k, n, "steady").ok()?;
        get_200(&addr).ok()
    })?;
    c.wait_ready(n, "steady", READY)?;
    Ok(())
}

#[test]
fn the_operator_stopped_in_the_middle_of_a_rollout_finishes_it_when_it_is_back() -> Result<()> {
    let mut c = cluster()?;
    let k = c.kubectl();
    let ns = k.namespace("rollout")?;
    let n = ns.name();
    c.push(&hello_variant("v1"), "myorg/rolling:v1")?;
    let v2 = c.push(&hello_variant("v2"), "myorg/rolling:v2")?;
    ensure!(
        k.apply(n, &manifest("rolling", "myorg/rolling", "v1"))?
            .success
    );
    c.wait_ready(n, "rolling", READY)?;

    ensure!(
        k.apply(n, &manifest("rolling", "myorg/rolling", "v2"))?
            .success
    );
    // The operator has written the new Deployment; the rollout is under way. Stop it there.
    k.eventually(Duration::from_secs(60), "the Deployment on v2", |k| {
        jsonpath(
            k,
            n,
            "deploy/rolling",
            "{.spec.template.spec.containers[0].image}",
        )
        .ok()
        .filter(|image| image.ends_with(&v2))
    })?;
    c.stop_operator()?;
    let generation = jsonpath(&k, n, "webassembly/rolling", "{.metadata.generation}")?;
    std::thread::sleep(Duration::from_secs(3));
    c.start_operator()?;

    c.wait_ready(n, "rolling", READY)?;
    let status = k.eventually(READY, "status of generation {generation} on v2", |k| {
        let observed =
            jsonpath(k, n, "webassembly/rolling", "{.status.observedGeneration}").ok()?;
        let digest = jsonpath(k, n, "webassembly/rolling", "{.status.module.digest}").ok()?;
        let ready = jsonpath(k, n, "webassembly/rolling", "{.status.readyReplicas}").ok()?;
        (observed == generation && digest == v2 && ready == "1").then_some(())
    });
    if status.is_err() {
        let yaml = k.ok(&["get", "webassembly/rolling", "-n", n, "-o", "yaml"])?;
        bail!("the rollout did not finish after the operator came back:\n{yaml}");
    }
    get_200(&pod_addr(&k, n, "rolling")?)?;
    Ok(())
}
