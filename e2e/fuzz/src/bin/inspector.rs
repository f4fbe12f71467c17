//! The streaming component inspector: the first byte picks where the input is cut in two;
//! fed whole or in two pieces, it must say the same.
use wa8s_oci::artifact::{Inspector, inspect};

fn main() {
    afl::fuzz!(|data: &[u8]| {
        let Some((cut, wasm)) = data.split_first() else {
            return;
        };
        let whole = inspect(wasm);
        let at = (*cut as usize * wasm.len()) / 255;
        let mut inspector = Inspector::default();
        let pieces = inspector
            .feed(&wasm[..at])
            .and_then(|()| inspector.feed(&wasm[at..]))
            .and_then(|()| inspector.finish(wa8s_oci::sha256_digest(wasm)));
        match (whole, pieces) {
            (Ok(a), Ok(b)) => assert_eq!((a.imports, a.exports), (b.imports, b.exports)),
            (Err(_), Err(_)) => {}
            (a, b) => panic!("whole: {a:?}, pieces: {b:?}"),
        }
    });
}
