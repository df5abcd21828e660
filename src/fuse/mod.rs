//! The FUSE adapter: decodes kernel requests, calls [`Fs`] on the tokio runtime, and replies.
//! No filesystem logic lives here; FUSE threads never wait on the network (only, past the
//! bound on request data in flight, for requests being served to finish: see `hold_request_bytes`).

mod batch;
mod convert;
mod dirs;
mod files;
mod processes;
mod request_bytes;
mod xattrs;

use std::collections::HashMap;
use std::ffi::OsStr;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use fuser::{
    AccessFlags, CopyFileRangeFlags, Errno, FileHandle, Filesystem, FopenFlags, Generation,
    INodeNo, InitFlags, KernelConfig, LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate,
    ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs,
    ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};
use tokio::runtime::Handle;
use tokio::sync::OwnedSemaphorePermit;
use tracing::debug;

use crate::fs::attrs::Owner;
use crate::fs::error::FsError;
use crate::fs::namespace::SetAttr;
use crate::fs::{Entry, Fs};
use crate::metrics::metrics;
use crate::store::ObjectStore;

use batch::LearnedBatch;
use convert::{caller, errno, file_attr, refused, time_or_now};
use request_bytes::RequestBytes;

pub struct FuseAdapter<S> {
    fs: Arc<Fs<S>>,
    runtime: Handle,
    /// Thread group (process) that opened each file handle: see `flush`.
    openers: Arc<Mutex<HashMap<u64, u32>>>,
    readdir_batch: Arc<LearnedBatch>,
    readdirplus_batch: Arc<LearnedBatch>,
    mountpoint: Arc<OnceLock<PathBuf>>,
    /// Read and write data of the requests being served, all together (see
    /// `FsConfig::request_bytes`).
    request_bytes: RequestBytes,
}

/// A FUSE reply that can carry an errno.
trait ErrorReply: Send + 'static {
    fn fail(self, errno: Errno);
}

macro_rules! error_replies {
    ($($reply:ty),*) => {
        $(impl ErrorReply for $reply {
            fn fail(self, errno: Errno) {
                self.error(errno)
            }
        })*
    };
}

error_replies!(
    ReplyEntry,
    ReplyAttr,
    ReplyEmpty,
    ReplyData,
    ReplyOpen,
    ReplyWrite,
    ReplyCreate,
    ReplyXattr,
    ReplyDirectory,
    ReplyDirectoryPlus
);

impl<S: ObjectStore> FuseAdapter<S> {
    pub fn new(fs: Arc<Fs<S>>, runtime: Handle) -> Self {
        let request_bytes = RequestBytes::new(fs.config().request_bytes());
        Self {
            request_bytes,
            fs,
            runtime,
            openers: Arc::new(Mutex::new(HashMap::new())),
            readdir_batch: Arc::new(LearnedBatch::new(128, 4096)),
            readdirplus_batch: Arc::new(LearnedBatch::new(32, 1024)),
            mountpoint: Default::default(),
        }
    }

    /// The directory the kernel mounted us on (set once the mount is live).
    pub fn set_mountpoint(&self, path: PathBuf) {
        let _ = self.mountpoint.set(path);
    }

    /// Runs `work` on the runtime, so the FUSE thread never waits on the network, and answers
    /// with `answer` when it succeeds, with the errno of its error when it fails.
    fn spawn<R, T, Fut>(
        &self,
        reply: R,
        work: impl FnOnce(Arc<Fs<S>>) -> Fut + Send + 'static,
        answer: impl FnOnce(R, T) + Send + 'static,
    ) where
        R: ErrorReply,
        Fut: Future<Output = Result<T, FsError>> + Send,
    {
        let fs = self.fs.clone();
        self.runtime.spawn(async move {
            match work(fs).await {
                Ok(value) => answer(reply, value),
                Err(e) => reply.fail(errno(&e)),
            }
        });
    }

    /// `bytes` of read or write data counted in flight until the permit drops with the reply
    /// (see `RequestBytes::hold`).
    fn hold_request_bytes(&self, bytes: usize) -> OwnedSemaphorePermit {
        self.request_bytes.hold(bytes, &self.runtime)
    }

    fn ttl(&self) -> Duration {
        self.fs.ttl()
    }

    /// The owner every entry shows instead of its own (`--uid`, `--gid`), if any.
    fn owner(&self) -> Owner {
        self.fs.config().defaults.forced_owner
    }

    /// An entry reply for a lookup or a new name.
    fn entry_answer(&self) -> impl FnOnce(ReplyEntry, Entry) + Send + 'static {
        let (ttl, owner) = (self.ttl(), self.owner());
        move |reply, entry| reply.entry(&ttl, &file_attr(&entry, owner), Generation(0))
    }

    /// An attribute reply for getattr and setattr.
    fn attr_answer(&self) -> impl FnOnce(ReplyAttr, Entry) + Send + 'static {
        let (ttl, owner) = (self.ttl(), self.owner());
        move |reply, entry| reply.attr(&ttl, &file_attr(&entry, owner))
    }
}

fn ok_empty(reply: ReplyEmpty, (): ()) {
    reply.ok()
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
        let name = name.to_owned();
        self.spawn(
            reply,
            move |fs| async move { fs.lookup(parent.0, &name).await },
            self.entry_answer(),
        );
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        metrics().fuse_op("forget");
        self.fs.forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        metrics().fuse_op("getattr");
        self.spawn(
            reply,
            move |fs| async move { fs.getattr(ino.0).await },
            self.attr_answer(),
        );
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
        // Nothing we keep (a ctime alone, or flags): nothing to do, and no error.
        let keeps_nothing = change.mode.is_none()
            && change.uid.is_none()
            && change.gid.is_none()
            && change.size.is_none()
            && change.mtime.is_none()
            && change.atime.is_none();
        self.spawn(
            reply,
            move |fs| async move {
                if keeps_nothing {
                    fs.getattr(ino.0).await
                } else {
                    fs.setattr(ino.0, change).await
                }
            },
            self.attr_answer(),
        );
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
        let (name, caller) = (name.to_owned(), caller(req));
        self.spawn(
            reply,
            move |fs| async move {
                if mode & libc::S_IFMT != libc::S_IFREG && mode & libc::S_IFMT != 0 {
                    // FIFOs, sockets and device nodes: an object with the mode in its metadata.
                    return fs.mknod_special(parent.0, &name, mode, rdev, caller).await;
                }
                let (entry, fh) = fs.create(parent.0, &name, mode, caller).await?;
                let committed = fs.commit(fh).await;
                fs.release(fh).await;
                committed.map(|()| entry)
            },
            self.entry_answer(),
        );
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
        let (name, caller) = (name.to_owned(), caller(req));
        self.spawn(
            reply,
            move |fs| async move { fs.mkdir(parent.0, &name, mode, caller).await },
            self.entry_answer(),
        );
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        metrics().fuse_op("unlink");
        let name = name.to_owned();
        self.spawn(
            reply,
            move |fs| async move { fs.unlink(parent.0, &name).await },
            ok_empty,
        );
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        metrics().fuse_op("rmdir");
        let name = name.to_owned();
        self.spawn(
            reply,
            move |fs| async move { fs.rmdir(parent.0, &name).await },
            ok_empty,
        );
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
        let (name, target, caller) = (
            link_name.to_owned(),
            target.as_os_str().to_owned(),
            caller(req),
        );
        self.spawn(
            reply,
            move |fs| async move { fs.symlink(parent.0, &name, &target, caller).await },
            self.entry_answer(),
        );
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        metrics().fuse_op("readlink");
        self.spawn(
            reply,
            move |fs| async move { fs.readlink(ino.0).await },
            |reply, target| reply.data(&target),
        );
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
        let (name, newname) = (name.to_owned(), newname.to_owned());
        self.spawn(
            reply,
            move |fs| async move {
                fs.rename(parent.0, &name, newparent.0, &newname, no_replace)
                    .await
            },
            ok_empty,
        );
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
        self.open_file(req, ino, flags, reply);
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
        self.read_data(fh, offset, size, reply);
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
        self.write_data(fh, offset, data, reply);
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
        self.flush_file(req, ino, fh, reply);
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
        self.release_file(fh, reply);
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
        self.fsync_file(fh, reply);
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
        reply: ReplyDirectory,
    ) {
        metrics().fuse_op("readdir");
        self.list_names(fh, offset, reply);
    }

    fn readdirplus(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        reply: ReplyDirectoryPlus,
    ) {
        metrics().fuse_op("readdirplus");
        self.list_entries(fh, offset, reply);
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
        self.create_file(req, parent, name, mode, flags, reply);
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
        self.copy_range((fh_in, offset_in), (fh_out, offset_out), len, reply);
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
        self.allocate(ino, offset.saturating_add(length), mode, reply);
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        metrics().fuse_op("getxattr");
        self.get_xattr(ino, name, size, reply);
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        metrics().fuse_op("listxattr");
        self.list_xattrs(ino, size, reply);
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
        self.set_xattr(ino, name, value, flags, reply);
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        metrics().fuse_op("removexattr");
        self.remove_xattr(ino, name, reply);
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
