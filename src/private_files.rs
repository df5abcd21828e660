//! Files and directories bucketfs creates for itself (logs, upload journals, the state
//! directory): private to the user it runs as, and never reached through a symlink someone
//! else planted.

use std::fs::{DirBuilder, File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::Path;

/// Creates `dir` and its missing parents with mode 0700 (existing ones are left as they are).
pub fn create_dir(dir: &Path) -> io::Result<()> {
    DirBuilder::new().recursive(true).mode(0o700).create(dir)
}

/// Opens `path` for appending, created with mode 0600; with `no_follow`, a symlink there is
/// refused (ELOOP) rather than followed.
pub fn open_append(path: &Path, no_follow: bool) -> io::Result<File> {
    let mut options = OpenOptions::new();
    options.create(true).append(true).mode(0o600);
    if no_follow {
        options.custom_flags(libc::O_NOFOLLOW);
    }
    options.open(path)
}

/// Opens an existing file of ours for reading and writing, refusing a symlink.
pub fn open_existing(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
}

/// Creates (0600) and opens for reading and appending, refusing a symlink.
pub fn create_read_append(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .create(true)
        .read(true)
        .append(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
}

/// Err with one sentence when `dir` exists and belongs to another user: its files could be
/// read, or replaced by links, by that user.
pub fn check_owned(dir: &Path) -> Result<(), String> {
    let Ok(meta) = std::fs::symlink_metadata(dir) else {
        return Ok(()); // made by us, below
    };
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    if meta.uid() != me {
        return Err(format!(
            "the state directory's {} belongs to uid {}, not to this user (uid {me}): pass \
             --state-dir with a directory of your own",
            dir.display(),
            meta.uid()
        ));
    }
    Ok(())
}

/// Err with one sentence when `dir`, or a directory between `base` and it, exists and is a
/// symlink or belongs to another user: in a shared state directory (mode 1777, say) another
/// user could have made `uploads/` or `log/` to plant links or journals of their own there.
/// Missing directories are fine (made private by us).
pub fn check_owned_below(base: &Path, dir: &Path) -> Result<(), String> {
    check_owned(base)?;
    let Ok(below) = dir.strip_prefix(base) else {
        return Ok(());
    };
    let mut path = base.to_path_buf();
    for part in below.components() {
        path.push(part);
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            return Ok(());
        };
        if meta.file_type().is_symlink() {
            return Err(format!(
                "the state directory's {} is a symlink, which bucketfs does not follow: remove \
                 it or pass --state-dir with a directory of your own",
                path.display()
            ));
        }
        check_owned(&path)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn files_and_directories_are_private_and_symlinks_refused() {
        let base = std::env::temp_dir().join(format!("bucketfs-private-{}", std::process::id()));
        let dir = base.join("a/b");
        create_dir(&dir).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&base.join("a")), 0o700);
        let log = dir.join("log");
        drop(open_append(&log, true).unwrap());
        assert_eq!(mode(&log), 0o600);
        let victim = base.join("victim");
        std::fs::write(&victim, "keep").unwrap();
        let planted = dir.join("planted");
        std::os::unix::fs::symlink(&victim, &planted).unwrap();
        let err = create_read_append(&planted).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ELOOP));
        assert_eq!(
            open_existing(&planted).unwrap_err().raw_os_error(),
            Some(libc::ELOOP)
        );
        assert_eq!(std::fs::read(&victim).unwrap(), b"keep");
        assert!(check_owned(&dir).is_ok());
        std::fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn a_symlink_or_another_users_directory_below_the_state_dir_is_refused() {
        let base = std::env::temp_dir().join(format!("bucketfs-below-{}", std::process::id()));
        let scope = base.join("uploads/scope");
        assert!(check_owned_below(&base, &scope).is_ok(), "nothing made yet");
        create_dir(&scope).unwrap();
        assert!(check_owned_below(&base, &scope).is_ok(), "all ours");
        std::os::unix::fs::chown(base.join("uploads"), Some(12345), None)
            .expect("chown needs root: the test suite runs as root (.ci/run)");
        let refused = check_owned_below(&base, &scope).unwrap_err();
        assert!(
            refused.contains("uploads belongs to uid 12345"),
            "{refused}"
        );
        std::fs::remove_dir_all(base.join("uploads")).unwrap();
        std::os::unix::fs::symlink(std::env::temp_dir(), base.join("uploads")).unwrap();
        let refused = check_owned_below(&base, &scope).unwrap_err();
        assert!(refused.contains("is a symlink"), "{refused}");
        std::fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn a_state_directory_of_another_user_is_refused() {
        let dir = std::env::temp_dir().join(format!("bucketfs-foreign-{}", std::process::id()));
        create_dir(&dir).unwrap();
        std::os::unix::fs::chown(&dir, Some(12345), None)
            .expect("chown needs root: the test suite runs as root (.ci/run)");
        let refused = check_owned(&dir).unwrap_err();
        assert!(refused.contains("belongs to uid 12345"), "{refused}");
        assert!(refused.contains("--state-dir"), "{refused}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
