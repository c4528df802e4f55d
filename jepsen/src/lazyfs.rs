//! A filesystem that forgets what was not synced, for the `power-loss` nemesis (issue 18), after
//! LazyFS (the fault injector of etcd's robustness suite).
//!
//! Each node's data directory is a FUSE mount of a [`LazyFs`] over a directory of the real disk
//! (`nN.durable` beside it). What a node writes stays in this process's memory (its "page
//! cache") until the node `fsync`s or `fdatasync`s the file; only then does it reach the durable
//! directory. [`LazyFs::lose_unsynced`] is the power cut: every byte written and not synced is
//! thrown away, so the restarted node finds the files as the disk held them.
//!
//! What it models, and what not:
//! - File data is lost unless synced, page by page (4 KiB); a file grown by unsynced writes
//!   shrinks back. A write that was synced survives whole.
//! - `syncfs` does not reach a FUSE filesystem (Linux sends `FUSE_SYNCFS` to virtiofs only), so
//!   it syncs nothing here: a program must sync each file it needs durable.
//! - Namespace and size changes (create, rename, unlink, mkdir, truncate, fallocate) reach the
//!   durable directory at once, as LazyFS does: a missing directory `fsync` is not caught.
//! - Files are opened with `direct_io`, so the kernel keeps no copy of their data that could
//!   outlive the cut, and attributes are never cached.

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsStr;
use std::fs::{File, OpenOptions};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, UNIX_EPOCH};

use fuser::{
    BackgroundSession, Config, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags,
    Generation, INodeNo, MountOption, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request, TimeOrNow,
    WriteFlags,
};

const PAGE: u64 = 4096;
/// The source name of every lazy mount (in /proc/mounts).
const FS_NAME: &str = "millrace-lazyfs";
/// Attributes and entries are never cached by the kernel: sizes change behind its back at a cut.
const TTL: Duration = Duration::ZERO;

/// What a power cut threw away.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Lost {
    /// Files that held unsynced data.
    pub files: u64,
    /// Unsynced pages dropped (4 KiB each).
    pub pages: u64,
}

/// One file or directory the kernel knows by its inode number.
#[derive(Default)]
struct Node {
    /// Path under the durable root; `None` once unlinked.
    path: Option<PathBuf>,
    /// The durable file, opened on first use (kept while the file is open or holds unsynced data).
    file: Option<File>,
    opens: u64,
    /// Unsynced pages, by page number.
    dirty: BTreeMap<u64, Box<[u8]>>,
    /// The file's size as the node sees it, when unsynced writes or a cut changed it.
    size: Option<u64>,
}

#[derive(Default)]
struct Inodes {
    nodes: HashMap<u64, Node>,
    by_path: HashMap<PathBuf, u64>,
    next: u64,
}

impl Inodes {
    fn ino_of(&mut self, path: &Path) -> u64 {
        if let Some(ino) = self.by_path.get(path) {
            return *ino;
        }
        self.next += 1;
        let ino = self.next;
        self.by_path.insert(path.to_path_buf(), ino);
        self.nodes.insert(
            ino,
            Node {
                path: Some(path.to_path_buf()),
                ..Node::default()
            },
        );
        ino
    }
}

/// The filesystem: a durable directory and the unsynced writes over it.
#[derive(Clone)]
pub struct LazyFs {
    root: PathBuf,
    inodes: Arc<Mutex<Inodes>>,
}

/// A mounted [`LazyFs`]; unmounted (its unsynced writes synced first) when dropped.
pub struct Mounted {
    pub fs: LazyFs,
    session: Option<BackgroundSession>,
    mountpoint: PathBuf,
}

impl Mounted {
    /// Mounts a lazy view of `durable` (an existing directory) on `mountpoint` (created).
    pub fn mount(durable: &Path, mountpoint: &Path) -> anyhow::Result<Mounted> {
        unmount_orphans();
        std::fs::create_dir_all(durable)?;
        std::fs::create_dir_all(mountpoint)?;
        let fs = LazyFs::new(durable);
        let mut config = Config::default();
        config.mount_options = vec![MountOption::FSName(FS_NAME.into()), MountOption::NoAtime];
        let session = fuser::spawn_mount(fs.clone(), mountpoint, &config).map_err(|e| {
            anyhow::anyhow!(
                "mounting a lazy filesystem on {}: {e}",
                mountpoint.display()
            )
        })?;
        Ok(Mounted {
            fs,
            session: Some(session),
            mountpoint: mountpoint.to_path_buf(),
        })
    }

    /// Syncs what is unsynced (a clean shutdown: a process killed keeps its page cache) and
    /// unmounts, leaving the durable directory whole.
    pub fn unmount(&mut self) {
        self.fs.sync_all();
        if let Some(session) = self.session.take() {
            if let Err(e) = session.umount_and_join() {
                tracing::warn!(mountpoint = %self.mountpoint.display(), error = %e, "unmounting");
            }
        }
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        self.unmount();
    }
}

/// Lazy filesystems whose harness died (killed mid-run): their mountpoints answer "transport
/// endpoint is not connected" and block removing the run's folder. Detached, once per process.
fn unmount_orphans() {
    static DONE: std::sync::Once = std::sync::Once::new();
    DONE.call_once(|| {
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
        for line in mounts.lines() {
            let mut fields = line.split_whitespace();
            let (Some(source), Some(target)) = (fields.next(), fields.next()) else {
                continue;
            };
            // /proc/mounts escapes spaces and the like as octal (\040).
            let target = target.replace("\\040", " ");
            if source != FS_NAME {
                continue;
            }
            let orphaned = std::fs::metadata(&target)
                .is_err_and(|e| e.raw_os_error() == Some(libc::ENOTCONN));
            if orphaned {
                let path = std::ffi::CString::new(target.as_bytes()).expect("no NUL");
                // SAFETY: umount2(2) on a NUL-terminated path.
                let rc = unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) };
                tracing::warn!(mountpoint = %target, detached = rc == 0, "a lazy filesystem left by a dead harness");
            }
        }
    });
}

fn lock(inodes: &Mutex<Inodes>) -> MutexGuard<'_, Inodes> {
    inodes.lock().unwrap_or_else(|e| e.into_inner())
}

fn errno(e: std::io::Error) -> Errno {
    Errno::from(e)
}

fn kind_of(m: &std::fs::Metadata) -> FileType {
    let t = m.file_type();
    if t.is_dir() {
        FileType::Directory
    } else if t.is_symlink() {
        FileType::Symlink
    } else {
        FileType::RegularFile
    }
}

fn attr_of(ino: u64, m: &std::fs::Metadata, size: Option<u64>) -> FileAttr {
    let time = |s: i64, ns: i64| UNIX_EPOCH + Duration::new(s.max(0) as u64, ns as u32);
    let size = size.unwrap_or(m.len());
    FileAttr {
        ino: INodeNo(ino),
        size,
        blocks: size.div_ceil(512),
        atime: time(m.atime(), m.atime_nsec()),
        mtime: time(m.mtime(), m.mtime_nsec()),
        ctime: time(m.ctime(), m.ctime_nsec()),
        crtime: time(m.ctime(), m.ctime_nsec()),
        kind: kind_of(m),
        perm: (m.mode() & 0o7777) as u16,
        nlink: m.nlink() as u32,
        uid: m.uid(),
        gid: m.gid(),
        rdev: m.rdev() as u32,
        blksize: PAGE as u32,
        flags: 0,
    }
}

impl LazyFs {
    pub fn new(root: &Path) -> LazyFs {
        let mut inodes = Inodes {
            next: 1,
            ..Inodes::default()
        };
        inodes.by_path.insert(PathBuf::new(), 1);
        inodes.nodes.insert(
            1,
            Node {
                path: Some(PathBuf::new()),
                ..Node::default()
            },
        );
        LazyFs {
            root: root.to_path_buf(),
            inodes: Arc::new(Mutex::new(inodes)),
        }
    }

    /// The power cut: drops every unsynced page and size change; returns what was lost.
    pub fn lose_unsynced(&self) -> Lost {
        let mut inodes = lock(&self.inodes);
        let mut lost = Lost::default();
        for node in inodes.nodes.values_mut() {
            if !node.dirty.is_empty() || node.size.is_some() {
                lost.files += 1;
                lost.pages += node.dirty.len() as u64;
            }
            node.dirty.clear();
            node.size = None;
            if node.opens == 0 {
                node.file = None;
            }
        }
        lost
    }

    /// Syncs every file's unsynced pages (as an orderly shutdown would).
    pub fn sync_all(&self) {
        let mut inodes = lock(&self.inodes);
        let root = self.root.clone();
        for node in inodes.nodes.values_mut() {
            if let Err(e) = sync_node(&root, node) {
                tracing::warn!(path = ?node.path, error = %e, "syncing a lazy file");
            }
        }
    }

    fn real(&self, rel: &Path) -> PathBuf {
        self.root.join(rel)
    }

    fn path_of(&self, ino: INodeNo) -> Result<PathBuf, Errno> {
        lock(&self.inodes)
            .nodes
            .get(&ino.0)
            .and_then(|n| n.path.clone())
            .ok_or(Errno::ENOENT)
    }

    fn child(&self, parent: INodeNo, name: &OsStr) -> Result<PathBuf, Errno> {
        Ok(self.path_of(parent)?.join(name))
    }

    /// The attributes of `ino`, with its size as the node sees it.
    fn attr(&self, ino: u64) -> Result<FileAttr, Errno> {
        let inodes = lock(&self.inodes);
        let node = inodes.nodes.get(&ino).ok_or(Errno::ENOENT)?;
        let meta = match (&node.file, &node.path) {
            (Some(f), _) => f.metadata(),
            (None, Some(p)) => std::fs::symlink_metadata(self.real(p)),
            (None, None) => return Err(Errno::ENOENT),
        }
        .map_err(errno)?;
        Ok(attr_of(ino, &meta, node.size))
    }

    fn entry(&self, rel: &Path) -> Result<FileAttr, Errno> {
        std::fs::symlink_metadata(self.real(rel)).map_err(errno)?;
        let ino = lock(&self.inodes).ino_of(rel);
        self.attr(ino)
    }

    /// Removes `name` from `parent` with `remove` (a file or a directory) and forgets its path;
    /// a file still open lives on, unnamed, until released.
    fn remove(
        &self,
        parent: INodeNo,
        name: &OsStr,
        remove: fn(&Path) -> std::io::Result<()>,
    ) -> Result<(), Errno> {
        let p = self.child(parent, name)?;
        remove(&self.real(&p)).map_err(errno)?;
        let mut inodes = lock(&self.inodes);
        if let Some(ino) = inodes.by_path.remove(&p) {
            if let Some(node) = inodes.nodes.get_mut(&ino) {
                node.path = None;
                if node.opens == 0 {
                    inodes.nodes.remove(&ino);
                }
            }
        }
        Ok(())
    }

    /// Runs `f` on the node of `ino` with its durable file open.
    fn with_file<T>(
        &self,
        ino: INodeNo,
        f: impl FnOnce(&mut Node, &Path) -> Result<T, Errno>,
    ) -> Result<T, Errno> {
        let mut inodes = lock(&self.inodes);
        let node = inodes.nodes.get_mut(&ino.0).ok_or(Errno::ENOENT)?;
        if node.file.is_none() {
            let path = node.path.as_ref().ok_or(Errno::ENOENT)?;
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .open(self.root.join(path))
                .map_err(errno)?;
            node.file = Some(file);
        }
        f(node, &self.root)
    }
}

/// The size of `node` as the node sees it.
fn logical_size(node: &Node) -> std::io::Result<u64> {
    match node.size {
        Some(s) => Ok(s),
        None => node
            .file
            .as_ref()
            .expect("file open")
            .metadata()
            .map(|m| m.len()),
    }
}

/// One page as the node sees it: unsynced, or read from the durable file.
fn page(node: &Node, n: u64) -> std::io::Result<Box<[u8]>> {
    if let Some(p) = node.dirty.get(&n) {
        return Ok(p.clone());
    }
    let mut buf = vec![0u8; PAGE as usize].into_boxed_slice();
    let file = node.file.as_ref().expect("file open");
    let mut at = 0usize;
    while at < buf.len() {
        match file.read_at(&mut buf[at..], n * PAGE + at as u64)? {
            0 => break,
            k => at += k,
        }
    }
    Ok(buf)
}

/// Writes `node`'s unsynced pages to its durable file (the file's `fsync`).
fn sync_node(root: &Path, node: &mut Node) -> std::io::Result<()> {
    if node.dirty.is_empty() && node.size.is_none() {
        return Ok(());
    }
    if node.file.is_none() {
        let Some(path) = &node.path else {
            // Unlinked and closed: nothing of it can be read again.
            node.dirty.clear();
            node.size = None;
            return Ok(());
        };
        node.file = Some(OpenOptions::new().write(true).open(root.join(path))?);
    }
    let size = logical_size(node)?;
    let file = node.file.as_ref().expect("file open");
    for (n, data) in &node.dirty {
        let start = n * PAGE;
        if start >= size {
            continue;
        }
        let len = (size - start).min(PAGE) as usize;
        file.write_all_at(&data[..len], start)?;
    }
    if file.metadata()?.len() != size {
        file.set_len(size)?;
    }
    node.dirty.clear();
    node.size = None;
    Ok(())
}

/// Sets `node`'s size to `size`: at once on the durable file (a size change is metadata), and
/// in the unsynced pages past it.
fn truncate(node: &mut Node, size: u64) -> std::io::Result<()> {
    let file = node.file.as_ref().expect("file open");
    file.set_len(size)?;
    let first_gone = size.div_ceil(PAGE);
    node.dirty.retain(|n, _| *n < first_gone);
    if !size.is_multiple_of(PAGE) {
        if let Some(p) = node.dirty.get_mut(&(size / PAGE)) {
            p[(size % PAGE) as usize..].fill(0);
        }
    }
    if node.size.is_some() {
        node.size = Some(size);
    }
    Ok(())
}

/// Answers an operation with nothing to return.
fn answer(reply: ReplyEmpty, result: Result<(), Errno>) {
    match result {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(e),
    }
}

/// Answers an operation that names a file (lookup, mkdir) with its attributes.
fn answer_entry(reply: ReplyEntry, result: Result<FileAttr, Errno>) {
    match result {
        Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
        Err(e) => reply.error(e),
    }
}

impl Filesystem for LazyFs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        answer_entry(reply, self.child(parent, name).and_then(|p| self.entry(&p)));
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.attr(ino.0) {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<std::time::SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<std::time::SystemTime>,
        _chgtime: Option<std::time::SystemTime>,
        _bkuptime: Option<std::time::SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let result = (|| {
            if let Some(mode) = mode {
                let path = self.path_of(ino)?;
                std::fs::set_permissions(
                    self.real(&path),
                    std::fs::Permissions::from_mode(mode & 0o7777),
                )
                .map_err(errno)?;
            }
            if let Some(size) = size {
                self.with_file(ino, |node, _| truncate(node, size).map_err(errno))?;
            }
            self.attr(ino.0)
        })();
        match result {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn mkdir(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let result = self.child(parent, name).and_then(|p| {
            std::fs::create_dir(self.real(&p)).map_err(errno)?;
            let perm = std::fs::Permissions::from_mode(mode & !umask & 0o7777);
            std::fs::set_permissions(self.real(&p), perm).map_err(errno)?;
            self.entry(&p)
        });
        answer_entry(reply, result);
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        answer(
            reply,
            self.remove(parent, name, |p| std::fs::remove_file(p)),
        );
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        answer(reply, self.remove(parent, name, |p| std::fs::remove_dir(p)));
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let result = (|| {
            let from = self.child(parent, name)?;
            let to = self.child(newparent, newname)?;
            if flags.is_empty() {
                std::fs::rename(self.real(&from), self.real(&to)).map_err(errno)?;
            } else {
                rename2(&self.real(&from), &self.real(&to), flags.bits()).map_err(errno)?;
            }
            let mut inodes = lock(&self.inodes);
            // A replaced target is unlinked; the source (and all under it) moves.
            if let Some(old) = inodes.by_path.remove(&to) {
                if let Some(node) = inodes.nodes.get_mut(&old) {
                    node.path = None;
                }
            }
            let moved: Vec<(PathBuf, u64)> = inodes
                .by_path
                .iter()
                .filter(|(p, _)| p.starts_with(&from))
                .map(|(p, i)| (p.clone(), *i))
                .collect();
            for (p, ino) in moved {
                // (`join("")` would add a trailing slash, which stat reads as "a directory".)
                let rest = p.strip_prefix(&from).expect("under from");
                let new = if rest.as_os_str().is_empty() {
                    to.clone()
                } else {
                    to.join(rest)
                };
                inodes.by_path.remove(&p);
                inodes.by_path.insert(new.clone(), ino);
                if let Some(node) = inodes.nodes.get_mut(&ino) {
                    node.path = Some(new);
                }
            }
            Ok(())
        })();
        answer(reply, result);
    }

    fn open(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.with_file(ino, |node, _| {
            node.opens += 1;
            Ok(())
        }) {
            Ok(()) => reply.opened(FileHandle(ino.0), FopenFlags::FOPEN_DIRECT_IO),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        reply: ReplyData,
    ) {
        let result = self.with_file(ino, |node, _| {
            let end = logical_size(node).map_err(errno)?.min(offset + size as u64);
            let mut out = Vec::with_capacity(end.saturating_sub(offset) as usize);
            let mut at = offset;
            while at < end {
                let (n, within) = (at / PAGE, (at % PAGE) as usize);
                let take = ((PAGE as usize - within) as u64).min(end - at) as usize;
                let p = page(node, n).map_err(errno)?;
                out.extend_from_slice(&p[within..within + take]);
                at += take as u64;
            }
            Ok(out)
        });
        match result {
            Ok(data) => reply.data(&data),
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        reply: ReplyWrite,
    ) {
        let result = self.with_file(ino, |node, _| {
            let size = logical_size(node).map_err(errno)?;
            let mut at = 0usize;
            while at < data.len() {
                let pos = offset + at as u64;
                let (n, within) = (pos / PAGE, (pos % PAGE) as usize);
                let take = (PAGE as usize - within).min(data.len() - at);
                let mut p = page(node, n).map_err(errno)?;
                // Past the old end a page read back holds nothing of the node's: zero it.
                if n * PAGE >= size {
                    p.fill(0);
                } else if (n + 1) * PAGE > size {
                    p[(size - n * PAGE) as usize..].fill(0);
                }
                p[within..within + take].copy_from_slice(&data[at..at + take]);
                node.dirty.insert(n, p);
                at += take;
            }
            let end = offset + data.len() as u64;
            if end > size || node.size.is_some() {
                node.size = Some(size.max(end));
            }
            Ok(data.len() as u32)
        });
        match result {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(e),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: fuser::LockOwner,
        reply: ReplyEmpty,
    ) {
        // close(2) is not a sync.
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let mut inodes = lock(&self.inodes);
        if let Some(node) = inodes.nodes.get_mut(&ino.0) {
            node.opens = node.opens.saturating_sub(1);
            if node.opens == 0 && node.path.is_none() {
                inodes.nodes.remove(&ino.0);
            } else if node.opens == 0 && node.dirty.is_empty() && node.size.is_none() {
                node.file = None;
            }
        }
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        answer(
            reply,
            self.with_file(ino, |node, root| sync_node(root, node).map_err(errno)),
        );
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let result = self.path_of(ino).and_then(|dir| {
            let mut entries = vec![
                (ino.0, FileType::Directory, OsStr::new(".").to_os_string()),
                (ino.0, FileType::Directory, OsStr::new("..").to_os_string()),
            ];
            for e in std::fs::read_dir(self.real(&dir)).map_err(errno)? {
                let e = e.map_err(errno)?;
                let meta = e.metadata().map_err(errno)?;
                let child = lock(&self.inodes).ino_of(&dir.join(e.file_name()));
                entries.push((child, kind_of(&meta), e.file_name()));
            }
            Ok(entries)
        });
        match result {
            Ok(entries) => {
                for (i, (child, kind, name)) in
                    entries.into_iter().enumerate().skip(offset as usize)
                {
                    if reply.add(INodeNo(child), i as u64 + 1, kind, name) {
                        break;
                    }
                }
                reply.ok();
            }
            Err(e) => reply.error(e),
        }
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        // Namespace changes are durable at once here (see the module's notes).
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        // SAFETY: statvfs(3) on a NUL-terminated path into a zeroed struct it fills.
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        let path = std::ffi::CString::new(self.root.as_os_str().as_bytes()).expect("no NUL");
        if unsafe { libc::statvfs(path.as_ptr(), &mut st) } != 0 {
            reply.error(errno(std::io::Error::last_os_error()));
            return;
        }
        reply.statfs(
            st.f_blocks,
            st.f_bfree,
            st.f_bavail,
            st.f_files,
            st.f_ffree,
            st.f_bsize as u32,
            st.f_namemax as u32,
            st.f_frsize as u32,
        );
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let result = self.child(parent, name).and_then(|p| {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(flags & libc::O_TRUNC != 0)
                .custom_flags(flags & libc::O_EXCL)
                .mode(mode & !umask & 0o7777)
                .open(self.real(&p))
                .map_err(errno)?;
            let mut inodes = lock(&self.inodes);
            let ino = inodes.ino_of(&p);
            let node = inodes.nodes.get_mut(&ino).expect("just made");
            node.file = Some(file);
            node.opens += 1;
            drop(inodes);
            Ok((ino, self.attr(ino)?))
        });
        match result {
            Ok((ino, attr)) => reply.created(
                &TTL,
                &attr,
                Generation(0),
                FileHandle(ino),
                FopenFlags::FOPEN_DIRECT_IO,
            ),
            Err(e) => reply.error(e),
        }
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let result = self.with_file(ino, |node, _| {
            use std::os::fd::AsRawFd;
            let fd = node.file.as_ref().expect("file open").as_raw_fd();
            // SAFETY: fallocate(2) on a file descriptor this node owns.
            let rc = unsafe { libc::fallocate(fd, mode, offset as i64, length as i64) };
            if rc != 0 {
                return Err(errno(std::io::Error::last_os_error()));
            }
            let end = offset + length;
            if mode & (libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_ZERO_RANGE) != 0 {
                for n in offset / PAGE..end.div_ceil(PAGE) {
                    if let Some(p) = node.dirty.get_mut(&n) {
                        let from = offset.max(n * PAGE) - n * PAGE;
                        let to = end.min((n + 1) * PAGE) - n * PAGE;
                        p[from as usize..to as usize].fill(0);
                    }
                }
            }
            if mode & libc::FALLOC_FL_KEEP_SIZE == 0 {
                if let Some(size) = node.size {
                    node.size = Some(size.max(end));
                }
            }
            Ok(())
        });
        answer(reply, result);
    }
}

fn rename2(from: &Path, to: &Path, flags: u32) -> std::io::Result<()> {
    let from = std::ffi::CString::new(from.as_os_str().as_bytes()).expect("no NUL");
    let to = std::ffi::CString::new(to.as_os_str().as_bytes()).expect("no NUL");
    // SAFETY: renameat2(2) with NUL-terminated absolute paths.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            from.as_ptr(),
            libc::AT_FDCWD,
            to.as_ptr(),
            flags,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Seek, SeekFrom, Write};

    /// Needs root and /dev/fuse (as every jepsen test does).
    fn mounted() -> Option<(tempfile::TempDir, Mounted)> {
        if !Path::new("/dev/fuse").exists() || unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: needs root and /dev/fuse");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let m = Mounted::mount(&dir.path().join("durable"), &dir.path().join("mnt")).unwrap();
        Some((dir, m))
    }

    fn read_all(p: &Path) -> Vec<u8> {
        let mut v = Vec::new();
        File::open(p).unwrap().read_to_end(&mut v).unwrap();
        v
    }

    #[test]
    fn a_cut_keeps_what_was_synced_and_drops_the_rest() {
        let Some((dir, m)) = mounted() else { return };
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(mnt.join("groups")).unwrap();
        let path = mnt.join("groups/seg");
        let mut f = File::create(&path).unwrap();
        f.write_all(&[1u8; 5000]).unwrap();
        f.sync_data().unwrap();
        f.write_all(&[2u8; 3000]).unwrap(); // unsynced: straddles a page, grows the file
        f.seek(SeekFrom::Start(10)).unwrap();
        f.write_all(&[3u8; 10]).unwrap(); // unsynced overwrite of synced bytes
        drop(f);
        let seen = read_all(&path);
        assert_eq!(seen.len(), 8000);
        assert_eq!(&seen[10..20], &[3u8; 10]);
        assert_eq!(&seen[5000..], &[2u8; 3000][..]);
        // Nothing unsynced is on the durable side yet.
        assert_eq!(
            read_all(&dir.path().join("durable/groups/seg")),
            vec![1u8; 5000]
        );
        // syncfs does not reach a FUSE filesystem: it makes nothing durable here.
        let f = File::open(&path).unwrap();
        rustix_syncfs(&f);

        let lost = m.fs.lose_unsynced();
        assert_eq!(lost, Lost { files: 1, pages: 2 });
        assert_eq!(read_all(&path), vec![1u8; 5000]);

        // A file created, synced, renamed and truncated keeps its durable state.
        let mut g = File::create(mnt.join("a")).unwrap();
        g.write_all(b"hello world").unwrap();
        g.sync_all().unwrap();
        std::fs::rename(mnt.join("a"), mnt.join("groups/b")).unwrap();
        g.set_len(5).unwrap();
        drop(g);
        m.fs.lose_unsynced();
        assert_eq!(read_all(&mnt.join("groups/b")), b"hello");
        let mut names: Vec<_> = std::fs::read_dir(mnt.join("groups"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        assert_eq!(names, vec![OsStr::new("b"), OsStr::new("seg")]);
        std::fs::remove_file(mnt.join("groups/b")).unwrap();
        assert!(!dir.path().join("durable/groups/b").exists());
    }

    /// What the nodes rely on: an append the flush coordinator reported durable survives a
    /// power cut, also when one round covers several files (where it would `syncfs` a disk
    /// filesystem, which does not reach FUSE).
    #[test]
    fn the_flush_coordinator_makes_appends_durable_on_a_lazy_disk() {
        use millrace_storage::{FlushCoordinator, SyncMethod};
        let Some((dir, m)) = mounted() else { return };
        let mnt = dir.path().join("mnt");
        assert!(!millrace_storage::flush::syncfs_covers(
            &File::create(mnt.join("probe")).unwrap()
        ));
        let files: Vec<Arc<File>> = (0..3)
            .map(|i| {
                let mut f = File::create(mnt.join(format!("seg{i}"))).unwrap();
                f.write_all(&[i as u8 + 1; 6000]).unwrap();
                Arc::new(f)
            })
            .collect();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        runtime.block_on(async {
            let flusher = FlushCoordinator::start(SyncMethod::Auto).unwrap();
            let (tx, rx) = tokio::sync::oneshot::channel();
            flusher
                .submit(
                    files.clone(),
                    Box::new(move |r| {
                        let _ = tx.send(r.is_ok());
                    }),
                )
                .await
                .unwrap();
            assert!(rx.await.unwrap(), "the round synced");
        });
        m.fs.lose_unsynced();
        for i in 0..3u8 {
            assert_eq!(
                read_all(&mnt.join(format!("seg{i}"))),
                vec![i + 1; 6000],
                "seg{i} after the cut"
            );
        }
    }

    /// A metadata flush (a vote, a purge point) survives a power cut: sled's own flush ends with
    /// `sync_file_range`, which does not make a write durable (here it reaches nothing), so
    /// without the `fsync` after it the durable disk held an older database than the seal named
    /// ("lost flushed writes": seen in the `power_loss` run of CI, where every node set its
    /// metadata aside at once and no shard could elect a leader again).
    #[test]
    fn a_metadata_flush_survives_a_power_cut() {
        use millrace_storage::NodeMeta;
        let Some((dir, _m)) = mounted() else { return };
        let meta_dir = dir.path().join("mnt/meta");
        let meta = NodeMeta::open(&meta_dir).unwrap();
        let group = meta.group(7).unwrap();
        let copies = tempfile::tempdir().unwrap();
        for vote in 0..12u64 {
            group.put("vote", &vote).unwrap();
            // A value over ~128 KiB goes to a file of its own in `meta/blobs/`, which sled
            // never syncs.
            let big = vec![vote as u8; 300_000];
            group.put_batch(&[("snapshot_data", big.clone())]).unwrap();
            group.flush_blocking().unwrap();
            // What the disk holds right now is what a power cut would leave: open a copy of it
            // (the live database keeps its lock on the mounted one).
            let copy = copies.path().join(format!("cut{vote}"));
            copy_dir(&dir.path().join("durable/meta"), &copy);
            std::fs::copy(
                dir.path().join("durable/meta.seal"),
                copy.with_extension("seal"),
            )
            .unwrap();
            let after = NodeMeta::open(&copy)
                .unwrap_or_else(|e| panic!("the metadata after a cut at vote {vote}: {e}"));
            assert_eq!(
                after.group(7).unwrap().get::<u64>("vote").unwrap(),
                Some(vote),
                "the flushed vote after a cut"
            );
            assert_eq!(
                after.group(7).unwrap().get_raw("snapshot_data").unwrap(),
                Some(big),
                "the flushed large value after a cut"
            );
        }
    }

    fn copy_dir(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for e in std::fs::read_dir(from).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                copy_dir(&e.path(), &to.join(e.file_name()));
            } else {
                std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
            }
        }
    }

    fn rustix_syncfs(f: &File) {
        use std::os::fd::AsRawFd;
        // SAFETY: syncfs(2) on an open file descriptor.
        assert_eq!(unsafe { libc::syncfs(f.as_raw_fd()) }, 0);
    }
}
