//! The sequential model: what a POSIX filesystem would hold after the steps of the programs
//! ran one at a time, in some order. A step is atomic here; an open file is a file identity,
//! so an operation through a descriptor acts on that file wherever it is named now, and on
//! nothing stored once its name is gone (unlinked or renamed over).

use std::collections::{BTreeMap, BTreeSet, HashMap};

/// The mode a file gets when it is created (the explorer creates with 0644, and objects put
/// before the mount have no mode header, which shows as the default 0644).
pub const NEW_FILE_MODE: u32 = 0o644;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Step {
    /// open(O_CREAT|O_EXCL|O_WRONLY): the descriptor of a new file.
    Create(String),
    /// open(O_WRONLY|O_TRUNC) of an existing file.
    OpenTrunc(String),
    /// open(O_RDONLY).
    OpenRead(String),
    /// open(O_RDWR) of an existing file: writes change it in place.
    OpenRw(String),
    /// pwrite at an offset through the program's descriptor.
    Pwrite(u64, Vec<u8>),
    /// pwrite at 0 through the program's descriptor.
    Write(Vec<u8>),
    /// copy_file_range of a whole file into the program's (new, empty) descriptor, as `cp`
    /// does: server-side, pinned to the version it copied.
    CopyFrom(String),
    /// ftruncate through the program's (writing) descriptor.
    Ftruncate(u64),
    /// fchmod through the program's descriptor.
    Fchmod(u32),
    /// fsetxattr through the program's descriptor.
    Fsetxattr(String, String),
    /// fstat through the program's descriptor.
    Fstat,
    /// fsync through the program's (writing) descriptor.
    Fsync,
    /// close of the program's descriptor (flush, then release).
    Close,
    Truncate(String, u64),
    Unlink(String),
    Rename(String, String),
    Chmod(String, u32),
    SetXattr(String, String, String),
    Mkdir(String),
    Rmdir(String),
    List(String),
    /// SIGTERM: every file open for writing is stored, and every change from then on is
    /// refused (`EROFS`); closing and reading go on.
    Shutdown,
    /// Another client (a second machine) PUTs the key, with no metadata, straight to S3: it
    /// acts on the key string, not through this mount's names.
    ForeignPut(String, Vec<u8>),
}

impl Step {
    /// True for the steps that act through the program's descriptor.
    pub fn uses_fd(&self) -> bool {
        matches!(
            self,
            Step::Write(_)
                | Step::CopyFrom(_)
                | Step::Pwrite(..)
                | Step::Ftruncate(_)
                | Step::Fchmod(_)
                | Step::Fsetxattr(..)
                | Step::Fstat
                | Step::Fsync
                | Step::Close
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct File {
    pub id: u32,
    pub data: Vec<u8>,
    pub mode: u32,
    pub xattrs: BTreeMap<String, String>,
    /// Created by a descriptor and never stored yet: a failed close leaves nothing.
    pub unstored: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Node {
    File(File),
    Dir,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Fd {
    pub id: u32,
    /// The content the descriptor will store at close (None: opened for reading).
    pub data: Option<Vec<u8>>,
    /// A writing descriptor: the file's mode and xattrs when it was opened. Metadata changed
    /// while a file has unsent content is stored with that content, so a failed close may
    /// leave the metadata as it was then (README: "a failed close").
    pub meta_at_open: Option<(u32, BTreeMap<String, String>)>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Model {
    pub nodes: BTreeMap<String, Node>,
    pub next_id: u32,
    /// Program index -> its open descriptor.
    pub fds: BTreeMap<usize, Fd>,
    /// The shutdown began: changes fail.
    pub shutting_down: bool,
    /// Directory renames so far, in order: a step resolves its path's directories before it
    /// acts, so a directory renamed in between is acted in under its new name (as Linux does:
    /// the step holds the directory, not its name).
    pub moves: Vec<(String, String)>,
    /// Program index -> how many of `moves` had happened when its last step ended.
    pub since: BTreeMap<usize, usize>,
}

/// What an observer sees: path -> Some((bytes, mode, xattrs)) for a file, None for a
/// directory (markers and implied parents alike).
pub type View = BTreeMap<String, Option<(Vec<u8>, u32, BTreeMap<String, String>)>>;

pub fn parent(path: &str) -> &str {
    path.rsplit_once('/').map_or("", |(p, _)| p)
}

/// Every directory a path implies (its ancestors), root excluded.
pub fn ancestors(path: &str) -> impl Iterator<Item = &str> {
    path.match_indices('/').map(move |(i, _)| &path[..i])
}

/// Adds the directories implied by the files of `view`.
pub fn with_implied_dirs(mut view: View) -> View {
    let paths: Vec<String> = view.keys().cloned().collect();
    for path in paths {
        for dir in ancestors(&path) {
            view.entry(dir.to_string()).or_insert(None);
        }
    }
    view
}

impl Model {
    pub fn new(files: &[(&str, &[u8])], dirs: &[&str]) -> Self {
        let mut model = Model {
            nodes: BTreeMap::new(),
            next_id: 1,
            fds: BTreeMap::new(),
            shutting_down: false,
            moves: Vec::new(),
            since: BTreeMap::new(),
        };
        for dir in dirs {
            model.nodes.insert(dir.to_string(), Node::Dir);
        }
        for (path, data) in files {
            let id = model.new_id();
            model.nodes.insert(
                path.to_string(),
                Node::File(File {
                    id,
                    data: data.to_vec(),
                    mode: NEW_FILE_MODE,
                    xattrs: BTreeMap::new(),
                    unstored: false,
                }),
            );
        }
        model
    }

    fn new_id(&mut self) -> u32 {
        self.next_id += 1;
        self.next_id - 1
    }

    pub fn view(&self) -> View {
        let view = self
            .nodes
            .iter()
            .map(|(path, node)| {
                let shown = match node {
                    Node::File(f) => Some((f.data.clone(), f.mode, f.xattrs.clone())),
                    Node::Dir => None,
                };
                (path.clone(), shown)
            })
            .collect();
        with_implied_dirs(view)
    }

    /// A directory: the root, a marker, or implied by a name below it (as S3 shows it).
    fn is_dir(&self, path: &str) -> bool {
        path.is_empty()
            || matches!(self.nodes.get(path), Some(Node::Dir))
            || (!self.nodes.contains_key(path) && self.has_children(path))
    }

    fn has_children(&self, dir: &str) -> bool {
        let prefix = format!("{dir}/");
        self.nodes.keys().any(|k| k.starts_with(&prefix))
    }

    fn file_mut(&mut self, path: &str) -> Option<&mut File> {
        match self.nodes.get_mut(path) {
            Some(Node::File(f)) => Some(f),
            _ => None,
        }
    }

    /// The file `id` where it is named now.
    fn file_by_id(&mut self, id: u32) -> Option<&mut File> {
        self.nodes.values_mut().find_map(|n| match n {
            Node::File(f) if f.id == id => Some(f),
            _ => None,
        })
    }

    /// Applies `step` of program `prog` as if it ran alone now; Err when it would fail.
    pub fn apply(&mut self, prog: usize, step: &Step) -> Result<(), ()> {
        let changes = !matches!(
            step,
            Step::OpenRead(_)
                | Step::Fstat
                | Step::Fsync
                | Step::Close
                | Step::List(_)
                | Step::Shutdown
                | Step::ForeignPut(..)
        );
        if self.shutting_down && changes {
            return Err(());
        }
        match step {
            Step::Create(path) => {
                if !self.is_dir(parent(path)) || self.nodes.contains_key(path) {
                    return Err(());
                }
                let id = self.new_id();
                self.nodes.insert(
                    path.clone(),
                    Node::File(File {
                        id,
                        data: Vec::new(),
                        mode: NEW_FILE_MODE,
                        xattrs: BTreeMap::new(),
                        unstored: true,
                    }),
                );
                self.fds.insert(
                    prog,
                    Fd {
                        id,
                        data: Some(Vec::new()),
                        meta_at_open: Some((NEW_FILE_MODE, BTreeMap::new())),
                    },
                );
            }
            Step::OpenTrunc(path) | Step::OpenRead(path) | Step::OpenRw(path) => {
                let file = self.file_mut(path).ok_or(())?;
                let (id, meta) = (file.id, (file.mode, file.xattrs.clone()));
                let data = match step {
                    Step::OpenTrunc(_) => Some(Vec::new()),
                    Step::OpenRw(_) => Some(file.data.clone()),
                    _ => None,
                };
                let meta_at_open = data.is_some().then_some(meta);
                self.fds.insert(
                    prog,
                    Fd {
                        id,
                        data,
                        meta_at_open,
                    },
                );
            }
            Step::CopyFrom(source) => {
                let copied = match self.nodes.get(source) {
                    Some(Node::File(f)) => f.data.clone(),
                    _ => return Err(()),
                };
                let data = self.fds.get_mut(&prog).ok_or(())?.data.as_mut().ok_or(())?;
                *data = copied;
            }
            Step::Pwrite(offset, bytes) => {
                let data = self.fds.get_mut(&prog).ok_or(())?.data.as_mut().ok_or(())?;
                let (start, end) = (*offset as usize, *offset as usize + bytes.len());
                if data.len() < end {
                    data.resize(end, 0);
                }
                data[start..end].copy_from_slice(bytes);
            }
            Step::Write(bytes) => {
                let data = self.fds.get_mut(&prog).ok_or(())?.data.as_mut().ok_or(())?;
                if data.len() < bytes.len() {
                    data.resize(bytes.len(), 0);
                }
                data[..bytes.len()].copy_from_slice(bytes);
            }
            Step::Ftruncate(size) => {
                let data = self.fds.get_mut(&prog).ok_or(())?.data.as_mut().ok_or(())?;
                data.resize(*size as usize, 0);
            }
            Step::Fchmod(mode) => {
                let id = self.fds.get(&prog).ok_or(())?.id;
                if let Some(file) = self.file_by_id(id) {
                    file.mode = *mode;
                }
            }
            Step::Fsetxattr(name, value) => {
                let id = self.fds.get(&prog).ok_or(())?.id;
                if let Some(file) = self.file_by_id(id) {
                    file.xattrs.insert(name.clone(), value.clone());
                }
            }
            Step::Fstat => {
                self.fds.get(&prog).ok_or(())?;
            }
            Step::Fsync => self.store_fd(prog)?,
            Step::Close => {
                self.store_fd(prog)?;
                self.fds.remove(&prog);
            }
            Step::Truncate(path, size) => {
                let file = self.file_mut(path).ok_or(())?;
                file.data.resize(*size as usize, 0);
                let id = file.id;
                // A descriptor writing the file holds its content: the truncate reaches it.
                for fd in self.fds.values_mut().filter(|fd| fd.id == id) {
                    if let Some(data) = fd.data.as_mut() {
                        data.resize(*size as usize, 0);
                    }
                }
            }
            Step::Unlink(path) => {
                self.file_mut(path).ok_or(())?;
                self.nodes.remove(path);
            }
            Step::Rename(from, to) => self.rename(from, to)?,
            Step::Chmod(path, mode) => self.file_mut(path).ok_or(())?.mode = *mode,
            Step::SetXattr(path, name, value) => {
                let file = self.file_mut(path).ok_or(())?;
                file.xattrs.insert(name.clone(), value.clone());
            }
            Step::Mkdir(path) => {
                if !self.is_dir(parent(path)) || self.nodes.contains_key(path) {
                    return Err(());
                }
                self.nodes.insert(path.clone(), Node::Dir);
            }
            Step::Rmdir(path) => {
                if !matches!(self.nodes.get(path), Some(Node::Dir)) || self.has_children(path) {
                    return Err(());
                }
                self.nodes.remove(path);
            }
            Step::List(path) => {
                if !self.is_dir(path) {
                    return Err(());
                }
            }
            Step::ForeignPut(path, data) => {
                // The file now holds the other client's bytes and no metadata; a descriptor
                // open on it still stores its own content at its close (or fails, ESTALE,
                // when it changes in place: nothing changed, which a failed step may be).
                let path = path.clone();
                match self.nodes.get_mut(&path) {
                    Some(Node::File(file)) => {
                        file.data = data.clone();
                        file.mode = NEW_FILE_MODE;
                        file.xattrs.clear();
                        file.unstored = false;
                    }
                    Some(Node::Dir) => return Err(()),
                    None => {
                        let id = self.new_id();
                        self.nodes.insert(
                            path,
                            Node::File(File {
                                id,
                                data: data.clone(),
                                mode: NEW_FILE_MODE,
                                xattrs: BTreeMap::new(),
                                unstored: false,
                            }),
                        );
                    }
                }
            }
            Step::Shutdown => {
                self.shutting_down = true;
                let open: Vec<usize> = self.fds.keys().copied().collect();
                for prog in open {
                    self.store_fd(prog)?;
                }
            }
        }
        Ok(())
    }

    /// A writing descriptor's content becomes its file's, if the file is still named.
    fn store_fd(&mut self, prog: usize) -> Result<(), ()> {
        let fd = self.fds.get(&prog).ok_or(())?.clone();
        if let Some(data) = fd.data {
            if let Some(file) = self.file_by_id(fd.id) {
                file.data = data;
                file.unstored = false;
            }
        }
        Ok(())
    }

    fn rename(&mut self, from: &str, to: &str) -> Result<(), ()> {
        // A directory without a marker (implied by the keys below it, as another client's
        // PUT makes one) moves its children only.
        let implied = !from.is_empty() && !self.nodes.contains_key(from) && self.is_dir(from);
        let source = match self.nodes.get(from) {
            Some(node) => node.clone(),
            None if implied => Node::Dir,
            None => return Err(()),
        };
        if from == to {
            return Ok(());
        }
        if !self.is_dir(parent(to)) {
            return Err(());
        }
        let dest = self.nodes.get(to).cloned();
        match (&source, &dest) {
            (Node::File(_), Some(Node::Dir)) => return Err(()),
            (Node::Dir, Some(Node::File(_))) => return Err(()),
            (Node::Dir, _) if to.starts_with(&format!("{from}/")) => return Err(()),
            (Node::Dir, Some(Node::Dir)) if self.has_children(to) => return Err(()),
            _ => {}
        }
        self.nodes.remove(to);
        let node = match implied {
            true => Node::Dir,
            false => self.nodes.remove(from).expect("checked"),
        };
        if matches!(node, Node::Dir) {
            self.moves.push((from.to_string(), to.to_string()));
            let prefix = format!("{from}/");
            let below: Vec<String> = self
                .nodes
                .keys()
                .filter(|k| k.starts_with(&prefix))
                .cloned()
                .collect();
            for key in below {
                let moved = self.nodes.remove(&key).expect("listed");
                self.nodes
                    .insert(format!("{to}/{}", &key[prefix.len()..]), moved);
            }
        }
        if !implied {
            self.nodes.insert(to.to_string(), node);
        }
        Ok(())
    }

    /// `path` and every node below it in `state`.
    fn nodes_below(state: &Model, path: &str) -> Vec<(String, Node)> {
        state
            .nodes
            .iter()
            .filter(|(k, _)| *k == path || k.starts_with(&format!("{path}/")))
            .map(|(k, n)| (k.clone(), n.clone()))
            .collect()
    }

    /// This state with the `items` chosen by the bits of `mask` added (files as new files).
    fn with_some(&self, items: &[(String, Node)], mask: u32) -> Model {
        let mut outcome = self.clone();
        for (_, (path, node)) in items
            .iter()
            .enumerate()
            .filter(|(i, _)| mask & (1 << i) != 0)
        {
            let mut node = node.clone();
            if let Node::File(f) = &mut node {
                f.id = outcome.new_id();
            }
            outcome.nodes.insert(path.clone(), node);
        }
        outcome
    }

    /// What a failed `step` may have left besides nothing, by the documented rules: a rename
    /// that failed while copying (the sources stay, copies whose removal failed stay too) or
    /// after its copies (the copies stay, and so do the sources whose delete did not
    /// happen); a close that failed leaves no file that was never stored, and may leave the
    /// metadata changed through it as it was at the open.
    pub fn failure_outcomes(&self, prog: usize, step: &Step) -> Vec<Model> {
        let mut outcomes = Vec::new();
        match step {
            Step::Rename(from, to) => {
                let mut moved = self.clone();
                if moved.rename(from, to).is_err() {
                    return outcomes;
                }
                // Failed while deleting: every source (file or marker) that moved may still be
                // under its old name too. Failed while copying: every source stays, and any of
                // the copies. (Kept copies are other files: fresh ids.)
                let sources = Model::nodes_below(self, from);
                for mask in 0u32..(1 << sources.len().min(4)) {
                    outcomes.push(moved.with_some(&sources, mask));
                }
                let copies = Model::nodes_below(&moved, to);
                for mask in 1u32..(1 << copies.len().min(4)) {
                    outcomes.push(self.with_some(&copies, mask));
                }
            }
            Step::Close | Step::Fsync => {
                if let Some(fd) = self.fds.get(&prog).cloned() {
                    let mut gone = self.clone();
                    gone.nodes.retain(|_, n| match n {
                        Node::File(f) => !(f.id == fd.id && f.unstored),
                        Node::Dir => true,
                    });
                    let mut reverted = self.clone();
                    if let (Some((mode, xattrs)), Some(file)) =
                        (fd.meta_at_open, reverted.file_by_id(fd.id))
                    {
                        file.mode = mode;
                        file.xattrs = xattrs;
                    }
                    for mut outcome in [gone, reverted] {
                        if matches!(step, Step::Close) {
                            outcome.fds.remove(&prog);
                        }
                        outcomes.push(outcome);
                    }
                }
            }
            _ => {}
        }
        if matches!(step, Step::Close) {
            // Closed, stored or not.
            let mut closed = self.clone();
            closed.fds.remove(&prog);
            outcomes.push(closed);
        }
        outcomes
    }
}

/// `path` as named after the directory renames `moves`.
fn moved(path: &str, moves: &[(String, String)]) -> String {
    let mut path = path.to_string();
    for (from, to) in moves {
        if path == *from {
            path = to.clone();
        } else if let Some(rest) = path.strip_prefix(&format!("{from}/")) {
            path = format!("{to}/{rest}");
        }
    }
    path
}

impl Step {
    /// This step with its paths renamed by `moves` (see `Model::moves`).
    fn through(&self, moves: &[(String, String)]) -> Step {
        let m = |p: &String| moved(p, moves);
        match self {
            Step::Create(p) => Step::Create(m(p)),
            Step::CopyFrom(p) => Step::CopyFrom(m(p)),
            Step::OpenTrunc(p) => Step::OpenTrunc(m(p)),
            Step::OpenRead(p) => Step::OpenRead(m(p)),
            Step::OpenRw(p) => Step::OpenRw(m(p)),
            Step::Truncate(p, n) => Step::Truncate(m(p), *n),
            Step::Unlink(p) => Step::Unlink(m(p)),
            Step::Rename(a, b) => Step::Rename(m(a), m(b)),
            Step::Chmod(p, mode) => Step::Chmod(m(p), *mode),
            Step::SetXattr(p, k, v) => Step::SetXattr(m(p), k.clone(), v.clone()),
            Step::Mkdir(p) => Step::Mkdir(m(p)),
            Step::Rmdir(p) => Step::Rmdir(m(p)),
            Step::List(p) => Step::List(m(p)),
            other => other.clone(),
        }
    }
}

/// The ways `step` of `prog` may have named its paths: resolved after any of the directory
/// renames since its program's last step.
fn variants(state: &Model, prog: usize, step: &Step) -> Vec<Step> {
    let since = state.since.get(&prog).copied().unwrap_or(0);
    let mut out: Vec<Step> = Vec::new();
    for k in since..=state.moves.len() {
        let variant = step.through(&state.moves[k..]);
        if !out.contains(&variant) {
            out.push(variant);
        }
    }
    out
}

/// One program's steps with what each returned: Ok, Err(errno name), or None when skipped
/// (its descriptor was never opened).
pub type Outcome = Option<Result<(), String>>;

/// Searches the serial orders of the programs' steps (each program's own order kept) for one
/// whose final view is `observed`: successful steps must succeed in the model, failed ones
/// may have done nothing or what `failure_outcomes` allows, skipped ones did nothing.
pub fn explains(start: &Model, programs: &[Vec<(Step, Outcome)>], observed: &View) -> bool {
    let mut seen = BTreeSet::new();
    let mut positions = vec![0usize; programs.len()];
    search(start.clone(), programs, &mut positions, observed, &mut seen)
}

fn search(
    state: Model,
    programs: &[Vec<(Step, Outcome)>],
    positions: &mut Vec<usize>,
    observed: &View,
    seen: &mut BTreeSet<(Vec<usize>, String)>,
) -> bool {
    if positions
        .iter()
        .zip(programs)
        .all(|(p, prog)| *p == prog.len())
    {
        return state.view() == *observed;
    }
    if !seen.insert((positions.clone(), format!("{state:?}"))) {
        return false;
    }
    for prog in 0..programs.len() {
        let Some((step, outcome)) = programs[prog].get(positions[prog]) else {
            continue;
        };
        let mut nexts = Vec::new();
        for step in variants(&state, prog, step) {
            match outcome {
                None => nexts.push(state.clone()),
                Some(Ok(())) => {
                    let mut next = state.clone();
                    if next.apply(prog, &step).is_ok() {
                        nexts.push(next);
                    }
                }
                Some(Err(_)) => {
                    nexts.push(state.clone());
                    nexts.extend(state.failure_outcomes(prog, &step));
                }
            }
        }
        for mut next in nexts {
            next.since.insert(prog, next.moves.len());
            positions[prog] += 1;
            let found = search(next, programs, positions, observed, seen);
            positions[prog] -= 1;
            if found {
                return true;
            }
        }
    }
    false
}

/// The view of what the store holds: objects as files (mode from `x-amz-meta-mode`, xattrs
/// from the other user metadata), `dir/` markers and implied parents as directories.
pub fn store_view(objects: &HashMap<String, (bytes::Bytes, HashMap<String, String>)>) -> View {
    const POSIX: [&str; 7] = ["mode", "uid", "gid", "mtime", "atime", "ctime", "rdev"];
    let mut view = View::new();
    for (key, (data, meta)) in objects {
        if let Some(dir) = key.strip_suffix('/') {
            view.insert(dir.to_string(), None);
            continue;
        }
        let mode = meta
            .get("mode")
            .and_then(|m| m.parse::<u32>().ok())
            .map_or(NEW_FILE_MODE, |m| m & 0o7777);
        let xattrs = meta
            .iter()
            .filter(|(k, _)| !POSIX.contains(&k.as_str()))
            .map(|(k, v)| (format!("user.{k}"), v.clone()))
            .collect();
        view.insert(key.clone(), Some((data.to_vec(), mode, xattrs)));
    }
    with_implied_dirs(view)
}
