//! Test guests, compiled from `fixtures/*.wat` by `build.rs`.
//!
//! `*_CORE` are wasi preview1 core modules; `*_COMPONENT` are the same programs as
//! components (preview1 command adapter), exporting `wasi:cli/run`. `HTTP_COMPONENT` exports
//! `wasi:http/incoming-handler`; `SOCKPROBE_COMPONENT` uses `wasi:sockets` directly.

macro_rules! guest {
    ($(#[$doc:meta])* $name:ident = $file:literal) => {
        $(#[$doc])*
        pub const $name: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/", $file));
    };
}

guest!(/// Prints "hello from wasm" to stdout and "hello on stderr" to stderr.
    HELLO_CORE = "hello.core.wasm");
guest!(/// [`HELLO_CORE`] as a component.
    HELLO_COMPONENT = "hello.component.wasm");
guest!(/// Exits with status 3.
    EXIT3_CORE = "exit3.core.wasm");
guest!(/// [`EXIT3_CORE`] as a component (the adapter reports any failure as status 1).
    EXIT3_COMPONENT = "exit3.component.wasm");
guest!(/// Prints every environment variable it sees.
    ENV_CORE = "env.core.wasm");
guest!(/// [`ENV_CORE`] as a component.
    ENV_COMPONENT = "env.component.wasm");
guest!(/// `fsprobe <fd> <r|w> <path>`: reads or writes a file under a preopen; prints `errno=N`.
    FSPROBE_CORE = "fsprobe.core.wasm");
guest!(/// [`FSPROBE_CORE`] as a component.
    FSPROBE_COMPONENT = "fsprobe.component.wasm");
guest!(/// Loops forever.
    LOOP_CORE = "loop.core.wasm");
guest!(/// [`LOOP_CORE`] as a component.
    LOOP_COMPONENT = "loop.component.wasm");
guest!(/// Grows memory until refused; prints "grow refused after N MiB".
    GROW_CORE = "grow.core.wasm");
guest!(/// [`GROW_CORE`] as a component.
    GROW_COMPONENT = "grow.component.wasm");
guest!(/// Allocates and touches memory 1 MiB at a time; traps when an allocation is refused.
    HOG_CORE = "hog.core.wasm");
guest!(/// [`HOG_CORE`] as a component.
    HOG_COMPONENT = "hog.component.wasm");
guest!(/// Recurses without bound.
    RECURSE_CORE = "recurse.core.wasm");
guest!(/// [`RECURSE_CORE`] as a component.
    RECURSE_COMPONENT = "recurse.component.wasm");
guest!(/// wasi:http hello: `/` hello, `/loop`, `/grow`, `/recurse`.
    HTTP_COMPONENT = "http.component.wasm");
guest!(/// wasi:sockets probe (a `wasi:cli/run` component): `lookup NAME [PORT]` or
    /// `connect IP PORT`; prints `lookup=ok|err N` and `connect=ok|err N`.
    SOCKPROBE_COMPONENT = "sockprobe.component.wasm");

/// WAT of a `wasi:cli/run` component that imports `wasi:keyvalue/store@0.2.0-draft`, which
/// the host does not provide: the "unsatisfied import" case. Text, because it is a component
/// written by hand rather than a core module adapted at build time.
pub const NEEDS_KEYVALUE_WAT: &str = r#"(component
  (import "wasi:keyvalue/store@0.2.0-draft" (instance (export "get" (func (param "key" string) (result string)))))
  (core module $m (func (export "run") (result i32) (i32.const 0)))
  (core instance $i (instantiate $m))
  (func $run (result (result)) (canon lift (core func $i "run")))
  (instance $inst (export "run" (func $run)))
  (export "wasi:cli/run@0.2.0" (instance $inst)))"#;

/// `component` grown to at least `size` bytes by a custom section (`wa8s-padding`), still a
/// valid component that runs as before: a large binary for transfer tests and benchmarks.
pub fn padded(component: &[u8], size: usize) -> Vec<u8> {
    fn leb128(mut v: u64, out: &mut Vec<u8>) {
        loop {
            let byte = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                out.push(byte);
                return;
            }
            out.push(byte | 0x80);
        }
    }
    let name = b"wa8s-padding";
    let mut body = Vec::new();
    leb128(name.len() as u64, &mut body);
    body.extend_from_slice(name);
    body.resize(body.len() + size.saturating_sub(component.len()), 0x5a);
    let mut out = component.to_vec();
    out.push(0); // custom section id
    leb128(body.len() as u64, &mut out);
    out.extend(body);
    out
}
