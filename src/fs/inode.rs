//! The inode table: inode number <-> (parent, name, key, kind), attributes with their expiry,
//! the kernel's lookup counts (an inode is dropped when the kernel forgets it), and the state
//! an inode owns while it is open for writing: its one writer, and whether its name exists only
//! in this mount so far (created here, not yet in S3).
//!
//! Everything about one inode lives in its [`Inode`], behind the one table lock, so a check and
//! the change it guards (such as "no writer yet, so this open becomes the writer") happen in one
//! critical section; there are no side maps to keep in step.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use super::attrs::{Attributes, Kind};

mod orphans;

pub use orphans::{Orphan, OrphanClaim};

pub const ROOT_INO: u64 = 1;

#[derive(Debug)]
pub struct Inode<W> {
    pub ino: u64,
    pub parent: u64,
    pub name: String,
    /// Files: the object key. Directories: the key prefix, ending in `/` (the root of a bucket
    /// mount is `""`).
    pub key: String,
    pub attrs: Attributes,
    /// Attributes are served from memory until then, and refreshed from the store after.
    pub expires: Instant,
    lookups: u64,
    /// The one writer of this file while it is open for writing (shared with its handle).
    writer: Option<Arc<W>>,
    /// Created in this mount and not yet in S3: readdir of the parent shows it from here.
    pending: bool,
    /// Where this file's renamed-away multipart upload will complete (held busy).
    displaced: Option<String>,
    /// Unlinked while open: the name is gone, the inode lives on for its open handles.
    unlinked: bool,
    /// When its attributes were last set, in `InodeTable::stamp` units: a store answer asked
    /// for before then is older than what the inode holds (see `changed_since`).
    stamp: u64,
    /// A directory: when a name in it last changed in this mount (made, stored, moved in or
    /// out, removed), in `InodeTable::stamp` units (see `names_stamp`).
    names: u64,
}

impl<W> Inode<W> {
    pub fn kind(&self) -> Kind {
        self.attrs.kind
    }

    pub fn writer(&self) -> Option<&Arc<W>> {
        self.writer.as_ref()
    }

    pub fn has_writer(&self) -> bool {
        self.writer.is_some()
    }

    pub fn is_pending(&self) -> bool {
        self.pending
    }

    pub fn is_unlinked(&self) -> bool {
        self.unlinked
    }

    /// Its attributes are this mount's own state: a stored version's (with its ETag), or
    /// those of a file being written, only here, or unlinked.
    fn holds_own_attrs(&self) -> bool {
        self.attrs.etag.is_some() || self.writer.is_some() || self.pending || self.unlinked
    }

    /// Where this file's renamed-away upload completes, if anywhere.
    pub fn displaced(&self) -> Option<&str> {
        self.displaced.as_deref()
    }
}

pub struct InodeTable<W> {
    /// Counts attribute changes (see `Inode::stamp`).
    stamp: u64,
    next_ino: u64,
    inodes: HashMap<u64, Inode<W>>,
    children: HashMap<(u64, String), u64>,
    /// Pending inodes by parent: an index of `Inode::pending`, maintained only by this table.
    pending: HashMap<u64, HashSet<u64>>,
    /// Keys no new writer may take, with a count of who holds each: names a rename or unlink
    /// is moving (a prefix ending in `/` covers a directory), and keys where a renamed file's
    /// multipart upload will still complete (see `FileWriter::displaced_key`).
    busy: HashMap<String, usize>,
    /// Objects of files unlinked while open, by key: deleted from S3 when the inode's last
    /// handle closes, so the handles go on reading them; hidden from lookups and listings.
    orphans: HashMap<String, Orphan>,
}

impl<W> InodeTable<W> {
    pub fn new(root_prefix: String, root_attrs: Attributes) -> Self {
        let root = Inode {
            ino: ROOT_INO,
            parent: ROOT_INO,
            name: String::new(),
            key: root_prefix,
            attrs: root_attrs,
            expires: Instant::now(),
            lookups: 1,
            writer: None,
            pending: false,
            displaced: None,
            unlinked: false,
            stamp: 0,
            names: 0,
        };
        Self {
            stamp: 0,
            next_ino: ROOT_INO + 1,
            inodes: HashMap::from([(ROOT_INO, root)]),
            children: HashMap::new(),
            pending: HashMap::new(),
            busy: HashMap::new(),
            orphans: HashMap::new(),
        }
    }

    pub fn get(&self, ino: u64) -> Option<&Inode<W>> {
        self.inodes.get(&ino)
    }

    pub fn child(&self, parent: u64, name: &str) -> Option<&Inode<W>> {
        self.children
            .get(&(parent, name.to_string()))
            .and_then(|ino| self.inodes.get(ino))
    }

    /// Records that `name` in `parent` exists with `attrs`, and returns its inode. An entry whose
    /// kind changed (a file became a directory) gets a new inode, because the kernel must not
    /// see one inode change type. `counted` adds one kernel lookup reference.
    pub fn upsert_child(
        &mut self,
        parent: u64,
        name: &str,
        key: String,
        attrs: Attributes,
        expires: Instant,
        counted: bool,
    ) -> &Inode<W> {
        self.upsert_child_since(parent, name, key, attrs, expires, counted, u64::MAX)
    }

    /// `upsert_child` with attributes the store gave for a question asked at `stamp`: an
    /// existing inode whose attributes changed since keeps them (they are newer).
    #[allow(clippy::too_many_arguments)]
    pub fn upsert_child_since(
        &mut self,
        parent: u64,
        name: &str,
        key: String,
        attrs: Attributes,
        expires: Instant,
        counted: bool,
        stamp: u64,
    ) -> &Inode<W> {
        let map_key = (parent, name.to_string());
        let existing = self
            .children
            .get(&map_key)
            .copied()
            .filter(|ino| self.inodes.get(ino).map(|i| i.kind()) == Some(attrs.kind));
        let ino = match existing {
            Some(ino) => {
                self.stamp += 1;
                let inode = self.inodes.get_mut(&ino).expect("mapped inode exists");
                if inode.stamp <= stamp || !inode.holds_own_attrs() {
                    inode.attrs = attrs;
                    inode.key = key;
                    inode.expires = expires;
                    inode.stamp = self.stamp;
                }
                ino
            }
            None => {
                self.stamp += 1;
                let ino = self.next_ino;
                self.next_ino += 1;
                self.detach(parent, name);
                self.inodes.insert(
                    ino,
                    Inode {
                        ino,
                        parent,
                        name: name.to_string(),
                        key,
                        attrs,
                        expires,
                        lookups: 0,
                        writer: None,
                        pending: false,
                        displaced: None,
                        unlinked: false,
                        stamp: self.stamp,
                        names: self.stamp,
                    },
                );
                self.children.insert(map_key, ino);
                self.names_changed(parent);
                ino
            }
        };
        let inode = self.inodes.get_mut(&ino).expect("just inserted");
        if counted {
            inode.lookups += 1;
        }
        inode
    }

    /// The kernel took one more reference on `ino`.
    pub fn add_lookup(&mut self, ino: u64) {
        if let Some(inode) = self.inodes.get_mut(&ino) {
            inode.lookups += 1;
        }
    }

    pub fn set_attrs(&mut self, ino: u64, attrs: Attributes, expires: Instant) {
        self.stamp += 1;
        if let Some(inode) = self.inodes.get_mut(&ino) {
            inode.attrs = attrs;
            inode.expires = expires;
            inode.stamp = self.stamp;
        }
    }

    /// When a name in the directory `dir` last changed in this mount: a lookup whose store
    /// answer (not found) was asked for before then may be older than a file made, stored or
    /// moved there meanwhile.
    pub fn names_stamp(&self, dir: u64) -> u64 {
        self.inodes.get(&dir).map_or(u64::MAX, |d| d.names)
    }

    fn names_changed(&mut self, dir: u64) {
        self.stamp += 1;
        if let Some(d) = self.inodes.get_mut(&dir) {
            d.names = self.stamp;
        }
    }

    /// Now, in attribute-change units (every attribute change and every change of a name
    /// moves it): taken before asking the store about an inode or a name, and given to
    /// `changed_since` with the answer.
    pub fn stamp(&self) -> u64 {
        self.stamp
    }

    /// True when the attributes of `ino` were set after `stamp` by this mount (a commit, or
    /// a write of its writer, while a HEAD was on its way) and still describe its own state:
    /// a store answer from before is older. Attributes a failed writer left (distrusted: no
    /// ETag, no writer) are not: the answer is taken.
    pub fn changed_since(&self, ino: u64, stamp: u64) -> bool {
        self.inodes
            .get(&ino)
            .is_some_and(|i| i.stamp > stamp && i.holds_own_attrs())
    }

    /// Moves `ino` to `new_name` in `new_parent` (rename): whatever that name held is detached.
    pub fn move_entry(
        &mut self,
        ino: u64,
        new_parent: u64,
        new_name: &str,
        key: String,
        expires: Instant,
    ) {
        let Some(inode) = self.inodes.get(&ino) else {
            // Forgotten meanwhile: the new name's old entry must still go.
            self.detach(new_parent, new_name);
            return;
        };
        self.stamp += 1;
        let old = (inode.parent, inode.name.clone());
        if self.children.get(&old) == Some(&ino) {
            self.children.remove(&old);
        }
        self.detach(new_parent, new_name);
        let inode = self.inodes.get_mut(&ino).expect("checked above");
        let old_parent = inode.parent;
        inode.parent = new_parent;
        inode.name = new_name.to_string();
        inode.key = key;
        inode.expires = expires;
        // A rename changes the inode (POSIX lets ctime move; Linux filesystems do).
        inode.attrs.ctime = std::time::SystemTime::now();
        let pending = inode.pending;
        if pending {
            self.unindex_pending(old_parent, ino);
            self.pending.entry(new_parent).or_default().insert(ino);
        }
        self.children
            .insert((new_parent, new_name.to_string()), ino);
        self.names_changed(old_parent);
        self.names_changed(new_parent);
    }

    /// Makes `writer` the one writer of `ino`, unless it has one already or its key is busy
    /// (then `false`).
    pub fn claim_writer(&mut self, ino: u64, writer: Arc<W>) -> bool {
        let busy = self
            .inodes
            .get(&ino)
            .is_some_and(|i| self.key_is_busy(&i.key));
        match self.inodes.get_mut(&ino) {
            Some(inode) if inode.writer.is_none() && !busy => {
                inode.writer = Some(writer);
                true
            }
            _ => false,
        }
    }

    /// Replaces the writer of `ino` (the caller checked the old one may hand over).
    pub fn replace_writer(&mut self, ino: u64, writer: Arc<W>) {
        if let Some(inode) = self.inodes.get_mut(&ino) {
            inode.writer = Some(writer);
        }
        self.set_displaced(ino, None);
    }

    /// Drops the writer of `ino` if it is still `writer` (a later writer is left alone).
    pub fn release_writer(&mut self, ino: u64, writer: &Arc<W>) {
        if self.is_writer_of(ino, writer) {
            if let Some(inode) = self.inodes.get_mut(&ino) {
                inode.writer = None;
            }
            self.set_displaced(ino, None);
        }
        self.remove_if_unused(ino);
    }

    /// True when `writer` is the writer of `ino`.
    pub fn is_writer_of(&self, ino: u64, writer: &Arc<W>) -> bool {
        self.inodes
            .get(&ino)
            .and_then(|i| i.writer.as_ref())
            .is_some_and(|w| Arc::ptr_eq(w, writer))
    }

    /// No new writer may take `key` (or, ending in `/`, any key below it) until unmarked.
    pub fn mark_busy(&mut self, key: &str) {
        *self.busy.entry(key.to_string()).or_default() += 1;
    }

    pub fn unmark_busy(&mut self, key: &str) {
        if let Some(count) = self.busy.get_mut(key) {
            *count -= 1;
            if *count == 0 {
                self.busy.remove(key);
            }
        }
    }

    /// True when `key`, or (for a directory prefix ending in `/`) any key below it, is busy.
    pub fn busy_at_or_below(&self, key: &str) -> bool {
        self.key_is_busy(key)
            || (key.ends_with('/') && self.busy.keys().any(|b| b.starts_with(key)))
    }

    /// True when a key strictly below the directory prefix `prefix` is busy (a file in it is
    /// being unlinked, renamed, or its orphan deleted).
    pub fn busy_below(&self, prefix: &str) -> bool {
        self.busy
            .keys()
            .any(|b| b.len() > prefix.len() && b.starts_with(prefix))
    }

    /// True when a directory above `key` is busy (being renamed).
    pub fn busy_above(&self, key: &str) -> bool {
        key.match_indices('/')
            .any(|(i, _)| self.key_is_busy(&key[..=i]) && i + 1 < key.len())
    }

    /// True when `ino` is still named, with `key`: nothing renamed or removed it meanwhile.
    pub fn is_current(&self, ino: u64, key: &str) -> bool {
        self.inodes.get(&ino).is_some_and(|i| {
            i.key == key && self.children.get(&(i.parent, i.name.clone())) == Some(&ino)
        })
    }

    pub fn key_is_busy(&self, key: &str) -> bool {
        self.busy.contains_key(key)
            || self
                .busy
                .keys()
                .any(|b| b.ends_with('/') && key.starts_with(b.as_str()))
    }

    /// Records where `ino`'s renamed-away upload completes (`None`: nowhere any more).
    pub fn set_displaced(&mut self, ino: u64, key: Option<String>) {
        let Some(inode) = self.inodes.get_mut(&ino) else {
            return;
        };
        if inode.displaced == key {
            return;
        }
        let old = std::mem::replace(&mut inode.displaced, key.clone());
        if let Some(old) = old {
            self.unmark_busy(&old);
        }
        if let Some(new) = key {
            self.mark_busy(&new);
        }
    }

    /// Every writer of an inode whose key starts with `prefix`.
    pub fn writers_below(&self, prefix: &str) -> Vec<Arc<W>> {
        self.inodes
            .values()
            .filter(|i| i.key.starts_with(prefix))
            .filter_map(|i| i.writer.clone())
            .collect()
    }

    /// Every writer (unmount, shutdown).
    pub fn all_writers(&self) -> Vec<(u64, Arc<W>)> {
        self.inodes
            .values()
            .filter_map(|i| i.writer.clone().map(|w| (i.ino, w)))
            .collect()
    }

    /// Marks `ino` as existing only in this mount (`true`) or as stored in S3 (`false`).
    pub fn set_pending(&mut self, ino: u64, pending: bool) {
        let Some(inode) = self.inodes.get_mut(&ino) else {
            return;
        };
        if inode.pending == pending {
            return;
        }
        inode.pending = pending;
        let parent = inode.parent;
        self.names_changed(parent);
        if pending {
            self.pending.entry(parent).or_default().insert(ino);
        } else {
            self.unindex_pending(parent, ino);
        }
    }

    fn unindex_pending(&mut self, parent: u64, ino: u64) {
        if let Some(set) = self.pending.get_mut(&parent) {
            set.remove(&ino);
            if set.is_empty() {
                self.pending.remove(&parent);
            }
        }
    }

    /// The pending entries still named in `dir`.
    pub fn pending_children(&self, dir: u64) -> Vec<&Inode<W>> {
        let Some(set) = self.pending.get(&dir) else {
            return Vec::new();
        };
        set.iter()
            .filter_map(|ino| self.inodes.get(ino))
            .filter(|i| self.children.get(&(i.parent, i.name.clone())) == Some(&i.ino))
            .collect()
    }

    pub fn has_pending_children(&self, dir: u64) -> bool {
        !self.pending_children(dir).is_empty()
    }

    /// After a directory rename: every known entry below `old_prefix` now lives below
    /// `new_prefix`.
    pub fn rekey_below(&mut self, old_prefix: &str, new_prefix: &str) {
        for inode in self.inodes.values_mut() {
            if inode.key.len() > old_prefix.len() && inode.key.starts_with(old_prefix) {
                inode.key = format!("{new_prefix}{}", &inode.key[old_prefix.len()..]);
                // A copied object may have a new ETag: ask the store at next use.
                inode.expires = Instant::now();
            }
        }
    }

    /// Marks the attributes of every inode below the directory prefix `prefix` as stale.
    pub fn expire_below(&mut self, prefix: &str) {
        let now = Instant::now();
        for inode in self.inodes.values_mut() {
            if inode.key.len() > prefix.len() && inode.key.starts_with(prefix) {
                inode.expires = now;
            }
        }
    }

    /// Marks the attributes of `ino` as stale: the next use asks the store.
    pub fn expire(&mut self, ino: u64) {
        if let Some(inode) = self.inodes.get_mut(&ino) {
            inode.expires = Instant::now();
        }
    }

    /// The attributes of `ino` describe no stored version any more (a writer that failed
    /// changed its size and times locally): expired, and stripped of the ETag, so nothing
    /// (a listing of the same version, say) can take them for the object's own.
    pub fn distrust(&mut self, ino: u64) {
        if let Some(inode) = self.inodes.get_mut(&ino) {
            inode.expires = Instant::now();
            inode.attrs.etag = None;
        }
    }

    /// Forgets the name (the entry no longer exists); the inode itself lives on until the
    /// kernel forgets it, so open files keep working.
    pub fn detach(&mut self, parent: u64, name: &str) {
        if let Some(ino) = self.children.remove(&(parent, name.to_string())) {
            self.names_changed(parent);
            // A pending entry that lost its name is not "in this mount only" any more: it is
            // nowhere.
            if self.inodes.get(&ino).is_some_and(|i| i.pending) {
                self.set_pending(ino, false);
            }
        }
    }

    /// Forgets the name `name` in `parent` only if it is still `ino`'s (what a store answer
    /// about `ino` may do: a newer file under the name is not `ino`).
    pub fn detach_if(&mut self, parent: u64, name: &str, ino: u64) {
        if self.children.get(&(parent, name.to_string())) == Some(&ino) {
            self.detach(parent, name);
        }
    }

    /// The kernel dropped `n` references.
    pub fn forget(&mut self, ino: u64, n: u64) {
        if ino == ROOT_INO {
            return;
        }
        let Some(inode) = self.inodes.get_mut(&ino) else {
            return;
        };
        inode.lookups = inode.lookups.saturating_sub(n);
        self.remove_if_unused(ino);
    }

    /// Drops `ino` once the kernel holds no reference and no writer keeps it open.
    fn remove_if_unused(&mut self, ino: u64) {
        let Some(inode) = self.inodes.get(&ino) else {
            return;
        };
        if ino == ROOT_INO || inode.lookups > 0 || inode.writer.is_some() {
            return;
        }
        let (parent, name) = (inode.parent, inode.name.clone());
        self.unindex_pending(parent, ino);
        self.inodes.remove(&ino);
        let map_key = (parent, name);
        if self.children.get(&map_key) == Some(&ino) {
            self.children.remove(&map_key);
        }
    }

    pub fn len(&self) -> usize {
        self.inodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.inodes.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::attrs::AttrDefaults;
    use std::time::SystemTime;

    fn file_attrs() -> Attributes {
        Attributes {
            size: 1,
            mtime: SystemTime::UNIX_EPOCH,
            ..Attributes::new(Kind::File, 0o644, 0, 0)
        }
    }

    #[test]
    fn inodes_live_until_forgotten_and_change_with_kind() {
        let defaults = AttrDefaults::default();
        let mut table = InodeTable::<()>::new(
            String::new(),
            Attributes::directory(SystemTime::UNIX_EPOCH, &defaults),
        );
        let now = Instant::now();
        let a = table
            .upsert_child(ROOT_INO, "a", "a".into(), file_attrs(), now, true)
            .ino;
        let again = table
            .upsert_child(ROOT_INO, "a", "a".into(), file_attrs(), now, true)
            .ino;
        assert_eq!(a, again);
        let dir = Attributes::directory(SystemTime::UNIX_EPOCH, &defaults);
        let b = table
            .upsert_child(ROOT_INO, "a", "a/".into(), dir, now, true)
            .ino;
        assert_ne!(a, b, "a file that became a directory gets a new inode");
        assert!(
            table.get(a).is_some(),
            "the old inode lives until forgotten"
        );
        table.forget(a, 1);
        assert!(table.get(a).is_some(), "one reference left");
        table.forget(a, 1);
        assert!(table.get(a).is_none());
        assert_eq!(table.child(ROOT_INO, "a").map(|i| i.ino), Some(b));
        table.forget(ROOT_INO, 100);
        assert!(table.get(ROOT_INO).is_some(), "the root is never forgotten");
    }
}
