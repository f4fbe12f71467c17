//! Write quotas for granted directories (`maxSize`): a write that would grow a directory's
//! contents past its bound fails in the guest with ENOSPC (`insufficient-space`).
//!
//! wasmtime-wasi has no hook for this, so the wasi:filesystem functions that grow files are
//! shadowed in the linker: each checks the bound, then calls wasmtime-wasi's own
//! implementation. Streams opened on files are wrapped so every stream write is checked too.
//! Usage is measured on the host directory itself (sum of file sizes, hard links once), so
//! files deleted or truncated by the guest free their space, and no count can drift.
//! Writes in flight at the same moment from concurrent requests may overshoot the bound by
//! at most their own size. A directory the shim made a file system of its bound
//! (`DirGrant::bound_by_kernel`) is not measured: the kernel holds the bound, and the check
//! here only compares a write with the free space, so the guest gets ENOSPC before the write
//! rather than a stream closed part-way through it.

use std::collections::HashSet;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use wasmtime::component::{Linker, Resource};
use wasmtime_wasi::filesystem::{Descriptor, WasiFilesystemView};
use wasmtime_wasi::p2::bindings::filesystem::types::{ErrorCode, Host as _, HostDescriptor as _};
use wasmtime_wasi::p2::{DynOutputStream, OutputStream, Pollable, StreamError, StreamResult};

use crate::state::GuestState;
use crate::{Error, Grants};

/// Linux's ENOSPC; wasmtime-wasi maps it to `insufficient-space`.
const ENOSPC: i32 = 28;

/// The bounded directories of one guest.
#[derive(Clone, Default)]
pub(crate) struct Quotas(Arc<Vec<Bound>>);

struct Bound {
    /// The kernel's path of the directory, so a file's path can be matched against it.
    root: PathBuf,
    /// The path the grant names, walked to measure usage. It may be a `/proc/self/fd/N`
    /// link to a directory opened before privileges were dropped, whose parents the guest
    /// process can no longer traverse.
    walk: PathBuf,
    max: u64,
    guest: String,
    /// The kernel keeps the bound (the directory is a file system of that size): only its
    /// free space is checked, in constant time. Its files are known by the file system's
    /// device, since paths change meaning once the guest has left the node's file system.
    kernel: Option<u64>,
}

impl Quotas {
    pub(crate) fn new(grants: &Grants) -> Result<Self, Error> {
        let mut bounds = Vec::new();
        for d in &grants.dirs {
            let Some(max) = d.max_bytes else { continue };
            // Resolved through the open directory, as `bound_of` resolves files, rather
            // than by walking parents the process may not be allowed to traverse.
            let cannot_open = |e: io::Error| Error::Grant {
                what: format!("directory {}", d.guest),
                reason: format!("cannot open {}: {e}", d.host.display()),
            };
            let dir = std::fs::File::open(&d.host).map_err(cannot_open)?;
            let root = std::fs::read_link(format!("/proc/self/fd/{}", dir.as_raw_fd()))
                .map_err(cannot_open)?;
            let kernel = if d.bound_by_kernel {
                Some(dir.metadata().map_err(cannot_open)?.dev())
            } else {
                None
            };
            bounds.push(Bound {
                root,
                walk: d.host.clone(),
                max,
                guest: d.guest.clone(),
                kernel,
            });
        }
        Ok(Quotas(Arc::new(bounds)))
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Refuses with ENOSPC if writing up to byte `end` of `file` would take the bounded
    /// directory holding it past its bound.
    fn check(&self, file: &std::fs::File, end: u64, append_len: Option<u64>) -> io::Result<()> {
        if self.is_empty() {
            return Ok(());
        }
        let Some(bound) = self.bound_of(file) else {
            return Ok(());
        };
        let size = file.metadata()?.len();
        let growth = match append_len {
            Some(len) => len,
            None => end.saturating_sub(size),
        };
        if growth == 0 {
            return Ok(());
        }
        if bound.kernel.is_some() {
            // A block may be partly used already; a write needing more than the free blocks
            // cannot fit, and one that would fit but for metadata still gets the kernel's
            // ENOSPC.
            let free = nix::sys::statvfs::fstatvfs(file)
                .map(|s| s.blocks_available().saturating_mul(s.fragment_size()))
                .map_err(io::Error::from)?;
            if growth > free {
                tracing::debug!(dir = %bound.guest, free, growth, "write refused: file system full");
                return Err(io::Error::from_raw_os_error(ENOSPC));
            }
            return Ok(());
        }
        let used = usage(&bound.walk);
        if used.saturating_add(growth) > bound.max {
            tracing::debug!(
                dir = %bound.guest,
                used,
                growth,
                max = bound.max,
                "write refused: directory bound reached"
            );
            return Err(io::Error::from_raw_os_error(ENOSPC));
        }
        Ok(())
    }

    /// The bounded directory `file` lives in, found from the kernel's own record of its path
    /// (so renames and links made by the guest are followed).
    fn bound_of(&self, file: &std::fs::File) -> Option<&Bound> {
        if self.0.iter().any(|b| b.kernel.is_some()) {
            let dev = file.metadata().ok()?.dev();
            if let Some(b) = self.0.iter().find(|b| b.kernel == Some(dev)) {
                return Some(b);
            }
        }
        let path = std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd())).ok()?;
        self.0
            .iter()
            .find(|b| b.kernel.is_none() && path.starts_with(&b.root))
    }
}

/// Bytes held by regular files under `root` (symlinks are not followed; a hard link counts
/// once).
fn usage(root: &Path) -> u64 {
    let mut total = 0u64;
    let mut seen = HashSet::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(meta) = entry.path().symlink_metadata() else {
                continue;
            };
            if meta.is_dir() {
                stack.push(entry.path());
            } else if meta.is_file() && seen.insert((meta.dev(), meta.ino())) {
                total = total.saturating_add(meta.len());
            }
        }
    }
    total
}

fn file_of(state: &mut GuestState, fd: &Resource<Descriptor>) -> Option<Arc<std::fs::File>> {
    match state.filesystem().table.get(fd) {
        Ok(Descriptor::File(f)) => Some(f.file.clone()),
        _ => None,
    }
}

/// Shadows the growing wasi:filesystem functions with bounded ones. Call after
/// wasmtime-wasi's own `add_to_linker`, with shadowing allowed.
pub(crate) fn add_to_linker(linker: &mut Linker<GuestState>) -> wasmtime::Result<()> {
    let mut types = linker.instance("wasi:filesystem/types@0.2.12")?;
    types.func_wrap_async(
        "[method]descriptor.write",
        |mut store, (fd, buf, offset): (Resource<Descriptor>, Vec<u8>, u64)| {
            Box::new(async move {
                let state = store.data_mut();
                if let Some(file) = file_of(state, &fd) {
                    let end = offset.saturating_add(buf.len() as u64);
                    if let Err(e) = state.quotas.clone().check(&file, end, None) {
                        return Ok((Err(ErrorCode::from(&e)),));
                    }
                }
                let mut view = state.filesystem();
                Ok((match view.write(fd, buf, offset).await {
                    Ok(n) => Ok(n),
                    Err(e) => Err(view.convert_error_code(e)?),
                },))
            })
        },
    )?;
    types.func_wrap_async(
        "[method]descriptor.set-size",
        |mut store, (fd, size): (Resource<Descriptor>, u64)| {
            Box::new(async move {
                let state = store.data_mut();
                if let Some(file) = file_of(state, &fd)
                    && let Err(e) = state.quotas.clone().check(&file, size, None)
                {
                    return Ok((Err(ErrorCode::from(&e)),));
                }
                let mut view = state.filesystem();
                Ok((match view.set_size(fd, size).await {
                    Ok(()) => Ok(()),
                    Err(e) => Err(view.convert_error_code(e)?),
                },))
            })
        },
    )?;
    types.func_wrap(
        "[method]descriptor.write-via-stream",
        |mut store, (fd, offset): (Resource<Descriptor>, u64)| {
            let state = store.data_mut();
            let file = file_of(state, &fd);
            let mut view = state.filesystem();
            let stream = match view.write_via_stream(fd, offset) {
                Ok(s) => s,
                Err(e) => return Ok((Err(view.convert_error_code(e)?),)),
            };
            Ok((Ok(bounded(state, stream, file, Some(offset))?),))
        },
    )?;
    types.func_wrap(
        "[method]descriptor.append-via-stream",
        |mut store, (fd,): (Resource<Descriptor>,)| {
            let state = store.data_mut();
            let file = file_of(state, &fd);
            let mut view = state.filesystem();
            let stream = match view.append_via_stream(fd) {
                Ok(s) => s,
                Err(e) => return Ok((Err(view.convert_error_code(e)?),)),
            };
            Ok((Ok(bounded(state, stream, file, None)?),))
        },
    )?;
    Ok(())
}

/// Replaces a file stream in the table with one that checks the bound before each write.
fn bounded(
    state: &mut GuestState,
    stream: Resource<DynOutputStream>,
    file: Option<Arc<std::fs::File>>,
    position: Option<u64>,
) -> wasmtime::Result<Resource<DynOutputStream>> {
    let quotas = state.quotas.clone();
    let Some(file) = file.filter(|f| quotas.bound_of(f).is_some()) else {
        return Ok(stream);
    };
    let table = state.filesystem().table;
    let inner = table.delete(stream)?;
    let wrapped: DynOutputStream = Box::new(BoundedStream {
        inner,
        file,
        quotas,
        position,
    });
    Ok(table.push(wrapped)?)
}

/// A file output stream that refuses writes past its directory's bound.
struct BoundedStream {
    inner: DynOutputStream,
    file: Arc<std::fs::File>,
    quotas: Quotas,
    /// Where the next write lands; `None` for an appending stream.
    position: Option<u64>,
}

#[async_trait::async_trait]
impl OutputStream for BoundedStream {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        let len = bytes.len() as u64;
        let checked = match self.position {
            Some(pos) => self.quotas.check(&self.file, pos.saturating_add(len), None),
            None => self.quotas.check(&self.file, 0, Some(len)),
        };
        if let Err(e) = checked {
            return Err(StreamError::LastOperationFailed(e.into()));
        }
        self.inner.write(bytes)?;
        if let Some(pos) = &mut self.position {
            *pos = pos.saturating_add(len);
        }
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        self.inner.flush()
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        self.inner.check_write()
    }

    async fn cancel(&mut self) {
        self.inner.cancel().await
    }
}

#[async_trait::async_trait]
impl Pollable for BoundedStream {
    async fn ready(&mut self) {
        self.inner.ready().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_counts_file_bytes_under_the_root_once_and_skips_symlinks() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        std::fs::write(dir.path().join("a"), vec![0u8; 100])?;
        std::fs::create_dir(dir.path().join("sub"))?;
        std::fs::write(dir.path().join("sub/b"), vec![0u8; 50])?;
        std::fs::hard_link(dir.path().join("a"), dir.path().join("sub/a-again"))?;
        std::os::unix::fs::symlink("/etc/passwd", dir.path().join("link"))?;
        assert_eq!(usage(dir.path()), 150);
        Ok(())
    }
}
