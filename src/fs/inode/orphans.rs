//! Objects of files unlinked while open ("orphans"): their names are gone, their objects wait
//! for the last close, hidden from lookups and listings, and are claimed while deleted.

use super::*;

/// The object of a file unlinked while open, waiting for its last close.
#[derive(Debug, Clone)]
pub struct Orphan {
    pub ino: u64,
    /// The object's ETag when it was unlinked: at the last close it is deleted only if S3
    /// still holds that version (another client may have written the name since).
    pub etag: Option<String>,
    /// Its deletion is in flight. The record stays until the object is gone, so the key
    /// stays hidden from lookups and listings meanwhile (and when the delete fails).
    deleting: bool,
}

/// What claiming an orphan by key found.
#[derive(Debug)]
pub enum OrphanClaim {
    /// No orphan under the key.
    None,
    /// Claimed: the caller deletes it, then calls `finish_orphan_claim`.
    Claimed(Orphan),
    /// Another caller is deleting it now.
    InFlight,
}

impl<W> InodeTable<W> {
    /// The key of the object `ino` left when it was unlinked while open, if one waits.
    pub fn orphan_key_of(&self, ino: u64) -> Option<String> {
        self.orphans
            .iter()
            .find(|(_, o)| o.ino == ino)
            .map(|(key, _)| key.clone())
    }

    /// `ino` was unlinked while open: its name goes now, its object (`stored`: the key and the
    /// ETag S3 holds there, when it has one) when its last handle closes (`take_orphan_of`).
    pub fn orphan(&mut self, ino: u64, stored: Option<(String, Option<String>)>) {
        let Some(inode) = self.inodes.get_mut(&ino) else {
            return;
        };
        inode.unlinked = true;
        inode.attrs.unlinked = true;
        let (parent, name) = (inode.parent, inode.name.clone());
        self.detach(parent, &name);
        if let Some((key, etag)) = stored {
            // A record there already is this file's own (a second unlink raced the first):
            // kept as it is, in case its deletion is in flight.
            self.orphans.entry(key).or_insert(Orphan {
                ino,
                etag,
                deleting: false,
            });
        }
    }

    /// True when `key` is the object of a file unlinked while open (hidden from lookups).
    pub fn is_orphan_key(&self, key: &str) -> bool {
        self.orphans.contains_key(key)
    }

    /// True when the listed object (`key`, `etag`) is an orphan's: the version that was
    /// unlinked, not one another client wrote under the name since.
    pub fn is_orphan_object(&self, key: &str, etag: Option<&str>) -> bool {
        self.orphans
            .get(key)
            .is_some_and(|o| match (&o.etag, etag) {
                (Some(unlinked), Some(listed)) => unlinked == listed,
                _ => true,
            })
    }

    /// Claims the orphan of the unlinked inode `ino` for deletion, and marks its key busy
    /// in the same critical section (no new file can be made under it meanwhile); None when
    /// it has none or another caller is deleting it.
    pub fn claim_orphan_of(&mut self, ino: u64) -> Option<(String, Orphan)> {
        let (key, orphan) = self
            .orphans
            .iter_mut()
            .find(|(_, o)| o.ino == ino && !o.deleting)?;
        orphan.deleting = true;
        let claimed = (key.clone(), orphan.clone());
        self.mark_busy(&claimed.0);
        Some(claimed)
    }

    /// Claims the orphan under `key` (a new entry is to be made there, or its directory
    /// goes), marking the key busy as `claim_orphan_of` does.
    pub fn claim_orphan_key(&mut self, key: &str) -> OrphanClaim {
        let claimed = match self.orphans.get_mut(key) {
            None => return OrphanClaim::None,
            Some(orphan) if orphan.deleting => return OrphanClaim::InFlight,
            Some(orphan) => {
                orphan.deleting = true;
                orphan.clone()
            }
        };
        self.mark_busy(key);
        OrphanClaim::Claimed(claimed)
    }

    /// Ends a claim: the record goes when the object was deleted, and stays (hidden, to be
    /// deleted at the unmount) when it was not. The caller unmarks the key.
    pub fn finish_orphan_claim(&mut self, key: &str, deleted: bool) {
        if deleted {
            self.orphans.remove(key);
        } else if let Some(orphan) = self.orphans.get_mut(key) {
            orphan.deleting = false;
        }
    }

    /// Claims every orphan not being deleted already (the unmount deletes them), marking
    /// their keys busy as `claim_orphan_of` does.
    pub fn claim_all_orphans(&mut self) -> Vec<(String, Orphan)> {
        let mut claimed = Vec::new();
        for (key, orphan) in self.orphans.iter_mut().filter(|(_, o)| !o.deleting) {
            orphan.deleting = true;
            claimed.push((key.clone(), orphan.clone()));
        }
        for (key, _) in &claimed {
            self.mark_busy(key);
        }
        claimed
    }
}
