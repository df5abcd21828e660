//! Which keys an operation claims (see `owner.rs` for the rule), computed from the inode
//! table, and taken so that the answer still holds once the claim is granted.

use super::attrs::Kind;
use super::error::{FsError, FsResult};
use super::inode::{InodeTable, ROOT_INO};
use super::names::child_key;
use super::owner::{Claim, Holder, Owned};
use super::Fs;
use crate::store::ObjectStore;

type Table<S> = InodeTable<tokio::sync::Mutex<super::write::FileWriter<S>>>;

/// What an inode may change in S3 now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Binding {
    /// Named: its key (a file's object, a directory's marker), and the key where its
    /// renamed-away upload completes, if any.
    Bound {
        key: String,
        displaced: Option<String>,
    },
    /// Its name is gone (unlinked, renamed over, found missing): it acts on nothing in S3.
    Ended,
}

impl Binding {
    fn claims(&self) -> Vec<Claim> {
        match self {
            Binding::Bound { key, displaced } => std::iter::once(key)
                .chain(displaced)
                .map(|k| Claim::Key(k.clone()))
                .collect(),
            Binding::Ended => Vec::new(),
        }
    }
}

/// The binding of `ino` to its name now.
pub(super) fn binding_of<W>(table: &InodeTable<W>, ino: u64) -> FsResult<Binding> {
    let inode = table.get(ino).ok_or(FsError::NotFound)?;
    let named = ino == ROOT_INO
        || (table.is_current(ino, &inode.key)
            // (A parent the kernel has forgotten cannot have moved since.)
            && table
                .get(inode.parent)
                .is_none_or(|dir| key_of(&dir.key, &inode.name, inode.kind()) == inode.key));
    if inode.is_unlinked() || !named {
        return Ok(Binding::Ended);
    }
    Ok(Binding::Bound {
        key: inode.key.clone(),
        displaced: inode.displaced().map(str::to_string),
    })
}

/// The key of `name` of `kind` in the directory whose key is `dir_key`.
fn key_of(dir_key: &str, name: &str, kind: Kind) -> String {
    match kind {
        Kind::Dir => format!("{dir_key}{name}/"),
        _ => format!("{dir_key}{name}"),
    }
}

/// The key `name` has in the directory `parent` now, as a file and as a directory tree.
pub(super) fn name_claims<W>(
    table: &InodeTable<W>,
    parent: u64,
    name: &str,
) -> FsResult<Vec<Claim>> {
    let dir = table.get(parent).ok_or(FsError::NotFound)?;
    if dir.kind() != Kind::Dir {
        return Err(FsError::NotDir);
    }
    // A directory removed (or renamed over) since the caller looked it up holds nothing.
    if binding_of(table, parent)? == Binding::Ended {
        return Err(FsError::NotFound);
    }
    let key = child_key(&dir.key, name)?;
    Ok(vec![Claim::Tree(format!("{key}/")), Claim::Name(key)])
}

impl<S: ObjectStore> Fs<S> {
    /// Claims what `compute` says from the table, and again whenever the answer changed while
    /// waiting (a rename moved the name): returns the claim with the answer it was granted for.
    pub(super) async fn own<T: PartialEq>(
        &self,
        compute: impl Fn(&Table<S>) -> FsResult<(Vec<Claim>, T)>,
    ) -> FsResult<(Owned<'_>, T)> {
        loop {
            let (claims, _) = compute(&self.inodes.lock().unwrap())?;
            let owned = self.owner.claim(claims).await;
            let (now, answer) = compute(&self.inodes.lock().unwrap())?;
            if now == owned.claims() {
                return Ok((owned, answer));
            }
        }
    }

    /// Claims the keys `ino` is bound to; with the binding (Ended: claims nothing).
    pub(super) async fn own_inode(&self, ino: u64) -> FsResult<(Owned<'_>, Binding)> {
        self.own(|table| {
            let binding = binding_of(table, ino)?;
            Ok((binding.claims(), binding))
        })
        .await
    }

    /// Claims `name` in `parent` (as a key and as a tree).
    pub(super) async fn own_name(&self, parent: u64, name: &str) -> FsResult<Owned<'_>> {
        Ok(self
            .own(|table| Ok((name_claims(table, parent, name)?, ())))
            .await?
            .0)
    }

    /// Claims two names at once (rename's source and destination).
    pub(super) async fn own_names(
        &self,
        (parent, name): (u64, &str),
        (new_parent, new_name): (u64, &str),
    ) -> FsResult<Owned<'_>> {
        Ok(self
            .own(|table| {
                let mut claims = name_claims(table, parent, name)?;
                claims.extend(name_claims(table, new_parent, new_name)?);
                Ok((claims, ()))
            })
            .await?
            .0)
    }

    /// Runs the read `probe` of `key` once no change of names covers it (a rename may have it
    /// half done), until no claim on `key` ended while it ran (its answer may be older than a
    /// change this mount made); after a few tries the last answer is returned with `false`.
    pub(super) async fn read_settled<T, F, Fut>(
        &self,
        key: &str,
        reader: Holder,
        probe: F,
    ) -> (T, bool)
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = T>,
    {
        let mut tries = 1;
        loop {
            self.owner.names_settled(key, reader).await;
            let epoch = self.owner.epoch();
            let answer = probe().await;
            let settled = !self.owner.changed_since(key, epoch, reader);
            if settled || tries == READ_TRIES {
                return (answer, settled);
            }
            tries += 1;
        }
    }
}

/// Tries of a read that changes of this mount keep overtaking (see `read_settled`).
const READ_TRIES: u32 = 4;
