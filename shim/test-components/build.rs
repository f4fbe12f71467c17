//! Turns the WAT fixtures into the binaries tests use: preview1 core modules, the same modules
//! as components (wrapped with the preview1 command adapter), and components written against
//! WASI 0.2 directly (core module + embedded WIT world: wasi:http, wasi:sockets). No wasm32
//! Rust target is needed.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use wasi_preview1_component_adapter_provider::{
    WASI_SNAPSHOT_PREVIEW1_ADAPTER_NAME, WASI_SNAPSHOT_PREVIEW1_COMMAND_ADAPTER,
};

const COMMANDS: &[&str] = &[
    "hello", "exit3", "env", "fsprobe", "loop", "grow", "hog", "recurse",
];
/// Components built from a core module and one of the worlds in wit/world.wit.
const WITH_WORLD: &[(&str, &str)] = &[("http", "http-guest"), ("sockprobe", "socket-guest")];

fn main() -> Result<()> {
    let here = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    println!("cargo:rerun-if-changed=fixtures");
    println!("cargo:rerun-if-changed=wit");
    for name in COMMANDS {
        let core = wat::parse_file(here.join(format!("fixtures/{name}.wat")))
            .with_context(|| format!("parsing fixtures/{name}.wat"))?;
        write(&out, &format!("{name}.core.wasm"), &core)?;
        let component = wit_component::ComponentEncoder::default()
            .module(&core)?
            .adapter(
                WASI_SNAPSHOT_PREVIEW1_ADAPTER_NAME,
                WASI_SNAPSHOT_PREVIEW1_COMMAND_ADAPTER,
            )?
            .validate(true)
            .encode()
            .with_context(|| format!("componentizing {name}"))?;
        write(&out, &format!("{name}.component.wasm"), &component)?;
    }
    let mut resolve = wit_parser::Resolve::default();
    let (pkg, _) = resolve.push_dir(here.join("wit"))?;
    for (name, world) in WITH_WORLD {
        let world = resolve.select_world(&[pkg], Some(world))?;
        let mut core = wat::parse_file(here.join(format!("fixtures/{name}.wat")))
            .with_context(|| format!("parsing fixtures/{name}.wat"))?;
        wit_component::embed_component_metadata(
            &mut core,
            &resolve,
            world,
            wit_component::StringEncoding::UTF8,
            false,
        )?;
        let component = wit_component::ComponentEncoder::default()
            .module(&core)?
            .validate(true)
            .encode()
            .with_context(|| format!("componentizing {name}"))?;
        write(&out, &format!("{name}.component.wasm"), &component)?;
    }
    Ok(())
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> Result<()> {
    std::fs::write(dir.join(name), bytes).with_context(|| format!("writing {name}"))
}
