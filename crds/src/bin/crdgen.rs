//! Prints the WebAssembly CRD, or with `--write` updates the committed copies and the field
//! reference (docs/reference.md).

use std::path::Path;

use anyhow::Context;
use wa8s_api::crd;

fn main() -> anyhow::Result<()> {
    let write = match std::env::args().nth(1).as_deref() {
        None => false,
        Some("--write") => true,
        Some(other) => anyhow::bail!("unknown argument {other:?}; usage: crdgen [--write]"),
    };
    if !write {
        print!("{}", crd::render(&crd::OUTPUTS[0])?);
        return Ok(());
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for output in crd::OUTPUTS {
        let path = root.join(output.path);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        std::fs::write(&path, crd::render(output)?)
            .with_context(|| format!("writing {}", path.display()))?;
        eprintln!("wrote {}", output.path);
    }
    let path = root.join(crd::REFERENCE_PATH);
    std::fs::write(&path, crd::reference())
        .with_context(|| format!("writing {}", path.display()))?;
    eprintln!("wrote {}", crd::REFERENCE_PATH);
    Ok(())
}
