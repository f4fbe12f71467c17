//! `maxSize` in the kernel: a granted volume with a bound becomes, for the guest, a file
//! system of exactly that size stored in the volume itself (`.wa8s-maxsize.img`, an ext4
//! image, sparse until written). A write past it fails with ENOSPC in the guest whatever way
//! it is made — through another name, an unlinked file, a rename, a hard link, directories
//! or symlinks — and costs what any write costs. The image lives in the volume, so the
//! kubelet's accounting of the volume (ephemeral storage, emptyDir `sizeLimit`) sees the
//! bytes, and what the guest wrote survives a container restart as the volume does.
//!
//! The image is mounted over the volume's directory in the guest process's private mount
//! namespace only (nothing appears on the node), on a loop device the kernel releases when
//! that namespace ends. Only `mkfs.ext4` comes from the node. Files the volume held before, outside the image, are not visible.

use std::path::Path;
use std::process::Command;

/// The image's name inside the volume.
pub const IMAGE: &str = ".wa8s-maxsize.img";

/// Mounts a file system of `max_bytes` over `dir`, owned by `uid:gid`, creating its image
/// in `dir` on first use. `scratch` is an empty directory this process may mount over for a
/// moment. Call as root, in the guest process's private mount namespace.
pub fn mount_bounded(
    dir: &Path,
    max_bytes: u64,
    uid: u32,
    gid: u32,
    scratch: &Path,
) -> Result<(), String> {
    let image = dir.join(IMAGE);
    let why = |what: &str, e: &dyn std::fmt::Display| {
        format!("maxSize for {}: {what}: {e}", dir.display())
    };
    let mut fresh = false;
    match std::fs::metadata(&image) {
        Ok(m) if m.len() == max_bytes => {}
        Ok(m) => {
            return Err(format!(
                "maxSize for {}: the volume holds a {}-byte file system from an earlier \
                 maxSize, not {max_bytes} bytes; use a new volume to change it",
                dir.display(),
                m.len()
            ));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            format_image(&image, max_bytes, uid, gid)
                .map_err(|e| why("creating its file system", &e))?;
            fresh = true;
        }
        Err(e) => return Err(why("reading the image", &e)),
    }
    // The image is open before its directory is covered, and the loop device keeps it.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&image)
        .map_err(|e| why("opening the image", &e))?;
    crate::sys::mount_loop(&file, dir, scratch).map_err(|e| why("mounting it", &e))?;
    if fresh {
        // mkfs's lost+found would take 12 KiB of a small bound and show in the guest's listing;
        // nothing runs fsck on these images.
        std::fs::remove_dir(dir.join("lost+found")).map_err(|e| why("removing lost+found", &e))?;
    }
    Ok(())
}

fn format_image(image: &Path, bytes: u64, uid: u32, gid: u32) -> Result<(), String> {
    let partial = image.with_extension("partial");
    let file = std::fs::File::create(&partial).map_err(|e| e.to_string())?;
    file.set_len(bytes).map_err(|e| e.to_string())?;
    drop(file);
    // Small blocks for small bounds (less lost to rounding), one inode per 16 KiB as ext4's
    // default ratio, no journal and nothing reserved: the bound is the guest's to use.
    let block = if bytes < 64 << 20 { "1024" } else { "4096" };
    let inodes = (bytes / 16384).clamp(16, 1 << 22).to_string();
    run(Command::new(node_tool("mkfs.ext4")?)
        .env("PATH", SYSTEM_PATH)
        .args([
            "-q",
            "-F",
            "-m",
            "0",
            "-O",
            "^has_journal,^resize_inode",
            "-b",
            block,
            "-N",
        ])
        .arg(&inodes)
        .arg("-E")
        .arg(format!("root_owner={uid}:{gid}"))
        .arg(&partial))?;
    std::fs::rename(&partial, image).map_err(|e| e.to_string())
}

/// Where a node keeps its system tools. The guest process has no environment of its own
/// (the shim clears it), so there is no PATH to search.
const SYSTEM_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The node's `name` from [`SYSTEM_PATH`].
fn node_tool(name: &str) -> Result<std::path::PathBuf, String> {
    SYSTEM_PATH
        .split(':')
        .map(|dir| Path::new(dir).join(name))
        .find(|p| p.is_file())
        .ok_or_else(|| format!("{name} is not installed on the node (looked in {SYSTEM_PATH})"))
}

fn run(cmd: &mut Command) -> Result<(), String> {
    let program = cmd.get_program().to_string_lossy().into_owned();
    let out = cmd
        .output()
        .map_err(|e| format!("{program}: {e} (is it installed on the node?)"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{program}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}
