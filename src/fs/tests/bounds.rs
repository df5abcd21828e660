//! What local users can make the daemon hold: bounded whatever they do.

use super::*;

// Each file being written kept its first MiB in memory outside the budget: a user writing
// to many files at once (and not closing them) grew the daemon by a MiB a file. Now those
// starts come from one overdraft (a quarter of --max-memory, at least 16 MiB), and past it a
// file's start goes to local disk; every file is still stored whole.
#[tokio::test]
async fn many_files_being_written_at_once_hold_a_bounded_overdraft() {
    let config = FsConfig {
        max_memory: 64 << 20,
        ..super::posix::with_disk()
    };
    let overdraft = config.write_overdraft();
    let (store, fs) = fs_with(&[], config);
    let mut open = Vec::new();
    for i in 0..40 {
        let (_, fh) = fs
            .create(ROOT_INO, OsStr::new(&format!("f{i:02}")), 0o644, ROOT)
            .await
            .unwrap();
        let data = super::pattern(1 << 20, i);
        super::write_at(&fs, fh, 0, &data).await;
        open.push((fh, data));
    }
    assert_eq!(
        fs.write_overdraft.available_permits(),
        0,
        "40 MiB of starts: the 16 MiB overdraft is used up, the rest went to disk"
    );
    for (i, (fh, data)) in open.into_iter().enumerate() {
        fs.commit(fh).await.unwrap();
        fs.release(fh).await;
        assert_eq!(store.inner().get(&format!("f{i:02}")).unwrap(), data);
    }
    assert_eq!(
        fs.write_overdraft.available_permits(),
        overdraft,
        "every file closed: all of it is back"
    );
}
