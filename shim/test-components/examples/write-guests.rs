//! Writes every test guest to a directory, for benchmarks and for trying `wa8s run` by hand:
//! `cargo run -p wa8s-test-components --example write-guests -- DIR`

use wa8s_test_components as g;

fn main() -> std::io::Result<()> {
    let dir = std::path::PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| ".".into()));
    std::fs::create_dir_all(&dir)?;
    for (name, bytes) in [
        ("hello.wasm", g::HELLO_COMPONENT),
        ("hello.core.wasm", g::HELLO_CORE),
        ("env.wasm", g::ENV_COMPONENT),
        ("fsprobe.wasm", g::FSPROBE_COMPONENT),
        ("loop.wasm", g::LOOP_COMPONENT),
        ("grow.wasm", g::GROW_COMPONENT),
        ("hog.wasm", g::HOG_COMPONENT),
        ("http.wasm", g::HTTP_COMPONENT),
    ] {
        std::fs::write(dir.join(name), bytes)?;
        println!("{}", dir.join(name).display());
    }
    Ok(())
}
