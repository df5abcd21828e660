//! The journal of multipart uploads in flight. An upload that is neither completed nor aborted
//! keeps its parts in the bucket (billed, invisible) forever, so every upload this process
//! starts is recorded in a small file until it ends; the next mount of the same bucket and
//! prefix aborts what a dead process left behind.
//!
//! Layout: `STATE_DIR/uploads/SCOPE/PID.journal`, where SCOPE names the endpoint, bucket and
//! prefix. Each process holds an exclusive `flock` on its own file for as long as it runs, so
//! a file whose lock can be taken belongs to a dead process (robust against reused PIDs). The
//! file is append-only: `+ ID KEY` when an upload starts, `- ID` when it completed or was
//! aborted; it is emptied whenever nothing is in flight. Writes survive a killed process (they
//! are in the page cache); a machine crash may lose the last lines.

use std::collections::BTreeMap;
use std::fs::File;
use std::hash::{Hash, Hasher};
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use tracing::warn;

/// One upload a journal recorded: its key and upload id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournaledUpload {
    pub key: String,
    pub upload_id: String,
}

/// The journal of this process.
pub struct UploadJournal {
    path: PathBuf,
    /// The journal file, locked for this process's lifetime; and the uploads it lists.
    state: Mutex<(File, BTreeMap<String, String>)>,
}

/// The directory of one endpoint + bucket + prefix under the state directory.
pub fn scope_dir(state_dir: &Path, endpoint: &str, bucket: &str, prefix: &str) -> PathBuf {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    (endpoint, bucket, prefix).hash(&mut hasher);
    let readable: String = bucket
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '.')
        .collect();
    state_dir
        .join("uploads")
        .join(format!("{readable}-{:016x}", hasher.finish()))
}

impl UploadJournal {
    /// Creates and locks this process's journal in `scope`.
    pub fn create(scope: &Path) -> io::Result<Self> {
        crate::private_files::create_dir(scope)?;
        let path = scope.join(format!("{}.journal", std::process::id()));
        // Private (keys and upload ids), and never through a symlink: it is truncated below.
        let file = crate::private_files::create_read_append(&path)?;
        if !try_lock(&file) {
            return Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                format!("{} is locked by another process", path.display()),
            ));
        }
        file.set_len(0)?;
        Ok(Self {
            path,
            state: Mutex::new((file, BTreeMap::new())),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// An upload started.
    pub fn record(&self, key: &str, upload_id: &str) {
        let mut state = self.state.lock().unwrap();
        state.1.insert(upload_id.to_string(), key.to_string());
        let line = format!("+ {} {}\n", escape(upload_id), escape(key));
        if let Err(e) = state.0.write_all(line.as_bytes()) {
            warn!(path = %self.path.display(), "cannot record an upload in the journal: {e}");
        }
    }

    /// An upload completed or was aborted.
    pub fn forget(&self, upload_id: &str) {
        let mut state = self.state.lock().unwrap();
        if state.1.remove(upload_id).is_none() {
            return;
        }
        let result = if state.1.is_empty() {
            state.0.set_len(0)
        } else {
            state
                .0
                .write_all(format!("- {}\n", escape(upload_id)).as_bytes())
        };
        if let Err(e) = result {
            warn!(path = %self.path.display(), "cannot update the upload journal: {e}");
        }
    }

    /// Uploads in flight now.
    pub fn in_flight(&self) -> usize {
        self.state.lock().unwrap().1.len()
    }
}

impl Drop for UploadJournal {
    fn drop(&mut self) {
        // A clean end: nothing left in flight means nothing for the next mount to do.
        let state = self.state.get_mut().unwrap();
        if state.1.is_empty() {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// The journal of a process that is gone, with the uploads it left open. Holding it keeps
/// its lock, so two mounts never clean the same journal; `finish` removes it.
pub struct DeadJournal {
    path: PathBuf,
    _file: File,
    pub uploads: Vec<JournaledUpload>,
}

impl DeadJournal {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every upload was dealt with: the journal goes.
    pub fn finish(self) {
        if let Err(e) = std::fs::remove_file(&self.path) {
            warn!(path = %self.path.display(), "cannot remove a finished journal: {e}");
        }
    }
}

/// Journals in `scope` whose process is gone (their lock could be taken).
pub fn dead_journals(scope: &Path) -> Vec<DeadJournal> {
    let Ok(entries) = std::fs::read_dir(scope) else {
        return Vec::new();
    };
    let mut dead = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().and_then(|e| e.to_str()) != Some("journal") {
            continue;
        }
        let Ok(mut file) = crate::private_files::open_existing(&path) else {
            continue;
        };
        if !try_lock(&file) {
            continue; // a live process
        }
        let mut text = String::new();
        if let Err(e) = file.read_to_string(&mut text) {
            warn!(path = %path.display(), "cannot read an upload journal: {e}");
            continue;
        }
        dead.push(DeadJournal {
            path,
            _file: file,
            uploads: parse(&text),
        });
    }
    dead
}

/// The uploads a journal's lines leave open, in the order they started.
fn parse(text: &str) -> Vec<JournaledUpload> {
    let mut open: Vec<JournaledUpload> = Vec::new();
    for line in text.lines() {
        let mut fields = line.split(' ');
        match (fields.next(), fields.next(), fields.next()) {
            (Some("+"), Some(id), Some(key)) => open.push(JournaledUpload {
                key: unescape(key),
                upload_id: unescape(id),
            }),
            (Some("-"), Some(id), None) => {
                let id = unescape(id);
                open.retain(|u| u.upload_id != id);
            }
            // A line cut short by a crash, or garbage: nothing to act on.
            _ => {}
        }
    }
    open
}

fn try_lock(file: &File) -> bool {
    // SAFETY: flock on a descriptor we own; non-blocking.
    unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) == 0 }
}

/// Keys may hold any character: space, newline and `%` are written as `%XX`.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '%' | ' ' | '\n' | '\r' | '\t' => out.push_str(&format!("%{:02X}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

fn unescape(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = |b: u8| (b as char).to_digit(16);
            if let (Some(hi), Some(lo)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push((hi * 16 + lo) as u8);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_survive_escaping() {
        for key in ["plain", "a b\nc%d\te", "100%", "ünï code"] {
            assert_eq!(unescape(&escape(key)), key);
        }
    }

    #[test]
    fn a_live_journal_is_not_dead_and_a_dropped_one_lists_what_it_left() {
        let dir = tempfile::tempdir().unwrap();
        let scope = scope_dir(dir.path(), "http://127.0.0.1:1", "b", "p/");
        let journal = UploadJournal::create(&scope).unwrap();
        journal.record("p/a b", "id-1");
        journal.record("p/c", "id-2");
        journal.forget("id-1");
        assert_eq!(journal.in_flight(), 1);
        assert!(dead_journals(&scope).is_empty(), "locked by a live process");
        // As at a crash: with an upload in flight the file stays, and the lock goes with the
        // descriptor.
        let path = journal.path().to_path_buf();
        drop(journal);
        let text = std::fs::read_to_string(&path).unwrap();
        let dead = dead_journals(&scope);
        assert_eq!(dead.len(), 1, "{text}");
        assert_eq!(
            dead[0].uploads,
            vec![JournaledUpload {
                key: "p/c".into(),
                upload_id: "id-2".into()
            }]
        );
        dead.into_iter().for_each(DeadJournal::finish);
        assert!(!path.exists());
    }

    #[test]
    fn a_journal_with_nothing_in_flight_is_empty_and_removed_at_drop() {
        let dir = tempfile::tempdir().unwrap();
        let journal = UploadJournal::create(dir.path()).unwrap();
        journal.record("k", "id");
        journal.forget("id");
        let path = journal.path().to_path_buf();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 0);
        drop(journal);
        assert!(!path.exists());
    }

    #[test]
    fn a_torn_last_line_is_ignored() {
        let open = parse("+ id1 k1\n+ id2 k2\n- id1\n+ id3");
        assert_eq!(open.len(), 1);
        assert_eq!(open[0].upload_id, "id2");
    }
}
