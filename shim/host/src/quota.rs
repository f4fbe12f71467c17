//! Write quotas for granted directories (`maxSize`): a write that would grow a directory's
//! contents past its bound fails in the guest with ENOSPC (`insufficient-space`).
//!
//! wasmtime-wasi has no hook for this, so the wasi:filesystem functions that grow or shrink
//! a directory are shadowed in the linker: each checks the bound, then calls wasmtime-wasi's
//! own implementation. Streams opened on files are wrapped so every stream write is checked
//! too.
//!
//! Two kinds of bound:
//! - **By the kernel** (`DirGrant::bound_by_kernel`, pods): the directory is a file system of
//!   the bound's size, so every path to the disk ends in ENOSPC. The check here only compares
//!   a write with the free space, so the guest gets ENOSPC before the write rather than a
//!   stream closed part-way through it.
//! - **By accounting** (`wa8s run`, where there are no loop devices without root): the
//!   directory is measured once, when the guest starts, like `du`: every name costs one
//!   4 KiB block and a file's bytes round up to blocks, a hard-linked file's once. From then
//!   on every operation that adds or frees blocks is charged or credited at once, in constant
//!   time, so a write never walks the directory. The bypasses a walk had are closed where the
//!   kernel closes them for a file system of its own: links and renames across the bound get
//!   EXDEV, a file unlinked while the guest holds it open keeps its blocks charged until the
//!   last descriptor closes, and a descriptor whose place cannot be told (a path past
//!   PATH_MAX) may not grow anything while bounds exist. Changes made to the directory from
//!   outside the guest while it runs are not seen.

use std::collections::HashSet;
use std::io;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use nix::fcntl::AtFlags;
use wasmtime::component::{Linker, Resource};
use wasmtime_wasi::filesystem::{Descriptor, WasiFilesystemView};
use wasmtime_wasi::p2::bindings::filesystem::types::{
    DescriptorFlags, ErrorCode, Host as _, HostDescriptor as _, OpenFlags, PathFlags,
};
use wasmtime_wasi::p2::{DynOutputStream, OutputStream, Pollable, StreamError, StreamResult};

use crate::{Error, Grants};

/// Linux's ENOSPC; wasmtime-wasi maps it to `insufficient-space`.
const ENOSPC: i32 = 28;

/// What a name costs an accounted bound, and the unit a file's bytes round up to: one
/// block, as a directory entry and its inode would take on a file system.
const BLOCK: u64 = 4096;

fn blocks(bytes: u64) -> u64 {
    bytes.div_ceil(BLOCK).saturating_mul(BLOCK)
}

/// The bounded directories of one guest.
#[derive(Clone, Default)]
pub(crate) struct Quotas(Arc<Vec<Bound>>);

struct Bound {
    /// The kernel's path of the directory, so a file's path can be matched against it.
    root: PathBuf,
    max: u64,
    guest: String,
    /// The kernel keeps the bound (the directory is a file system of that size): only its
    /// free space is checked, in constant time. Its files are known by the file system's
    /// device, since paths change meaning once the guest has left the node's file system.
    kernel: Option<u64>,
    /// Bytes charged to an accounted bound: measured once, then kept by every operation.
    used: AtomicU64,
    /// Files unlinked while the guest held them open: `(dev, ino) → bytes charged`, credited
    /// once no descriptor of this process holds them.
    held: Mutex<Vec<((u64, u64), u64)>>,
    /// Where refusals are reported.
    telemetry: crate::Telemetry,
}

/// Where a descriptor is, as far as bounds go.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Place {
    /// In no bounded directory.
    Free,
    /// In the bound with this index.
    In(usize),
    /// Its path cannot be read (longer than the kernel will say): treated as bounded by
    /// something, so it may not grow.
    Unknown,
}

impl Quotas {
    pub(crate) fn new(grants: &Grants) -> Result<Self, Error> {
        let mut bounds = Vec::new();
        for d in &grants.dirs {
            let Some(max) = d.max_bytes else { continue };
            // Resolved through the open directory, as `place_of` resolves files, rather
            // than by walking parents the process may not be allowed to traverse.
            let cannot_open = |e: io::Error| Error::Grant {
                what: format!("directory {}", d.guest),
                reason: format!("cannot open {}: {e}", d.host.display()),
            };
            let dir = std::fs::File::open(&d.host).map_err(cannot_open)?;
            let root = std::fs::read_link(format!("/proc/self/fd/{}", dir.as_raw_fd()))
                .map_err(cannot_open)?;
            let (kernel, used) = if d.bound_by_kernel {
                (Some(dir.metadata().map_err(cannot_open)?.dev()), 0)
            } else {
                // The one walk: at start, before any request.
                (None, measure(&d.host))
            };
            bounds.push(Bound {
                root,
                max,
                guest: d.guest.clone(),
                kernel,
                used: AtomicU64::new(used),
                held: Mutex::new(Vec::new()),
                telemetry: grants.telemetry.clone(),
            });
        }
        Ok(Quotas(Arc::new(bounds)))
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Refuses with ENOSPC if writing up to byte `end` of `file` (or `append_len` bytes at
    /// its end) would take the bounded directory holding it past its bound; otherwise
    /// charges the blocks the write adds (to a file already at `charged_end`, for a stream
    /// whose earlier writes may not have reached the file yet).
    fn check(
        &self,
        file: &std::fs::File,
        end: u64,
        append_len: Option<u64>,
        charged_end: u64,
    ) -> io::Result<u64> {
        if self.is_empty() {
            return Ok(0);
        }
        let meta = file.metadata()?;
        let size = meta.len().max(charged_end);
        let end = match append_len {
            Some(len) => size.saturating_add(len),
            None => end,
        };
        let bound = match self.place_of(file, Some(&meta)) {
            Place::Free => return Ok(0),
            Place::Unknown if end > size => return Err(no_space()),
            Place::Unknown => return Ok(0),
            Place::In(i) => &self.0[i],
        };
        if end <= size {
            return Ok(0);
        }
        if bound.kernel.is_some() {
            // A block may be partly used already; a write needing more than the free blocks
            // cannot fit, and one that would fit but for metadata still gets the kernel's
            // ENOSPC.
            let growth = end - size;
            let free = nix::sys::statvfs::fstatvfs(file)
                .map(|s| s.blocks_available().saturating_mul(s.fragment_size()))
                .map_err(io::Error::from)?;
            if growth > free {
                tracing::debug!(dir = %bound.guest, free, growth, "write refused: file system full");
                bound.refused();
                return Err(no_space());
            }
            return Ok(0);
        }
        let growth = blocks(end) - blocks(size);
        bound.charge(growth)?;
        bound.held_grew((meta.dev(), meta.ino()), growth);
        Ok(end)
    }

    /// Frees what a shrinking `set-size` gave back.
    fn shrunk(&self, file: &std::fs::File, from: u64, to: u64) {
        if let Place::In(i) = self.place_of(file, None) {
            self.0[i].credit(blocks(from).saturating_sub(blocks(to)));
        }
    }

    /// Where `file` is: a kernel bound by its file system, an accounted one by the kernel's
    /// record of its path (so renames made by the guest are followed).
    fn place_of(&self, file: &std::fs::File, meta: Option<&std::fs::Metadata>) -> Place {
        if self.0.iter().any(|b| b.kernel.is_some()) {
            let dev = match meta {
                Some(m) => Some(m.dev()),
                None => file.metadata().ok().map(|m| m.dev()),
            };
            if let Some(i) = self
                .0
                .iter()
                .position(|b| b.kernel.is_some() && b.kernel == dev)
            {
                return Place::In(i);
            }
        }
        if self.0.iter().all(|b| b.kernel.is_some()) {
            return Place::Free;
        }
        let Ok(path) = std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd())) else {
            return Place::Unknown;
        };
        // The deepest root holding the path: grants may nest.
        self.0
            .iter()
            .enumerate()
            .filter(|(_, b)| b.kernel.is_none() && path.starts_with(&b.root))
            .max_by_key(|(_, b)| b.root.as_os_str().len())
            .map_or(Place::Free, |(i, _)| Place::In(i))
    }

    /// The accounted bound a directory descriptor is in (kernel bounds need no accounting
    /// of names: the file system counts its own inodes).
    fn accounted(&self, dir: &std::fs::File) -> Result<Option<&Bound>, ErrorCode> {
        match self.place_of(dir, None) {
            Place::Free => Ok(None),
            Place::Unknown => Err(ErrorCode::InsufficientSpace),
            Place::In(i) if self.0[i].kernel.is_some() => Ok(None),
            Place::In(i) => Ok(Some(&self.0[i])),
        }
    }

    /// Links and renames between two places: across a bound they get EXDEV, as between two
    /// file systems (which is what a pod's bounded directory is).
    fn same_side(&self, a: &std::fs::File, b: &std::fs::File) -> Result<(), ErrorCode> {
        if self.is_empty() {
            return Ok(());
        }
        match (self.place_of(a, None), self.place_of(b, None)) {
            (x, y) if x == y && x != Place::Unknown => Ok(()),
            (Place::Unknown, _) | (_, Place::Unknown) => Err(ErrorCode::InsufficientSpace),
            _ => Err(ErrorCode::CrossDevice),
        }
    }
}

fn no_space() -> io::Error {
    io::Error::from_raw_os_error(ENOSPC)
}

impl Bound {
    /// Charges `bytes`, or refuses with ENOSPC if they do not fit (after crediting files
    /// the guest has closed since it unlinked them).
    fn charge(&self, bytes: u64) -> io::Result<()> {
        if bytes == 0 {
            return Ok(());
        }
        let fits = |used: u64| used.checked_add(bytes).filter(|u| *u <= self.max);
        if self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, fits)
            .is_ok()
        {
            return Ok(());
        }
        self.credit_closed();
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, fits)
            .map(drop)
            .map_err(|used| {
                tracing::debug!(dir = %self.guest, used, bytes, max = self.max, "refused: directory bound reached");
                self.refused();
                no_space()
            })
    }

    fn refused(&self) {
        self.telemetry.deny(crate::Denial::MaxSize {
            dir: self.guest.clone(),
            max: self.max,
        });
    }

    fn credit(&self, bytes: u64) {
        let _ = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| {
                Some(u.saturating_sub(bytes))
            });
    }

    fn held(&self) -> std::sync::MutexGuard<'_, Vec<((u64, u64), u64)>> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A held (unlinked, still open) file grew: its blocks are credited with it later.
    fn held_grew(&self, id: (u64, u64), growth: u64) {
        let mut held = self.held();
        if let Some((_, charged)) = held.iter_mut().find(|(h, _)| *h == id) {
            *charged = charged.saturating_add(growth);
        }
    }

    /// Credits the held files no descriptor of this process holds any more.
    fn credit_closed(&self) {
        let mut held = self.held();
        if held.is_empty() {
            return;
        }
        let open = open_files();
        held.retain(|(id, charged)| {
            let still = open.contains(id);
            if !still {
                self.credit(*charged);
            }
            still
        });
    }

    /// A name is gone: credit it, and its file's blocks unless other links keep them or the
    /// guest still holds the file open.
    fn unlinked(&self, gone: &nix::sys::stat::FileStat) {
        self.credit(BLOCK);
        let is_file = (gone.st_mode & nix::libc::S_IFMT) == nix::libc::S_IFREG;
        if !is_file || gone.st_nlink > 1 {
            return;
        }
        let bytes = blocks(u64::try_from(gone.st_size).unwrap_or(0));
        let id = (gone.st_dev, gone.st_ino);
        if open_files().contains(&id) {
            self.held().push((id, bytes));
        } else {
            self.credit(bytes);
        }
    }
}

/// `(dev, ino)` of every file this process holds open.
fn open_files() -> HashSet<(u64, u64)> {
    let Ok(fds) = std::fs::read_dir("/proc/self/fd") else {
        return HashSet::new();
    };
    fds.flatten()
        .filter_map(|e| std::fs::metadata(e.path()).ok())
        .map(|m| (m.dev(), m.ino()))
        .collect()
}

/// Directory walks made for accounted bounds, process-wide: one per bound per guest start,
/// never one per write (a test holds the host to that).
static WALKS: AtomicU64 = AtomicU64::new(0);

/// How many times an accounted bound's directory has been walked in this process.
pub fn directory_walks() -> u64 {
    WALKS.load(Ordering::Relaxed)
}

/// What a directory's contents cost, like `du` with [`BLOCK`]s: one per name, and each
/// file's bytes rounded up, a hard-linked file's once. Symlinks are not followed.
fn measure(root: &Path) -> u64 {
    WALKS.fetch_add(1, Ordering::Relaxed);
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
            total = total.saturating_add(BLOCK);
            if meta.is_dir() {
                stack.push(entry.path());
            } else if meta.is_file() && seen.insert((meta.dev(), meta.ino())) {
                total = total.saturating_add(blocks(meta.len()));
            }
        }
    }
    total
}

/// What a name under `dir` is now, if anything (never following a final symlink).
fn stat_at(dir: &std::fs::File, path: &str) -> Option<nix::sys::stat::FileStat> {
    nix::sys::stat::fstatat(dir.as_fd(), path, AtFlags::AT_SYMLINK_NOFOLLOW).ok()
}

fn dir_of(
    state: &mut impl WasiFilesystemView,
    fd: &Resource<Descriptor>,
) -> Option<Arc<std::fs::File>> {
    match state.filesystem().table.get(fd) {
        Ok(Descriptor::Dir(d)) => Some(d.dir.clone()),
        _ => None,
    }
}

/// The guest's quotas, and the directory `fd` names when any bound exists.
fn dir_in<T: WasiFilesystemView>(
    state: &mut T,
    quotas: Project<T>,
    fd: &Resource<Descriptor>,
) -> (Quotas, Option<Arc<std::fs::File>>) {
    let quotas = quotas(state).clone();
    let dir = if quotas.is_empty() {
        None
    } else {
        dir_of(state, fd)
    };
    (quotas, dir)
}

/// The target directory of a link or rename from `fd` to `new_fd`; EXDEV across a bound.
fn dirs_across<T: WasiFilesystemView>(
    state: &mut T,
    project: Project<T>,
    fd: &Resource<Descriptor>,
    new_fd: &Resource<Descriptor>,
) -> Result<(Quotas, Option<Arc<std::fs::File>>), ErrorCode> {
    let (quotas, old) = dir_in(state, project, fd);
    let (_, new) = dir_in(state, project, new_fd);
    if let (Some(a), Some(b)) = (&old, &new) {
        quotas.same_side(a, b)?;
    }
    Ok((quotas, new))
}

/// After a call that removed the name `gone` (as it was before) from `dir`: credit it.
fn credit_gone<T>(
    quotas: &Quotas,
    dir: Option<&std::fs::File>,
    gone: Option<&nix::sys::stat::FileStat>,
    result: &Result<T, ErrorCode>,
) {
    if let (Ok(_), Some(d), Some(gone)) = (result, dir, gone)
        && let Ok(Some(b)) = quotas.accounted(d)
    {
        b.unlinked(gone);
    }
}

fn file_of(
    state: &mut impl WasiFilesystemView,
    fd: &Resource<Descriptor>,
) -> Option<Arc<std::fs::File>> {
    match state.filesystem().table.get(fd) {
        Ok(Descriptor::File(f)) => Some(f.file.clone()),
        _ => None,
    }
}

/// A borrow of a descriptor the guest passed, for calling wasmtime-wasi's own function.
fn again(fd: &Resource<Descriptor>) -> Resource<Descriptor> {
    Resource::new_borrow(fd.rep())
}

/// Runs wasmtime-wasi's own implementation of a shadowed function, converting its error
/// as wasmtime-wasi's bindings would.
macro_rules! inner {
    ($state:expr, |$view:ident| $call:expr) => {{
        let mut $view = $state.filesystem();
        match $call.await {
            Ok(v) => Ok(v),
            Err(e) => Err($view.convert_error_code(e)?),
        }
    }};
}

/// Charges a new name in the accounted bound of `dir`, runs `op`, and gives the charge back
/// if `op` fails.
async fn naming<T>(
    quotas: &Quotas,
    dir: Option<Arc<std::fs::File>>,
    op: impl std::future::Future<Output = wasmtime::Result<Result<T, ErrorCode>>>,
) -> wasmtime::Result<Result<T, ErrorCode>> {
    let bound = match dir.as_deref().map(|d| quotas.accounted(d)).transpose() {
        Ok(b) => b.flatten(),
        Err(code) => return Ok(Err(code)),
    };
    if let Some(b) = bound
        && let Err(e) = b.charge(BLOCK)
    {
        return Ok(Err(ErrorCode::from(&e)));
    }
    let result = op.await?;
    if let (Some(b), Err(_)) = (bound, &result) {
        b.credit(BLOCK);
    }
    Ok(result)
}

/// `link-at`'s parameters: from (directory, flags, path) to (directory, path).
type LinkArgs = (
    Resource<Descriptor>,
    PathFlags,
    String,
    Resource<Descriptor>,
    String,
);
/// `rename-at`'s parameters: from (directory, path) to (directory, path).
type RenameArgs = (Resource<Descriptor>, String, Resource<Descriptor>, String);

/// Projects a store's data to its quotas.
pub(crate) type Project<T> = fn(&mut T) -> &mut Quotas;

/// Shadows the wasi:filesystem functions that grow or shrink a directory with bounded ones.
/// Call after wasmtime-wasi's own `add_to_linker`, with shadowing allowed. `project` gives
/// the store's quotas.
pub(crate) fn add_to_linker<T: WasiFilesystemView + 'static>(
    linker: &mut Linker<T>,
    project: Project<T>,
) -> wasmtime::Result<()> {
    let mut types = linker.instance("wasi:filesystem/types@0.2.12")?;
    types.func_wrap_async(
        "[method]descriptor.write",
        move |mut store, (fd, buf, offset): (Resource<Descriptor>, Vec<u8>, u64)| {
            Box::new(async move {
                let state = store.data_mut();
                if let Some(file) = file_of(state, &fd) {
                    let end = offset.saturating_add(buf.len() as u64);
                    if let Err(e) = project(state).clone().check(&file, end, None, 0) {
                        return Ok((Err(ErrorCode::from(&e)),));
                    }
                }
                Ok((inner!(state, |view| view.write(fd, buf, offset)),))
            })
        },
    )?;
    types.func_wrap_async(
        "[method]descriptor.set-size",
        move |mut store, (fd, size): (Resource<Descriptor>, u64)| {
            Box::new(async move {
                let state = store.data_mut();
                let quotas = project(state).clone();
                let file = file_of(state, &fd).filter(|_| !quotas.is_empty());
                let before = file
                    .as_ref()
                    .and_then(|f| f.metadata().ok())
                    .map(|m| m.len());
                if let Some(file) = &file
                    && let Err(e) = quotas.check(file, size, None, 0)
                {
                    return Ok((Err(ErrorCode::from(&e)),));
                }
                let result = inner!(state, |view| view.set_size(fd, size));
                if let (Some(file), Some(before), Ok(())) = (&file, before, &result)
                    && size < before
                {
                    quotas.shrunk(file, before, size);
                }
                Ok((result,))
            })
        },
    )?;
    types.func_wrap(
        "[method]descriptor.write-via-stream",
        move |mut store, (fd, offset): (Resource<Descriptor>, u64)| {
            let state = store.data_mut();
            let file = file_of(state, &fd);
            let mut view = state.filesystem();
            let stream = match view.write_via_stream(fd, offset) {
                Ok(s) => s,
                Err(e) => return Ok((Err(view.convert_error_code(e)?),)),
            };
            Ok((Ok(bounded(state, project, stream, file, Some(offset))?),))
        },
    )?;
    types.func_wrap(
        "[method]descriptor.append-via-stream",
        move |mut store, (fd,): (Resource<Descriptor>,)| {
            let state = store.data_mut();
            let file = file_of(state, &fd);
            let mut view = state.filesystem();
            let stream = match view.append_via_stream(fd) {
                Ok(s) => s,
                Err(e) => return Ok((Err(view.convert_error_code(e)?),)),
            };
            Ok((Ok(bounded(state, project, stream, file, None)?),))
        },
    )?;
    types.func_wrap_async(
        "[method]descriptor.open-at",
        move |mut store,
              (fd, path_flags, path, oflags, flags): (
            Resource<Descriptor>,
            PathFlags,
            String,
            OpenFlags,
            DescriptorFlags,
        )| {
            Box::new(async move {
                let state = store.data_mut();
                let (quotas, dir) = dir_in(state, project, &fd);
                let existing = dir.as_deref().and_then(|d| stat_at(d, &path));
                let creates = oflags.contains(OpenFlags::CREATE) && existing.is_none();
                let opened = if creates {
                    naming(&quotas, dir.clone(), async {
                        Ok(inner!(state, |view| view.open_at(
                            again(&fd),
                            path_flags,
                            path.clone(),
                            oflags,
                            flags
                        )))
                    })
                    .await?
                } else {
                    inner!(state, |view| view.open_at(
                        fd,
                        path_flags,
                        path.clone(),
                        oflags,
                        flags
                    ))
                };
                // Truncating an existing file frees its blocks.
                if let (Ok(_), Some(d), Some(old)) = (&opened, &dir, &existing)
                    && oflags.contains(OpenFlags::TRUNCATE)
                    && (old.st_mode & nix::libc::S_IFMT) == nix::libc::S_IFREG
                    && let Ok(Some(b)) = quotas.accounted(d)
                {
                    b.credit(blocks(u64::try_from(old.st_size).unwrap_or(0)));
                }
                Ok((opened,))
            })
        },
    )?;
    types.func_wrap_async(
        "[method]descriptor.create-directory-at",
        move |mut store, (fd, path): (Resource<Descriptor>, String)| {
            Box::new(async move {
                let state = store.data_mut();
                let (quotas, dir) = dir_in(state, project, &fd);
                let made = naming(&quotas, dir, async {
                    Ok(inner!(state, |view| view.create_directory_at(fd, path)))
                });
                Ok((made.await?,))
            })
        },
    )?;
    types.func_wrap_async(
        "[method]descriptor.symlink-at",
        move |mut store, (fd, target, path): (Resource<Descriptor>, String, String)| {
            Box::new(async move {
                let state = store.data_mut();
                let (quotas, dir) = dir_in(state, project, &fd);
                let made = naming(&quotas, dir, async {
                    Ok(inner!(state, |view| view.symlink_at(fd, target, path)))
                });
                Ok((made.await?,))
            })
        },
    )?;
    types.func_wrap_async(
        "[method]descriptor.link-at",
        move |mut store, (fd, flags, old_path, new_fd, new_path): LinkArgs| {
            Box::new(async move {
                let state = store.data_mut();
                let (quotas, new_dir) = match dirs_across(state, project, &fd, &new_fd) {
                    Ok(d) => d,
                    Err(code) => return Ok((Err(code),)),
                };
                let made = naming(&quotas, new_dir, async {
                    Ok(inner!(state, |view| view
                        .link_at(fd, flags, old_path, new_fd, new_path)))
                });
                Ok((made.await?,))
            })
        },
    )?;
    types.func_wrap_async(
        "[method]descriptor.rename-at",
        move |mut store, (fd, old_path, new_fd, new_path): RenameArgs| {
            Box::new(async move {
                let state = store.data_mut();
                let (quotas, new_dir) = match dirs_across(state, project, &fd, &new_fd) {
                    Ok(d) => d,
                    Err(code) => return Ok((Err(code),)),
                };
                // A name replaced by the rename is gone, as if unlinked.
                let replaced = new_dir.as_deref().and_then(|d| stat_at(d, &new_path));
                let result = inner!(state, |view| view.rename_at(fd, old_path, new_fd, new_path));
                credit_gone(&quotas, new_dir.as_deref(), replaced.as_ref(), &result);
                Ok((result,))
            })
        },
    )?;
    // Removing a name credits it (and a file's blocks, unless held open or linked).
    for (name, is_dir) in [
        ("[method]descriptor.unlink-file-at", false),
        ("[method]descriptor.remove-directory-at", true),
    ] {
        types.func_wrap_async(
            name,
            move |mut store, (fd, path): (Resource<Descriptor>, String)| {
                Box::new(async move {
                    let state = store.data_mut();
                    let (quotas, dir) = dir_in(state, project, &fd);
                    let gone = dir.as_deref().and_then(|d| stat_at(d, &path));
                    let result = if is_dir {
                        inner!(state, |view| view.remove_directory_at(fd, path))
                    } else {
                        inner!(state, |view| view.unlink_file_at(fd, path))
                    };
                    credit_gone(&quotas, dir.as_deref(), gone.as_ref(), &result);
                    Ok((result,))
                })
            },
        )?;
    }
    Ok(())
}

/// Replaces a file stream in the table with one that checks the bound before each write.
fn bounded<T: WasiFilesystemView>(
    state: &mut T,
    project: Project<T>,
    stream: Resource<DynOutputStream>,
    file: Option<Arc<std::fs::File>>,
    position: Option<u64>,
) -> wasmtime::Result<Resource<DynOutputStream>> {
    let quotas = project(state).clone();
    let Some(file) = file.filter(|_| !quotas.is_empty()) else {
        return Ok(stream);
    };
    let meta = file.metadata()?;
    let place = quotas.place_of(&file, Some(&meta));
    if place == Place::Free {
        return Ok(stream);
    }
    let table = state.filesystem().table;
    let inner = table.delete(stream)?;
    let wrapped: DynOutputStream = Box::new(BoundedStream {
        inner,
        file,
        quotas,
        place,
        id: (meta.dev(), meta.ino()),
        position,
        charged_end: meta.len(),
    });
    Ok(table.push(wrapped)?)
}

/// A file output stream that refuses writes past its directory's bound.
struct BoundedStream {
    inner: DynOutputStream,
    file: Arc<std::fs::File>,
    quotas: Quotas,
    /// Where the file is, found once: its bound cannot change while the stream lives, since
    /// nothing moves or links across a bound.
    place: Place,
    /// The file's `(dev, ino)`, for crediting it later if it is unlinked while open.
    id: (u64, u64),
    /// Where the next write lands; `None` for an appending stream.
    position: Option<u64>,
    /// The file's size as charged so far (its size when the stream opened, then grown by
    /// this stream's writes, which may reach the file only later).
    charged_end: u64,
}

impl BoundedStream {
    /// Charges the blocks a write of `len` bytes adds. An accounted bound costs no system
    /// call per write (streams write in 4 KiB pieces); a kernel bound checks free space.
    fn charge(&mut self, len: u64) -> io::Result<()> {
        let end = match self.position {
            Some(pos) => pos.saturating_add(len),
            None => self.charged_end.saturating_add(len),
        };
        match self.place {
            Place::In(i) if self.quotas.0[i].kernel.is_none() => {
                let bound = &self.quotas.0[i];
                let grown = end.max(self.charged_end);
                let growth = blocks(grown) - blocks(self.charged_end);
                bound.charge(growth)?;
                bound.held_grew(self.id, growth);
                self.charged_end = grown;
                Ok(())
            }
            _ => {
                let append = self.position.is_none().then_some(len);
                let end = self
                    .quotas
                    .check(&self.file, end, append, self.charged_end)?;
                self.charged_end = self.charged_end.max(end);
                Ok(())
            }
        }
    }
}

#[async_trait::async_trait]
impl OutputStream for BoundedStream {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        let len = bytes.len() as u64;
        if let Err(e) = self.charge(len) {
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
    fn measure_counts_each_name_and_each_files_blocks_once_and_skips_symlinks() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        std::fs::write(dir.path().join("a"), vec![0u8; 100])?;
        std::fs::create_dir(dir.path().join("sub"))?;
        std::fs::write(dir.path().join("sub/b"), vec![0u8; 50])?;
        std::fs::hard_link(dir.path().join("a"), dir.path().join("sub/a-again"))?;
        std::os::unix::fs::symlink("/etc/passwd", dir.path().join("link"))?;
        // Five names, and the two files' bytes in blocks (the hard link's once).
        assert_eq!(measure(dir.path()), 5 * BLOCK + 2 * BLOCK);
        Ok(())
    }
}
