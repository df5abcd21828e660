//! One owner per key: every change this mount makes to a key in S3 runs while its caller holds
//! a claim on that key, so no two changes of one key interleave, and a read-modify-write (a
//! HEAD, then a self-copy with the metadata it read) is never undone by another change made in
//! between.
//!
//! # The rule
//!
//! - A claim is a set of *keys* (one object: `a/b`, or a directory marker `a/b/`) and *trees*
//!   (a directory prefix ending in `/`, covering every key below it and its marker). A key
//!   claim conflicts with the same key and with a tree above it; two trees conflict when one
//!   holds the other.
//! - An operation takes every key it will change in one claim, all at once: `claim` waits
//!   until none of them conflicts with a claim held, then takes them together. It never takes
//!   a second claim while it holds one (the claim is handed down to what it calls instead), so
//!   two operations can never wait for each other: no deadlock.
//! - Which keys to claim is computed from the inode table before waiting and again after; when
//!   the answer changed meanwhile (a rename moved the file or a directory above it), the claim
//!   is let go and taken again for the new keys (`Fs::own`). An operation through an inode
//!   whose name is gone claims nothing and changes nothing in S3.
//! - Claims come before the per-file locks in the lock hierarchy (see `Fs`): an operation may
//!   lock a file's writer while it holds a claim, never the reverse.
//! - What claims: a writer's commit (its key, and where its renamed-away upload completes),
//!   truncate by path, the metadata self-copies (chmod, chown, utimes, xattrs), open for
//!   writing (its metadata read and the writer's claim), create, symlink, mknod, unlink,
//!   rename (source and destination, as key and as tree), mkdir, rmdir (key and tree), and the
//!   deletion of an unlinked file's object.
//! - Reads claim nothing. A store answer about a key is used only if no claim on the key ended
//!   while it was on its way (`changed_since`): a change this mount made meanwhile is newer
//!   than the answer, even when the inode that recorded it has been forgotten since. A read
//!   that ran while a directory rename held a tree above it may have seen the move half done:
//!   it waits for the tree (`tree_free`) and asks again.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use tokio::sync::Notify;

/// One thing an operation owns while it changes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// One key whose content or metadata changes (a commit, a self-copy).
    Key(String),
    /// One key whose name is made, moved or removed (create, unlink, rename, mkdir): as
    /// `Key`, and reads of it wait until it ends, since S3 may hold it half done (a rename's
    /// copy exists before its source is deleted).
    Name(String),
    /// Every key starting with this directory prefix (ends in `/`; `""` is the whole mount).
    /// Reads below it wait as for `Name`.
    Tree(String),
}

impl Claim {
    fn conflicts(&self, other: &Claim) -> bool {
        match (self, other) {
            (Claim::Tree(a), Claim::Tree(b)) => {
                a.starts_with(b.as_str()) || b.starts_with(a.as_str())
            }
            (Claim::Tree(prefix), single) | (single, Claim::Tree(prefix)) => {
                single.key().starts_with(prefix.as_str())
            }
            (a, b) => a.key() == b.key(),
        }
    }

    fn key(&self) -> &str {
        match self {
            Claim::Key(key) | Claim::Name(key) | Claim::Tree(key) => key,
        }
    }

    /// Reads of the keys it covers wait while it is held.
    fn holds_reads(&self) -> bool {
        !matches!(self, Claim::Key(_))
    }
}

/// Claims remembered after they end, for `changed_since`: a read that takes longer than this
/// many changes counts as overtaken.
const RECENT_CLAIMS: usize = 1024;

#[derive(Default)]
pub struct KeyOwner {
    held: Mutex<Vec<(u64, Claim)>>,
    next_id: AtomicU64,
    released: Notify,
    /// Counts the claims that ended.
    epoch: AtomicU64,
    /// The last claims that ended, with the epoch they ended at (oldest first), and the epoch
    /// of the last one dropped from it.
    recent: Mutex<(VecDeque<(u64, Claim)>, u64)>,
}

/// Claims held until dropped.
#[must_use = "the claim ends when this is dropped"]
pub struct Owned<'a> {
    owner: &'a KeyOwner,
    id: u64,
    claims: Vec<Claim>,
}

impl Owned<'_> {
    pub fn claims(&self) -> &[Claim] {
        &self.claims
    }

    /// Who holds it: reads made by its holder do not wait for it (`name_changing`).
    pub fn holder(&self) -> Holder {
        Holder(Some(self.id))
    }
}

/// Whose reads these are: an operation's own claims never hold up its own reads.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Holder(Option<u64>);

impl KeyOwner {
    /// Waits until none of `claims` conflicts with a claim held, then takes them all at once.
    pub async fn claim(&self, claims: Vec<Claim>) -> Owned<'_> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        loop {
            let released = self.released.notified();
            tokio::pin!(released);
            // Registered before the check, so a release between the check and the wait
            // is not missed.
            released.as_mut().enable();
            {
                let mut held = self.held.lock().unwrap();
                let free = claims
                    .iter()
                    .all(|c| held.iter().all(|(_, h)| !c.conflicts(h)));
                if free {
                    held.extend(claims.iter().map(|c| (id, c.clone())));
                    return Owned {
                        owner: self,
                        id,
                        claims,
                    };
                }
            }
            released.await;
        }
    }

    /// True while a change of names covers `key` (a `Name` or `Tree` claim not `reader`'s).
    pub fn name_changing(&self, key: &str, reader: Holder) -> bool {
        let probe = Claim::Key(key.to_string());
        self.held
            .lock()
            .unwrap()
            .iter()
            .any(|(id, h)| Some(*id) != reader.0 && h.holds_reads() && probe.conflicts(h))
    }

    /// Waits until no change of names covers `key` (but `reader`'s own).
    pub async fn names_settled(&self, key: &str, reader: Holder) {
        loop {
            let released = self.released.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            if !self.name_changing(key, reader) {
                return;
            }
            released.await;
        }
    }

    /// Now, in ended claims: taken before a read, given to `changed_since` with its answer.
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::SeqCst)
    }

    /// True when a claim covering `key` ended after `epoch`, or a change of names covers it
    /// now: an answer about `key` asked for at `epoch` may be older than what this mount did.
    pub fn changed_since(&self, key: &str, epoch: u64, reader: Holder) -> bool {
        if self.name_changing(key, reader) {
            return true;
        }
        let probe = Claim::Key(key.to_string());
        let (recent, evicted) = &*self.recent.lock().unwrap();
        // A claim that ended after `epoch` may have been dropped already: counted as a change.
        *evicted > epoch
            || recent
                .iter()
                .rev()
                .take_while(|(ended, _)| *ended > epoch)
                .any(|(_, claim)| probe.conflicts(claim))
    }

    /// Number of claims held (tests).
    pub fn held(&self) -> usize {
        self.held.lock().unwrap().len()
    }
}

impl Drop for Owned<'_> {
    fn drop(&mut self) {
        let mut held = self.owner.held.lock().unwrap();
        held.retain(|(id, _)| *id != self.id);
        if !self.claims.is_empty() {
            // Recorded under the same lock, so a reader never sees the claim neither held
            // nor ended.
            let ended = self.owner.epoch.fetch_add(1, Ordering::SeqCst) + 1;
            let (recent, evicted) = &mut *self.owner.recent.lock().unwrap();
            for claim in self.claims.drain(..) {
                if recent.len() == RECENT_CLAIMS {
                    if let Some((dropped, _)) = recent.pop_front() {
                        *evicted = dropped;
                    }
                }
                recent.push_back((ended, claim));
            }
        }
        drop(held);
        self.owner.released.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    fn key(k: &str) -> Claim {
        Claim::Key(k.to_string())
    }
    fn tree(k: &str) -> Claim {
        Claim::Tree(k.to_string())
    }

    #[test]
    fn conflicts_follow_the_written_rule() {
        assert!(key("a").conflicts(&key("a")));
        assert!(!key("a").conflicts(&key("ab")));
        assert!(key("d/x").conflicts(&tree("d/")));
        assert!(
            key("d/").conflicts(&tree("d/")),
            "the marker is in its tree"
        );
        assert!(!key("d").conflicts(&tree("d/")));
        assert!(!key("dx/y").conflicts(&tree("d/")));
        assert!(tree("d/e/").conflicts(&tree("d/")));
        assert!(tree("d/").conflicts(&tree("d/e/")));
        assert!(!tree("d/").conflicts(&tree("e/")));
        assert!(tree("").conflicts(&key("anything")));
        assert!(Claim::Name("a".into()).conflicts(&key("a")));
        assert!(Claim::Name("d/a".into()).conflicts(&tree("d/")));
    }

    #[tokio::test]
    async fn a_conflicting_claim_waits_until_the_holder_lets_go() {
        let owner = Arc::new(KeyOwner::default());
        let first = owner.claim(vec![tree("d/")]).await;
        let waiter = {
            let owner = owner.clone();
            tokio::spawn(async move {
                let _owned = owner.claim(vec![key("x"), key("d/x")]).await;
            })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished(), "d/x is in the claimed tree");
        // A claim that conflicts with nothing held goes through meanwhile.
        let _other = owner.claim(vec![key("e/x")]).await;
        let epoch = owner.epoch();
        let anyone = Holder::default();
        assert!(
            owner.changed_since("d/x", epoch, anyone),
            "a tree claim covers it now"
        );
        assert!(
            !owner.changed_since("d/x", epoch, first.holder()),
            "not for its holder"
        );
        assert!(!owner.changed_since("e/y", epoch, anyone));
        drop(first);
        assert!(
            owner.changed_since("d/x", epoch, anyone),
            "the tree's claim ended since"
        );
        assert!(
            !owner.changed_since("e/x", epoch, anyone),
            "still held: nothing ended"
        );
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("the waiter gets its claim")
            .unwrap();
        assert_eq!(owner.held(), 1, "only e/x is still held");
    }

    #[tokio::test]
    async fn claims_are_taken_all_at_once_so_crossed_claims_cannot_deadlock() {
        let owner = Arc::new(KeyOwner::default());
        let mut tasks = Vec::new();
        for i in 0..50 {
            let owner = owner.clone();
            let claims = if i % 2 == 0 {
                vec![key("a"), key("b")]
            } else {
                vec![key("b"), key("a")]
            };
            tasks.push(tokio::spawn(async move {
                let _owned = owner.claim(claims).await;
                tokio::task::yield_now().await;
            }));
        }
        for task in tasks {
            tokio::time::timeout(Duration::from_secs(5), task)
                .await
                .expect("no deadlock")
                .unwrap();
        }
        assert_eq!(owner.held(), 0);
    }
}
