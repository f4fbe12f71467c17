//! containerd-shim-wa8s-v1 under containerd's CRI, driven with the real `crictl` the way the
//! kubelet drives it: images pulled through the CRI with credentials only the CRI has (CNCF
//! wasm artifacts from a real registry with basic auth, read back from containerd's content
//! store), pods with their own network namespace and an address on a CNI bridge, logs and
//! stats through the CRI. (`ctr run` cannot start a wasm artifact: its client refuses the
//! `vnd.wasm.config` media type, so the ctr tests use layered images.)
//!
//! Each test has its own containerd and its own CNI network index (2, 3, 4), so they run in
//! parallel; the quickstart's node uses 0 and the scenarios' 1.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use serde_json::{Value, json};
use wa8s_e2e::Registry;
use wa8s_e2e::containerd::Containerd;
use wa8s_e2e::process::eventually;
use wa8s_test_components as guests;

mod common;
use common::policy_annotations;

/// The runtime handler the wa8s RuntimeClass names.
const HANDLER: &str = wa8s_api::contract::RUNTIME_HANDLER;

fn cri(network: u8, registry: &Registry) -> Result<Containerd> {
    let shim = PathBuf::from(env!("CARGO_BIN_EXE_containerd-shim-wa8s-v1"));
    let dir = shim.parent().context("shim directory")?;
    Ok(Containerd::start_cri(
        dir,
        network,
        &[registry.addr().to_owned()],
    )?)
}

/// The registry's only user: the CRI pulls with these credentials (as the kubelet does with
/// a pod's imagePullSecrets); the shim has none.
const USER: (&str, &str) = ("puller", "s3cret");

fn private_registry() -> Result<Registry> {
    Ok(Registry::start_with(wa8s_e2e::registry::Users(vec![(
        USER.0.into(),
        USER.1.into(),
    )]))?)
}

/// Pushes `wasm` to `registry` as the CNCF wasm artifact `<registry>/cri/<name>:v1`;
/// returns the reference and the layer's digest.
fn push(registry: &Registry, name: &str, wasm: &[u8]) -> Result<(String, String)> {
    let reference = format!("{}/cri/{name}:v1", registry.addr());
    let client = wa8s_oci::Registry::new(wa8s_oci::RegistryOptions {
        credentials: wa8s_oci::Credentials {
            explicit: Some((USER.0.into(), USER.1.into())),
            ..wa8s_oci::Credentials::default()
        },
        ..wa8s_oci::RegistryOptions::default()
    });
    let pushed = tokio::runtime::Runtime::new()?.block_on(client.push(wasm, &reference))?;
    Ok((reference, pushed.layer_digest))
}

/// `crictl pull` with the registry's credentials.
fn pull(c: &Containerd, image: &str) -> Result<()> {
    c.crictl_ok(&["pull", "--creds", &format!("{}:{}", USER.0, USER.1), image])?;
    Ok(())
}

/// Writes `value` as `<dir>/<name>.json` for crictl.
fn config_file(c: &Containerd, name: &str, value: &Value) -> Result<String> {
    let path = c.dir().join(format!("{name}.json"));
    std::fs::write(&path, serde_json::to_vec_pretty(value)?)?;
    Ok(path.display().to_string())
}

/// A pod sandbox config (as the kubelet writes it) with the grants in its annotations.
/// Runs a pod sandbox with the wa8s handler; returns its id.
fn run_pod(c: &Containerd, pod_config: &str) -> Result<String> {
    Ok(c.crictl_ok(&["runp", "--runtime", HANDLER, pod_config])?
        .trim()
        .to_owned())
}

/// Creates and starts a container in a pod; returns its id.
fn start_container(
    c: &Containerd,
    pod_id: &str,
    pod_config: &str,
    container_config: &str,
) -> Result<String> {
    let id = c
        .crictl_ok(&["create", pod_id, container_config, pod_config])?
        .trim()
        .to_owned();
    c.crictl_ok(&["start", &id])?;
    Ok(id)
}

fn pod(c: &Containerd, name: &str, grants: &BTreeMap<String, String>) -> Result<String> {
    let logs = c.dir().join(format!("logs-{name}"));
    std::fs::create_dir_all(&logs)?;
    config_file(
        c,
        &format!("pod-{name}"),
        &json!({
            "metadata": { "name": name, "namespace": "cri-test", "uid": format!("uid-{name}"), "attempt": 0 },
            "log_directory": logs,
            "annotations": grants,
            "linux": { "cgroup_parent": c.cgroup_parent(name) },
        }),
    )
}

/// A container config running `image`'s component (the operator's `command: ["/"]`).
fn container(c: &Containerd, name: &str, image: &str, env: &[(&str, &str)]) -> Result<String> {
    let envs: Vec<Value> = env
        .iter()
        .map(|(k, v)| json!({ "key": k, "value": v }))
        .collect();
    config_file(
        c,
        &format!("container-{name}"),
        &json!({
            "metadata": { "name": name, "attempt": 0 },
            "image": { "image": image },
            "command": [wa8s_api::contract::IMAGE_COMPONENT_COMMAND],
            "envs": envs,
            "log_path": format!("{name}.log"),
            "linux": {},
        }),
    )
}

fn json_of(text: &str) -> Result<Value> {
    serde_json::from_str(text).with_context(|| format!("crictl printed no JSON: {text}"))
}

/// A CRI counter: protobuf's JSON writes 64-bit integers as strings.
fn counter(v: &Value) -> Option<u64> {
    v.as_u64().or_else(|| v.as_str()?.parse().ok())
}

/// `(cpu usage in ns, memory working set in bytes)` of container `id`, from ContainerStats.
fn stats(c: &Containerd, id: &str) -> Result<(u64, u64)> {
    let out = json_of(&c.crictl_ok(&["stats", "-o", "json", id])?)?;
    let s = &out["stats"][0];
    let cpu = counter(&s["cpu"]["usageCoreNanoSeconds"]["value"])
        .with_context(|| format!("no CPU usage in {s}"))?;
    let memory = counter(&s["memory"]["workingSetBytes"]["value"])
        .with_context(|| format!("no working set in {s}"))?;
    Ok((cpu, memory))
}

fn state(c: &Containerd, id: &str) -> Result<Value> {
    Ok(json_of(&c.crictl_ok(&["inspect", "-o", "json", id])?)?["status"].clone())
}

/// Waits until container `id` has exited; returns its status.
fn exited(c: &Containerd, id: &str) -> Result<Value> {
    eventually(Duration::from_secs(60), Duration::from_millis(100), || {
        state(c, id)
            .ok()
            .filter(|s| s["state"] == "CONTAINER_EXITED")
    })
    .with_context(|| format!("container {id} did not exit: {:?}", state(c, id)))
}

/// Reads a running guest's confinement from /proc: seccomp filters on (the container's and
/// wa8s's), no capabilities, `no_new_privs`, PID, IPC, UTS and mount namespaces of its own, and
/// a root holding nothing but `/proc` and the pod's name resolution files.
fn confined_like_a_container(c: &Containerd, id: &str) -> Result<()> {
    let pid = json_of(&c.crictl_ok(&["inspect", "-o", "json", id])?)?["info"]["pid"]
        .as_u64()
        .context("the container's pid")?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_owned())
    };
    ensure!(
        field("Seccomp:").as_deref() == Some("2"),
        "not in seccomp filter mode:\n{status}"
    );
    if let Some(n) = field("Seccomp_filters:") {
        ensure!(
            n.parse::<u32>()? >= 3,
            "only {n} seccomp filters: wa8s's two and the container's"
        );
    }
    ensure!(field("NoNewPrivs:").as_deref() == Some("1"), "{status}");
    ensure!(
        field("CapEff:").as_deref() == Some("0000000000000000"),
        "{status}"
    );
    ensure!(
        field("CapBnd:").as_deref() == Some("0000000000000000"),
        "{status}"
    );
    for ns in ["pid", "ipc", "uts", "mnt"] {
        let theirs = std::fs::read_link(format!("/proc/{pid}/ns/{ns}"))?;
        let ours = std::fs::read_link(format!("/proc/self/ns/{ns}"))?;
        ensure!(
            theirs != ours,
            "the guest shares the node's {ns} namespace ({ours:?})"
        );
    }
    let mut root: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/root"))?
        .map(|e| Ok(e?.file_name().to_string_lossy().into_owned()))
        .collect::<Result<_>>()?;
    root.sort();
    ensure!(root == ["etc", "proc"], "the guest's root holds {root:?}");
    let mounts = std::fs::read_to_string(format!("/proc/{pid}/mountinfo"))?;
    ensure!(
        mounts.lines().count() <= 4,
        "the guest sees more than its root, /proc and two name files:\n{mounts}"
    );
    Ok(())
}

#[test]
fn an_http_component_pulled_through_the_cri_answers_on_its_pod_ip_and_its_stats_move_under_load()
-> Result<()> {
    let registry = private_registry()?;
    let (image, layer) = push(&registry, "http", guests::HTTP_COMPONENT)?;
    let c = cri(2, &registry)?;
    pull(&c, &image)?;
    ensure!(registry.blob_fetches(&layer) == 1, "the CRI's pull");

    let pod_config = pod(&c, "web", &policy_annotations(&[]))?;
    let pod_id = run_pod(&c, &pod_config)?;
    // As pods with `seccompProfile: RuntimeDefault` ask: containerd writes its default
    // profile into the spec, and the guest runs under it as well as under wa8s's own.
    let mut config = json_of(&std::fs::read_to_string(container(
        &c,
        "web",
        &image,
        &[],
    )?)?)?;
    config["linux"] = json!({ "security_context": { "seccomp": { "profile_type": 0 } } });
    let id = start_container(
        &c,
        &pod_id,
        &pod_config,
        &config_file(&c, "container-web-seccomp", &config)?,
    )?;
    // The component came from what the CRI pulled: the shim has no credentials for this
    // registry, and the layer was downloaded once.
    ensure!(
        c.log().contains("read from containerd's content store"),
        "the shim did not use what the CRI pulled:\n{}",
        c.log()
    );
    ensure!(
        registry.blob_fetches(&layer) == 1,
        "the shim downloaded the layer again"
    );

    // The address the CNI gave the pod's network namespace, reached from the node.
    let sandbox = json_of(&c.crictl_ok(&["inspectp", "-o", "json", &pod_id])?)?;
    let ip = sandbox["status"]["network"]["ip"]
        .as_str()
        .filter(|ip| ip.starts_with("10.246."))
        .with_context(|| format!("no pod IP on network 2 in {}", sandbox["status"]))?
        .to_owned();
    let addr = format!("{ip}:8080");
    let body = eventually(Duration::from_secs(30), Duration::from_millis(100), || {
        wa8s_e2e::http::get(&addr, "/", Duration::from_secs(5))
            .ok()
            .filter(|(status, _)| *status == 200)
            .map(|(_, body)| body)
    })
    .with_context(|| format!("no answer on the pod IP {addr}:\n{}", c.log()))?;
    assert_eq!(body.trim(), "hello from wasm");
    confined_like_a_container(&c, &id)?;

    let (cpu_before, memory) = stats(&c, &id)?;
    ensure!(memory > 0, "ContainerStats reports no memory");
    for _ in 0..300 {
        let (status, _) = wa8s_e2e::http::get(&addr, "/", Duration::from_secs(5))?;
        ensure!(status == 200);
    }
    let (cpu_after, _) = stats(&c, &id)?;
    ensure!(
        cpu_after > cpu_before,
        "CPU usage did not move under load: {cpu_before} ns, then {cpu_after} ns"
    );

    // The kubelet's way down: stop (SIGTERM, drained), remove, stop and remove the pod.
    c.crictl_ok(&["stop", "--timeout", "10", &id])?;
    let status = state(&c, &id)?;
    ensure!(
        status["exitCode"] == 0,
        "a drained HTTP component exits 0: {status}"
    );
    c.crictl_ok(&["rm", &id])?;
    c.crictl_ok(&["stopp", &pod_id])?;
    c.crictl_ok(&["rmp", &pod_id])?;
    let gone = eventually(Duration::from_secs(10), Duration::from_millis(100), || {
        c.shim_servers().is_empty().then_some(())
    });
    ensure!(gone.is_some(), "the pod's shim is still running");
    Ok(())
}

#[test]
fn two_components_of_one_cri_pod_share_a_shim_a_crash_is_a_nonzero_exit_and_ungranted_env_stays_hidden()
-> Result<()> {
    let registry = private_registry()?;
    let (env_image, _) = push(&registry, "env", guests::ENV_COMPONENT)?;
    let (crash_image, _) = push(&registry, "crash", guests::RECURSE_COMPONENT)?;
    let c = cri(3, &registry)?;
    pull(&c, &env_image)?;
    pull(&c, &crash_image)?;

    let pod_config = pod(&c, "pair", &policy_annotations(&["GREETING"]))?;
    let pod_id = run_pod(&c, &pod_config)?;
    let mut ids = Vec::new();
    for (name, image, env) in [
        (
            "env",
            &env_image,
            &[("GREETING", "hi"), ("SECRET", "leaked")][..],
        ),
        ("crash", &crash_image, &[][..]),
    ] {
        let id = start_container(&c, &pod_id, &pod_config, &container(&c, name, image, env)?)?;
        ids.push(id);
    }
    ensure!(
        c.shim_servers().len() == 1,
        "the pod's containers should share one shim"
    );

    let env_status = exited(&c, &ids[0])?;
    ensure!(env_status["exitCode"] == 0, "{env_status}");
    let env_log = c.crictl_ok(&["logs", &ids[0]])?;
    ensure!(env_log.contains("GREETING=hi"), "{env_log}");
    ensure!(
        !env_log.contains("SECRET"),
        "a variable the policy does not grant reached the component: {env_log}"
    );

    let crash = exited(&c, &ids[1])?;
    let code = crash["exitCode"].as_i64().unwrap_or_default();
    ensure!(code != 0, "a crashing component exited 0: {crash}");
    let out = c.crictl(&["logs", &ids[1]])?;
    let log = format!("{}{}", out.stdout, out.stderr);
    if !log.to_lowercase().contains("stack") && !log.contains("wasm trap") {
        bail!("the crash's log does not say what happened (exit {code}):\n{log}");
    }
    Ok(())
}

#[test]
fn when_containerd_no_longer_holds_the_layer_the_shim_pulls_the_component_itself() -> Result<()> {
    // Anonymous this time: the shim's own pull needs no credentials.
    let registry = Registry::start()?;
    let reference = format!("{}/cri/fallback:v1", registry.addr());
    let pushed = tokio::runtime::Runtime::new()?.block_on(
        wa8s_oci::Registry::new(wa8s_oci::RegistryOptions::default())
            .push(guests::HELLO_COMPONENT, &reference),
    )?;
    let c = cri(4, &registry)?;
    c.crictl_ok(&["pull", &reference])?;
    // The layer goes (as when something pruned the store); the image record stays.
    let removed = c.ctr_cri(&["content", "rm", &pushed.layer_digest])?;
    ensure!(
        removed.code == Some(0),
        "ctr content rm: {}",
        removed.stderr
    );

    let pod_config = pod(&c, "fallback", &policy_annotations(&[]))?;
    let pod_id = run_pod(&c, &pod_config)?;
    let id = start_container(
        &c,
        &pod_id,
        &pod_config,
        &container(&c, "hello", &reference, &[])?,
    )?;
    let status = exited(&c, &id)?;
    ensure!(status["exitCode"] == 0, "{status}\n{}", c.log());
    let log = c.crictl_ok(&["logs", &id])?;
    ensure!(log.contains("hello from wasm"), "{log}");
    ensure!(
        c.log()
            .contains("containerd holds no complete wasm artifact"),
        "the shim should say why it pulled:\n{}",
        c.log()
    );
    ensure!(
        registry.blob_fetches(&pushed.layer_digest) == 2,
        "one fetch by the CRI, one by the shim"
    );
    Ok(())
}

#[test]
fn a_pod_under_a_systemd_slice_runs_its_guest_in_a_scope_of_that_slice_with_its_limits()
-> Result<()> {
    // The kubelet's systemd cgroup driver (kind's and kubeadm's default) gives pods a slice as
    // cgroup parent; containerd then hands the shim `slice:cri-containerd:<id>`. This machine
    // has no systemd, so the shim makes the slice's directories itself (and removes them).
    let registry = private_registry()?;
    let (image, _) = push(&registry, "sliced", guests::HTTP_COMPONENT)?;
    let c = cri(5, &registry)?;
    pull(&c, &image)?;
    let unique: String = c
        .namespace()
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .collect();
    let slice = format!("wa8stest-pod{unique}.slice");
    let logs = c.dir().join("logs-sliced");
    std::fs::create_dir_all(&logs)?;
    let pod_config = config_file(
        &c,
        "pod-sliced",
        &json!({
            "metadata": { "name": "sliced", "namespace": "cri-test", "uid": "uid-sliced", "attempt": 0 },
            "log_directory": logs,
            "annotations": policy_annotations(&[]),
            "linux": { "cgroup_parent": slice },
        }),
    )?;
    let pod_id = run_pod(&c, &pod_config)?;
    let container_config = config_file(
        &c,
        "container-sliced",
        &json!({
            "metadata": { "name": "sliced", "attempt": 0 },
            "image": { "image": image },
            "command": [wa8s_api::contract::IMAGE_COMPONENT_COMMAND],
            "log_path": "sliced.log",
            "linux": { "resources": { "memory_limit_in_bytes": 64 << 20, "cpu_quota": 50000, "cpu_period": 100000 } },
        }),
    )?;
    let id = start_container(&c, &pod_id, &pod_config, &container_config)?;

    let relative = format!("wa8stest.slice/{slice}/cri-containerd-{id}.scope");
    let memory = PathBuf::from("/sys/fs/cgroup/memory").join(&relative);
    let read = |p: PathBuf| std::fs::read_to_string(&p).with_context(|| format!("{}", p.display()));
    ensure!(
        read(memory.join("memory.limit_in_bytes"))?.trim() == (64u64 << 20).to_string(),
        "the memory limit is not on the scope in the pod's slice"
    );
    let cpu = PathBuf::from("/sys/fs/cgroup/cpu").join(&relative);
    ensure!(read(cpu.join("cpu.cfs_quota_us"))?.trim() == "50000");
    let pid = json_of(&c.crictl_ok(&["inspect", "-o", "json", &id])?)?["info"]["pid"]
        .as_u64()
        .context("the container's pid")?;
    let procs = read(memory.join("cgroup.procs"))?;
    ensure!(
        procs.lines().any(|l| l == pid.to_string()),
        "the guest {pid} is not in its scope: {procs:?}"
    );
    // Where systemd would look for it too: the name=systemd hierarchy and the v2 mount.
    let membership = read(PathBuf::from(format!("/proc/{pid}/cgroup")))?;
    for line in membership.lines() {
        let (_, rest) = line.split_once(':').context("a cgroup line")?;
        let (controllers, path) = rest.split_once(':').context("a cgroup line")?;
        if ["memory", "cpu", "name=systemd", ""].contains(&controllers)
            || controllers.split(',').any(|c| c == "memory")
        {
            ensure!(
                path == format!("/{relative}"),
                "{controllers:?} puts the guest at {path}, not in its scope:\n{membership}"
            );
        }
    }
    let (_, working_set) = stats(&c, &id)?;
    ensure!(working_set > 0, "ContainerStats reports no memory");

    c.crictl_ok(&["stop", "--timeout", "10", &id])?;
    c.crictl_ok(&["rm", &id])?;
    c.crictl_ok(&["stopp", &pod_id])?;
    c.crictl_ok(&["rmp", &pod_id])?;
    // Nothing is left: not the scope, nor the slices the shim had to make.
    let top = PathBuf::from("/sys/fs/cgroup/memory/wa8stest.slice").join(&slice);
    let gone = eventually(Duration::from_secs(10), Duration::from_millis(100), || {
        (!memory.exists() && !top.exists()).then_some(())
    });
    ensure!(gone.is_some(), "{} is still there", memory.display());
    Ok(())
}

#[test]
fn a_max_size_volume_ends_writes_past_its_bound_in_the_kernel_and_keeps_what_was_written()
-> Result<()> {
    let registry = private_registry()?;
    let (image, _) = push(&registry, "fill", guests::FSPROBE_COMPONENT)?;
    let c = cri(6, &registry)?;
    pull(&c, &image)?;
    let volume = tempfile::tempdir()?;
    let mut policy = wa8s_api::contract::Policy::from_annotations(&policy_annotations(&[]))?;
    policy.fs.push(wa8s_api::contract::FsPolicy {
        path: "/data".into(),
        read_only: false,
        max_size_bytes: Some(512 << 10),
    });
    // An unbounded volume beside it (preopen 4), for the moves and links across the bound.
    let other = tempfile::tempdir()?;
    std::fs::write(other.path().join("big"), vec![1u8; 1 << 20])?;
    policy.fs.push(wa8s_api::contract::FsPolicy {
        path: "/other".into(),
        read_only: false,
        max_size_bytes: None,
    });
    let pod_config = pod(&c, "bounded", &policy.to_annotations())?;
    let pod_id = run_pod(&c, &pod_config)?;
    // fsprobe: preopen 3, then `w big` writes 1 MiB, `r big` reads it back.
    let run_in = |volume: &std::path::Path, name: &str, args: &[&str]| -> Result<(Value, String)> {
        let mut config = json_of(&std::fs::read_to_string(container(&c, name, &image, &[])?)?)?;
        config["args"] = json!(args);
        config["mounts"] = json!([
            { "container_path": "/data", "host_path": volume },
            { "container_path": "/other", "host_path": other.path() },
        ]);
        let id = start_container(
            &c,
            &pod_id,
            &pod_config,
            &config_file(&c, &format!("container-{name}-bounded"), &config)?,
        )?;
        let status = exited(&c, &id)?;
        let out = c.crictl(&["logs", &id])?;
        Ok((status, format!("{}{}", out.stdout, out.stderr)))
    };
    let run = |name: &str, args: &[&str]| run_in(volume.path(), name, args);
    // Every way around a bound the host alone could miss ends in the kernel's answer, each in
    // a fresh bounded volume: a file written after it was unlinked, directories nested
    // through their descriptors and a symlink flood get ENOSPC; a move or hard link in from
    // the other volume gets EXDEV.
    for (name, op, errno) in [
        ("unlinked", "u", 51),
        ("nested", "d", 51),
        ("symlinks", "s", 51),
        ("moved", "m", 75),
        ("linked", "l", 75),
    ] {
        let fresh = tempfile::tempdir()?;
        let (status, log) = run_in(fresh.path(), name, &["3", op, "big"])?;
        ensure!(
            log.contains(&format!("errno={errno}")),
            "{name}: expected errno {errno}: {status}\n{log}"
        );
    }
    ensure!(
        std::fs::metadata(other.path().join("big"))?.len() == 1 << 20,
        "the other volume's file was changed"
    );
    let (status, log) = run("fill", &["3", "w", "big"])?;
    ensure!(
        log.contains("errno=51"),
        "a 1 MiB write into a 512Ki bound did not end with ENOSPC (51): {status}\n{log}"
    );
    // On the node, the volume holds the bounded file system's image and nothing else, and the
    // image takes no more than the bound.
    let entries: Vec<String> = std::fs::read_dir(volume.path())?
        .map(|e| Ok(e?.file_name().to_string_lossy().into_owned()))
        .collect::<Result<_>>()?;
    ensure!(
        entries == [".wa8s-maxsize.img"],
        "the volume holds {entries:?}"
    );
    use std::os::unix::fs::MetadataExt;
    let image = std::fs::metadata(volume.path().join(".wa8s-maxsize.img"))?;
    ensure!(
        image.len() == 512 << 10,
        "the image is {} bytes",
        image.len()
    );
    ensure!(
        image.blocks() * 512 <= 512 << 10,
        "{} bytes allocated",
        image.blocks() * 512
    );
    // Nothing stayed mounted on the node.
    let mounts = std::fs::read_to_string("/proc/self/mountinfo")?;
    let path = volume.path().to_string_lossy().into_owned();
    ensure!(
        !mounts.contains(&path),
        "the bounded volume is mounted on the node:\n{mounts}"
    );
    // A later container of the pod finds what the first one wrote, up to the bound.
    let (status, log) = run("read", &["3", "r", "big"])?;
    ensure!(
        status["exitCode"] == 0 && log.contains("errno=0"),
        "the written file is not there for the next container: {status}\n{log}"
    );
    c.crictl_ok(&["stopp", &pod_id])?;
    c.crictl_ok(&["rmp", &pod_id])?;
    Ok(())
}

#[test]
fn a_pods_guest_reaches_only_the_allowed_address_of_names_answering_loopback_the_node_and_mapped_forms()
-> Result<()> {
    use std::net::{Ipv4Addr, SocketAddr, TcpListener};
    use wa8s_e2e::dns::DnsServer;
    use wa8s_e2e::scenario::{HttpResponder, Upstream};
    const NETWORK: u8 = 7;
    const ZONE: &str = "dns.example.com";
    let registry = private_registry()?;
    // The Python guest: `/fetch/HOST:PORT/PATH` makes a wasi:http request.
    let (image, _) = push(&registry, "dns", &wa8s_e2e::guests::python_guest()?)?;
    let c = cri(NETWORK, &registry)?;
    pull(&c, &image)?;
    // The pod resolves through the test DNS server on the bridge's address (the node's), as
    // the kubelet's clusterDNS makes pods do.
    let gateway = wa8s_e2e::paths::gateway(NETWORK);
    let dns = DnsServer::start(SocketAddr::from((gateway, 53)))?;
    let mut policy = common::policy(&[]);
    policy.allowed_hosts = vec![format!("*.{ZONE}")];
    policy.limits.memory_bytes = Some(256 << 20);
    let mut pod_config = json_of(&std::fs::read_to_string(pod(
        &c,
        "dns",
        &policy.to_annotations(),
    )?)?)?;
    pod_config["dns_config"] = json!({ "servers": [gateway.to_string()], "options": ["ndots:1"] });
    let pod_config = config_file(&c, "pod-dns-resolving", &pod_config)?;
    let pod_id = run_pod(&c, &pod_config)?;
    start_container(
        &c,
        &pod_id,
        &pod_config,
        &container(&c, "dns", &image, &[])?,
    )?;
    let sandbox = json_of(&c.crictl_ok(&["inspectp", "-o", "json", &pod_id])?)?;
    let ip = sandbox["status"]["network"]["ip"]
        .as_str()
        .with_context(|| format!("no pod IP in {}", sandbox["status"]))?;
    let addr = format!("{ip}:8080");
    eventually(Duration::from_secs(120), Duration::from_millis(200), || {
        wa8s_e2e::http::get(&addr, "/", Duration::from_secs(60))
            .ok()
            .filter(|(status, _)| *status == 200)
    })
    .with_context(|| format!("no answer on the pod IP {addr}:\n{}", c.log()))?;

    // Three servers on one port, so only the address a name resolves to decides which is
    // reached: the upstream (a separate host on the pod network, the one allowed address),
    // the node (every address of it, the pod network's gateway among them) and the pod's own
    // loopback, where the guest's connections to 127.0.0.1 would land.
    let on_node = HttpResponder::spawn(TcpListener::bind("0.0.0.0:0")?, "node")?;
    let port = on_node.addr().port();
    let upstream_ip = Ipv4Addr::new(10, 244 + NETWORK, 0, 250);
    let _upstream = Upstream::on_network(NETWORK, "cri", upstream_ip, port, "upstream ok")?;
    let pod_netns = wa8s_e2e::netns::of_sandbox(&sandbox).context("the pod's netns")?;
    let pod_loopback = HttpResponder::spawn_in(
        &pod_netns,
        SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
        "pod loopback",
    )?;
    let names = dns.hold_hostile(ZONE, gateway, upstream_ip);
    let fetch = |name: &str| {
        let path = format!("/fetch/{name}:{port}/");
        wa8s_e2e::http::get(&addr, &path, Duration::from_secs(60))
            .with_context(|| format!("GET {path}"))
    };
    for name in &names.mixed {
        let (status, body) = fetch(name)?;
        ensure!(
            (status, body.as_str()) == (200, "upstream 200: upstream ok"),
            "{name}: {status} {body}"
        );
    }
    for name in &names.embedded_only {
        let (status, body) = fetch(name)?;
        ensure!(
            status == 502 && body.contains("DestinationIpProhibited"),
            "{name}: {status} {body}"
        );
    }
    ensure!(
        (pod_loopback.accepted(), on_node.accepted()) == (0, 0),
        "the pod's loopback or the node was reached"
    );
    Ok(())
}
