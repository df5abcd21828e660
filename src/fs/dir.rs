//! Directory listings: ListObjectsV2 pages with `/` delimiter, fetched lazily as readdir asks
//! for entries, merged into one ordered list of entries (held once, never twice).
//!
//! Memory: a directory of more than `SMALL_DIR_ENTRIES` drops the entries readdir has handed
//! out, so a handle holds about one page; every listing's entries and pages listed ahead count
//! in one `ListingMemory`, and when that is over its limit the listings of idle handles are
//! dropped (`evict`) and listed again from the start if they are read on (a local user
//! holding many handles open cannot grow the daemon without bound).
//!
//! Name clash rule: when `a` (an object) and `a/` (a prefix or marker) both exist, the directory
//! wins and the file is hidden. Because `a` sorts before `a/`, with keys like `a.txt` possibly
//! between them and page boundaries anywhere, a file entry is only handed out once the listing
//! has moved past `a/` (or has ended), so it never has to be taken back.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use tracing::debug;

use super::attrs::{AttrDefaults, Attributes, Kind};
use super::cache::{ListedKind, SnapshotNames};
use super::names::{classify_common_prefix, classify_object_key, ListedName};
use crate::store::{ListPage, ObjectStore, StoreResult};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    pub name: String,
    pub attrs: Attributes,
}

/// Bytes held by the listings of open directory handles, all together, and the most they
/// should hold (beyond it, idle handles' listings are dropped).
pub struct ListingMemory {
    used: AtomicUsize,
    limit: usize,
}

impl ListingMemory {
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(Self {
            used: AtomicUsize::new(0),
            limit,
        })
    }

    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    pub fn over(&self) -> bool {
        self.used() > self.limit
    }

    fn add(&self, bytes: usize) {
        self.used.fetch_add(bytes, Ordering::Relaxed);
    }

    fn sub(&self, bytes: usize) {
        self.used.fetch_sub(bytes, Ordering::Relaxed);
    }
}

/// What an entry costs, roughly: the struct and its strings.
fn entry_cost(entry: &DirEntry) -> usize {
    std::mem::size_of::<DirEntry>()
        + entry.name.len()
        + entry.attrs.etag.as_ref().map_or(0, String::len)
}

/// A listed page on its way to the reader, counted in the `ListingMemory` until taken.
struct HeldPage {
    page: Option<ListPage>,
    bytes: usize,
    memory: Arc<ListingMemory>,
}

impl HeldPage {
    fn new(page: ListPage, memory: Arc<ListingMemory>) -> Self {
        let bytes = page
            .objects
            .iter()
            .map(|o| {
                std::mem::size_of::<crate::store::ObjectInfo>()
                    + o.key.len()
                    + o.etag.as_ref().map_or(0, String::len)
            })
            .sum::<usize>()
            + page.prefixes.iter().map(|p| 24 + p.len()).sum::<usize>();
        memory.add(bytes);
        Self {
            page: Some(page),
            bytes,
            memory,
        }
    }

    fn take(mut self) -> ListPage {
        self.page.take().expect("taken once")
    }
}

impl Drop for HeldPage {
    fn drop(&mut self) {
        self.memory.sub(self.bytes);
    }
}

/// The state of one directory listing (one per open directory handle).
pub struct DirListing {
    prefix: String,
    /// The entries from index `base` of the listing on (those before were handed out and
    /// dropped, in a large directory).
    entries: Vec<DirEntry>,
    base: usize,
    /// Dropped to free memory: the next read lists again from the start.
    evicted: bool,
    memory: Arc<ListingMemory>,
    /// What `entries` cost, counted in `memory`.
    held: usize,
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
    /// `local` as given, for a listing started over (rewind after `evict`).
    local_given: Vec<DirEntry>,
    /// Pages listed ahead of readdir, from `token` on.
    pager: Option<Pager>,
}

/// Pages listed in the background, at most this many ahead of the reader, so the listing goes
/// at the server's pace and not at the pace of the kernel's small readdir batches.
const PAGES_AHEAD: usize = 4;

/// A task listing pages one after another into a bounded channel; stopped when dropped. It
/// lists ahead only while the listings' memory is under its limit (the reader starts another
/// when it needs a page).
struct Pager {
    pages: tokio::sync::mpsc::Receiver<StoreResult<HeldPage>>,
    task: tokio::task::JoinHandle<()>,
}

impl Pager {
    fn start<S: ObjectStore>(
        store: Arc<S>,
        prefix: String,
        mut token: Option<String>,
        memory: Arc<ListingMemory>,
    ) -> Self {
        let (tx, pages) = tokio::sync::mpsc::channel(PAGES_AHEAD);
        let task = tokio::spawn(async move {
            loop {
                let started = std::time::Instant::now();
                let page = store.list_page(&prefix, true, token, None).await;
                debug!(prefix = %prefix, elapsed_ms = started.elapsed().as_millis() as u64, "listed a page");
                let next = page.as_ref().ok().and_then(|p| p.next_token.clone());
                let failed = page.is_err();
                let page = page.map(|p| HeldPage::new(p, memory.clone()));
                if tx.send(page).await.is_err() || failed || memory.over() {
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

impl Drop for DirListing {
    fn drop(&mut self) {
        self.memory.sub(self.held);
    }
}

impl DirListing {
    pub fn new(
        prefix: String,
        defaults: AttrDefaults,
        dir_mtime: SystemTime,
        memory: Arc<ListingMemory>,
    ) -> Self {
        Self {
            prefix,
            entries: Vec::new(),
            base: 0,
            evicted: false,
            memory,
            held: 0,
            dir_names: HashSet::new(),
            settled: 0,
            token: None,
            started: false,
            done: false,
            last_listed: String::new(),
            defaults,
            dir_mtime,
            local: Vec::new(),
            local_given: Vec::new(),
            pager: None,
        }
    }

    pub fn set_local(&mut self, local: Vec<DirEntry>) {
        self.local_given = local.clone();
        self.local = local;
    }

    /// `name` was given as made in this mount and not in S3 yet (`set_local`).
    fn is_local(&self, name: &str) -> bool {
        self.local_given.iter().any(|l| l.name == name)
    }

    /// Starts over (rewinddir): the next entries come from a fresh listing. The entries made
    /// in this mount are kept (they are added once the listing ends).
    pub fn restart(&mut self) {
        let local = std::mem::take(&mut self.local_given);
        *self = Self::new(
            self.prefix.clone(),
            self.defaults,
            self.dir_mtime,
            self.memory.clone(),
        );
        self.set_local(local);
    }

    /// Frees this listing's memory: its entries and pages listed ahead go, and a later read
    /// lists again from the start (skipping what was handed out).
    pub fn evict(&mut self) {
        if self.evicted || (self.entries.is_empty() && self.pager.is_none()) {
            return;
        }
        debug!(prefix = %self.prefix, entries = self.entries.len(), "directory listing dropped to free memory");
        self.pager = None;
        self.memory.sub(self.held);
        self.held = 0;
        self.entries = Vec::new();
        self.evicted = true;
    }

    /// Every name in the directory, once the listing has ended, if none was dropped.
    pub fn complete_names(&self) -> Option<SnapshotNames> {
        (self.done && self.base == 0 && !self.evicted).then(|| {
            self.entries
                .iter()
                .map(|e| {
                    let kind = match e.attrs.kind {
                        Kind::Dir => ListedKind::Dir,
                        _ => ListedKind::File,
                    };
                    // Entries made here and not in S3 yet were not listed: asked again.
                    let listed = !self.is_local(&e.name);
                    (e.name.clone(), listed.then_some(kind))
                })
                .collect()
        })
    }

    fn push(&mut self, entry: DirEntry) {
        let cost = entry_cost(&entry);
        self.held += cost;
        self.memory.add(cost);
        self.entries.push(entry);
    }

    /// Drops the settled entries before listing index `index`, in a directory of more than
    /// `SMALL_DIR_ENTRIES` (a small one is kept whole: its names renew the snapshot).
    fn drop_before(&mut self, index: usize) {
        if self.base + self.entries.len() <= super::SMALL_DIR_ENTRIES {
            return;
        }
        let n = index.saturating_sub(self.base).min(self.settled);
        if n == 0 {
            return;
        }
        let freed: usize = self.entries.drain(..n).map(|e| entry_cost(&e)).sum();
        self.held -= freed;
        self.memory.sub(freed);
        self.base += n;
        self.settled -= n;
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
        if self.evicted || start < self.base {
            // Dropped (or a seek behind what was dropped): listed again, and the entries
            // before `start` dropped as they come.
            self.restart();
        }
        self.drop_before(start);
        let wanted = start.saturating_add(max);
        while !self.done && self.base + self.final_count() < wanted {
            self.fetch_page(store).await?;
            self.drop_before(start);
        }
        let end = (self.base + self.final_count()).min(wanted);
        let start = start.clamp(self.base, end.max(self.base));
        Ok(&self.entries[start - self.base..end - self.base])
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
        let page = loop {
            let memory = self.memory.clone();
            let pager = self.pager.get_or_insert_with(|| {
                Pager::start(
                    store.clone(),
                    self.prefix.clone(),
                    self.token.clone(),
                    memory,
                )
            });
            match pager.pages.recv().await {
                Some(Ok(page)) => break page.take(),
                Some(Err(e)) => {
                    self.pager = None; // a later call resumes from `token`
                    return Err(e);
                }
                // It stopped listing ahead (memory over its limit) or ended: another resumes
                // from `token`.
                None => self.pager = None,
            }
        };
        self.add_page(page);
        Ok(())
    }

    /// The first page of this directory's listing, listed by someone else (a lookup of the
    /// directory asks for it when the directory's names are wanted, see `Fs::probe`).
    pub fn add_first_page(&mut self, page: ListPage) {
        self.started = true;
        self.add_page(page);
    }

    fn add_page(&mut self, page: ListPage) {
        let first_new = self.entries.len();
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
                        self.push(DirEntry {
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
            // Entries of this mount that S3 lists now are shown as listed. (Names listed
            // before this page were taken out of `local` then.)
            let listed: HashSet<&str> = self.entries[first_new.min(self.entries.len())..]
                .iter()
                .map(|e| e.name.as_str())
                .collect();
            self.local.retain(|l| !listed.contains(l.name.as_str()));
            if self.done {
                let mut local = std::mem::take(&mut self.local);
                local.sort_by(|a, b| a.name.cmp(&b.name));
                for entry in local {
                    self.push(entry);
                }
            }
        }
        self.advance_settled();
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
                let entry = DirEntry {
                    name: name.clone(),
                    attrs,
                };
                let (old, new) = (entry_cost(&self.entries[index]), entry_cost(&entry));
                self.held = self.held + new - old;
                self.memory.add(new);
                self.memory.sub(old);
                self.entries[index] = entry;
            }
            None => self.push(DirEntry {
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
            ListingMemory::new(usize::MAX),
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

    fn names(entries: &[DirEntry]) -> Vec<String> {
        entries.iter().map(|e| e.name.clone()).collect()
    }

    #[tokio::test]
    async fn a_large_listing_read_in_order_holds_about_one_page() {
        let store = Arc::new(MemoryStore::with_page_size(100));
        for i in 0..2500 {
            store.insert(&format!("big/{i:05}"), "");
        }
        let memory = ListingMemory::new(usize::MAX);
        let mut listing = DirListing::new(
            "big/".into(),
            AttrDefaults::default(),
            SystemTime::UNIX_EPOCH,
            memory.clone(),
        );
        let (mut seen, mut most) = (Vec::new(), 0);
        loop {
            let batch = names(listing.entries_from(&store, seen.len(), 40).await.unwrap());
            if batch.is_empty() {
                break;
            }
            seen.extend(batch);
            most = most.max(listing.entries.len());
        }
        let expected: Vec<String> = (0..2500).map(|i| format!("{i:05}")).collect();
        assert_eq!(seen, expected);
        // The first SMALL_DIR_ENTRIES are kept while the directory might be small; after that,
        // one page ahead of the reader at most.
        assert!(
            most <= super::super::SMALL_DIR_ENTRIES + 100,
            "held {most} entries at once"
        );
        assert!(listing.complete_names().is_none(), "names were dropped");
        drop(listing);
        // The pager task may still hold a page it listed ahead until it notices the drop.
        tokio::task::yield_now().await;
        assert_eq!(memory.used(), 0, "every byte counted is given back");
    }

    #[tokio::test]
    async fn an_evicted_listing_goes_on_where_it_was_and_a_seek_back_lists_again() {
        let store = Arc::new(MemoryStore::with_page_size(100));
        for i in 0..1000 {
            store.insert(&format!("d/{i:04}"), "");
        }
        let memory = ListingMemory::new(usize::MAX);
        let mut listing = DirListing::new(
            "d/".into(),
            AttrDefaults::default(),
            SystemTime::UNIX_EPOCH,
            memory.clone(),
        );
        let first = names(listing.entries_from(&store, 0, 450).await.unwrap());
        assert_eq!(first.len(), 450);
        listing.evict();
        assert_eq!(listing.held, 0);
        let next = names(listing.entries_from(&store, 450, 10).await.unwrap());
        assert_eq!(
            next,
            (450..460).map(|i| format!("{i:04}")).collect::<Vec<_>>()
        );
        let back = names(listing.entries_from(&store, 300, 5).await.unwrap());
        assert_eq!(
            back,
            (300..305).map(|i| format!("{i:04}")).collect::<Vec<_>>()
        );
        let small = DirListing::new(
            "d/".into(),
            AttrDefaults::default(),
            SystemTime::UNIX_EPOCH,
            memory.clone(),
        );
        drop((listing, small));
        tokio::task::yield_now().await;
        assert_eq!(memory.used(), 0);
    }

    #[tokio::test]
    async fn a_small_directory_is_kept_whole_for_its_snapshot() {
        let store = Arc::new(MemoryStore::with_page_size(10));
        for i in 0..50 {
            store.insert(&format!("s/{i:02}"), "");
        }
        let mut listing = DirListing::new(
            "s/".into(),
            AttrDefaults::default(),
            SystemTime::UNIX_EPOCH,
            ListingMemory::new(usize::MAX),
        );
        let mut at = 0;
        loop {
            let n = listing.entries_from(&store, at, 7).await.unwrap().len();
            if n == 0 {
                break;
            }
            at += n;
        }
        assert_eq!(listing.complete_names().map(|n| n.len()), Some(50));
    }

    #[tokio::test]
    async fn an_evicted_listing_listed_again_keeps_the_entries_of_this_mount() {
        let store = Arc::new(MemoryStore::with_page_size(100));
        for i in 0..300 {
            store.insert(&format!("d/{i:04}"), "");
        }
        let mut listing = DirListing::new(
            "d/".into(),
            AttrDefaults::default(),
            SystemTime::UNIX_EPOCH,
            ListingMemory::new(usize::MAX),
        );
        let local = DirEntry {
            name: "zz-being-written".into(),
            attrs: Attributes::directory(SystemTime::UNIX_EPOCH, &AttrDefaults::default()),
        };
        listing.set_local(vec![local]);
        let all = listing.entries_from(&store, 0, 1000).await.unwrap().len();
        assert_eq!(all, 301, "the listing and the entry of this mount");
        listing.evict();
        let last = names(listing.entries_from(&store, 300, 10).await.unwrap());
        assert_eq!(last, vec!["zz-being-written".to_string()]);
    }
}
