//! The FUSE adapter: decodes kernel requests, calls [`Fs`] on the tokio runtime, and replies.
//! No filesystem logic lives here; FUSE threads never wait on the network.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use fuser::{
    AccessFlags, CopyFileRangeFlags, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags,
    Generation, INodeNo, InitFlags, KernelConfig, LockOwner, OpenFlags, RenameFlags, ReplyAttr,
    ReplyCreate, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyOpen,
    ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};
use tokio::runtime::Handle;
use tracing::{debug, warn};

use crate::fs::attrs::Kind;
use crate::fs::error::FsError;
use crate::fs::namespace::{Caller, SetAttr};
use crate::fs::{Entry, Fs};
use crate::metrics::metrics;
use crate::store::ObjectStore;

/// How many entries to ask of the filesystem layer per readdir: as many as the kernel's reply
/// buffer holds, so few are prepared only to be dropped (and, for readdirplus, given an inode
/// and forgotten again). fuser does not pass the buffer size on, and it differs by kernel (one
/// page on older ones; about 500 readdirplus entries on 6.18, where a 10,000-entry `ls -l`
/// took 21 readdirplus round trips instead of 314 with one-page batches), so it is learned
/// from the replies: a batch that fitted entirely doubles the next one, a reply that ran out
/// of room sets it to what fitted.
struct LearnedBatch {
    current: AtomicUsize,
    max: usize,
}

impl LearnedBatch {
    const MIN: usize = 8;

    fn new(start: usize, max: usize) -> Self {
        Self {
            current: AtomicUsize::new(start),
            max,
        }
    }

    fn get(&self) -> usize {
        self.current.load(Ordering::Relaxed)
    }

    /// `asked` entries were asked for, `offered` came back, `sent` fitted; `full` when the
    /// buffer ran out of room.
    fn record(&self, asked: usize, offered: usize, sent: usize, full: bool) {
        if full {
            self.current
                .store(sent.clamp(Self::MIN, self.max), Ordering::Relaxed);
        } else if offered == asked && sent == offered {
            self.current
                .store((asked * 2).min(self.max), Ordering::Relaxed);
        }
    }
}

pub struct FuseAdapter<S> {
    fs: Arc<Fs<S>>,
    runtime: Handle,
    /// Thread group (process) that opened each file handle: see `flush`.
    openers: Arc<Mutex<HashMap<u64, u32>>>,
    readdir_batch: Arc<LearnedBatch>,
    readdirplus_batch: Arc<LearnedBatch>,
    mountpoint: Arc<std::sync::OnceLock<std::path::PathBuf>>,
}

/// The process (thread group) a request's thread belongs to.
fn process_of(pid: u32) -> u32 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("Tgid:"))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(pid)
}

/// True while process `pid` runs (a zombie has ended).
fn process_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/status")).is_ok_and(|status| {
        !status
            .lines()
            .any(|l| l.starts_with("State:") && l.contains('Z'))
    })
}

impl<S: ObjectStore> FuseAdapter<S> {
    pub fn new(fs: Arc<Fs<S>>, runtime: Handle) -> Self {
        Self {
            fs,
            runtime,
            openers: Arc::new(Mutex::new(HashMap::new())),
            readdir_batch: Arc::new(LearnedBatch::new(128, 4096)),
            readdirplus_batch: Arc::new(LearnedBatch::new(32, 1024)),
            mountpoint: Default::default(),
        }
    }

    /// The directory the kernel mounted us on (set once the mount is live).
    pub fn set_mountpoint(&self, path: std::path::PathBuf) {
        let _ = self.mountpoint.set(path);
    }

    /// True when process `pid` still holds a descriptor of inode `ino` of this mount. At
    /// flush time the closing descriptor has already left the process's table.
    fn holds_another_descriptor(&self, pid: u32, ino: u64) -> bool {
        let Some(mountpoint) = self.mountpoint.get() else {
            return false;
        };
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
            return false;
        };
        fds.flatten().any(|fd| {
            // Another descriptor of this file open for writing (a read-only one does not keep
            // the write going).
            let same_ino = std::fs::read_to_string(fd.path()).is_ok_and(|info| {
                let field = |name: &str| {
                    info.lines()
                        .find_map(|l| l.strip_prefix(name))
                        .map(str::trim)
                        .map(str::to_string)
                };
                let writable = field("flags:")
                    .and_then(|f| u32::from_str_radix(&f, 8).ok())
                    .is_some_and(|flags| flags & libc::O_ACCMODE as u32 != libc::O_RDONLY as u32);
                writable && field("ino:") == Some(ino.to_string())
            });
            same_ino
                && std::fs::read_link(format!(
                    "/proc/{pid}/fd/{}",
                    fd.file_name().to_string_lossy()
                ))
                .is_ok_and(|target| target.starts_with(mountpoint))
        })
    }
}

/// getxattr/listxattr answer: the size when asked with size 0, the bytes when they fit, else
/// ERANGE.
fn reply_xattr(reply: ReplyXattr, size: u32, value: &[u8]) {
    if size == 0 {
        reply.size(value.len() as u32);
    } else if value.len() <= size as usize {
        reply.data(value);
    } else {
        reply.error(Errno::ERANGE);
    }
}

fn time_or_now(time: TimeOrNow) -> SystemTime {
    match time {
        TimeOrNow::SpecificTime(t) => t,
        TimeOrNow::Now => SystemTime::now(),
    }
}

fn caller(req: &Request) -> Caller {
    Caller {
        uid: req.uid(),
        gid: req.gid(),
    }
}

/// An errno answered without asking the filesystem layer, counted for the metrics.
fn refused(errno: Errno) -> Errno {
    metrics().fuse_error(errno.code());
    errno
}

fn errno(err: &FsError) -> Errno {
    metrics().fuse_error(err.errno());
    if matches!(
        err,
        FsError::Io(_) | FsError::AccessDenied(_) | FsError::Archived(_)
    ) {
        warn!("{err}");
    } else {
        debug!("{err}");
    }
    Errno::from_i32(err.errno())
}

fn file_attr(entry: &Entry) -> FileAttr {
    let a = &entry.attrs;
    let nlink = match (a.unlinked, a.kind.is_dir()) {
        (true, _) => 0,
        (false, true) => 2,
        (false, false) => 1,
    };
    let kind = file_type(a.kind);
    FileAttr {
        ino: INodeNo(entry.ino),
        size: a.size,
        blocks: a.size.div_ceil(512),
        atime: a.atime,
        mtime: a.mtime,
        ctime: a.ctime,
        crtime: a.mtime,
        kind,
        perm: a.perm as u16,
        nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: a.rdev,
        // Large, so tools that size their buffers by st_blksize (cp, cat) read in big chunks.
        blksize: 1 << 20,
        flags: 0,
    }
}

fn file_type(kind: Kind) -> FileType {
    match kind {
        Kind::File => FileType::RegularFile,
        Kind::Dir => FileType::Directory,
        Kind::Symlink => FileType::Symlink,
        Kind::Fifo => FileType::NamedPipe,
        Kind::Socket => FileType::Socket,
        Kind::CharDevice => FileType::CharDevice,
        Kind::BlockDevice => FileType::BlockDevice,
    }
}

impl<S: ObjectStore> Filesystem for FuseAdapter<S> {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // readdirplus gives `ls -l` every attribute with the listing: no lookup per entry.
        if let Err(missing) = config.add_capabilities(InitFlags::FUSE_DO_READDIRPLUS) {
            debug!(?missing, "kernel lacks readdirplus");
        }
        if let Err(nearest) = config.set_max_readahead(1 << 20) {
            let _ = config.set_max_readahead(nearest);
        }
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        metrics().fuse_op("lookup");
        let fs = self.fs.clone();
        let name = name.to_owned();
        self.runtime.spawn(async move {
            match fs.lookup(parent.0, &name).await {
                Ok(entry) => reply.entry(&fs.ttl(), &file_attr(&entry), Generation(0)),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        metrics().fuse_op("forget");
        self.fs.forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        metrics().fuse_op("getattr");
        let fs = self.fs.clone();
        self.runtime.spawn(async move {
            match fs.getattr(ino.0).await {
                Ok(entry) => reply.attr(&fs.ttl(), &file_attr(&entry)),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        metrics().fuse_op("setattr");
        let change = SetAttr {
            mode,
            uid,
            gid,
            size,
            mtime: mtime.map(time_or_now),
            atime: atime.map(time_or_now),
            ctime,
        };
        let fs = self.fs.clone();
        self.runtime.spawn(async move {
            // Nothing we keep (a ctime alone, or flags): nothing to do, and no error.
            if change.mode.is_none()
                && change.uid.is_none()
                && change.gid.is_none()
                && change.size.is_none()
                && change.mtime.is_none()
                && change.atime.is_none()
            {
                return match fs.getattr(ino.0).await {
                    Ok(entry) => reply.attr(&fs.ttl(), &file_attr(&entry)),
                    Err(e) => reply.error(errno(&e)),
                };
            }
            match fs.setattr(ino.0, change).await {
                Ok(entry) => reply.attr(&fs.ttl(), &file_attr(&entry)),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        metrics().fuse_op("mknod");
        let fs = self.fs.clone();
        let (name, caller) = (name.to_owned(), caller(req));
        self.runtime.spawn(async move {
            if mode & libc::S_IFMT != libc::S_IFREG && mode & libc::S_IFMT != 0 {
                // FIFOs, sockets and device nodes: an object with the mode in its metadata.
                return match fs.mknod_special(parent.0, &name, mode, rdev, caller).await {
                    Ok(entry) => reply.entry(&fs.ttl(), &file_attr(&entry), Generation(0)),
                    Err(e) => reply.error(errno(&e)),
                };
            }
            let created = fs.create(parent.0, &name, mode, caller).await;
            match created {
                Ok((entry, fh)) => {
                    let committed = fs.commit(fh).await;
                    fs.release(fh).await;
                    match committed {
                        Ok(()) => reply.entry(&fs.ttl(), &file_attr(&entry), Generation(0)),
                        Err(e) => reply.error(errno(&e)),
                    }
                }
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        metrics().fuse_op("mkdir");
        let fs = self.fs.clone();
        let (name, caller) = (name.to_owned(), caller(req));
        self.runtime.spawn(async move {
            match fs.mkdir(parent.0, &name, mode, caller).await {
                Ok(entry) => reply.entry(&fs.ttl(), &file_attr(&entry), Generation(0)),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        metrics().fuse_op("unlink");
        let fs = self.fs.clone();
        let name = name.to_owned();
        self.runtime.spawn(async move {
            match fs.unlink(parent.0, &name).await {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        metrics().fuse_op("rmdir");
        let fs = self.fs.clone();
        let name = name.to_owned();
        self.runtime.spawn(async move {
            match fs.rmdir(parent.0, &name).await {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        metrics().fuse_op("symlink");
        let fs = self.fs.clone();
        let (name, target, caller) = (
            link_name.to_owned(),
            target.as_os_str().to_owned(),
            caller(req),
        );
        self.runtime.spawn(async move {
            match fs.symlink(parent.0, &name, &target, caller).await {
                Ok(entry) => reply.entry(&fs.ttl(), &file_attr(&entry), Generation(0)),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        metrics().fuse_op("readlink");
        let fs = self.fs.clone();
        self.runtime.spawn(async move {
            match fs.readlink(ino.0).await {
                Ok(target) => reply.data(&target),
                Err(e) => reply.error(errno(&e)),
            }
        });
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
        metrics().fuse_op("rename");
        if flags.contains(RenameFlags::RENAME_EXCHANGE)
            || flags.contains(RenameFlags::RENAME_WHITEOUT)
        {
            return reply.error(refused(Errno::EINVAL));
        }
        let no_replace = flags.contains(RenameFlags::RENAME_NOREPLACE);
        let fs = self.fs.clone();
        let (name, newname) = (name.to_owned(), newname.to_owned());
        self.runtime.spawn(async move {
            match fs
                .rename(parent.0, &name, newparent.0, &newname, no_replace)
                .await
            {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn link(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _newparent: INodeNo,
        _newname: &OsStr,
        reply: ReplyEntry,
    ) {
        metrics().fuse_op("link");
        // An object has one key: S3 has no form for a second name of the same object. EPERM is
        // what link(2) returns on filesystems that do not support hard links.
        if self.fs.config().read_only {
            return reply.error(refused(Errno::EROFS));
        }
        reply.error(refused(Errno::EPERM));
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        metrics().fuse_op("open");
        let fs = self.fs.clone();
        let openers = self.openers.clone();
        let opener = process_of(req.pid());
        self.runtime.spawn(async move {
            match fs.open(ino.0, flags.0).await {
                // No FOPEN_KEEP_CACHE: the kernel drops cached pages at each open, so a reopen
                // after the TTL sees an object replaced by another client.
                Ok(fh) => {
                    openers.lock().unwrap().insert(fh, opener);
                    reply.opened(FileHandle(fh), FopenFlags::empty())
                }
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        metrics().fuse_op("read");
        // Staged data is on local disk: answered here, without a hop to the runtime.
        if let Some(data) = self.fs.read_local(fh.0, offset, size) {
            reply.data(&data);
            return;
        }
        let fs = self.fs.clone();
        self.runtime.spawn(async move {
            match fs.read(fh.0, offset, size).await {
                Ok(data) => reply.data(&data),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        metrics().fuse_op("write");
        let fs = self.fs.clone();
        let data = data.to_vec();
        self.runtime.spawn(async move {
            match fs.write(fh.0, offset, &data).await {
                Ok(n) => reply.written(n),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn flush(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        metrics().fuse_op("flush");
        // close(): returns only once S3 holds what was written, or with the error. A close by
        // another process sharing the descriptor while the opener still runs (a child after
        // fork, which closes inherited descriptors at exec) does not end the upload: the
        // opener goes on writing, and its own close uploads. Once the opener is gone, a close
        // by any process may be the last one, so it uploads and returns the result.
        let opener = self.openers.lock().unwrap().get(&fh.0).copied();
        if opener.is_some_and(|o| o != process_of(req.pid()) && process_alive(o)) {
            debug!(
                fh = fh.0,
                "close by another process while the opener runs: upload deferred"
            );
            return reply.ok();
        }
        // Only for a file with nothing written yet does it matter whether this close is of a
        // duplicate (see `Fs::flush`); only then is /proc read.
        let others =
            self.fs.is_empty_replacement(fh.0) && self.holds_another_descriptor(req.pid(), ino.0);
        let fs = self.fs.clone();
        self.runtime.spawn(async move {
            match fs.flush(fh.0, others).await {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        metrics().fuse_op("release");
        self.openers.lock().unwrap().remove(&fh.0);
        let fs = self.fs.clone();
        self.runtime.spawn(async move {
            fs.release(fh.0).await;
            reply.ok();
        });
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        metrics().fuse_op("fsync");
        let fs = self.fs.clone();
        self.runtime.spawn(async move {
            match fs.commit(fh.0).await {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        metrics().fuse_op("opendir");
        match self.fs.opendir(ino.0) {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        metrics().fuse_op("readdir");
        let fs = self.fs.clone();
        let batch = self.readdir_batch.clone();
        self.runtime.spawn(async move {
            let asked = batch.get();
            match fs.readdir(fh.0, offset, asked, false).await {
                Ok(items) => {
                    let (offered, mut sent, mut full) = (items.len(), 0, false);
                    for item in items {
                        full = reply.add(
                            INodeNo(item.entry.ino),
                            item.offset,
                            file_type(item.entry.attrs.kind),
                            &item.name,
                        );
                        if full {
                            break;
                        }
                        sent += 1;
                    }
                    batch.record(asked, offered, sent, full);
                    reply.ok();
                }
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn readdirplus(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        metrics().fuse_op("readdirplus");
        let fs = self.fs.clone();
        let batch = self.readdirplus_batch.clone();
        self.runtime.spawn(async move {
            let asked = batch.get();
            match fs.readdir(fh.0, offset, asked, true).await {
                Ok(items) => {
                    let ttl = fs.ttl();
                    let (offered, mut sent, mut full) = (items.len(), 0, false);
                    let mut items = items.into_iter();
                    for item in items.by_ref() {
                        // Unverified entries are not cached: their first use looks them up.
                        let ttl = if item.verified {
                            ttl
                        } else {
                            std::time::Duration::ZERO
                        };
                        full = reply.add(
                            INodeNo(item.entry.ino),
                            item.offset,
                            &item.name,
                            &ttl,
                            &file_attr(&item.entry),
                            Generation(0),
                        );
                        if full {
                            // Not sent: the kernel holds no reference for it.
                            if item.counted {
                                fs.forget(item.entry.ino, 1);
                            }
                            break;
                        }
                        sent += 1;
                    }
                    batch.record(asked, offered, sent, full);
                    for item in items.filter(|i| i.counted) {
                        fs.forget(item.entry.ino, 1);
                    }
                    reply.ok();
                }
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        metrics().fuse_op("releasedir");
        self.fs.releasedir(fh.0);
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        metrics().fuse_op("statfs");
        let s = self.fs.statfs();
        reply.statfs(
            s.blocks,
            s.blocks,
            s.blocks,
            s.files,
            s.files,
            s.block_size,
            s.name_max,
            s.block_size,
        );
    }

    fn access(&self, _req: &Request, _ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        metrics().fuse_op("access");
        // Permission bits are checked by the kernel (default_permissions); only writes are
        // refused here, and only on a read-only mount.
        if mask.contains(AccessFlags::W_OK) && self.fs.config().read_only {
            reply.error(refused(Errno::EROFS));
        } else {
            reply.ok();
        }
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        metrics().fuse_op("create");
        let fs = self.fs.clone();
        let (name, caller) = (name.to_owned(), caller(req));
        let openers = self.openers.clone();
        let opener = process_of(req.pid());
        self.runtime.spawn(async move {
            match fs
                .create_with_flags(parent.0, &name, mode, flags, caller)
                .await
            {
                Ok((entry, fh)) => {
                    if flags & libc::O_ACCMODE == libc::O_RDWR {
                        // Read back what it writes, anywhere: kept on local disk, not streamed.
                        fs.set_random_access(fh).await;
                    }
                    openers.lock().unwrap().insert(fh, opener);
                    reply.created(
                        &fs.ttl(),
                        &file_attr(&entry),
                        Generation(0),
                        FileHandle(fh),
                        FopenFlags::empty(),
                    )
                }
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn copy_file_range(
        &self,
        _req: &Request,
        _ino_in: INodeNo,
        fh_in: FileHandle,
        offset_in: u64,
        _ino_out: INodeNo,
        fh_out: FileHandle,
        offset_out: u64,
        len: u64,
        _flags: CopyFileRangeFlags,
        reply: ReplyWrite,
    ) {
        metrics().fuse_op("copy_file_range");
        let fs = self.fs.clone();
        // The reply counts bytes in 32 bits; the kernel asks for less than 2 GiB per call.
        let len = len.min(u32::MAX as u64);
        self.runtime.spawn(async move {
            match fs
                .copy_range(fh_in.0, offset_in, fh_out.0, offset_out, len)
                .await
            {
                Ok(n) => reply.written(n as u32),
                Err(e) => reply.error(errno(&e)),
            }
        });
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
        metrics().fuse_op("fallocate");
        if mode != 0 {
            // Punching holes and the like have no S3 form; glibc falls back by itself.
            return reply.error(refused(Errno::EOPNOTSUPP));
        }
        let fs = self.fs.clone();
        self.runtime.spawn(async move {
            match fs.allocate(ino.0, offset.saturating_add(length)).await {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        metrics().fuse_op("getxattr");
        if !self.fs.config().user_xattrs {
            // Off (no --xattr): ENOSYS, so the kernel stops asking (`ls -l` asks every file for
            // its ACLs, a round trip each).
            return reply.error(refused(Errno::ENOSYS));
        }
        let bytes = name.as_encoded_bytes();
        if !bytes.starts_with(b"user.") && !bytes.starts_with(b"bucketfs.") {
            // ACLs and security labels: none is kept; answered here, without a hop to the
            // runtime.
            return reply.error(refused(Errno::ENODATA));
        }
        let fs = self.fs.clone();
        let name = name.to_owned();
        self.runtime.spawn(async move {
            match fs.getxattr(ino.0, &name).await {
                Ok(value) => reply_xattr(reply, size, &value),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        metrics().fuse_op("listxattr");
        if !self.fs.config().user_xattrs {
            // ENOSYS: the kernel stops asking (ls -l lists attributes of every file).
            return reply.error(refused(Errno::ENOSYS));
        }
        let fs = self.fs.clone();
        self.runtime.spawn(async move {
            match fs.listxattr(ino.0).await {
                Ok(names) => {
                    let mut list = Vec::new();
                    for name in names {
                        list.extend_from_slice(name.as_bytes());
                        list.push(0);
                    }
                    reply_xattr(reply, size, &list)
                }
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        metrics().fuse_op("setxattr");
        if !self.fs.config().user_xattrs {
            return reply.error(refused(Errno::ENOSYS));
        }
        let fs = self.fs.clone();
        let (name, value) = (name.to_owned(), value.to_vec());
        self.runtime.spawn(async move {
            match fs.setxattr(ino.0, &name, &value, flags).await {
                Ok(_) => reply.ok(),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        metrics().fuse_op("removexattr");
        if !self.fs.config().user_xattrs {
            return reply.error(refused(Errno::ENOSYS));
        }
        let fs = self.fs.clone();
        let name = name.to_owned();
        self.runtime.spawn(async move {
            match fs.removexattr(ino.0, &name).await {
                Ok(_) => reply.ok(),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn destroy(&mut self) {
        // Unmount: whatever is still unsent goes to S3 before the process lets go.
        let fs = self.fs.clone();
        self.runtime.block_on(async {
            fs.commit_all().await;
            fs.delete_orphans().await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::LearnedBatch;

    #[test]
    fn the_readdir_batch_learns_what_the_kernel_buffer_holds() {
        let batch = LearnedBatch::new(32, 1024);
        batch.record(32, 32, 32, false);
        assert_eq!(batch.get(), 64, "everything fitted: ask for more");
        batch.record(64, 10, 10, false);
        assert_eq!(batch.get(), 64, "the end of the directory says nothing");
        batch.record(64, 64, 64, false);
        batch.record(128, 128, 128, false);
        batch.record(256, 256, 256, false);
        batch.record(512, 512, 488, true);
        assert_eq!(batch.get(), 488, "set to what fitted");
        batch.record(488, 488, 488, false);
        assert_eq!(batch.get(), 976);
        batch.record(976, 976, 976, false);
        assert_eq!(batch.get(), 1024, "capped");
        batch.record(1024, 1024, 2, true);
        assert_eq!(batch.get(), LearnedBatch::MIN, "never below the minimum");
    }
}
