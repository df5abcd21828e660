//! S3 requests per everyday operation against the in-memory store, as the kernel sends them
//! (the end-to-end `round_trips` test counts the same on a real server through a mount).

use super::*;
use crate::store::faulty::Op;

fn calls(store: &FaultyStore<MemoryStore>) -> [usize; 3] {
    [
        store.calls(Op::Head),
        store.calls(Op::List),
        store.calls(Op::Get),
    ]
}

fn since(store: &FaultyStore<MemoryStore>, before: [usize; 3]) -> [usize; 3] {
    let now = calls(store);
    [now[0] - before[0], now[1] - before[1], now[2] - before[2]]
}

/// What `ls -l d` makes the kernel send: a lookup of `d`, readdirplus to the end, then a
/// lookup of every entry readdirplus handed out unverified.
async fn ls_l(fs: &TestFs, dir: &str) {
    let d = fs.lookup(ROOT_INO, OsStr::new(dir)).await.unwrap();
    let fh = fs.opendir(d.ino).unwrap();
    let mut offset = 0;
    let mut unverified = Vec::new();
    loop {
        let items = fs.readdir(fh, offset, 32, true).await.unwrap();
        let Some(last) = items.last() else { break };
        offset = last.offset;
        for item in &items {
            if !item.verified && item.name != "." && item.name != ".." {
                unverified.push(item.name.clone());
            }
        }
    }
    fs.releasedir(fh);
    for name in unverified {
        fs.lookup(d.ino, OsStr::new(&name)).await.unwrap();
    }
}

/// A store of S3's page size (1,000) holding `d/f1` ... `d/fN`, and a mount of it.
fn small_dir(n: usize) -> (Arc<FaultyStore<MemoryStore>>, TestFs) {
    small_dir_with(n, FsConfig::default())
}

fn small_dir_with(n: usize, config: FsConfig) -> (Arc<FaultyStore<MemoryStore>>, TestFs) {
    let store = Arc::new(FaultyStore::new(MemoryStore::new()));
    for i in 1..=n {
        store.inner().insert(&format!("d/f{i}"), "x".to_string());
    }
    let fs = Fs::new(store.clone(), config);
    (store, fs)
}

#[tokio::test]
async fn ls_l_of_a_small_directory_sends_one_list_and_a_head_per_entry() {
    let (store, fs) = small_dir(50);
    let before = calls(&store);
    ls_l(&fs, "d").await;
    let [heads, lists, _] = since(&store, before);
    assert!(
        lists <= 2,
        "a LIST to look `d` up and one page for readdir, never a LIST per entry: {lists}"
    );
    assert!(heads <= 51, "one HEAD per entry (and `d`'s own): {heads}");
}

// Once a small directory's names expired, the lookup of the directory itself (a HEAD and a
// LIST, sent anyway) lists a page instead of one key and renews them: a name in it then
// costs its HEAD only, and a name not in it nothing (it once cost a LIST to renew the names,
// then a HEAD and a LIST per name).
#[tokio::test]
async fn a_directorys_own_lookup_renews_its_expired_names() {
    let config = FsConfig {
        metadata_ttl: Duration::from_millis(100),
        ..FsConfig::default()
    };
    let (store, fs) = small_dir_with(50, config);
    ls_l(&fs, "d").await;
    tokio::time::sleep(Duration::from_millis(150)).await;
    let before = calls(&store);
    let d = fs.lookup(ROOT_INO, OsStr::new("d")).await.unwrap();
    fs.lookup(d.ino, OsStr::new("f2")).await.unwrap();
    assert_eq!(
        fs.lookup(d.ino, OsStr::new("nope")).await.map(|e| e.ino),
        Err(FsError::NotFound)
    );
    assert_eq!(
        since(&store, before),
        [2, 1, 0],
        "HEAD and LIST of d (the LIST renews its names), HEAD of d/f2, nothing for d/nope"
    );
}
