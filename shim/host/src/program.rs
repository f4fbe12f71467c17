//! Loading a binary and deciding what it is.

use wasmtime::component::{Component, Linker};
use wasmtime::{InstancePre, Module};
use wasmtime_wasi::p2::bindings::CommandPre;
use wasmtime_wasi_http::p2::bindings::ProxyPre;

use crate::state::{GuestState, P1State};
use crate::{Error, HostEngine};
use std::path::Path;

/// Interfaces this host implements; a component importing anything else cannot link.
const PROVIDED: &[&str] = &[
    "wasi:cli/",
    "wasi:io/",
    "wasi:clocks/",
    "wasi:filesystem/",
    "wasi:random/",
    "wasi:sockets/",
    "wasi:http/",
];

/// What a program is, which decides how it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A component exporting `wasi:http/incoming-handler`: served over HTTP.
    Http,
    /// A component exporting `wasi:cli/run`: runs to completion.
    Cli,
    /// A WASI preview1 core module exporting `_start`: runs to completion.
    CoreCommand,
}

/// A compiled, linked program, ready to instantiate any number of times.
#[derive(Clone)]
pub struct Program {
    pub(crate) engine: HostEngine,
    pub(crate) inner: Inner,
}

#[derive(Clone)]
pub(crate) enum Inner {
    Http(ProxyPre<GuestState>),
    Cli(CommandPre<GuestState>),
    Core(InstancePre<P1State>),
}

impl std::fmt::Debug for Program {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Program")
            .field("kind", &self.kind())
            .finish()
    }
}

impl Program {
    /// Compiles `bytes` (a component or a core module) and links it against WASI.
    pub fn load(engine: &HostEngine, bytes: &[u8]) -> Result<Self, Error> {
        if bytes.is_empty() {
            return Err(Error::Empty);
        }
        if wasmparser::Parser::is_component(bytes) {
            let c = Component::new(&engine.engine, bytes).map_err(Error::Invalid)?;
            Program::from_component(engine, c)
        } else if wasmparser::Parser::is_core_wasm(bytes) {
            let m = Module::new(&engine.engine, bytes).map_err(Error::Invalid)?;
            Program::from_module(engine, m)
        } else {
            let head: Vec<String> = bytes.iter().take(8).map(|b| format!("{b:02x}")).collect();
            Err(Error::NotWasm(format!("bytes {}", head.join(" "))))
        }
    }

    pub(crate) fn from_component(engine: &HostEngine, c: Component) -> Result<Self, Error> {
        let mut linker = Linker::<GuestState>::new(&engine.engine);
        // The whole of WASI p2 is linked (mainstream toolchains import wasi:cli, filesystem and
        // sockets even for HTTP handlers); the grants decide what any of it may reach.
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)
            .map_err(Error::wasmtime("linking WASI"))?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)
            .map_err(Error::wasmtime("linking wasi:http"))?;
        // Directory bounds and name-lookup gating wrap a few of wasmtime-wasi's functions.
        linker.allow_shadowing(true);
        crate::quota::add_to_linker(&mut linker, |s: &mut GuestState| &mut s.quotas)
            .map_err(Error::wasmtime("linking the directory bounds"))?;
        crate::net::add_to_linker(&mut linker, |s: &mut GuestState| &mut s.net)
            .map_err(Error::wasmtime("linking the network gate"))?;
        linker.allow_shadowing(false);
        let pre = linker
            .instantiate_pre(&c)
            .map_err(|e| unsatisfied(engine, &c, e))?;
        if let Ok(http) = ProxyPre::new(pre.clone()) {
            return Ok(Program {
                engine: engine.clone(),
                inner: Inner::Http(http),
            });
        }
        if let Ok(cli) = CommandPre::new(pre) {
            return Ok(Program {
                engine: engine.clone(),
                inner: Inner::Cli(cli),
            });
        }
        let exports: Vec<String> = c
            .component_type()
            .exports(&engine.engine)
            .map(|(name, _)| name.to_owned())
            .collect();
        Err(Error::NoEntryPoint(if exports.is_empty() {
            "none".into()
        } else {
            exports.join(", ")
        }))
    }

    pub(crate) fn from_module(engine: &HostEngine, m: Module) -> Result<Self, Error> {
        if m.get_export("_start").is_none() {
            return Err(Error::NoStart);
        }
        let mut linker = wasmtime::Linker::<P1State>::new(&engine.engine);
        wasmtime_wasi::p1::add_to_linker_async(&mut linker, |s: &mut P1State| &mut s.wasi)
            .map_err(Error::wasmtime("linking WASI preview1"))?;
        let pre = linker.instantiate_pre(&m).map_err(|e| {
            match m.imports().find(|i| i.module() != "wasi_snapshot_preview1") {
                Some(i) => Error::UnsatisfiedImport(format!("{}::{}", i.module(), i.name())),
                None => Error::Invalid(e),
            }
        })?;
        Ok(Program {
            engine: engine.clone(),
            inner: Inner::Core(pre),
        })
    }

    /// What the program is.
    pub fn kind(&self) -> Kind {
        match self.inner {
            Inner::Http(_) => Kind::Http,
            Inner::Cli(_) => Kind::Cli,
            Inner::Core(_) => Kind::CoreCommand,
        }
    }
}

/// Why linking failed, named from the component's own import list: the first import that
/// is not a WASI 0.2 interface this host links. When every import looks provided (an
/// interface 0.2 lacks, a type that does not match), Wasmtime's own reason is kept.
fn unsatisfied(engine: &HostEngine, c: &Component, e: wasmtime::Error) -> Error {
    let ty = c.component_type();
    let missing = ty
        .imports(&engine.engine)
        .map(|(name, _)| name)
        .find(|name| !provided(name));
    match missing {
        Some(name) => Error::UnsatisfiedImport(name.to_owned()),
        None => Error::Invalid(e),
    }
}

/// Whether the linker holds `name`: a provided package at a 0.2 version. Wasmtime matches
/// semver-compatible versions, so any 0.2.x release (not a pre-release) links.
fn provided(name: &str) -> bool {
    let Some((path, version)) = name.split_once('@') else {
        return false;
    };
    PROVIDED.iter().any(|p| path.starts_with(p))
        && version.starts_with("0.2.")
        && !version.contains(['-', '+'])
}

/// Loading precompiled artifacts: here rather than in the engine, so the engine does not
/// depend on what it compiles.
impl Program {
    /// Loads a precompiled artifact written by [`HostEngine::precompile`].
    ///
    /// # Safety
    ///
    /// Deserializing native code runs it: `path` must hold bytes this host produced with
    /// [`HostEngine::precompile`] and recorded as its own (the precompile cache checks this).
    /// Never pass a file that arrived from outside.
    #[allow(unsafe_code)]
    pub unsafe fn load_precompiled(engine: &HostEngine, path: &Path) -> Result<Program, Error> {
        let not_ours = |why: &str| {
            Error::Engine(format!(
                "{} is not a precompiled artifact: {why}",
                path.display()
            ))
        };
        let kind = wasmtime::Engine::detect_precompiled_file(path)
            .map_err(Error::wasmtime(format!(
                "{} is not a precompiled artifact",
                path.display()
            )))?
            .ok_or_else(|| not_ours("no wasmtime header"))?;
        match kind {
            // SAFETY: the caller guarantees the file is our own precompiled output.
            wasmtime::Precompiled::Component => {
                let c = unsafe {
                    wasmtime::component::Component::deserialize_file(&engine.engine, path)
                }
                .map_err(Error::wasmtime("loading a precompiled artifact"))?;
                Program::from_component(engine, c)
            }
            wasmtime::Precompiled::Module => {
                // SAFETY: as above.
                let m = unsafe { wasmtime::Module::deserialize_file(&engine.engine, path) }
                    .map_err(Error::wasmtime("loading a precompiled artifact"))?;
                Program::from_module(engine, m)
            }
        }
    }

    /// Loads code [`HostEngine::precompile`] just produced in this process.
    #[allow(unsafe_code)]
    pub(crate) fn load_own_precompiled(
        engine: &HostEngine,
        bytes: &[u8],
    ) -> Result<Program, Error> {
        match wasmtime::Engine::detect_precompiled(bytes) {
            Some(wasmtime::Precompiled::Component) => {
                // SAFETY: the bytes come straight from `precompile` on this engine.
                let c =
                    unsafe { wasmtime::component::Component::deserialize(&engine.engine, bytes) }
                        .map_err(Error::wasmtime("loading a precompiled artifact"))?;
                Program::from_component(engine, c)
            }
            Some(wasmtime::Precompiled::Module) => {
                // SAFETY: as above.
                let m = unsafe { wasmtime::Module::deserialize(&engine.engine, bytes) }
                    .map_err(Error::wasmtime("loading a precompiled artifact"))?;
                Program::from_module(engine, m)
            }
            None => Err(Error::Engine(
                "precompile produced no wasmtime artifact".into(),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::provided;

    #[test]
    fn wasi_interfaces_at_any_0_2_release_are_provided_and_others_are_not() {
        for name in [
            "wasi:http/types@0.2.0",
            "wasi:cli/environment@0.2.6",
            "wasi:sockets/ip-name-lookup@0.2.9",
        ] {
            assert!(provided(name), "{name}");
        }
        for name in [
            "wasi:http/types@0.3.0",
            "wasi:http/types@0.2.0-rc-2023-12-05",
            "wasi:cli/environment",
            "wasi:keyvalue/store@0.2.0-draft",
            "wasi:config/store@0.2.0",
            "my:app/thing@0.2.0",
        ] {
            assert!(!provided(name), "{name}");
        }
    }
}
