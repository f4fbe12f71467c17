//! containerd configuration edits: adding the runtime never panics, and what it writes takes
//! the runtime out again.
use wa8s_installer::containerd_config::{Change, Runtime, add_runtime, remove_runtime};

fn main() {
    afl::fuzz!(|data: &[u8]| {
        let text = String::from_utf8_lossy(data);
        let runtime = Runtime::default();
        if let Ok(Change::Write(edited)) = add_runtime(&text, "config.toml", &runtime) {
            assert_eq!(
                add_runtime(&edited, "config.toml", &runtime).ok(),
                Some(Change::Unchanged)
            );
            assert!(matches!(
                remove_runtime(&edited, "config.toml", &runtime.handler),
                Ok(Change::Write(_))
            ));
        }
    });
}
