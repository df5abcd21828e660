//! Model test: random sequences of create/write/close, unlink, mkdir, rmdir, rename and chmod
//! applied to the filesystem (over the in-memory store) and to a plain reference model of a
//! POSIX tree. After every operation both must agree on the outcome (the errno), and at the
//! end on every name, kind, size, content and mode, both in the same mount and in a fresh one
//! (what S3 holds).

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::sync::Arc;

use bucketfs::fs::attrs::Kind;
use bucketfs::fs::error::FsError;
use bucketfs::fs::inode::ROOT_INO;
use bucketfs::fs::namespace::{Caller, SetAttr};
use bucketfs::fs::{Fs, FsConfig};
use bucketfs::store::memory::MemoryStore;
use proptest::prelude::*;

const DIRS: &[&str] = &["", "a", "a/b", "c"];
const NAMES: &[&str] = &["x", "y", "a", "b", "c"];
const CALLER: Caller = Caller { uid: 0, gid: 0 };

#[derive(Debug, Clone)]
enum Op {
    Write { path: String, len: usize, seed: u8 },
    Unlink { path: String },
    Mkdir { path: String },
    Rmdir { path: String },
    Rename { from: String, to: String },
    Chmod { path: String, mode: u32 },
}

fn path() -> impl Strategy<Value = String> {
    (0..DIRS.len(), 0..NAMES.len()).prop_map(|(d, n)| {
        if DIRS[d].is_empty() {
            NAMES[n].to_string()
        } else {
            format!("{}/{}", DIRS[d], NAMES[n])
        }
    })
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (path(), 0usize..3000, any::<u8>()).prop_map(|(path, len, seed)| Op::Write { path, len, seed }),
        1 => path().prop_map(|path| Op::Unlink { path }),
        3 => path().prop_map(|path| Op::Mkdir { path }),
        1 => path().prop_map(|path| Op::Rmdir { path }),
        2 => (path(), path()).prop_map(|(from, to)| Op::Rename { from, to }),
        1 => (path(), prop::sample::select(vec![0o600u32, 0o640, 0o755])).prop_map(|(path, mode)| Op::Chmod { path, mode }),
    ]
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Node {
    File { data: Vec<u8>, mode: u32 },
    Dir { mode: u32 },
}

/// The reference: what a POSIX filesystem does, on a map of paths.
#[derive(Default)]
struct Model {
    nodes: BTreeMap<String, Node>,
}

fn parent(path: &str) -> &str {
    path.rsplit_once('/').map(|(p, _)| p).unwrap_or("")
}

impl Model {
    /// Checks that every ancestor of `path` is a directory.
    fn check_parent(&self, path: &str) -> Result<(), i32> {
        let mut dir = String::new();
        for part in parent(path).split('/').filter(|p| !p.is_empty()) {
            dir = if dir.is_empty() {
                part.to_string()
            } else {
                format!("{dir}/{part}")
            };
            match self.nodes.get(&dir) {
                None => return Err(libc::ENOENT),
                Some(Node::File { .. }) => return Err(libc::ENOTDIR),
                Some(Node::Dir { .. }) => {}
            }
        }
        Ok(())
    }

    fn has_children(&self, path: &str) -> bool {
        let prefix = format!("{path}/");
        self.nodes.keys().any(|k| k.starts_with(&prefix))
    }

    fn apply(&mut self, op: &Op) -> Result<(), i32> {
        match op {
            Op::Write { path, len, seed } => {
                self.check_parent(path)?;
                let mode = match self.nodes.get(path) {
                    Some(Node::Dir { .. }) => return Err(libc::EISDIR),
                    Some(Node::File { mode, .. }) => *mode,
                    None => 0o644,
                };
                self.nodes.insert(
                    path.clone(),
                    Node::File {
                        data: data(*len, *seed),
                        mode,
                    },
                );
                Ok(())
            }
            Op::Unlink { path } => {
                self.check_parent(path)?;
                match self.nodes.get(path) {
                    None => Err(libc::ENOENT),
                    Some(Node::Dir { .. }) => Err(libc::EISDIR),
                    Some(Node::File { .. }) => {
                        self.nodes.remove(path);
                        Ok(())
                    }
                }
            }
            Op::Mkdir { path } => {
                self.check_parent(path)?;
                if self.nodes.contains_key(path) {
                    return Err(libc::EEXIST);
                }
                self.nodes.insert(path.clone(), Node::Dir { mode: 0o755 });
                Ok(())
            }
            Op::Rmdir { path } => {
                self.check_parent(path)?;
                match self.nodes.get(path) {
                    None => Err(libc::ENOENT),
                    Some(Node::File { .. }) => Err(libc::ENOTDIR),
                    Some(Node::Dir { .. }) if self.has_children(path) => Err(libc::ENOTEMPTY),
                    Some(Node::Dir { .. }) => {
                        self.nodes.remove(path);
                        Ok(())
                    }
                }
            }
            Op::Rename { from, to } => {
                self.check_parent(from)?;
                let source = self.nodes.get(from).cloned().ok_or(libc::ENOENT)?;
                self.check_parent(to)?;
                if from == to {
                    return Ok(());
                }
                let dest = self.nodes.get(to).cloned();
                match (&source, &dest) {
                    (Node::File { .. }, Some(Node::Dir { .. })) => return Err(libc::EISDIR),
                    (Node::Dir { .. }, Some(Node::File { .. })) => return Err(libc::ENOTDIR),
                    (Node::Dir { .. }, Some(Node::Dir { .. })) if self.has_children(to) => {
                        return Err(libc::ENOTEMPTY)
                    }
                    _ => {}
                }
                if matches!(source, Node::Dir { .. }) && to.starts_with(&format!("{from}/")) {
                    return Err(libc::EINVAL);
                }
                let prefix = format!("{from}/");
                let moved: Vec<(String, Node)> = self
                    .nodes
                    .iter()
                    .filter(|(k, _)| *k == from || k.starts_with(&prefix))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                for (k, _) in &moved {
                    self.nodes.remove(k);
                }
                self.nodes.remove(to);
                for (k, v) in moved {
                    let new = format!("{to}{}", &k[from.len()..]);
                    self.nodes.insert(new, v);
                }
                Ok(())
            }
            Op::Chmod { path, mode } => {
                self.check_parent(path)?;
                match self.nodes.get_mut(path) {
                    None => Err(libc::ENOENT),
                    Some(Node::File { mode: m, .. }) | Some(Node::Dir { mode: m }) => {
                        *m = *mode;
                        Ok(())
                    }
                }
            }
        }
    }
}

fn data(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

type TestFs = Fs<MemoryStore>;

async fn resolve(fs: &TestFs, path: &str) -> Result<u64, FsError> {
    let mut ino = ROOT_INO;
    for part in path.split('/').filter(|p| !p.is_empty()) {
        let entry = fs.lookup(ino, OsStr::new(part)).await?;
        ino = entry.ino;
    }
    Ok(ino)
}

async fn resolve_parent<'a>(fs: &TestFs, path: &'a str) -> Result<(u64, &'a OsStr), FsError> {
    let name = path.rsplit_once('/').map(|(_, n)| n).unwrap_or(path);
    Ok((resolve(fs, parent(path)).await?, OsStr::new(name)))
}

/// Does `op` through the filesystem the way the kernel would drive it.
async fn apply_fs(fs: &TestFs, op: &Op) -> Result<(), FsError> {
    match op {
        Op::Write { path, len, seed } => {
            let (dir, name) = resolve_parent(fs, path).await?;
            let fh = match fs.lookup(dir, name).await {
                Ok(entry) if entry.attrs.kind == Kind::Dir => return Err(FsError::IsDir),
                Ok(entry) => fs.open(entry.ino, libc::O_WRONLY | libc::O_TRUNC).await?,
                Err(FsError::NotFound) => fs.create(dir, name, 0o644, CALLER).await?.1,
                Err(e) => return Err(e),
            };
            let body = data(*len, *seed);
            let mut offset = 0;
            for chunk in body.chunks(1000) {
                fs.write(fh, offset, chunk).await?;
                offset += chunk.len() as u64;
            }
            let result = fs.commit(fh).await;
            fs.release(fh).await;
            result
        }
        Op::Unlink { path } => {
            let (dir, name) = resolve_parent(fs, path).await?;
            fs.unlink(dir, name).await
        }
        Op::Mkdir { path } => {
            let (dir, name) = resolve_parent(fs, path).await?;
            fs.mkdir(dir, name, 0o755, CALLER).await.map(|_| ())
        }
        Op::Rmdir { path } => {
            let (dir, name) = resolve_parent(fs, path).await?;
            fs.rmdir(dir, name).await
        }
        Op::Rename { from, to } => {
            let (from_dir, from_name) = resolve_parent(fs, from).await?;
            fs.lookup(from_dir, from_name).await?;
            let (to_dir, to_name) = resolve_parent(fs, to).await?;
            fs.rename(from_dir, from_name, to_dir, to_name, false).await
        }
        Op::Chmod { path, mode } => {
            let ino = resolve(fs, path).await?;
            let change = SetAttr {
                mode: Some(*mode),
                ..SetAttr::default()
            };
            fs.setattr(ino, change).await.map(|_| ())
        }
    }
}

/// Everything the filesystem shows, walked with readdir and read back in full.
async fn snapshot(fs: &TestFs, with_dir_modes: bool) -> BTreeMap<String, Node> {
    let mut out = BTreeMap::new();
    let mut pending = vec![(String::new(), ROOT_INO)];
    while let Some((dir_path, ino)) = pending.pop() {
        let fh = fs.opendir(ino).unwrap();
        let items = fs.readdir(fh, 0, 10_000, false).await.unwrap();
        fs.releasedir(fh);
        for item in items
            .into_iter()
            .filter(|i| i.name != "." && i.name != "..")
        {
            let path = if dir_path.is_empty() {
                item.name.clone()
            } else {
                format!("{dir_path}/{}", item.name)
            };
            let entry = fs.lookup(ino, OsStr::new(&item.name)).await.unwrap();
            match entry.attrs.kind {
                Kind::Dir => {
                    let mode = if with_dir_modes { entry.attrs.perm } else { 0 };
                    out.insert(path.clone(), Node::Dir { mode });
                    pending.push((path, entry.ino));
                }
                Kind::File => {
                    let fh = fs.open(entry.ino, libc::O_RDONLY).await.unwrap();
                    let data = fs.read(fh, 0, 1 << 20).await.unwrap().to_vec();
                    fs.release(fh).await;
                    assert_eq!(data.len() as u64, entry.attrs.size, "size of {path}");
                    out.insert(
                        path,
                        Node::File {
                            data,
                            mode: entry.attrs.perm,
                        },
                    );
                }
                other => panic!("the model makes only files and directories, not {other:?}"),
            }
        }
    }
    out
}

fn without_dir_modes(model: &BTreeMap<String, Node>) -> BTreeMap<String, Node> {
    model
        .iter()
        .map(|(k, v)| match v {
            Node::Dir { .. } => (k.clone(), Node::Dir { mode: 0 }),
            file => (k.clone(), file.clone()),
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn filesystem_agrees_with_the_model(ops in prop::collection::vec(op(), 1..40)) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            let store = Arc::new(MemoryStore::with_page_size(2));
            let fs = Fs::new(store.clone(), FsConfig::default());
            let mut model = Model::default();
            for op in &ops {
                let expected = model.apply(op);
                let got = apply_fs(&fs, op).await.map_err(|e| e.errno());
                prop_assert_eq!(got, expected, "{:?}", op);
            }
            prop_assert_eq!(&snapshot(&fs, true).await, &model.nodes);
            // A fresh mount over the same bucket sees the same tree (directory modes are only
            // kept by the mount that set them).
            let fresh = Fs::new(store, FsConfig::default());
            prop_assert_eq!(snapshot(&fresh, false).await, without_dir_modes(&model.nodes));
            Ok(())
        })?;
    }
}
