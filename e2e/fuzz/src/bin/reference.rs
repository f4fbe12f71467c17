//! Image references (spec.module.registry and tag, `wa8s pull` arguments).
fn main() {
    afl::fuzz!(|data: &[u8]| {
        let _ = wa8s_oci::parse_reference(&String::from_utf8_lossy(data));
    });
}
