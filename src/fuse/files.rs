//! File handles: open, create, read, write, close (flush and release), fsync, copy_file_range
//! and fallocate.

use fuser::{
    Errno, FileHandle, FopenFlags, Generation, INodeNo, OpenFlags, ReplyCreate, ReplyData,
    ReplyEmpty, ReplyOpen, ReplyWrite, Request,
};
use std::ffi::OsStr;
use tracing::debug;

use super::convert::{caller, file_attr, refused};
use super::processes::{holds_another_writer, process_alive, process_of};
use super::{ok_empty, FuseAdapter};
use crate::store::ObjectStore;

impl<S: ObjectStore> FuseAdapter<S> {
    pub(super) fn open_file(
        &self,
        req: &Request,
        ino: INodeNo,
        flags: OpenFlags,
        reply: ReplyOpen,
    ) {
        let openers = self.openers.clone();
        let opener = process_of(req.pid());
        self.spawn(
            reply,
            move |fs| async move { fs.open(ino.0, flags.0).await },
            // No FOPEN_KEEP_CACHE: the kernel drops cached pages at each open, so a reopen
            // after the TTL sees an object replaced by another client.
            move |reply, fh| {
                openers.lock().unwrap().insert(fh, opener);
                reply.opened(FileHandle(fh), FopenFlags::empty())
            },
        );
    }

    pub(super) fn create_file(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let (name, caller) = (name.to_owned(), caller(req));
        let openers = self.openers.clone();
        let opener = process_of(req.pid());
        let (ttl, owner) = (self.ttl(), self.owner());
        self.spawn(
            reply,
            move |fs| async move {
                let (entry, fh) = fs
                    .create_with_flags(parent.0, &name, mode, flags, caller)
                    .await?;
                if flags & libc::O_ACCMODE == libc::O_RDWR {
                    // Read back what it writes, anywhere: kept on local disk, not streamed.
                    fs.set_random_access(fh).await;
                }
                Ok((entry, fh))
            },
            move |reply, (entry, fh)| {
                openers.lock().unwrap().insert(fh, opener);
                reply.created(
                    &ttl,
                    &file_attr(&entry, owner),
                    Generation(0),
                    FileHandle(fh),
                    FopenFlags::empty(),
                )
            },
        );
    }

    pub(super) fn read_data(&self, fh: FileHandle, offset: u64, size: u32, reply: ReplyData) {
        // Staged data is on local disk: answered here, without a hop to the runtime.
        if let Some(data) = self.fs.read_local(fh.0, offset, size) {
            reply.data(&data);
            return;
        }
        let held = self.hold_request_bytes(size as usize);
        self.spawn(
            reply,
            move |fs| async move { fs.read(fh.0, offset, size).await },
            move |reply, data| {
                reply.data(&data);
                drop(held);
            },
        );
    }

    pub(super) fn write_data(&self, fh: FileHandle, offset: u64, data: &[u8], reply: ReplyWrite) {
        let held = self.hold_request_bytes(data.len());
        let data = data.to_vec();
        self.spawn(
            reply,
            move |fs| async move {
                let written = fs.write(fh.0, offset, &data).await;
                drop(held);
                written
            },
            |reply, n| reply.written(n),
        );
    }

    /// close(): returns only once S3 holds what was written, or with the error. A close by
    /// another process sharing the descriptor while the opener still runs (a child after fork,
    /// which closes inherited descriptors at exec) does not end the upload: the opener goes on
    /// writing, and its own close uploads. Once the opener is gone, a close by any process may
    /// be the last one, so it uploads and returns the result.
    pub(super) fn flush_file(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        reply: ReplyEmpty,
    ) {
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
        let others = self.fs.is_empty_replacement(fh.0)
            && self
                .mountpoint
                .get()
                .is_some_and(|mountpoint| holds_another_writer(req.pid(), ino.0, mountpoint));
        self.spawn(
            reply,
            move |fs| async move { fs.flush(fh.0, others).await },
            ok_empty,
        );
    }

    pub(super) fn release_file(&self, fh: FileHandle, reply: ReplyEmpty) {
        self.openers.lock().unwrap().remove(&fh.0);
        self.spawn(
            reply,
            move |fs| async move {
                fs.release(fh.0).await;
                Ok(())
            },
            ok_empty,
        );
    }

    pub(super) fn fsync_file(&self, fh: FileHandle, reply: ReplyEmpty) {
        self.spawn(
            reply,
            move |fs| async move { fs.commit(fh.0).await },
            ok_empty,
        );
    }

    pub(super) fn copy_range(
        &self,
        (fh_in, offset_in): (FileHandle, u64),
        (fh_out, offset_out): (FileHandle, u64),
        len: u64,
        reply: ReplyWrite,
    ) {
        // The reply counts bytes in 32 bits; the kernel asks for less than 2 GiB per call.
        let len = len.min(u32::MAX as u64);
        self.spawn(
            reply,
            move |fs| async move {
                fs.copy_range(fh_in.0, offset_in, fh_out.0, offset_out, len)
                    .await
            },
            |reply, n| reply.written(n as u32),
        );
    }

    pub(super) fn allocate(&self, ino: INodeNo, end: u64, mode: i32, reply: ReplyEmpty) {
        if mode != 0 {
            // Punching holes and the like have no S3 form; glibc falls back by itself.
            return reply.error(refused(Errno::EOPNOTSUPP));
        }
        self.spawn(
            reply,
            move |fs| async move { fs.allocate(ino.0, end).await },
            ok_empty,
        );
    }
}
