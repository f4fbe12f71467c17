//! `wa8s push`, `pull` and `inspect` against a real registry on loopback.

use std::process::Command;

use wa8s_e2e::Registry;
use wa8s_test_components as guests;

fn wa8s() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_wa8s"));
    // No stray credentials from the machine running the tests.
    cmd.env("DOCKER_CONFIG", "/nonexistent")
        .env_remove("WA8S_REGISTRY_USERNAME")
        .env_remove("WA8S_REGISTRY_PASSWORD");
    cmd
}

/// Runs wa8s, requiring success; returns stdout.
fn ok(args: &[&str]) -> String {
    let out = wa8s().args(args).output().expect("runs");
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn push_then_pull_gives_the_same_bytes_and_inspect_describes_them() {
    let reg = Registry::start().expect("registry");
    let dir = tempfile::tempdir().expect("tmp");
    let file = dir.path().join("http.wasm");
    std::fs::write(&file, guests::HTTP_COMPONENT).expect("write");
    let reference = format!("{}/myorg/hello:v1", reg.addr());

    let out = ok(&["push", file.to_str().expect("utf8"), &reference]);
    let digest = out.trim().to_owned();
    assert!(digest.starts_with("sha256:"), "{digest}");

    let pulled = dir.path().join("pulled.wasm");
    let by_digest = format!("{}/myorg/hello@{digest}", reg.addr());
    let out = ok(&["pull", &by_digest, "-o", pulled.to_str().expect("utf8")]);
    assert_eq!(out.trim(), digest);
    assert_eq!(
        std::fs::read(&pulled).expect("pulled"),
        guests::HTTP_COMPONENT
    );

    let out = ok(&["inspect", "--json", &reference]);
    let doc: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(doc["kind"], "component");
    assert_eq!(doc["manifestDigest"], digest.as_str());
    assert_eq!(
        doc["configMediaType"],
        "application/vnd.wasm.config.v0+json"
    );
    assert_eq!(doc["layerMediaType"], "application/wasm");
    assert!(
        doc["exports"].as_array().expect("exports").iter().any(|e| e
            .as_str()
            .is_some_and(|e| e.starts_with("wasi:http/incoming-handler"))),
        "{doc}"
    );

    let text = ok(&["inspect", file.to_str().expect("utf8")]);
    assert!(text.contains("kind: Component (wasip2)"), "{text}");
}

/// A registry holding `component` as `myorg/hello:v1` (pushed by `wa8s push` from a file in
/// the returned directory), and that reference.
fn pushed(component: &[u8]) -> (Registry, tempfile::TempDir, String) {
    let reg = Registry::start().expect("registry");
    let dir = tempfile::tempdir().expect("tmp");
    let file = dir.path().join("component.wasm");
    std::fs::write(&file, component).expect("write");
    let reference = format!("{}/myorg/hello:v1", reg.addr());
    ok(&["push", file.to_str().expect("utf8"), &reference]);
    (reg, dir, reference)
}

#[test]
fn a_refused_pull_leaves_the_earlier_output_as_it_was_and_no_partial_file() {
    let (reg, dir, reference) = pushed(guests::HTTP_COMPONENT);
    let output = dir.path().join("out.wasm");
    ok(&["pull", &reference, "-o", output.to_str().expect("utf8")]);

    let mut tampered = guests::HTTP_COMPONENT.to_vec();
    tampered[100] ^= 0xff;
    std::fs::write(layer_of(&reg), &tampered).expect("tamper");
    let stderr = pull_fails(&reference, &output);
    assert!(stderr.contains("digest mismatch"), "{stderr}");
    assert_eq!(
        std::fs::read(&output).expect("still there"),
        guests::HTTP_COMPONENT
    );
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .expect("dir")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(
        left.len(),
        2,
        "only the input and the earlier output: {left:?}"
    );

    // An output that cannot be replaced (a directory): the error names it, nothing is left.
    std::fs::write(layer_of(&reg), guests::HTTP_COMPONENT).expect("untamper");
    let blocked = dir.path().join("blocked");
    std::fs::create_dir(&blocked).expect("dir");
    let stderr = pull_fails(&reference, &blocked);
    assert!(
        stderr.contains(&format!("writing {}", blocked.display())),
        "{stderr}"
    );
    assert!(!dir.path().join("blocked.wasm.partial").exists());
}

/// `wa8s pull REFERENCE -o OUTPUT`, which must exit 1; returns its stderr.
fn pull_fails(reference: &str, output: &std::path::Path) -> String {
    let out = wa8s()
        .args(["pull", reference, "-o"])
        .arg(output)
        .output()
        .expect("runs");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    stderr
}

fn layer_of(reg: &Registry) -> std::path::PathBuf {
    reg.blob_path(&wa8s_oci::sha256_digest(guests::HTTP_COMPONENT))
}

#[test]
fn registry_commands_name_what_went_wrong() {
    let reg = Registry::start().expect("registry");
    let dir = tempfile::tempdir().expect("tmp");
    let junk = dir.path().join("junk.wasm");
    std::fs::write(&junk, b"not wasm").expect("write");
    let missing = format!("{}/myorg/none:v1", reg.addr());
    let target = format!("{}/x/y:z", reg.addr());
    for (args, says) in [
        (vec!["pull", "Bad Reference"], "invalid reference"),
        (vec!["pull", missing.as_str()], "not found in the registry"),
        (
            vec!["push", junk.to_str().expect("utf8"), target.as_str()],
            "not a WebAssembly binary",
        ),
        (
            vec!["pull", "--mirror", "nonsense", missing.as_str()],
            "expected REGISTRY=MIRROR",
        ),
    ] {
        let out = wa8s().args(&args).output().expect("runs");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
}

#[test]
fn credentials_come_from_a_docker_credential_helper_named_in_the_config() {
    let reg = Registry::start_with(wa8s_e2e::registry::Users(vec![(
        "carol".into(),
        "from-the-helper".into(),
    )]))
    .expect("registry");
    let dir = tempfile::tempdir().expect("tmp");
    // A helper speaking docker's credential-helper protocol: `get` reads the server on stdin
    // and answers JSON. It records what it was asked, to prove it was the source.
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).expect("bin");
    let asked = dir.path().join("asked");
    let helper = bin.join("docker-credential-wa8stest");
    std::fs::write(
        &helper,
        format!(
            "#!/bin/sh\n[ \"$1\" = get ] || exit 1\nread server\necho \"$server\" >> {}\n\
             printf '{{\"ServerURL\":\"%s\",\"Username\":\"carol\",\"Secret\":\"from-the-helper\"}}' \"$server\"\n",
            asked.display()
        ),
    )
    .expect("helper");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&helper, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let config = dir.path().join("config.json");
    std::fs::write(
        &config,
        format!(r#"{{"credHelpers": {{"{}": "wa8stest"}}}}"#, reg.addr()),
    )
    .expect("config");
    let file = dir.path().join("http.wasm");
    std::fs::write(&file, guests::HTTP_COMPONENT).expect("write");
    let reference = format!("{}/private/hello:v1", reg.addr());
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let run = |args: &[&str]| {
        wa8s()
            .env("PATH", &path)
            .args(args)
            .arg("--docker-config")
            .arg(&config)
            .output()
            .expect("runs")
    };
    let out = run(&["push", file.to_str().expect("utf8"), &reference]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(&[
        "pull",
        &reference,
        "-o",
        dir.path().join("p.wasm").to_str().expect("utf8"),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let asked = std::fs::read_to_string(&asked).expect("the helper was asked");
    assert!(asked.contains(reg.addr()), "{asked}");

    // Without the helper on PATH the error names it.
    let out = wa8s()
        .env("PATH", "/usr/bin:/bin")
        .args(["pull", &reference, "--docker-config"])
        .arg(&config)
        .output()
        .expect("runs");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("docker-credential-wa8stest"),
        "the error should name the missing helper: {stderr}"
    );
}

#[test]
fn trust_roots_are_read_only_when_a_tls_registry_is_contacted() {
    let plain = Registry::start().expect("registry");
    let tls = || {
        Registry::start_with_options(wa8s_e2e::registry::Options {
            auth: wa8s_e2e::registry::Auth::Anonymous,
            tls: true,
        })
        .expect("registry")
    };
    let (secure, other) = (tls(), tls());
    let dir = tempfile::tempdir().expect("tmp");
    let file = dir.path().join("http.wasm");
    std::fs::write(&file, guests::HTTP_COMPONENT).expect("write");
    let ca_of = |reg: &Registry, name: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, reg.ca_pem().expect("ca")).expect("ca");
        format!("{}={}", secure.addr(), path.display())
    };
    let (trust, wrong) = (ca_of(&secure, "ca.crt"), ca_of(&other, "other.crt"));
    let on_plain = format!("{}/myorg/hello:v1", plain.addr());
    let on_secure = format!("{}/secure/hello:v1", secure.addr());
    ok(&["push", file.to_str().expect("utf8"), &on_plain]);
    ok(&[
        "push",
        file.to_str().expect("utf8"),
        &on_secure,
        "--registry-ca",
        &trust,
    ]);
    // A machine whose system trust store is empty: no roots can be loaded.
    std::fs::create_dir(dir.path().join("no-certs")).expect("dir");
    let pull = |args: &[&str]| {
        let out = wa8s()
            .env("SSL_CERT_FILE", dir.path().join("no-certs/none.pem"))
            .env("SSL_CERT_DIR", dir.path().join("no-certs"))
            .arg("pull")
            .args(args)
            .arg("-o")
            .arg(dir.path().join("out.wasm"))
            .output()
            .expect("runs");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    // Plain HTTP never needs them; a loaded-up-front store would fail here.
    let (pulled, stderr) = pull(&[&on_plain]);
    assert!(pulled, "{stderr}");
    // TLS with the registry's own CA needs only that CA.
    let (pulled, stderr) = pull(&[&on_secure, "--registry-ca", &trust]);
    assert!(pulled, "{stderr}");
    // A CA that did not sign the registry's certificate is refused by name.
    let (pulled, stderr) = pull(&[&on_secure, "--registry-ca", &wrong]);
    assert!(
        !pulled && stderr.contains("invalid peer certificate"),
        "{stderr}"
    );
}

#[test]
fn a_tls_registry_is_used_with_registry_ca_and_a_bad_ca_file_is_named() {
    let reg = Registry::start_with_options(wa8s_e2e::registry::Options {
        auth: wa8s_e2e::registry::Auth::Anonymous,
        tls: true,
    })
    .expect("registry");
    let dir = tempfile::tempdir().expect("tmp");
    let ca = dir.path().join("ca.crt");
    std::fs::write(&ca, reg.ca_pem().expect("ca")).expect("ca");
    let file = dir.path().join("http.wasm");
    std::fs::write(&file, guests::HTTP_COMPONENT).expect("write");
    let reference = format!("{}/secure/hello:v1", reg.addr());
    let trust = format!("{}={}", reg.addr(), ca.display());
    let digest = ok(&[
        "push",
        file.to_str().expect("utf8"),
        &reference,
        "--registry-ca",
        &trust,
    ]);
    let out = ok(&["inspect", &reference, "--registry-ca", &trust, "--json"]);
    assert!(out.contains(digest.trim()), "{out}");

    let not_pem = dir.path().join("not.pem");
    std::fs::write(&not_pem, "hello").expect("write");
    let out = wa8s()
        .args(["pull", &reference, "--registry-ca"])
        .arg(format!("{}={}", reg.addr(), not_pem.display()))
        .output()
        .expect("runs");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("holds no PEM certificate"), "{stderr}");
}

#[test]
fn run_takes_a_registry_reference_and_reuses_its_cached_precompiled_form() {
    let (reg, dir, reference) = pushed(guests::HELLO_COMPONENT);
    let cache = dir.path().join("cache");
    let layer_digest = wa8s_oci::sha256_digest(guests::HELLO_COMPONENT);

    for round in ["first (pull and compile)", "second (from the caches)"] {
        let out = wa8s()
            .args(["run", &reference, "--cache-dir"])
            .arg(&cache)
            .output()
            .expect("runs");
        assert_eq!(out.status.code(), Some(0), "{round}: {out:?}");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "hello from wasm\n",
            "{round}"
        );
    }
    // One blob fetch for two runs: the second came from the component cache.
    assert_eq!(reg.blob_fetches(&layer_digest), 1, "{}", reg.log());
    let precompiled: Vec<_> = std::fs::read_dir(cache.join("precompiled"))
        .expect("precompiled dir")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        precompiled.iter().any(|n| n.ends_with(".cwasm")),
        "{precompiled:?}"
    );

    // A reference that names nothing is a registry error, not "file not found".
    let out = wa8s()
        .args([
            "run",
            &format!("{}/myorg/absent:v1", reg.addr()),
            "--cache-dir",
        ])
        .arg(&cache)
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("absent"), "{stderr}");
    assert!(!stderr.contains("No such file"), "{stderr}");
}
