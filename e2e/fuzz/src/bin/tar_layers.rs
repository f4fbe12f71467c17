//! Layered images' tar layers (the first byte says whether the layer is gzipped).
fn main() {
    afl::fuzz!(|data: &[u8]| {
        let Some((flag, layer)) = data.split_first() else {
            return;
        };
        let _ = wa8s_oci::artifact::wasm_from_tars(&[(layer.to_vec(), flag & 1 == 1)], None, 1 << 20);
    });
}
