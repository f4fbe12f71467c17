//! Interop with a client nobody here wrote: `wkg` (the Bytecode Alliance's wasm package
//! tool, which pushes and pulls the CNCF wasm OCI artifact), against a real registry.

use std::path::PathBuf;
use std::process::Command;

use wa8s_e2e::Registry;
use wa8s_test_components as guests;

/// wkg, as e2e/scripts/prerequisites.sh installs it (or `WA8S_WKG`).
fn wkg() -> Command {
    let path = std::env::var_os("WA8S_WKG")
        .map(PathBuf::from)
        .or_else(|| {
            let home = std::env::var_os("HOME")?;
            let cache = std::env::var_os("WA8S_CACHE")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(home).join(".cache/wa8s"));
            Some(cache.join("wkg-0.16.1/bin/wkg"))
        })
        .filter(|p| p.is_file())
        .expect("wkg is not installed: run e2e/scripts/prerequisites.sh (or set WA8S_WKG)");
    let mut cmd = Command::new(path);
    cmd.env("DOCKER_CONFIG", "/nonexistent")
        .env_remove("WKG_OCI_USERNAME")
        .env_remove("WKG_OCI_PASSWORD");
    cmd
}

fn wa8s() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_wa8s"));
    cmd.env("DOCKER_CONFIG", "/nonexistent");
    cmd
}

fn succeed(mut cmd: Command) -> String {
    let out = cmd.output().expect("runs");
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn a_component_pushed_by_wkg_pulls_with_wa8s_and_one_pushed_by_wa8s_pulls_with_wkg() {
    let reg = Registry::start().expect("registry");
    let dir = tempfile::tempdir().expect("tmp");
    let component = dir.path().join("http.wasm");
    std::fs::write(&component, guests::HTTP_COMPONENT).expect("write");

    // wkg → wa8s.
    let by_wkg = format!("{}/interop/from-wkg:v1", reg.addr());
    let mut push = wkg();
    push.args(["oci", "push", "--insecure", reg.addr(), &by_wkg])
        .arg(&component);
    succeed(push);
    let pulled = dir.path().join("from-wkg.wasm");
    let mut pull = wa8s();
    pull.args(["pull", &by_wkg, "-o"]).arg(&pulled);
    succeed(pull);
    assert_eq!(
        std::fs::read(&pulled).expect("pulled"),
        guests::HTTP_COMPONENT
    );
    let mut inspect = wa8s();
    inspect.args(["inspect", "--json", &by_wkg]);
    let doc: serde_json::Value = serde_json::from_str(&succeed(inspect)).expect("json");
    assert_eq!(doc["kind"], "component", "{doc}");
    assert_eq!(doc["layerMediaType"], "application/wasm", "{doc}");

    // wa8s → wkg.
    let by_wa8s = format!("{}/interop/from-wa8s:v1", reg.addr());
    let mut push = wa8s();
    push.arg("push").arg(&component).arg(&by_wa8s);
    succeed(push);
    let pulled = dir.path().join("from-wa8s.wasm");
    let mut pull = wkg();
    pull.args(["oci", "pull", "--insecure", reg.addr(), &by_wa8s, "-o"])
        .arg(&pulled);
    succeed(pull);
    assert_eq!(
        std::fs::read(&pulled).expect("pulled"),
        guests::HTTP_COMPONENT,
        "wkg pulled different bytes than wa8s pushed"
    );
}
