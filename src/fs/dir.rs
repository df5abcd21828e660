//! Directory listings: ListObjectsV2 pages with `/` delimiter, fetched lazily as readdir asks
//! for entries, merged into one ordered list of entries (held once, never twice).
//!
//! Name clash rule: when `a` (an object) and `a/` (a prefix or marker) both exist, the directory
//! wins and the file is hidden. Because `a` sorts before `a/`, with keys like `a.txt` possibly
//! between them and page boundaries anywhere, a file entry is only handed out once the listing
//! has moved past `a/` (or has ended), so it never has to be taken back.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::SystemTime;

use tracing::debug;

use super::attrs::{AttrDefaults, Attributes, Kind};
use super::names::{classify_common_prefix, classify_object_key, ListedName};
use crate::store::{ListPage, ObjectStore, StoreError, StoreResult};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    pub name: String,
    pub attrs: Attributes,
}

/// The state of one directory listing (one per open directory handle).
pub struct DirListing {
    prefix: String,
    entries: Vec<DirEntry>,
    dir_names: HashSet<String>,
    /// Entries before this index can no longer change (see `advance_settled`).
    settled: usize,
    token: Option<String>,
    started: bool,
    done: bool,
    /// The last key or prefix the listing returned: every key up to it has been seen.
    last_listed: String,
    defaults: AttrDefaults,
    dir_mtime: SystemTime,
    /// Entries created in this mount and not yet in S3: shown at the end unless listed.
    local: Vec<DirEntry>,
    /// Pages listed ahead of readdir, from `token` on.
    pager: Option<Pager>,
}

/// Pages listed in the background, at most this many ahead of the reader, so the listing goes
/// at the server's pace and not at the pace of the kernel's small readdir batches.
const PAGES_AHEAD: usize = 4;

/// A task listing pages one after another into a bounded channel; stopped when dropped.
struct Pager {
    pages: tokio::sync::mpsc::Receiver<StoreResult<ListPage>>,
    task: tokio::task::JoinHandle<()>,
}

impl Pager {
    fn start<S: ObjectStore>(store: Arc<S>, prefix: String, mut token: Option<String>) -> Self {
        let (tx, pages) = tokio::sync::mpsc::channel(PAGES_AHEAD);
        let task = tokio::spawn(async move {
            loop {
                let started = std::time::Instant::now();
                let page = store.list_page(&prefix, true, token, None).await;
                debug!(prefix = %prefix, elapsed_ms = started.elapsed().as_millis() as u64, "listed a page");
                let next = page.as_ref().ok().and_then(|p| p.next_token.clone());
                let failed = page.is_err();
                if tx.send(page).await.is_err() || failed {
                    return;
                }
                match next {
                    Some(next) => token = Some(next),
                    None => return,
                }
            }
        });
        Self { pages, task }
    }
}

impl Drop for Pager {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl DirListing {
    pub fn new(prefix: String, defaults: AttrDefaults, dir_mtime: SystemTime) -> Self {
        Self {
            prefix,
            entries: Vec::new(),
            dir_names: HashSet::new(),
            settled: 0,
            token: None,
            started: false,
            done: false,
            last_listed: String::new(),
            defaults,
            dir_mtime,
            local: Vec::new(),
            pager: None,
        }
    }

    pub fn set_local(&mut self, local: Vec<DirEntry>) {
        self.local = local;
    }

    /// Starts over (rewinddir): the next entries come from a fresh listing.
    pub fn restart(&mut self) {
        *self = Self::new(self.prefix.clone(), self.defaults, self.dir_mtime);
    }

    /// Every name in the directory, once the listing has ended.
    pub fn complete_names(&self) -> Option<std::collections::HashSet<String>> {
        self.done
            .then(|| self.entries.iter().map(|e| e.name.clone()).collect())
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Returns up to `max` entries starting at index `start`, fetching pages as needed. Fewer
    /// than `max` (possibly none) means the listing has ended.
    pub async fn entries_from<S: ObjectStore>(
        &mut self,
        store: &Arc<S>,
        start: usize,
        max: usize,
    ) -> StoreResult<&[DirEntry]> {
        let wanted = start.saturating_add(max);
        while !self.done && self.final_count() < wanted {
            self.fetch_page(store).await?;
        }
        let end = self.final_count().min(wanted);
        Ok(&self.entries[start.min(end)..end])
    }

    /// How many leading entries can no longer change.
    fn final_count(&self) -> usize {
        if self.done {
            self.entries.len()
        } else {
            self.settled
        }
    }

    /// Directories are settled as soon as they are listed; a file `f` once the listing has
    /// passed `f/`. `last_listed` only grows, so a settled entry stays settled.
    fn advance_settled(&mut self) {
        while let Some(entry) = self.entries.get(self.settled) {
            let is_settled = entry.attrs.kind == Kind::Dir || {
                let shadow = format!("{}{}/", self.prefix, entry.name);
                shadow.as_str() < self.last_listed.as_str()
            };
            if !is_settled {
                break;
            }
            self.settled += 1;
        }
    }

    async fn fetch_page<S: ObjectStore>(&mut self, store: &Arc<S>) -> StoreResult<()> {
        if self.started && self.token.is_none() {
            self.done = true;
            return Ok(());
        }
        self.started = true;
        let pager = self.pager.get_or_insert_with(|| {
            Pager::start(store.clone(), self.prefix.clone(), self.token.clone())
        });
        let page = match pager.pages.recv().await {
            Some(Ok(page)) => page,
            Some(Err(e)) => {
                self.pager = None; // a later call resumes from `token`
                return Err(e);
            }
            None => {
                self.pager = None;
                return Err(StoreError::Other("the listing task ended early".into()));
            }
        };
        // Objects and common prefixes come as two sorted lists: merge them in key order.
        let mut objects = page.objects.into_iter().peekable();
        let mut prefixes = page.prefixes.into_iter().peekable();
        loop {
            let take_object = match (objects.peek(), prefixes.peek()) {
                (Some(o), Some(p)) => o.key < *p,
                (Some(_), None) => true,
                (None, Some(_)) => false,
                (None, None) => break,
            };
            if take_object {
                let object = objects.next().expect("peeked");
                match classify_object_key(&self.prefix, &object.key) {
                    ListedName::File(name) => {
                        let attrs = Attributes::file(&object, &self.defaults);
                        self.entries.push(DirEntry {
                            name: name.to_string(),
                            attrs,
                        });
                    }
                    ListedName::Dir(name) => {
                        let name = name.to_string();
                        self.add_dir(name, object.last_modified);
                    }
                    ListedName::SelfMarker => {}
                    ListedName::Hidden => {
                        debug!(key = %object.key, "hiding key that is not a valid file name")
                    }
                }
                self.last_listed = object.key;
            } else {
                let prefix = prefixes.next().expect("peeked");
                match classify_common_prefix(&self.prefix, &prefix) {
                    ListedName::Dir(name) => {
                        let name = name.to_string();
                        self.add_dir(name, self.dir_mtime);
                    }
                    _ => {
                        debug!(prefix = %prefix, "hiding prefix that is not a valid directory name")
                    }
                }
                self.last_listed = prefix;
            }
        }
        self.token = page.next_token;
        if self.token.is_none() {
            self.done = true;
            self.pager = None;
        }
        if !self.local.is_empty() {
            let listed: HashSet<&str> = self.entries.iter().map(|e| e.name.as_str()).collect();
            self.local.retain(|l| !listed.contains(l.name.as_str()));
            if self.done {
                let mut local = std::mem::take(&mut self.local);
                local.sort_by(|a, b| a.name.cmp(&b.name));
                self.entries.extend(local);
            }
        }
        self.advance_settled();
        Ok(())
    }

    fn add_dir(&mut self, name: String, mtime: SystemTime) {
        if self.dir_names.contains(&name) {
            return; // `d/` and `d_$folder$` both present: one entry.
        }
        let attrs = Attributes::directory(mtime, &self.defaults);
        // A file of the same name sorts before `name/` and is not handed out yet (see the module
        // comment): replace it in place. It can only be among the entries listed after `name`.
        let settled = self.settled;
        let clash = self.entries[settled..]
            .iter()
            .rposition(|e| e.attrs.kind == Kind::File && e.name == name)
            .map(|i| i + settled);
        match clash {
            Some(index) => {
                debug!(name = %name, prefix = %self.prefix, "file shadowed by a directory of the same name");
                self.entries[index] = DirEntry {
                    name: name.clone(),
                    attrs,
                };
            }
            None => self.entries.push(DirEntry {
                name: name.clone(),
                attrs,
            }),
        }
        self.dir_names.insert(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory::MemoryStore;

    async fn list_all(store: &Arc<MemoryStore>, prefix: &str) -> Vec<(String, Kind)> {
        let mut listing = DirListing::new(
            prefix.to_string(),
            AttrDefaults::default(),
            SystemTime::UNIX_EPOCH,
        );
        let mut out = Vec::new();
        loop {
            let batch = listing.entries_from(store, out.len(), 3).await.unwrap();
            if batch.is_empty() {
                break;
            }
            out.extend(batch.iter().map(|e| (e.name.clone(), e.attrs.kind)));
        }
        out
    }

    #[tokio::test]
    async fn listing_merges_files_prefixes_and_markers_across_pages() {
        let store = Arc::new(MemoryStore::with_page_size(2));
        for key in [
            "d/",
            "d/x",
            "d/sub/",
            "d/sub/y",
            "d/f",
            "d/old_$folder$",
            "d/z/w",
            "d//bad",
            "e",
        ] {
            store.insert(key, "data");
        }
        let entries = list_all(&store, "d/").await;
        assert_eq!(
            entries,
            vec![
                ("f".to_string(), Kind::File),
                ("old".to_string(), Kind::Dir),
                ("sub".to_string(), Kind::Dir),
                ("x".to_string(), Kind::File),
                ("z".to_string(), Kind::Dir),
            ]
        );
    }

    #[tokio::test]
    async fn directory_wins_a_name_clash_even_across_pages() {
        for page_size in 1..=5 {
            let store = Arc::new(MemoryStore::with_page_size(page_size));
            for key in ["a", "a!", "a-b", "a.txt", "a/inner", "b"] {
                store.insert(key, "x");
            }
            let entries = list_all(&store, "").await;
            assert_eq!(
                entries,
                vec![
                    ("a".to_string(), Kind::Dir),
                    ("a!".to_string(), Kind::File),
                    ("a-b".to_string(), Kind::File),
                    ("a.txt".to_string(), Kind::File),
                    ("b".to_string(), Kind::File),
                ],
                "page size {page_size}"
            );
        }
    }

    #[tokio::test]
    async fn large_directories_list_completely() {
        let store = Arc::new(MemoryStore::with_page_size(1000));
        for i in 0..2500 {
            store.insert(&format!("big/{i:05}"), "");
        }
        let entries = list_all(&store, "big/").await;
        assert_eq!(entries.len(), 2500);
        assert_eq!(entries[2499].0, "02499");
    }
}
