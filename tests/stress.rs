//! Concurrent stress test of the filesystem layer: several workers run random operations at
//! once (small and multipart writes, writes anywhere (pwrite, after a commit, into a file
//! opened without truncation), handles held open across other operations, renames and unlinks
//! of open files, truncates to any size, fsyncs, closes, listings, lookups and forgets) against
//! the in-memory store with injected faults and delays. Each worker owns its file names, so
//! it can keep an exact model of what the store must hold; the directories, the inode table,
//! the memory budget and the store are shared, which is where concurrency bugs live.
//!
//! Checked: every fsync or close that returned 0 left exactly its bytes under the file's final
//! name (and an old object survives every failed or abandoned overwrite); a second open for
//! writing of a file being written is EBUSY; no operation hangs (each runs under a timeout);
//! no multipart upload stays open; lookup counts balance (the inode table empties).
//!
//! Fixed seed and size in CI; `BUCKETFS_STRESS_SEED` and `BUCKETFS_STRESS_OPS` (per worker)
//! run other or longer ones.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bucketfs::fs::namespace::{Caller, SetAttr};
use bucketfs::fs::{Fs, FsConfig};
use bucketfs::store::faulty::{FaultyStore, Op};
use bucketfs::store::memory::MemoryStore;
use bucketfs::testdata::SeededRng;

type Store = FaultyStore<MemoryStore>;
type TestFs = Fs<Store>;

const WORKERS: usize = 6;
const ROOT_INO: u64 = 1;
const OP_TIMEOUT: Duration = Duration::from_secs(30);
const PART: u64 = 5 << 20;
const ME: Caller = Caller { uid: 0, gid: 0 };

/// What the store must hold under one key.
#[derive(Debug, Clone, PartialEq)]
enum Expect {
    Absent,
    Bytes(Vec<u8>),
    /// An operation failed midway: either outcome is allowed until the name is written again.
    Unknown,
}

struct Handle {
    fh: u64,
    ino: u64,
    /// The name the handle's content goes to; `None` once unlinked or renamed over.
    bound: Option<String>,
    content: Vec<u8>,
    /// Nothing new since the last successful commit.
    clean: bool,
    failed: bool,
    /// Its outcome is unknowable (a rename involving it failed midway).
    tainted: bool,
    /// The name its multipart upload was started under (from its first full part).
    upload_key: Option<String>,
    /// A newer open took the file over after this handle's content was committed.
    superseded: bool,
    /// Its writes change the file in place (they may land anywhere).
    patching: bool,
    /// ... starting from an object in the store (a rename copies that object along).
    based: bool,
}

struct Worker {
    id: usize,
    fs: Arc<TestFs>,
    store: Arc<Store>,
    dir: u64,
    rng: SeededRng,
    expect: HashMap<String, Expect>,
    handles: Vec<Handle>,
    ops: Arc<AtomicUsize>,
    /// Commits acknowledged (fsync or close returned 0) and checked against the store.
    acks: Arc<AtomicUsize>,
    /// The worker's last operations, printed with any violation.
    trace: Vec<String>,
    /// Names unlinked while open: their object may still wait for deletion, which a create
    /// under the name does first (and an injected fault fails).
    orphans: std::collections::HashSet<String>,
}

/// Fails the test with the worker's recent operations when `cond` does not hold.
macro_rules! expect {
    ($worker:expr, $cond:expr, $($msg:tt)+) => {
        if !$cond {
            let recent = $worker.trace.iter().rev().take(60).rev().cloned().collect::<Vec<_>>();
            panic!("{}\nworker {} recent operations:\n  {}", format!($($msg)+), $worker.id, recent.join("\n  "));
        }
    };
}

/// Where two contents differ (for a failure message): the byte ranges, coarsely.
fn differences(expected: &[u8], held: &[u8]) -> String {
    let mut ranges: Vec<(usize, usize)> = Vec::new();
    for i in 0..expected.len().min(held.len()) {
        if expected[i] != held[i] {
            match ranges.last_mut() {
                Some((_, end)) if *end + 4096 >= i => *end = i + 1,
                _ => ranges.push((i, i + 1)),
            }
        }
    }
    let shown: Vec<String> = ranges
        .iter()
        .take(8)
        .map(|(start, end)| format!("{start}..{end}"))
        .collect();
    format!(
        "; differing at {} (of {} runs; zeros held there: {})",
        shown.join(", "),
        ranges.len(),
        ranges
            .first()
            .is_some_and(|(s, e)| held[*s..*e].iter().all(|&b| b == 0))
    )
}

/// Runs one filesystem call under the timeout: a hang fails the test with the call's name.
async fn timed<T>(what: &str, fut: impl std::future::Future<Output = T>) -> T {
    match tokio::time::timeout(OP_TIMEOUT, fut).await {
        Ok(v) => v,
        Err(_) => panic!("{what} did not finish within {OP_TIMEOUT:?}: hung"),
    }
}

impl Worker {
    fn next(&mut self) -> u64 {
        self.rng.next_u64()
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// One of this worker's names: `(key, parent inode, name in the parent)`.
    fn pick_name(&mut self) -> (String, u64, String) {
        let i = self.below(4);
        let name = format!("w{}-{i}", self.id);
        if i < 2 {
            (name.clone(), ROOT_INO, name)
        } else {
            (format!("d/{name}"), self.dir, name)
        }
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        let seed = self.next() as u8;
        (0..len)
            .map(|i| (i as u8).wrapping_mul(7).wrapping_add(seed))
            .collect()
    }

    fn live_writer_on(&self, key: &str) -> Option<usize> {
        self.handles
            .iter()
            .position(|h| h.bound.as_deref() == Some(key) && !h.failed && !h.superseded)
    }

    /// A renamed file's upload still completes under `key` at its commit: no new writer.
    fn displaced_to(&self, key: &str) -> bool {
        self.handles.iter().any(|h| {
            !h.failed
                && !h.superseded
                && h.bound.is_some()
                && h.upload_key.as_deref() == Some(key)
                && h.bound.as_deref() != Some(key)
        })
    }

    /// Every traced operation on `key` or on a handle opened under it (for a failure message:
    /// the last operations may not reach back to where a name's object came from).
    fn history_of(&self, key: &str) -> String {
        let mut handles = std::collections::HashSet::new();
        let mut lines = Vec::new();
        for line in &self.trace {
            let names_key = line
                .split(|c: char| " :\"(),".contains(c))
                .any(|word| word == key);
            if names_key {
                // "create KEY: Ok((ino, fh))": the handle's later operations belong here too.
                let fh = line
                    .split("Ok((")
                    .nth(1)
                    .and_then(|rest| rest.split(')').next())
                    .and_then(|pair| pair.split(", ").nth(1));
                if let Some(fh) = fh {
                    handles.insert(format!("fh {fh} "));
                }
            }
            if names_key || handles.iter().any(|fh| line.contains(fh.as_str())) {
                lines.push(line.as_str());
            }
        }
        lines.join("\n  ")
    }

    /// True when the name certainly exists (in the store or as a file being written).
    fn surely_exists(&self, key: &str) -> Option<bool> {
        if self.live_writer_on(key).is_some() {
            return Some(true);
        }
        match self.expect.get(key).unwrap_or(&Expect::Absent) {
            Expect::Absent => Some(false),
            Expect::Bytes(_) => Some(true),
            Expect::Unknown => None,
        }
    }

    fn mark_unknown(&mut self, key: &str) {
        self.expect.insert(key.to_string(), Expect::Unknown);
        for h in &mut self.handles {
            if h.bound.as_deref() == Some(key) {
                h.tainted = true;
            }
        }
    }

    /// A handle's commit succeeded: the store holds its content under its name.
    fn committed(&mut self, index: usize) {
        let h = &mut self.handles[index];
        h.clean = true;
        h.upload_key = None;
        // From now on its writes change the committed object in place (an empty one is
        // simply streamed again).
        h.patching = !h.content.is_empty();
        h.based = h.patching;
        let Some(key) = h.bound.clone() else { return };
        if h.tainted {
            self.expect.insert(key, Expect::Unknown);
            return;
        }
        let content = h.content.clone();
        self.acks.fetch_add(1, Ordering::Relaxed);
        // The acknowledgement means it is in the store now, exactly.
        let held = self.store.inner().get(&key);
        expect!(
            self,
            held.as_deref() == Some(&content[..]),
            "{key}: acknowledged {} bytes, the store holds {:?} bytes{}; its history:\n  {}",
            content.len(),
            held.as_ref().map(|b| b.len()),
            differences(&content, held.as_deref().unwrap_or_default()),
            self.history_of(&key)
        );
        self.expect.insert(key, Expect::Bytes(content));
    }

    fn failed(&mut self, index: usize) {
        let h = &mut self.handles[index];
        h.failed = true;
        let displaced = h.upload_key.take().filter(|k| h.bound.as_ref() != Some(k));
        if let Some(key) = displaced {
            // A renamed file's upload completes under its old key before it is moved; when
            // both the move and the clean-up fail, the content stays there (logged).
            self.expect.insert(key, Expect::Unknown);
        }
    }

    async fn step(&mut self) {
        self.ops.fetch_add(1, Ordering::Relaxed);
        let roll = self.below(100);
        if (self.handles.is_empty() || roll < 15) && self.handles.len() < 3 {
            return self.open_for_writing().await;
        }
        let index = self.below(self.handles.len().max(1) as u64) as usize;
        match roll {
            0..=44 => self.write(index).await,
            45..=54 => self.fsync(index).await,
            55..=64 => self.close(index).await,
            65..=72 => self.rename().await,
            73..=78 => self.unlink().await,
            79..=83 => self.truncate(index).await,
            84..=91 => self.list().await,
            _ => self.lookup_and_forget().await,
        }
    }

    /// create (new or replacing), or open + truncate of an existing file (as the kernel does
    /// for O_TRUNC).
    async fn open_for_writing(&mut self) {
        let (key, parent, name) = self.pick_name();
        let busy = self.live_writer_on(&key).is_some() || self.displaced_to(&key);
        // As the kernel does: a lookup first; open + truncate when the name exists (O_TRUNC
        // arrives as a SETATTR), create when it does not.
        let looked_up = timed("lookup", self.fs.lookup(parent, OsStr::new(&name))).await;
        let existing = match &looked_up {
            Ok(_) => true,
            Err(e) if e.errno() == libc::ENOENT => false,
            Err(_) => return, // an injected fault
        };
        // Now and then an existing file of known content is opened to be changed in place.
        let in_place = self.below(3) == 0 && !busy;
        let keep = match self.expect.get(&key) {
            Some(Expect::Bytes(bytes)) if in_place => Some(bytes.clone()),
            _ => None,
        };
        let opened = if let Ok(entry) = &looked_up {
            let opened = timed("open", self.fs.open(entry.ino, libc::O_WRONLY)).await;
            match opened {
                Ok(fh) if keep.is_some() => Ok((entry.ino, fh)),
                Ok(fh) => {
                    let truncate = SetAttr {
                        size: Some(0),
                        ..SetAttr::default()
                    };
                    timed("truncate", self.fs.setattr(entry.ino, truncate))
                        .await
                        .expect("a truncate recorded in the handle cannot fail");
                    Ok((entry.ino, fh))
                }
                Err(e) => {
                    self.fs.forget(entry.ino, 1);
                    Err(e)
                }
            }
        } else {
            timed(
                "create",
                self.fs.create(parent, OsStr::new(&name), 0o644, ME),
            )
            .await
            .map(|(entry, fh)| (entry.ino, fh))
        };
        let keep = keep.filter(|_| existing && opened.is_ok());
        // What the filesystem and the store hold as the open begins (for a failure's trace).
        let sizes = match (&looked_up, &opened) {
            (Ok(entry), Ok((ino, _))) => format!(
                " [lookup size {}, open size {:?}, store size {:?}]",
                entry.attrs.size,
                self.fs.getattr(*ino).await.map(|e| e.attrs.size),
                self.store.inner().get(&key).map(|b| b.len())
            ),
            _ => String::new(),
        };
        self.trace.push(format!(
            "{} {key}: {:?}{sizes}",
            match (existing, keep.is_some()) {
                (true, true) => "open (in place)",
                (true, false) => "open+truncate",
                _ => "create",
            },
            opened
                .as_ref()
                .map(|(ino, fh)| (*ino, *fh))
                .map_err(|e| e.errno())
        ));
        match opened {
            Ok((ino, fh)) => {
                expect!(self, !busy, "{key}: a second writer was let in");
                self.orphans.remove(&key);
                let based = keep.as_ref().is_some_and(|k| !k.is_empty());
                self.handles.push(Handle {
                    fh,
                    ino,
                    bound: Some(key),
                    clean: keep.is_some(),
                    content: keep.unwrap_or_default(),
                    failed: false,
                    tainted: false,
                    upload_key: None,
                    superseded: false,
                    patching: based,
                    based,
                });
            }
            Err(e) if busy => expect!(self, e.errno() == libc::EBUSY, "{key}: {e}"),
            // Opening a stored file for writing reads its metadata (kept by the new content):
            // an injected fault there fails the open, and nothing changes.
            Err(e) if existing && e.errno() == libc::EIO => {}
            Err(e) if self.orphans.contains(&key) && e.errno() == libc::EIO => {}
            // A create of a name the mount knows nothing about asks S3 whether it exists (so
            // an object is never taken for a new file): an injected fault fails it, changing
            // nothing.
            Err(e) if looked_up.is_err() && e.errno() == libc::EIO => {}
            Err(e) => expect!(self, false, "{key}: open for writing failed: {e}"),
        }
    }

    async fn write(&mut self, index: usize) {
        if self.handles.is_empty() {
            return;
        }
        let len = if self.below(8) == 0 {
            (PART + self.below(PART)) as usize
        } else {
            1 + self.below(64 << 10) as usize
        };
        let size = self.handles[index].content.len();
        // Mostly at the end; now and then anywhere, or past the end (a hole of zeros).
        let offset = match self.below(8) {
            0 => self.below(size as u64 + 1) as usize,
            1 => size + self.below(64 << 10) as usize,
            _ => size,
        };
        if offset + len > 24 << 20 {
            return;
        }
        let data = self.bytes(len);
        let (fh, failed, unnamed, superseded) = {
            let h = &self.handles[index];
            (h.fh, h.failed, h.bound.is_none(), h.superseded)
        };
        let mut result = Ok(());
        let mut refused = false;
        for (i, chunk) in data.chunks(256 << 10).enumerate() {
            let at = offset + i * (256 << 10);
            let h = &self.handles[index];
            // A stream that has sent parts cannot change them: only the part being filled
            // and what comes after it.
            let sent = (h.content.len() as u64 / PART * PART) as usize;
            let streaming = !h.patching && (!h.clean || h.content.is_empty());
            let must_refuse = streaming && at < sent && !unnamed && !failed && !superseded;
            match timed("write", self.fs.write(fh, at as u64, chunk)).await {
                Ok(n) => {
                    expect!(
                        self,
                        !must_refuse,
                        "a write behind a streamed part was accepted"
                    );
                    assert_eq!(n as usize, chunk.len());
                    let h = &mut self.handles[index];
                    let streamed_part = h.content.len() as u64 >= PART;
                    let in_place = h.clean && !h.content.is_empty();
                    if in_place || (at != h.content.len() && (!streamed_part || h.patching)) {
                        h.patching = true;
                    }
                    if h.content.len() < at + chunk.len() {
                        h.content.resize(at + chunk.len(), 0);
                    }
                    h.content[at..at + chunk.len()].copy_from_slice(chunk);
                    h.clean = false;
                    if !h.patching
                        && h.content.len() as u64 >= PART
                        && h.upload_key.is_none()
                        && !unnamed
                    {
                        h.upload_key = h.bound.clone();
                    }
                }
                Err(e) if must_refuse => {
                    expect!(self, e.errno() == libc::EOPNOTSUPP, "{e}");
                    refused = true;
                    break;
                }
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        self.trace.push(format!(
            "write fh {fh} {len} bytes at {offset}: {:?}{} (now {})",
            result.as_ref().map_err(|e| e.errno()),
            if refused { " refused" } else { "" },
            self.handles[index].content.len()
        ));
        match result {
            Ok(()) if superseded => expect!(
                self,
                false,
                "a write through a superseded handle was accepted"
            ),
            Err(e) if superseded => expect!(self, e.errno() == libc::EBUSY, "{e}"),
            // A file without a name takes any write.
            Ok(()) if unnamed && !failed => {}
            Err(e) if unnamed && !failed => {
                expect!(self, false, "a write to an unlinked file failed: {e}")
            }
            Ok(()) => expect!(self, !failed, "a write after a failure was accepted"),
            Err(_) => self.failed(index),
        }
    }

    async fn fsync(&mut self, index: usize) {
        if self.handles.is_empty() {
            return;
        }
        let (fh, failed) = (self.handles[index].fh, self.handles[index].failed);
        let result = timed("fsync", self.fs.commit(fh)).await;
        self.trace.push(format!(
            "fsync fh {fh} ({:?}): {:?}",
            self.handles[index].bound,
            result.as_ref().map_err(|e| e.errno())
        ));
        match result {
            Ok(()) => {
                expect!(self, !failed, "fsync of a failed file returned 0");
                if !self.handles[index].clean && !self.handles[index].superseded {
                    self.committed(index);
                }
            }
            Err(_) => self.failed(index),
        }
    }

    async fn close(&mut self, index: usize) {
        if self.handles.is_empty() {
            return;
        }
        let (fh, failed) = (self.handles[index].fh, self.handles[index].failed);
        // Now and then as the close of a duplicate (another descriptor still open).
        let duplicate = self.below(4) == 0;
        let flushed = timed("flush", self.fs.flush(fh, duplicate)).await;
        self.trace.push(format!(
            "close fh {fh} ({:?}, duplicate {duplicate}): {:?}",
            self.handles[index].bound,
            flushed.as_ref().map_err(|e| e.errno())
        ));
        let empty_deferred = {
            let h = &self.handles[index];
            duplicate && h.content.is_empty() && !h.clean
        };
        match flushed {
            Ok(()) => {
                expect!(self, !failed, "close of a failed file returned 0");
                if empty_deferred {
                    // Committed at release, whose outcome only reaches the log.
                    if let Some(key) = self.handles[index].bound.clone() {
                        self.mark_unknown(&key);
                    }
                } else if !self.handles[index].clean && !self.handles[index].superseded {
                    self.committed(index);
                }
            }
            Err(_) => self.failed(index),
        }
        let h = self.handles.remove(index);
        timed("release", self.fs.release(h.fh)).await;
        self.fs.forget(h.ino, 1);
    }

    async fn rename(&mut self) {
        let (from, from_parent, from_name) = self.pick_name();
        let (to, to_parent, to_name) = self.pick_name();
        let exists = self.surely_exists(&from);
        let result = timed(
            "rename",
            self.fs.rename(
                from_parent,
                OsStr::new(&from_name),
                to_parent,
                OsStr::new(&to_name),
                false,
            ),
        )
        .await;
        self.trace.push(format!(
            "rename {from} -> {to}: {:?}",
            result.as_ref().map_err(|e| e.errno())
        ));
        if from == to {
            return;
        }
        match result {
            Ok(()) => {
                expect!(
                    self,
                    exists != Some(false),
                    "rename of {from}, which does not exist"
                );
                let source = self.handles.iter().position(|h| {
                    h.bound.as_deref() == Some(from.as_str()) && !h.failed && !h.superseded
                });
                for h in &mut self.handles {
                    if h.bound.as_deref() == Some(to.as_str()) && !h.failed {
                        h.bound = None;
                        h.upload_key = None;
                    }
                }
                let old = self.expect.get(&from).cloned().unwrap_or(Expect::Absent);
                match source {
                    Some(i) if !self.handles[i].clean && !self.handles[i].based => {
                        // Being written: the new content goes to `to` at its commit; the old
                        // name's object goes now; `to` keeps its object until then.
                        self.handles[i].bound = Some(to.clone());
                        self.expect.insert(from.clone(), Expect::Absent);
                    }
                    other => {
                        if let Some(i) = other {
                            self.handles[i].bound = Some(to.clone());
                        }
                        self.expect.insert(to.clone(), old);
                        self.expect.insert(from.clone(), Expect::Absent);
                    }
                }
                // A failed writer's name went with its failure; it follows no rename.
                for h in &mut self.handles {
                    if h.failed && h.bound.as_deref() == Some(from.as_str()) {
                        h.bound = None;
                    }
                }
            }
            Err(e) if e.errno() == libc::ENOENT => {
                let states: Vec<_> = self
                    .handles
                    .iter()
                    .map(|h| (&h.bound, h.content.len(), h.clean, h.failed, h.tainted))
                    .collect();
                expect!(
                    self,
                    exists != Some(true),
                    "{from} exists but rename says ENOENT; expect {:?}; handles {states:?}",
                    self.expect
                        .get(&from)
                        .map(|e| matches!(e, Expect::Bytes(_)))
                );
            }
            Err(_) => {
                self.mark_unknown(&from);
                self.mark_unknown(&to);
            }
        }
    }

    async fn unlink(&mut self) {
        let (key, parent, name) = self.pick_name();
        let exists = self.surely_exists(&key);
        let result = timed("unlink", self.fs.unlink(parent, OsStr::new(&name))).await;
        self.trace.push(format!(
            "unlink {key}: {:?}",
            result.as_ref().map_err(|e| e.errno())
        ));
        match result {
            Ok(()) => {
                expect!(
                    self,
                    exists != Some(false),
                    "unlink of {key}, which does not exist"
                );
                let mut open = false;
                for h in &mut self.handles {
                    if h.bound.as_deref() == Some(key.as_str()) {
                        h.bound = None;
                        h.upload_key = None;
                        open = true;
                    }
                }
                if open {
                    self.orphans.insert(key.clone());
                }
                self.expect.insert(key, Expect::Absent);
            }
            Err(e) if e.errno() == libc::ENOENT => {
                expect!(
                    self,
                    exists != Some(true),
                    "{key} exists but unlink says ENOENT"
                )
            }
            Err(_) => self.mark_unknown(&key),
        }
    }

    async fn truncate(&mut self, index: usize) {
        if self.handles.is_empty() || self.handles[index].failed || self.handles[index].superseded {
            return; // without its writer the truncate would go to S3 at once
        }
        let (ino, fh, len) = {
            let h = &self.handles[index];
            (h.ino, h.fh, h.content.len())
        };
        let size = match self.below(3) {
            0 => 0,
            _ => self.below(len as u64 + (64 << 10)) as usize,
        };
        let h = &self.handles[index];
        let streamed_part = !h.patching
            && (!h.clean || h.content.is_empty())
            && h.content.len() as u64 >= PART
            && h.bound.is_some();
        // A stream that has sent parts grows by streaming zeros, and shrinks only within the
        // part being filled.
        let sent = (len as u64 / PART * PART) as usize;
        let must_refuse = size != 0 && size < sent && streamed_part;
        let change = SetAttr {
            size: Some(size as u64),
            ..SetAttr::default()
        };
        let result = timed("truncate", self.fs.setattr(ino, change)).await;
        self.trace.push(format!(
            "truncate fh {fh} to {size} (was {len}): {:?}",
            result.as_ref().map(|_| ()).map_err(|e| e.errno())
        ));
        match result {
            Ok(_) => expect!(
                self,
                !must_refuse,
                "a shrink behind a streamed part was accepted"
            ),
            Err(e) if must_refuse => {
                expect!(self, e.errno() == libc::EOPNOTSUPP, "{e}");
                return;
            }
            Err(e) if size == 0 => {
                expect!(self, false, "a truncate to 0 of an open file failed: {e}")
            }
            // Growing a stream sends parts of zeros, which may fail.
            Err(_) => return self.failed(index),
        }
        let h = &mut self.handles[index];
        if size == 0 {
            h.patching = false;
            h.based = false;
            h.upload_key = None;
        } else if size != len && !streamed_part {
            h.patching = true;
        }
        h.content.resize(size, 0);
        if !h.superseded {
            h.clean = false;
        }
    }

    async fn list(&mut self) {
        let dir = if self.below(2) == 0 {
            ROOT_INO
        } else {
            self.dir
        };
        let plus = self.below(2) == 0;
        let fh = self.fs.opendir(dir).expect("opendir");
        let mut offset = 0;
        loop {
            match timed("readdir", self.fs.readdir(fh, offset, 7, plus)).await {
                Ok(items) if items.is_empty() => break,
                Ok(items) => {
                    for item in items {
                        offset = item.offset;
                        if item.counted {
                            self.fs.forget(item.entry.ino, 1);
                        }
                    }
                }
                Err(_) => break, // injected listing faults
            }
        }
        self.fs.releasedir(fh);
    }

    async fn lookup_and_forget(&mut self) {
        let (_, parent, name) = self.pick_name();
        if let Ok(entry) = timed("lookup", self.fs.lookup(parent, OsStr::new(&name))).await {
            self.fs.forget(entry.ino, 1);
        }
    }

    /// Ends the run: every handle is fsynced and closed.
    async fn finish(&mut self) {
        while !self.handles.is_empty() {
            self.fsync(0).await;
            self.close(0).await;
        }
    }
}

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[test]
fn concurrent_random_operations_keep_every_promise() {
    let seed = env_or("BUCKETFS_STRESS_SEED", 20261201);
    let ops_per_worker = env_or("BUCKETFS_STRESS_OPS", 500) as usize;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let store = Arc::new(FaultyStore::new(
            MemoryStore::with_page_size(5).with_min_part_size(PART as usize),
        ));
        let scratch = tempfile::tempdir().unwrap();
        let config = FsConfig {
            write_part_size: PART,
            max_memory: 96 << 20,
            disk_cache: Some(bucketfs::fs::disk_cache::DiskCacheConfig {
                dir: scratch.path().to_path_buf(),
                max_bytes: 4 << 30,
                chunk_size: 1 << 20,
                concurrency: 2,
            }),
            ..FsConfig::default()
        };
        let fs = Arc::new(Fs::new(store.clone(), config));
        let dir = fs
            .mkdir(ROOT_INO, OsStr::new("d"), 0o755, ME)
            .await
            .unwrap()
            .ino;
        let faulty = [
            Op::Head,
            Op::List,
            Op::Put,
            Op::Delete,
            Op::CreateMultipart,
            Op::UploadPart,
            Op::CompleteMultipart,
            Op::Copy,
            Op::UploadPartCopy,
        ];
        store.chaos(&faulty, 30, Duration::from_millis(3), seed);
        let ops = Arc::new(AtomicUsize::new(0));
        let acks = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for id in 0..WORKERS {
            let mut worker = Worker {
                id,
                fs: fs.clone(),
                store: store.clone(),
                dir,
                rng: SeededRng::new(seed ^ ((id as u64 + 1) * 0x9e37_79b9_7f4a_7c15)),
                expect: HashMap::new(),
                handles: Vec::new(),
                ops: ops.clone(),
                acks: acks.clone(),
                trace: Vec::new(),
                orphans: Default::default(),
            };
            tasks.push(tokio::spawn(async move {
                for _ in 0..ops_per_worker {
                    worker.step().await;
                }
                worker
            }));
        }
        let mut workers = Vec::new();
        for task in tasks {
            workers.push(task.await.expect("a worker panicked"));
        }
        let injected = store.injected();
        store.calm();
        for worker in &mut workers {
            worker.finish().await;
        }
        // As the unmount does: objects of unlinked files whose deletion failed go now.
        fs.delete_orphans().await;
        let mut checked = 0;
        for worker in &workers {
            for (key, expect) in &worker.expect {
                let held = store.inner().get(key);
                match expect {
                    Expect::Unknown => continue,
                    Expect::Absent => expect!(
                        worker,
                        held.is_none(),
                        "{key} should not exist; its history:\n  {}",
                        worker.history_of(key)
                    ),
                    Expect::Bytes(bytes) => {
                        let held = held.unwrap_or_else(|| panic!("{key} is missing"));
                        assert!(
                            held[..] == bytes[..],
                            "{key}: the store holds {} bytes, expected {}",
                            held.len(),
                            bytes.len()
                        );
                    }
                }
                checked += 1;
            }
        }
        assert_eq!(
            store.inner().open_uploads(),
            0,
            "multipart uploads left open"
        );
        fs.forget(dir, 1);
        assert_eq!(fs.inode_count(), 1, "lookup counts do not balance");
        eprintln!(
            "stress: {} operations by {WORKERS} workers, {injected} injected faults, \
             {} acknowledged commits checked, {checked} final names checked (seed {seed})",
            ops.load(Ordering::Relaxed),
            acks.load(Ordering::Relaxed)
        );
        assert!(injected > 0, "no fault was injected");
    });
}
