//! The inode table: inode number <-> (parent, name, key, kind), attributes with their expiry,
//! and the kernel's lookup counts (an inode is dropped when the kernel forgets it).

use std::collections::HashMap;
use std::time::Instant;

use super::attrs::{Attributes, Kind};

pub const ROOT_INO: u64 = 1;

#[derive(Debug, Clone)]
pub struct Inode {
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
}

impl Inode {
    pub fn kind(&self) -> Kind {
        self.attrs.kind
    }
}

pub struct InodeTable {
    next_ino: u64,
    inodes: HashMap<u64, Inode>,
    children: HashMap<(u64, String), u64>,
}

impl InodeTable {
    pub fn new(root_prefix: String, root_attrs: Attributes) -> Self {
        let root = Inode {
            ino: ROOT_INO,
            parent: ROOT_INO,
            name: String::new(),
            key: root_prefix,
            attrs: root_attrs,
            expires: Instant::now(),
            lookups: 1,
        };
        Self {
            next_ino: ROOT_INO + 1,
            inodes: HashMap::from([(ROOT_INO, root)]),
            children: HashMap::new(),
        }
    }

    pub fn get(&self, ino: u64) -> Option<&Inode> {
        self.inodes.get(&ino)
    }

    pub fn child(&self, parent: u64, name: &str) -> Option<&Inode> {
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
    ) -> &Inode {
        let map_key = (parent, name.to_string());
        let existing = self
            .children
            .get(&map_key)
            .copied()
            .filter(|ino| self.inodes.get(ino).map(|i| i.kind()) == Some(attrs.kind));
        let ino = match existing {
            Some(ino) => {
                let inode = self.inodes.get_mut(&ino).expect("mapped inode exists");
                inode.attrs = attrs;
                inode.key = key;
                inode.expires = expires;
                ino
            }
            None => {
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
                    },
                );
                self.children.insert(map_key, ino);
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
        if let Some(inode) = self.inodes.get_mut(&ino) {
            inode.attrs = attrs;
            inode.expires = expires;
        }
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
            return;
        };
        let old = (inode.parent, inode.name.clone());
        if self.children.get(&old) == Some(&ino) {
            self.children.remove(&old);
        }
        let inode = self.inodes.get_mut(&ino).expect("checked above");
        inode.parent = new_parent;
        inode.name = new_name.to_string();
        inode.key = key;
        inode.expires = expires;
        self.children
            .insert((new_parent, new_name.to_string()), ino);
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

    /// Marks the attributes of `ino` as stale: the next use asks the store.
    pub fn expire(&mut self, ino: u64) {
        if let Some(inode) = self.inodes.get_mut(&ino) {
            inode.expires = Instant::now();
        }
    }

    /// Forgets the name (the entry no longer exists); the inode itself lives on until the
    /// kernel forgets it, so open files keep working.
    pub fn detach(&mut self, parent: u64, name: &str) {
        self.children.remove(&(parent, name.to_string()));
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
        if inode.lookups == 0 {
            let (parent, name) = (inode.parent, inode.name.clone());
            self.inodes.remove(&ino);
            let map_key = (parent, name);
            if self.children.get(&map_key) == Some(&ino) {
                self.children.remove(&map_key);
            }
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
            kind: Kind::File,
            size: 1,
            mtime: SystemTime::UNIX_EPOCH,
            perm: 0o644,
            uid: 0,
            gid: 0,
            etag: None,
        }
    }

    #[test]
    fn inodes_live_until_forgotten_and_change_with_kind() {
        let defaults = AttrDefaults::default();
        let mut table = InodeTable::new(
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
