//! Manifests and indexes, as a registry or containerd's content store serves them.
fn main() {
    afl::fuzz!(|data: &[u8]| {
        let _ = wa8s_oci::image::parse("fuzz", data);
    });
}
