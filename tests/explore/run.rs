//! Runs the programs' steps on the filesystem, as the kernel would ask for them.

use std::cell::Cell;
use std::ffi::OsStr;
use std::sync::Arc;

use bucketfs::fs::error::{FsError, FsResult};
use bucketfs::fs::namespace::{Caller, SetAttr};
use bucketfs::fs::Fs;
use bucketfs::store::ObjectStore;

use crate::model::{parent, Outcome, Step};
use crate::store::ScheduledStore;

pub type TestFs = Fs<ScheduledStore>;

const ROOT_INO: u64 = 1;
const ROOT: Caller = Caller { uid: 0, gid: 0 };

thread_local! {
    /// Steps taken by the programs of this thread's schedule (one runtime, one thread): the
    /// explorer waits until this and the store stop moving.
    pub static STEPS: Cell<u64> = const { Cell::new(0) };
}

/// The program's open descriptor: its handle, and the references the kernel holds for it
/// (the file's, and its directories': a dentry keeps its parent's alive).
struct Open {
    fh: u64,
    ino: u64,
    refs: Vec<u64>,
}

/// Resolves `path` component by component; the kernel's references taken on the way are
/// returned (the last is the path's own) and must be forgotten.
async fn resolve(fs: &TestFs, path: &str, refs: &mut Vec<u64>) -> FsResult<u64> {
    let mut ino = ROOT_INO;
    for part in path.split('/').filter(|p| !p.is_empty()) {
        let entry = fs.lookup(ino, OsStr::new(part)).await?;
        refs.push(entry.ino);
        ino = entry.ino;
    }
    Ok(ino)
}

fn forget_all(fs: &TestFs, refs: Vec<u64>) {
    for ino in refs {
        fs.forget(ino, 1);
    }
}

fn name_of(path: &str) -> &OsStr {
    OsStr::new(path.rsplit('/').next().unwrap_or(path))
}

pub async fn run_program(fs: Arc<TestFs>, steps: Vec<Step>) -> Vec<Outcome> {
    let mut open: Option<Open> = None;
    let mut outcomes = Vec::new();
    for step in &steps {
        let outcome = if step.uses_fd() && open.is_none() {
            None
        } else {
            Some(
                run_step(&fs, step, &mut open)
                    .await
                    .map_err(|e| format!("{e:?}")),
            )
        };
        STEPS.with(|s| s.set(s.get() + 1));
        outcomes.push(outcome);
    }
    if let Some(left) = open.take() {
        // A program never leaves a descriptor open (its last step closes), but be safe.
        fs.release(left.fh).await;
        forget_all(&fs, left.refs);
    }
    outcomes
}

async fn run_step(fs: &TestFs, step: &Step, open: &mut Option<Open>) -> FsResult<()> {
    let mut refs = Vec::new();
    let result = run_step_with(fs, step, open, &mut refs).await;
    forget_all(fs, refs);
    result
}

async fn run_step_with(
    fs: &TestFs,
    step: &Step,
    open: &mut Option<Open>,
    refs: &mut Vec<u64>,
) -> FsResult<()> {
    match step {
        Step::ForeignPut(path, data) => {
            // Through the scheduled store, so it lands between any two of the mount's requests.
            let body = bytes::Bytes::from(data.clone());
            fs.store()
                .put(path, body, &bucketfs::store::PutOptions::default())
                .await?;
        }
        Step::Create(path) => {
            let dir = resolve(fs, parent(path), refs).await?;
            match fs.lookup(dir, name_of(path)).await {
                Ok(entry) => {
                    refs.push(entry.ino);
                    return Err(FsError::Exists);
                }
                Err(FsError::NotFound) => {}
                Err(e) => return Err(e),
            }
            let (entry, fh) = fs
                .create_with_flags(dir, name_of(path), 0o644, libc::O_EXCL, ROOT)
                .await?;
            let mut held = std::mem::take(refs);
            held.push(entry.ino);
            *open = Some(Open {
                fh,
                ino: entry.ino,
                refs: held,
            });
        }
        Step::OpenTrunc(path) | Step::OpenRead(path) | Step::OpenRw(path) => {
            let ino = resolve(fs, path, refs).await?;
            let flags = match step {
                Step::OpenTrunc(_) => libc::O_WRONLY | libc::O_TRUNC,
                Step::OpenRw(_) => libc::O_RDWR,
                _ => libc::O_RDONLY,
            };
            let fh = fs.open(ino, flags).await?;
            // The kernel keeps the references of the open file and its directories until it
            // is closed.
            *open = Some(Open {
                fh,
                ino,
                refs: std::mem::take(refs),
            });
        }
        Step::Write(data) => {
            let fd = open.as_ref().expect("checked");
            fs.write(fd.fh, 0, data).await?;
        }
        Step::CopyFrom(source) => {
            let fd = open.as_ref().expect("checked");
            let ino = resolve(fs, source, refs).await?;
            let reader = fs.open(ino, libc::O_RDONLY).await?;
            // As `cp` does: up to the end of the version the descriptor opened.
            let copied = fs.copy_range(reader, 0, fd.fh, 0, 1 << 30).await;
            fs.release(reader).await;
            copied?;
        }
        Step::Pwrite(offset, data) => {
            let fd = open.as_ref().expect("checked");
            fs.write(fd.fh, *offset, data).await?;
        }
        Step::Ftruncate(size) => {
            let fd = open.as_ref().expect("checked");
            let change = SetAttr {
                size: Some(*size),
                ..SetAttr::default()
            };
            fs.setattr(fd.ino, change).await?;
        }
        Step::Fchmod(mode) => {
            let fd = open.as_ref().expect("checked");
            let change = SetAttr {
                mode: Some(*mode),
                ..SetAttr::default()
            };
            fs.setattr(fd.ino, change).await?;
        }
        Step::Fsetxattr(name, value) => {
            let fd = open.as_ref().expect("checked");
            fs.setxattr(fd.ino, OsStr::new(name), value.as_bytes(), 0)
                .await?;
        }
        Step::Fstat => {
            let fd = open.as_ref().expect("checked");
            fs.getattr(fd.ino).await?;
        }
        Step::Fsync => {
            let fd = open.as_ref().expect("checked");
            fs.commit(fd.fh).await?;
        }
        Step::Close => {
            let fd = open.take().expect("checked");
            let flushed = fs.flush(fd.fh, false).await;
            fs.release(fd.fh).await;
            forget_all(fs, fd.refs);
            flushed?;
        }
        Step::Truncate(path, size) => {
            let ino = resolve(fs, path, refs).await?;
            let change = SetAttr {
                size: Some(*size),
                ..SetAttr::default()
            };
            fs.setattr(ino, change).await?;
        }
        Step::Unlink(path) => {
            let dir = resolve(fs, parent(path), refs).await?;
            fs.unlink(dir, name_of(path)).await?;
        }
        Step::Rename(from, to) => {
            let source_dir = resolve(fs, parent(from), refs).await?;
            let dest_dir = resolve(fs, parent(to), refs).await?;
            fs.rename(source_dir, name_of(from), dest_dir, name_of(to), false)
                .await?;
        }
        Step::Chmod(path, mode) => {
            let ino = resolve(fs, path, refs).await?;
            let change = SetAttr {
                mode: Some(*mode),
                ..SetAttr::default()
            };
            fs.setattr(ino, change).await?;
        }
        Step::SetXattr(path, name, value) => {
            let ino = resolve(fs, path, refs).await?;
            fs.setxattr(ino, OsStr::new(name), value.as_bytes(), 0)
                .await?;
        }
        Step::Mkdir(path) => {
            let dir = resolve(fs, parent(path), refs).await?;
            let entry = fs.mkdir(dir, name_of(path), 0o755, ROOT).await?;
            refs.push(entry.ino);
        }
        Step::Rmdir(path) => {
            let dir = resolve(fs, parent(path), refs).await?;
            fs.rmdir(dir, name_of(path)).await?;
        }
        Step::List(path) => {
            let ino = resolve(fs, path, refs).await?;
            list(fs, ino, refs).await?;
        }
        Step::Shutdown => {
            fs.begin_shutdown();
            let unstored = fs.commit_all().await;
            if !unstored.is_empty() {
                return Err(FsError::Io(format!("not stored: {unstored:?}")));
            }
        }
    }
    Ok(())
}

/// readdirplus of a whole directory: (name, inode, is a directory) of each entry. The
/// references readdirplus gives the kernel are pushed to `refs`.
pub async fn list(
    fs: &TestFs,
    ino: u64,
    refs: &mut Vec<u64>,
) -> FsResult<Vec<(String, u64, bool)>> {
    let fh = fs.opendir(ino)?;
    let mut entries = Vec::new();
    let mut offset = 0;
    let result = loop {
        let items = match fs.readdir(fh, offset, 3, true).await {
            Ok(items) => items,
            Err(e) => break Err(e),
        };
        if items.is_empty() {
            break Ok(());
        }
        for item in items {
            offset = item.offset;
            if item.counted {
                refs.push(item.entry.ino);
            }
            if item.name != "." && item.name != ".." {
                entries.push((item.name, item.entry.ino, item.entry.attrs.kind.is_dir()));
            }
        }
    };
    fs.releasedir(fh);
    result.map(|()| entries)
}

/// Reads a whole file through a new descriptor.
pub async fn read_file(fs: &TestFs, ino: u64) -> FsResult<Vec<u8>> {
    let fh = fs.open(ino, libc::O_RDONLY).await?;
    let mut out = Vec::new();
    let result = loop {
        match fs.read(fh, out.len() as u64, 4096).await {
            Ok(chunk) if chunk.is_empty() => break Ok(()),
            Ok(chunk) => out.extend_from_slice(&chunk),
            Err(e) => break Err(e),
        }
    };
    fs.release(fh).await;
    result.map(|()| out)
}
