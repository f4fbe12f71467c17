//! The CLI's surface for people and scripts: JSON results parsed back, annotations in the
//! pushed manifest, a WebAssembly object generated for a pushed component, shell
//! completions and the manual page, progress lines on a terminal only.

use std::process::Command;
use std::time::Duration;

use wa8s_e2e::Registry;
use wa8s_test_components as guests;

fn wa8s() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_wa8s"));
    cmd.env("DOCKER_CONFIG", "/nonexistent")
        .env_remove("WA8S_REGISTRY_USERNAME")
        .env_remove("WA8S_REGISTRY_PASSWORD")
        .env_remove("GITHUB_SERVER_URL")
        .env_remove("GITHUB_REPOSITORY")
        .env_remove("GITHUB_SHA")
        .env_remove("SOURCE_DATE_EPOCH");
    cmd
}

fn ok(cmd: &mut Command) -> String {
    let out = cmd.output().expect("runs");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn file(dir: &tempfile::TempDir, name: &str, bytes: &[u8]) -> String {
    let path = dir.path().join(name);
    std::fs::write(&path, bytes).expect("write");
    path.to_string_lossy().into_owned()
}

#[test]
fn push_pull_and_inspect_print_json_that_parses_back_to_the_same_digest() {
    let reg = Registry::start().expect("registry");
    let dir = tempfile::tempdir().expect("tmp");
    let http = file(&dir, "http.wasm", guests::HTTP_COMPONENT);
    let reference = format!("{}/myorg/json:v1", reg.addr());
    let pushed: serde_json::Value = serde_json::from_str(&ok(
        wa8s().args(["push", &http, &reference, "--output", "json"])
    ))
    .expect("push prints JSON");
    let digest = pushed["digest"].as_str().expect("a digest").to_owned();
    assert!(digest.starts_with("sha256:"));
    assert_eq!(pushed["size"], guests::HTTP_COMPONENT.len());

    let to = dir.path().join("pulled.wasm");
    let pulled: serde_json::Value = serde_json::from_str(&ok(wa8s()
        .args(["pull", &reference, "--output", "json", "-o"])
        .arg(&to)))
    .expect("pull prints JSON");
    assert_eq!(pulled["digest"], digest.as_str());
    assert_eq!(pulled["kind"], "wasip2");
    assert_eq!(std::fs::read(&to).expect("pulled"), guests::HTTP_COMPONENT);

    let inspected: serde_json::Value =
        serde_json::from_str(&ok(wa8s().args(["inspect", &reference, "--output", "json"])))
            .expect("inspect prints JSON");
    assert_eq!(inspected["manifestDigest"], digest.as_str());
}

#[test]
fn push_annotations_and_the_forges_variables_land_in_the_manifest() {
    let reg = Registry::start().expect("registry");
    let dir = tempfile::tempdir().expect("tmp");
    let http = file(&dir, "http.wasm", guests::HTTP_COMPONENT);
    let reference = format!("{}/myorg/annotated:v1", reg.addr());
    ok(wa8s()
        .args(["push", &http, &reference])
        .args(["--annotation", "org.opencontainers.image.description=hello"])
        .env("GITHUB_SERVER_URL", "https://github.com")
        .env("GITHUB_REPOSITORY", "myorg/annotated")
        .env("GITHUB_SHA", "0123abc")
        .env("SOURCE_DATE_EPOCH", "1796601600"));
    let (status, body) = wa8s_e2e::http::get_with_headers(
        reg.addr(),
        "/v2/myorg/annotated/manifests/v1",
        &[("Accept", "application/vnd.oci.image.manifest.v1+json")],
        Duration::from_secs(10),
    )
    .expect("the manifest");
    assert_eq!(status, 200, "{body}");
    let manifest: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    let a = &manifest["annotations"];
    assert_eq!(
        a["org.opencontainers.image.source"],
        "https://github.com/myorg/annotated"
    );
    assert_eq!(a["org.opencontainers.image.revision"], "0123abc");
    assert_eq!(
        a["org.opencontainers.image.created"],
        "2026-12-07T00:00:00Z"
    );
    assert_eq!(a["org.opencontainers.image.description"], "hello");

    // Without the variables, `created` is the time of the push (as in the wasm config).
    ok(wa8s().args(["push", &http, &format!("{}/myorg/plain:v1", reg.addr())]));
    let (_, body) = wa8s_e2e::http::get_with_headers(
        reg.addr(),
        "/v2/myorg/plain/manifests/v1",
        &[("Accept", "application/vnd.oci.image.manifest.v1+json")],
        Duration::from_secs(10),
    )
    .expect("the manifest");
    let manifest: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    let annotations = manifest["annotations"].as_object().expect("annotations");
    assert_eq!(
        annotations.keys().collect::<Vec<_>>(),
        ["org.opencontainers.image.created"],
        "{body}"
    );
    let bad = wa8s()
        .args(["push", &http, &reference, "--annotation", "novalue"])
        .output()
        .expect("runs");
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("expected KEY=VALUE"));
}

#[test]
fn manifest_prints_an_object_pinned_to_the_pushed_digest_with_the_kind_its_world_needs() {
    let reg = Registry::start().expect("registry");
    let dir = tempfile::tempdir().expect("tmp");
    for (name, bytes, http) in [
        ("hello-http", guests::HTTP_COMPONENT, true),
        ("hello-cli", guests::HELLO_COMPONENT, false),
    ] {
        let path = file(&dir, &format!("{name}.wasm"), bytes);
        let reference = format!("{}/myorg/{name}:v2", reg.addr());
        let digest = ok(wa8s().args(["push", &path, &reference]))
            .trim()
            .to_owned();
        let yaml = ok(wa8s().args(["manifest", &reference]));
        let object: wa8s_api::WebAssembly = yaml_serde::from_str(&yaml).expect("a WebAssembly");
        assert_eq!(object.metadata.name.as_deref(), Some(name));
        let module = &object.spec.module;
        assert_eq!(module.registry, format!("{}/myorg/{name}", reg.addr()));
        assert_eq!(module.tag.as_deref(), Some("v2"));
        assert_eq!(module.digest.as_deref(), Some(digest.as_str()));
        assert!(object.spec.wasi.is_none(), "nothing granted");
        assert_eq!(object.spec.replicas.is_some(), !http, "{yaml}");
        let json: serde_json::Value = serde_json::from_str(&ok(wa8s().args([
            "manifest", &reference, "--name", "renamed", "--output", "json",
        ])))
        .expect("JSON");
        assert_eq!(json["metadata"]["name"], "renamed");
    }
}

#[test]
fn completions_for_bash_zsh_and_fish_and_the_manual_page_are_generated_from_the_flags() {
    for shell in ["bash", "zsh", "fish"] {
        let script = ok(wa8s().args(["completions", shell]));
        for word in ["push", "manifest", "allow-host"] {
            assert!(script.contains(word), "{shell}: no {word}");
        }
    }
    // The bash script is one bash accepts.
    let dir = tempfile::tempdir().expect("tmp");
    let script = file(
        &dir,
        "wa8s.bash",
        ok(wa8s().args(["completions", "bash"])).as_bytes(),
    );
    let checked = Command::new("bash")
        .args(["-n", &script])
        .output()
        .expect("bash");
    assert!(
        checked.status.success(),
        "{}",
        String::from_utf8_lossy(&checked.stderr)
    );
    let man = ok(wa8s().arg("man"));
    assert!(man.starts_with(".ie") || man.contains(".TH wa8s"), "{man}");
    assert!(man.contains("manifest"));
}

/// `component` with a custom section of `size` bytes appended (a language runtime's bulk).
fn padded(component: &[u8], size: usize) -> Vec<u8> {
    let name = b"padding";
    let mut payload = vec![name.len() as u8];
    payload.extend(name);
    payload.extend(std::iter::repeat_n(0u8, size));
    let mut out = component.to_vec();
    out.push(0); // custom section
    let mut len = payload.len();
    loop {
        let byte = (len & 0x7f) as u8;
        len >>= 7;
        if len == 0 {
            out.push(byte);
            break;
        }
        out.push(byte | 0x80);
    }
    out.extend(payload);
    out
}

#[test]
fn inspect_reads_a_20_mib_components_world_from_its_manifest_without_downloading_it() {
    let reg = Registry::start().expect("registry");
    let dir = tempfile::tempdir().expect("tmp");
    let big = padded(guests::HTTP_COMPONENT, 20 << 20);
    let path = file(&dir, "big.wasm", &big);
    let reference = format!("{}/myorg/big:v1", reg.addr());
    let pushed: serde_json::Value = serde_json::from_str(&ok(
        wa8s().args(["push", &path, &reference, "--output", "json"])
    ))
    .expect("JSON");
    let layer = pushed["layerDigest"]
        .as_str()
        .expect("a layer digest")
        .to_owned();
    let inspected: serde_json::Value =
        serde_json::from_str(&ok(wa8s().args(["inspect", &reference, "--output", "json"])))
            .expect("JSON");
    assert_eq!(inspected["size"], big.len());
    assert_eq!(inspected["digest"], layer.as_str());
    assert!(
        inspected["exports"]
            .as_array()
            .expect("exports")
            .iter()
            .any(|e| e
                .as_str()
                .is_some_and(|e| e.starts_with("wasi:http/incoming-handler"))),
        "{inspected}"
    );
    // The registry served the manifest and the small config, never the 20 MiB layer.
    assert_eq!(reg.blob_fetches(&layer), 0, "{}", reg.log());
    let requests = reg.content_requests("myorg/big");
    assert_eq!(requests.get("GET blob"), Some(&1), "{requests:?}");
}

#[test]
fn a_start_step_of_a_second_or_more_is_named_with_its_time_unless_quiet() {
    // CPython inside: seconds of compiling on a small machine.
    let python = wa8s_e2e::guests::python_guest().expect("the Python guest");
    let dir = tempfile::tempdir().expect("tmp");
    let path = file(&dir, "python.wasm", &python);
    let run = |quiet: bool| {
        let mut cmd = wa8s();
        cmd.args(["run", "--listen", "192.0.2.1:8080"]);
        if quiet {
            cmd.arg("--quiet");
        }
        // An address this machine does not have: the run stops right after the start steps.
        let out = cmd.arg(&path).output().expect("runs");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let said = run(false);
    assert!(
        said.lines()
            .any(|l| l.starts_with("wa8s: compiling") && l.contains(" took ")),
        "{said}"
    );
    let quiet = run(true);
    assert!(!quiet.contains("wa8s: compiling"), "{quiet}");
}

/// `wa8s ARGS` on a terminal (util-linux `script` gives it a pseudo-terminal): what the
/// terminal showed, standard error included.
fn on_a_terminal(args: &[&str]) -> String {
    let bin = env!("CARGO_BIN_EXE_wa8s");
    let line = std::iter::once(bin)
        .chain(args.iter().copied())
        .map(|a| format!("'{}'", a.replace('\'', r"'\''")))
        .collect::<Vec<_>>()
        .join(" ");
    let out = Command::new("script")
        .args(["-qec", &line, "/dev/null"])
        .env("DOCKER_CONFIG", "/nonexistent")
        .output()
        .expect("script runs");
    assert!(
        out.status.success(),
        "{line}: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn push_and_pull_draw_progress_on_a_terminal_only_and_not_when_quiet() {
    let reg = Registry::start().expect("registry");
    let dir = tempfile::tempdir().expect("tmp");
    let big = padded(guests::HTTP_COMPONENT, 20 << 20);
    let path = file(&dir, "big.wasm", &big);
    let reference = format!("{}/myorg/progress:v1", reg.addr());
    let to = dir
        .path()
        .join("pulled.wasm")
        .to_string_lossy()
        .into_owned();

    // Piped (as in a CI log): no progress line, no carriage returns.
    let push: &[&str] = &["push", &path, &reference];
    let pull: &[&str] = &["pull", &reference, "-o", &to];
    for args in [push, pull] {
        let out = wa8s().args(args).output().expect("runs");
        assert!(out.status.success(), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !stderr.contains('\r') && !stderr.contains("MiB/s"),
            "{args:?}: {stderr:?}"
        );
    }

    // On a terminal: a line with bytes, rate and time left (the first is drawn at once),
    // cleared before the summary.
    let shown = on_a_terminal(&["push", &path, &reference]);
    assert!(
        shown.contains("pushing ") && shown.contains("/20.0 MiB") && shown.contains("MiB/s"),
        "{shown:?}"
    );
    assert!(shown.contains("pushed "), "{shown:?}");
    let shown = on_a_terminal(&["pull", &reference, "-o", &to]);
    assert!(
        shown.contains("pulling ") && shown.contains("/20.0 MiB"),
        "{shown:?}"
    );
    assert_eq!(std::fs::read(&to).expect("pulled"), big);

    // --quiet: none on a terminal either.
    let shown = on_a_terminal(&["pull", "--quiet", &reference, "-o", &to]);
    assert!(!shown.contains("MiB/s"), "{shown:?}");
    let shown = on_a_terminal(&["push", "-q", &path, &reference]);
    assert!(!shown.contains("MiB/s"), "{shown:?}");
}
