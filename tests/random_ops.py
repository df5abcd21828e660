#!/usr/bin/env python3
"""Random operations on a bucketfs mount, checked against a local reference directory.

    python3 tests/random_ops.py --mount DIR --reference DIR --seed N --ops N [--phase run|compare]

`run` applies N seeded random operations to both trees in lockstep, in a subdirectory of each
(`--name`, default `random-ops-SEED`, which must not exist yet), and compares:

- the OUTCOME of every operation: success or failure, the failing step and its errno, and what
  the operation observed (bytes read back, fstat sizes, listings);
- the STATE of both trees every `--check-every` operations and at the end: the same paths, types,
  sizes, content (md5), permission bits (st_mode & 0o7777) and symlink targets.

`compare` compares the state only (run it after an unmount and a new mount, to prove that
everything was stored).

Operations are generated from the seed and the state of the reference tree only, so a seed
always gives the same sequence. A difference prints a report (the operation, both outcomes, the
last 20 operations) and exits 1; success prints one summary line and exits 0. Bad usage or a
reference tree that cannot be set up exits 2.

Operations (weights in Gen.weights; sizes 0 to 12 MiB, most under 256 KiB, some over one 5 MiB
part): create (O_CREAT with O_TRUNC or O_EXCL, O_WRONLY or O_RDWR), overwrite (O_TRUNC),
append (O_APPEND), pwrite (O_WRONLY/O_RDWR without O_TRUNC, in the file, across a part
boundary, past the end), create_scattered (a new O_WRONLY file written out of order), truncate
(path) and ftruncate (fd, with writes before or after), read (random ranges), rdwr (O_RDWR writes
read back before close), rename (to a new name, over a file, onto a directory, onto itself),
rename_dir (to a new name, over an empty or non-empty directory, into itself, onto a file),
unlink, mkdir, rmdir, rmtree (rm -r), chmod (files and directories), symlink, stat, listdir,
unlink_open (unlink a file open O_RDWR, sometimes a new file takes the name, the handle reads
and writes on), rename_open (rename a file open for writing between writes) and open_then (a
handle open for writing, and meanwhile truncate(path), chmod(path), lstat, rename, a dup closed
or an fsync). Wrong paths are drawn on purpose now and then, so that failures (ENOENT,
EEXIST, EISDIR, ENOTDIR, ENOTEMPTY, EINVAL) are compared too.

Standard library only. See ALLOWED_DIVERGENCES for the few refusals bucketfs may make where a
local filesystem succeeds; every other difference, and any silent difference (both succeed but
the content or state differs), fails.
"""

import argparse
import collections
import errno
import hashlib
import os
import random
import stat
import sys
import time

KiB = 1 << 10
MiB = 1 << 20
# bucketfs is mounted with --write-part-size 5M: files over one part go up as multipart uploads.
PART = 5 * MiB
MAX_FILE = 12 * MiB
# Past this many bytes in the tree, new content is small (keeps state checks fast).
TREE_BUDGET = 32 * MiB
MAX_DEPTH = 3

DIR_NAMES = ["d0", "d1", "d2", "sub dir"]
FILE_NAMES = ["f0", "f1", "f2", "f3", "a.txt", "b.bin", "n\u00fc x.dat", ".hidden"]
SYMLINK_TARGETS = ["f0", "f1", "a.txt", "d0", "missing"]
CREATE_MODES = [0o644, 0o644, 0o600, 0o640, 0o664]
# Owner always keeps rw (files) and rwx (directories): results must not depend on being root.
FILE_MODES = [0o644, 0o600, 0o640, 0o664, 0o666, 0o700, 0o755, 0o750, 0o604, 0o620]
DIR_MODES = [0o755, 0o700, 0o750, 0o775, 0o777, 0o711, 0o1777, 0o1755]
UMASK = 0o022

# Divergences allowed, each a documented refusal of bucketfs (README, Semantics) where a local
# filesystem succeeds. Each entry: operation kind, failing step on the mount, errno, a condition
# on the operation and the step's index, and the reason. When one occurs, the mount's path is
# set to the reference's content (a plain overwrite) and the run goes on. Nothing else may
# differ.
ALLOWED_DIVERGENCES = [
    {
        "kinds": ("create_scattered",),
        "steps": ("pwrite",),
        "errnos": (errno.EOPNOTSUPP,),
        # Its steps are open#1, pwrite#2, pwrite#3...: only a write that goes back before the
        # end of what was written, after the written bytes reached one part (only then may the
        # first part be uploaded already).
        "when": lambda op, step: op.back_after_part(step - 2),
        "reason": "README 'writes anywhere': a new file written O_WRONLY streams; once its first "
        "part (5 MiB) has been uploaded, a write behind its end fails with EOPNOTSUPP",
    },
    {
        "kinds": ("unlink_open",),
        "steps": ("pwrite", "pread"),
        "errnos": (errno.ESTALE,),
        # Only when a new file took the name while the old one was still open.
        "when": lambda op, step: op.recreate is not None,
        "reason": "README 'unlink': a new file made under the name of a file unlinked while open "
        "deletes the old object first; the old handles then get ESTALE for what they had not "
        "read or written",
    },
]


class Data:
    """Bytes observed by an operation: compared whole, shown as length and md5."""

    __slots__ = ("b",)

    def __init__(self, b):
        self.b = bytes(b)

    def __eq__(self, other):
        return isinstance(other, Data) and self.b == other.b

    def __hash__(self):
        return hash(self.b)

    def __repr__(self):
        return "<%d bytes md5 %s>" % (len(self.b), hashlib.md5(self.b).hexdigest()[:12])


def describe_bytes(n, data_md5):
    return "<%d bytes md5 %s>" % (n, data_md5[:12])


class Op:
    """One operation: a kind and its parameters, generated before it runs on either side."""

    def __init__(self, kind, **params):
        self.kind = kind
        self.params = params

    def __getattr__(self, name):
        try:
            return self.__dict__["params"][name]
        except KeyError:
            raise AttributeError(name)

    def back_after_part(self, i):
        """For create_scattered: write i goes behind the end after the end reached a part."""
        end = 0
        for off, ln in self.writes[:i]:
            end = max(end, off + ln)
        off, _ = self.writes[i]
        return end >= PART and off < end

    def __str__(self):
        return self.describe(8)

    def describe(self, limit):
        parts = []
        for k, v in self.params.items():
            if k == "flags":
                parts.append("flags=" + flag_names(v))
            elif k == "mode":
                parts.append("mode=" + oct(v))
            else:
                parts.append("%s=%s" % (k, summary(v, limit)))
        return "%s(%s)" % (self.kind, ", ".join(parts))


def summary(v, limit=8):
    """repr with bytes shown as length and md5, and long lists cut."""
    if isinstance(v, (bytes, bytearray)):
        return describe_bytes(len(v), hashlib.md5(v).hexdigest())
    if isinstance(v, tuple):
        return "(" + ", ".join(summary(x, limit) for x in v) + ")"
    if isinstance(v, list):
        items = [summary(x, limit) for x in v[:limit]]
        if len(v) > limit:
            items.append("... %d in all" % len(v))
        return "[" + ", ".join(items) + "]"
    return repr(v)


def flag_names(flags):
    names = []
    acc = flags & (os.O_RDONLY | os.O_WRONLY | os.O_RDWR)
    names.append({os.O_RDONLY: "O_RDONLY", os.O_WRONLY: "O_WRONLY", os.O_RDWR: "O_RDWR"}[acc])
    for name in ("O_CREAT", "O_EXCL", "O_TRUNC", "O_APPEND"):
        if flags & getattr(os, name):
            names.append(name)
    return "|".join(names)


# ---------------------------------------------------------------- executing operations


class Stop(Exception):
    """A step failed: the operation stops there (its descriptors are closed)."""

    def __init__(self, step, err):
        super().__init__(step, err)
        self.step = step
        self.err = err


class Run:
    """One operation on one tree: steps, observations, descriptors to clean up."""

    def __init__(self, root):
        self.root = root
        self.obs = []
        self.fds = []
        self.steps = 0
        self.written = 0

    def p(self, rel):
        return os.path.join(self.root, rel) if rel else self.root

    def step(self, name, fn, *args):
        self.steps += 1
        try:
            return fn(*args)
        except OSError as e:
            raise Stop("%s#%d" % (name, self.steps), e.errno)

    def open(self, rel, flags, mode=0o644):
        fd = self.step("open", os.open, self.p(rel), flags, mode)
        self.fds.append(fd)
        return fd

    def close(self, fd):
        self.fds.remove(fd)
        self.step("close", os.close, fd)

    def write(self, fd, data):
        def write_all(fd, data):
            view = memoryview(data)
            while view:
                n = os.write(fd, view)
                if n <= 0:
                    raise OSError(errno.EIO, "short write")
                self.written += n
                view = view[n:]

        self.step("write", write_all, fd, data)

    def pwrite(self, fd, data, off):
        def pwrite_all(fd, data, off):
            view = memoryview(data)
            while view:
                n = os.pwrite(fd, view, off)
                if n <= 0:
                    raise OSError(errno.EIO, "short write")
                self.written += n
                view = view[n:]
                off += n

        self.step("pwrite", pwrite_all, fd, data, off)

    def pread(self, fd, n, off, label="pread"):
        def pread_all(fd, n, off):
            out = bytearray()
            while len(out) < n:
                chunk = os.pread(fd, min(n - len(out), 4 * MiB), off + len(out))
                if not chunk:
                    break
                out += chunk
            return bytes(out)

        data = self.step("pread", pread_all, fd, n, off)
        self.obs.append((label, off, Data(data)))
        return data

    def fstat(self, fd, nlink=False):
        st = self.step("fstat", os.fstat, fd)
        if not stat.S_ISREG(st.st_mode):  # a directory's size is the filesystem's own
            self.obs.append(("fstat.type", oct(stat.S_IFMT(st.st_mode))))
            return st
        self.obs.append(("fstat.size", st.st_size) + ((("nlink", st.st_nlink),) if nlink else ()))
        return st

    def cleanup(self):
        for fd in self.fds:
            try:
                os.close(fd)
            except OSError:
                pass
        self.fds = []


def chunked(data, sizes):
    off = 0
    for n in sizes:
        yield off, data[off:off + n]
        off += n
    if off < len(data):
        yield off, data[off:]


def x_create(r, op):
    # create / overwrite: open (O_CREAT and/or O_TRUNC), sequential writes, optional fsync,
    # an O_RDWR handle reads everything back before close.
    fd = r.open(op.path, op.flags, op.mode)
    for i, (_, piece) in enumerate(chunked(op.data, op.chunks)):
        r.write(fd, piece)
        if op.fsync_at == i:
            r.step("fsync", os.fsync, fd)
    if op.flags & os.O_RDWR:
        r.fstat(fd)
        r.pread(fd, len(op.data) + 10, 0, "readback")
    r.close(fd)


def x_append(r, op):
    fd = r.open(op.path, op.flags, 0o644)
    for i, piece in enumerate(op.pieces):
        r.write(fd, piece)
        if op.fsync_at == i:
            r.step("fsync", os.fsync, fd)
    if op.flags & os.O_RDWR:
        st = r.fstat(fd)
        r.pread(fd, st.st_size + 10, 0, "readback")
    r.close(fd)


def x_pwrite(r, op):
    fd = r.open(op.path, op.flags)
    for i, (off, data) in enumerate(op.writes):
        r.pwrite(fd, data, off)
        if op.fsync_at == i:
            r.step("fsync", os.fsync, fd)
    if op.flags & os.O_RDWR:
        r.fstat(fd)
        for off, data in op.writes:
            r.pread(fd, len(data) + 100, max(0, off - 100), "readback")
        for off, n in op.reads:
            r.pread(fd, n, off)
    r.close(fd)


def x_create_scattered(r, op):
    fd = r.open(op.path, op.flags, 0o644)
    for off, ln in op.writes:
        r.pwrite(fd, op.data[off:off + ln], off)
    r.close(fd)


def x_truncate(r, op):
    r.step("truncate", os.truncate, r.p(op.path), op.size)


def x_ftruncate(r, op):
    fd = r.open(op.path, op.flags)
    if op.write_first is not None:
        off, data = op.write_first
        r.pwrite(fd, data, off)
    r.step("ftruncate", os.ftruncate, fd, op.size)
    if op.write_after is not None:
        off, data = op.write_after
        r.pwrite(fd, data, off)
    st = r.fstat(fd)
    if op.flags & os.O_RDWR:
        r.pread(fd, st.st_size + 10, 0, "readback")
    r.close(fd)


def x_read(r, op):
    fd = r.open(op.path, os.O_RDONLY)
    r.fstat(fd)
    for off, n in op.reads:
        r.pread(fd, n, off)
    r.close(fd)


def x_rdwr(r, op):
    fd = r.open(op.path, op.flags, 0o644)
    for off, data in op.writes:
        r.pwrite(fd, data, off)
        r.pread(fd, len(data), off, "readback")
    r.fstat(fd)
    for off, n in op.reads:
        r.pread(fd, n, off)
    r.close(fd)


def x_rename(r, op):
    r.step("rename", os.rename, r.p(op.src), r.p(op.dst))


def x_unlink(r, op):
    r.step("unlink", os.unlink, r.p(op.path))


def x_mkdir(r, op):
    r.step("mkdir", os.mkdir, r.p(op.path), op.mode)


def x_rmdir(r, op):
    r.step("rmdir", os.rmdir, r.p(op.path))


def x_rmtree(r, op):
    # rm -r: children first, each a step of its own (the list comes from the reference).
    for rel, is_dir in op.entries:
        if is_dir:
            r.step("rmdir", os.rmdir, r.p(rel))
        else:
            r.step("unlink", os.unlink, r.p(rel))


def x_chmod(r, op):
    r.step("chmod", os.chmod, r.p(op.path), op.mode)
    st = r.step("stat", os.stat, r.p(op.path))
    r.obs.append(("mode", oct(stat.S_IMODE(st.st_mode))))


def x_symlink(r, op):
    r.step("symlink", os.symlink, op.target, r.p(op.path))
    r.obs.append(("readlink", r.step("readlink", os.readlink, r.p(op.path))))


def x_stat(r, op):
    st = r.step("lstat", os.lstat, r.p(op.path))
    kind = stat.S_IFMT(st.st_mode)
    r.obs.append(("type", kind))
    if stat.S_ISREG(kind):
        r.obs.append(("size", st.st_size))
    if stat.S_ISREG(kind) or stat.S_ISDIR(kind):
        r.obs.append(("mode", oct(stat.S_IMODE(st.st_mode))))


def x_listdir(r, op):
    r.obs.append(("listdir", tuple(sorted(r.step("listdir", os.listdir, r.p(op.path))))))


def x_unlink_open(r, op):
    # Unlink a file open O_RDWR: the handle goes on reading and writing it; the name is gone.
    fd = r.open(op.path, os.O_RDWR)
    r.pread(fd, op.read_n, 0)
    r.step("unlink", os.unlink, r.p(op.path))
    r.obs.append(("exists after unlink", os.path.lexists(r.p(op.path))))
    if op.recreate is not None:
        # a new file takes the name while the old one is still open
        fd2 = r.open(op.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        r.write(fd2, op.recreate)
        r.close(fd2)
    off, data = op.write
    r.pwrite(fd, data, off)
    r.pread(fd, len(data), off, "readback")
    st = r.fstat(fd, nlink=True)
    r.pread(fd, st.st_size + 10, 0, "read all")
    r.close(fd)
    r.obs.append(("exists after close", os.path.lexists(r.p(op.path))))


def x_rename_open(r, op):
    # A file open for writing follows its name: bytes written before and after the rename end
    # up under the new name.
    fd = r.open(op.path, op.flags, 0o644)
    r.write(fd, op.before)
    r.step("rename", os.rename, r.p(op.path), r.p(op.dst))
    r.write(fd, op.after)
    if op.flags & os.O_RDWR:
        r.fstat(fd)
        r.pread(fd, len(op.before) + len(op.after) + 10, 0, "readback")
    r.close(fd)


def x_open_then(r, op):
    # A handle open for writing, and meanwhile an operation on its path (truncate, chmod,
    # lstat, rename), a dup closed, or an fsync; then more writes, and the close.
    fd = r.open(op.path, op.flags, 0o644)
    cur = op.path

    def put(w):
        off, data = w
        if op.flags & os.O_APPEND:
            r.write(fd, data)
        else:
            r.pwrite(fd, data, off)

    if op.first is not None:
        put(op.first)
    if op.middle == "truncate":
        r.step("truncate", os.truncate, r.p(cur), op.size)
    elif op.middle == "chmod":
        r.step("chmod", os.chmod, r.p(cur), op.mode)
    elif op.middle == "lstat":
        st = r.step("lstat", os.lstat, r.p(cur))
        r.obs.append(("lstat", st.st_size, oct(stat.S_IMODE(st.st_mode))))
    elif op.middle == "rename":
        r.step("rename", os.rename, r.p(cur), r.p(op.dst))
        cur = op.dst
    elif op.middle == "dupclose":
        fd2 = r.step("dup", os.dup, fd)
        r.step("close", os.close, fd2)
    elif op.middle == "fsync":
        r.step("fsync", os.fsync, fd)
    if op.second is not None:
        put(op.second)
    st = r.fstat(fd)
    if op.flags & os.O_RDWR:
        r.pread(fd, st.st_size + 10, 0, "readback")
    r.close(fd)
    st = r.step("lstat", os.lstat, r.p(cur))
    r.obs.append(("lstat after close", st.st_size, oct(stat.S_IMODE(st.st_mode))))


EXECUTORS = {
    "create": x_create,
    "overwrite": x_create,
    "append": x_append,
    "pwrite": x_pwrite,
    "create_scattered": x_create_scattered,
    "truncate": x_truncate,
    "ftruncate": x_ftruncate,
    "read": x_read,
    "rdwr": x_rdwr,
    "rename": x_rename,
    "rename_dir": x_rename,
    "unlink": x_unlink,
    "mkdir": x_mkdir,
    "rmdir": x_rmdir,
    "rmtree": x_rmtree,
    "chmod": x_chmod,
    "symlink": x_symlink,
    "stat": x_stat,
    "listdir": x_listdir,
    "unlink_open": x_unlink_open,
    "rename_open": x_rename_open,
    "open_then": x_open_then,
}


def errname(err):
    if err == errno.EOPNOTSUPP:
        return "EOPNOTSUPP"  # the same number as ENOTSUP on Linux
    return errno.errorcode.get(err, str(err))


class Outcome:
    def __init__(self, obs, error):
        self.obs = obs
        self.error = error  # None, or (step, errno)

    def __eq__(self, other):
        return self.obs == other.obs and self.error == other.error

    def short(self):
        if self.error is None:
            return "ok"
        step, err = self.error
        return "%s failed: %s" % (step, errname(err))

    def long(self):
        lines = ["    " + self.short()]
        for o in self.obs:
            lines.append("      observed %r" % (o,))
        return "\n".join(lines)


def first_difference(a, b):
    """A line saying where two outcomes first differ (for the report)."""
    for i, (x, y) in enumerate(zip(a.obs, b.obs)):
        if x != y:
            line = "  first difference: observation %d: mount %r, reference %r" % (i, x, y)
            dx = [v for v in x if isinstance(v, Data)] if isinstance(x, tuple) else []
            dy = [v for v in y if isinstance(v, Data)] if isinstance(y, tuple) else []
            if dx and dy:
                bx, by = dx[0].b, dy[0].b
                at = next((k for k in range(min(len(bx), len(by))) if bx[k] != by[k]),
                          min(len(bx), len(by)))
                line += "; the bytes first differ at index %d of the read" % at
            return line
    if len(a.obs) != len(b.obs):
        return "  first difference: mount made %d observations, reference %d" % (
            len(a.obs), len(b.obs))
    return "  first difference: the outcome (mount %s, reference %s)" % (a.short(), b.short())


def execute(root, op):
    r = Run(root)
    error = None
    try:
        EXECUTORS[op.kind](r, op)
    except Stop as e:
        error = (e.step, e.err)
    finally:
        r.cleanup()
    return Outcome(r.obs, error), r.written


# ---------------------------------------------------------------- the trees' state


def scan(root):
    """rel -> (type, size, mode) by lstat, for every entry below root (not root itself)."""
    out = {}

    def walk(rel):
        path = os.path.join(root, rel) if rel else root
        for name in sorted(os.listdir(path)):
            child = os.path.join(rel, name) if rel else name
            st = os.lstat(os.path.join(root, child))
            out[child] = (stat.S_IFMT(st.st_mode), st.st_size, stat.S_IMODE(st.st_mode))
            if stat.S_ISDIR(st.st_mode):
                walk(child)

    walk("")
    return out


def file_digest(path):
    h = hashlib.md5()
    n = 0
    with open(path, "rb") as f:
        while True:
            chunk = f.read(MiB)
            if not chunk:
                break
            h.update(chunk)
            n += len(chunk)
    return n, h.hexdigest()


def tree_state(root):
    """rel -> description; errors reading an entry are part of its description."""
    state = {}

    def walk(rel):
        path = os.path.join(root, rel) if rel else root
        try:
            names = sorted(os.listdir(path))
        except OSError as e:
            state[rel + "/"] = ("listdir failed", errname(e.errno))
            return
        for name in names:
            child = os.path.join(rel, name) if rel else name
            full = os.path.join(root, child)
            try:
                st = os.lstat(full)
            except OSError as e:
                state[child] = ("lstat failed", errname(e.errno))
                continue
            mode = oct(stat.S_IMODE(st.st_mode))
            if stat.S_ISDIR(st.st_mode):
                state[child] = ("dir", mode)
                walk(child)
            elif stat.S_ISREG(st.st_mode):
                try:
                    n, digest = file_digest(full)
                    content = "read %d bytes md5 %s" % (n, digest)
                except OSError as e:
                    content = "read failed: %s" % errname(e.errno)
                state[child] = ("file", mode, "size %d" % st.st_size, content)
            elif stat.S_ISLNK(st.st_mode):
                state[child] = ("symlink", os.readlink(full))
            else:
                state[child] = ("other", oct(stat.S_IFMT(st.st_mode)), mode)

    if not os.path.isdir(root):
        return {"": ("missing",)}
    st = os.stat(root)
    state[""] = ("dir", oct(stat.S_IMODE(st.st_mode)))
    walk("")
    return state


def compare_state(mount, reference):
    """A list of differences (empty when the trees agree)."""
    a = tree_state(mount)
    b = tree_state(reference)
    diffs = []
    for rel in sorted(set(a) | set(b)):
        if a.get(rel) != b.get(rel):
            diffs.append("  %-30s mount: %s\n  %-30s reference: %s"
                         % ("/" + rel, a.get(rel, "(absent)"), "", b.get(rel, "(absent)")))
    return diffs, len(b)


# ---------------------------------------------------------------- generating operations


class Gen:
    """Draws operations from the seed and the reference tree (never from the mount)."""

    def __init__(self, seed, root):
        self.rng = random.Random(seed)
        self.root = root

    # -- the reference tree
    def refresh(self):
        entries = scan(self.root)
        self.files = [p for p, (t, _, _) in entries.items() if stat.S_ISREG(t)]
        self.dirs = [""] + [p for p, (t, _, _) in entries.items() if stat.S_ISDIR(t)]
        self.links = [p for p, (t, _, _) in entries.items() if stat.S_ISLNK(t)]
        self.sizes = {p: s for p, (t, s, _) in entries.items() if stat.S_ISREG(t)}
        self.total = sum(self.sizes.values())
        self.entries = entries

    # -- random values
    def size(self, small_only=False):
        r = self.rng.random()
        if r < 0.5:
            return self.rng.randint(0, 4 * KiB)
        if r < 0.8 or small_only:
            return self.rng.randint(4 * KiB, 256 * KiB)
        if r < 0.95 or self.total > TREE_BUDGET:
            return self.rng.randint(256 * KiB, 2 * MiB)
        return self.rng.randint(PART - 512 * KiB, MAX_FILE)

    def data(self, n):
        return self.rng.randbytes(n)

    def chunks(self, n):
        """Write sizes for n bytes, as programs write (4 KiB to 1 MiB at a time)."""
        sizes = []
        unit = self.rng.choice([4 * KiB, 64 * KiB, 128 * KiB, MiB, 3 * MiB])
        left = n
        while left > 0:
            c = min(left, self.rng.randint(1, unit))
            sizes.append(c)
            left -= c
        if len(sizes) > 64:  # few syscalls are enough; keep the op description short
            sizes = sizes[:64]
        return sizes

    def depth(self, rel):
        return 0 if not rel else rel.count("/") + 1

    def parent_dir(self):
        ds = [d for d in self.dirs if self.depth(d) < MAX_DEPTH]
        r = self.rng.random()
        if r < 0.03:
            return "nodir"  # mostly missing: ENOENT
        if r < 0.05 and self.files:
            return self.rng.choice(sorted(self.files))  # a file as a directory: ENOTDIR
        return self.rng.choice(sorted(ds))

    def join(self, parent, name):
        return parent + "/" + name if parent else name

    def new_file_path(self):
        return self.join(self.parent_dir(), self.rng.choice(FILE_NAMES))

    def new_dir_path(self):
        return self.join(self.parent_dir(), self.rng.choice(DIR_NAMES))

    def existing_file(self, p_other=0.05):
        if not self.files or self.rng.random() < p_other:
            return self.rng.choice([self.new_file_path(), self.any_path()])
        return self.rng.choice(sorted(self.files))

    def any_path(self):
        every = sorted(self.files + self.dirs[1:] + self.links)
        if not every:
            return self.new_file_path()
        return self.rng.choice(every)

    def some_dir(self, p_other=0.05):
        ds = sorted(self.dirs[1:])
        if not ds or self.rng.random() < p_other:
            return self.rng.choice([self.new_dir_path(), self.any_path()])
        return self.rng.choice(ds)

    def offset(self, size):
        """An offset in or past the end of a file of `size` bytes."""
        r = self.rng.random()
        if r < 0.15:
            return 0
        if r < 0.25:
            return size
        if r < 0.75 or size == 0:
            return self.rng.randint(0, max(0, size))
        if r < 0.85 and size < MAX_FILE - 2 * MiB and self.total < TREE_BUDGET:
            # across a part boundary
            return self.rng.randint(max(0, PART - 64 * KiB), PART + 64 * KiB)
        # past the end (a hole)
        return size + self.rng.randint(1, 512 * KiB)

    def write_len(self, off):
        n = self.size(small_only=self.rng.random() < 0.7)
        return max(0, min(n, MAX_FILE - off))

    def reads(self, size, k):
        out = []
        for _ in range(k):
            off = self.rng.randint(0, size + 1024) if self.rng.random() < 0.9 else 0
            n = self.rng.choice([1, 100, 4 * KiB, 64 * KiB, 300 * KiB, 2 * MiB, size + 10])
            out.append((off, n))
        return out

    # -- operations
    def weights(self):
        nf, nd = len(self.files), len(self.dirs) - 1
        many_files = nf > 30 or self.total > TREE_BUDGET
        w = {
            "create": 10 if not many_files else 3,
            "overwrite": 7,
            "append": 7,
            "pwrite": 10,
            "create_scattered": 2,
            "truncate": 6,
            "ftruncate": 6,
            "read": 8,
            "rdwr": 7,
            "rename": 7,
            "rename_dir": 3 if nd else 0,
            "unlink": 5 if not many_files else 12,
            "mkdir": 5 if nd < 10 else 1,
            "rmdir": 3 if nd else 1,
            "rmtree": 1 if nd and not many_files else (4 if nd else 0),
            "chmod": 6,
            "symlink": 2,
            "stat": 3,
            "listdir": 3,
            "unlink_open": 2 if nf else 0,
            "rename_open": 2 if nf else 1,
            "open_then": 6,
        }
        return sorted(w.items())

    def next_op(self):
        self.refresh()
        kinds, weights = zip(*self.weights())
        kind = self.rng.choices(kinds, weights)[0]
        return getattr(self, "g_" + kind)()

    def g_create(self):
        path = self.new_file_path()
        flags = os.O_CREAT | self.rng.choice([os.O_WRONLY] * 3 + [os.O_RDWR])
        flags |= os.O_EXCL if self.rng.random() < 0.2 else os.O_TRUNC
        data = self.data(self.size())
        chunks = self.chunks(len(data))
        fsync_at = self.rng.randrange(len(chunks)) if chunks and self.rng.random() < 0.2 else None
        return Op("create", path=path, flags=flags, mode=self.rng.choice(CREATE_MODES), data=data,
                  chunks=chunks, fsync_at=fsync_at)

    def g_overwrite(self):
        path = self.existing_file()
        flags = os.O_TRUNC | self.rng.choice([os.O_WRONLY] * 3 + [os.O_RDWR])
        if self.rng.random() < 0.3:
            flags |= os.O_CREAT
        data = self.data(self.size())
        chunks = self.chunks(len(data))
        fsync_at = self.rng.randrange(len(chunks)) if chunks and self.rng.random() < 0.2 else None
        return Op("overwrite", path=path, flags=flags, mode=0o644, data=data, chunks=chunks,
                  fsync_at=fsync_at)

    def g_append(self):
        path = self.existing_file()
        flags = os.O_APPEND | self.rng.choice([os.O_WRONLY] * 2 + [os.O_RDWR])
        if self.rng.random() < 0.2:
            flags |= os.O_CREAT
        size = self.sizes.get(path, 0)
        pieces = []
        for _ in range(self.rng.randint(1, 3)):
            n = self.write_len(size)
            pieces.append(self.data(n))
            size += n
        fsync_at = self.rng.randrange(len(pieces)) if self.rng.random() < 0.3 else None
        return Op("append", path=path, flags=flags, pieces=pieces, fsync_at=fsync_at)

    def g_pwrite(self):
        path = self.existing_file()
        flags = self.rng.choice([os.O_WRONLY, os.O_RDWR])
        size = self.sizes.get(path, 0)
        writes = []
        for _ in range(self.rng.randint(1, 3)):
            off = min(self.offset(size), MAX_FILE)
            data = self.data(self.write_len(off))
            writes.append((off, data))
            size = max(size, off + len(data))
        fsync_at = self.rng.randrange(len(writes)) if self.rng.random() < 0.2 else None
        return Op("pwrite", path=path, flags=flags, writes=writes, fsync_at=fsync_at,
                  reads=self.reads(size, 2))

    def g_create_scattered(self):
        # A new file written O_WRONLY in pieces out of order (as a downloader filling holes).
        path = self.new_file_path()
        n = self.size() if self.rng.random() < 0.5 else self.rng.randint(PART, MAX_FILE)
        if self.total > TREE_BUDGET:
            n = min(n, 2 * MiB)
        data = self.data(n)
        pieces = []
        off = 0
        for c in self.chunks(n):
            pieces.append((off, c))
            off += c
        if off < n:
            pieces.append((off, n - off))
        # mostly in order, with a few pieces moved later
        order = list(range(len(pieces)))
        for _ in range(self.rng.randint(1, 3)):
            if len(order) > 1:
                i = self.rng.randrange(len(order))
                j = self.rng.randrange(len(order))
                order[i], order[j] = order[j], order[i]
        writes = [pieces[i] for i in order]
        return Op("create_scattered", path=path, flags=os.O_CREAT | os.O_WRONLY | os.O_TRUNC,
                  data=data, writes=writes)

    def g_truncate(self):
        path = self.existing_file()
        return Op("truncate", path=path, size=self.trunc_size(self.sizes.get(path, 0)))

    def trunc_size(self, size):
        r = self.rng.random()
        if r < 0.15:
            return 0
        if r < 0.5:
            return self.rng.randint(0, size)  # shrink
        if r < 0.6:
            return size
        grow = self.rng.randint(1, 64 * KiB) if r < 0.85 else self.rng.randint(1, 3 * MiB)
        if self.total > TREE_BUDGET:
            grow = min(grow, 64 * KiB)
        return min(size + grow, MAX_FILE)

    def g_ftruncate(self):
        path = self.existing_file()
        size = self.sizes.get(path, 0)
        flags = self.rng.choice([os.O_WRONLY, os.O_RDWR])
        new = self.trunc_size(size)
        first = after = None
        r = self.rng.random()
        if r < 0.3:
            off = self.offset(size)
            first = (off, self.data(min(self.write_len(off), 256 * KiB)))
        elif r < 0.6:
            off = self.offset(new)
            after = (off, self.data(min(self.write_len(off), 256 * KiB)))
        return Op("ftruncate", path=path, flags=flags, size=new, write_first=first,
                  write_after=after)

    def g_read(self):
        path = self.existing_file()
        return Op("read", path=path, reads=self.reads(self.sizes.get(path, 0),
                                                       self.rng.randint(1, 4)))

    def g_rdwr(self):
        # O_RDWR: write, read back before close (existing files mostly; sometimes new).
        if self.rng.random() < 0.2:
            path, flags = self.new_file_path(), os.O_RDWR | os.O_CREAT
        else:
            path, flags = self.existing_file(), os.O_RDWR
        size = self.sizes.get(path, 0)
        writes = []
        for _ in range(self.rng.randint(1, 3)):
            off = min(self.offset(size), MAX_FILE)
            data = self.data(min(self.write_len(off), 1 * MiB))
            writes.append((off, data))
            size = max(size, off + len(data))
        return Op("rdwr", path=path, flags=flags, writes=writes, reads=self.reads(size, 2))

    def g_rename(self):
        src = self.existing_file(p_other=0.05)
        if self.links and self.rng.random() < 0.1:
            src = self.rng.choice(sorted(self.links))
        r = self.rng.random()
        if r < 0.45:
            dst = self.new_file_path()
        elif r < 0.8 and self.files:
            dst = self.rng.choice(sorted(self.files))  # over an existing file
        elif r < 0.88:
            dst = self.some_dir()  # EISDIR
        elif r < 0.93:
            dst = src  # onto itself: nothing changes
        else:
            dst = self.any_path()
        return Op("rename", src=src, dst=dst)

    def g_rename_dir(self):
        src = self.some_dir()
        r = self.rng.random()
        if r < 0.5:
            dst = self.new_dir_path()  # may be inside src: EINVAL
        elif r < 0.75:
            dst = self.some_dir()  # over an empty dir, or ENOTEMPTY
        elif r < 0.8:
            dst = src
        elif r < 0.9:
            dst = self.join(src, self.rng.choice(DIR_NAMES))  # into itself: EINVAL
        else:
            dst = self.existing_file()  # ENOTDIR
        return Op("rename_dir", src=src, dst=dst)

    def g_unlink(self):
        r = self.rng.random()
        if r < 0.85:
            path = self.existing_file()
        elif r < 0.93 and self.links:
            path = self.rng.choice(sorted(self.links))
        else:
            path = self.any_path()  # a directory: EISDIR
        return Op("unlink", path=path)

    def g_mkdir(self):
        return Op("mkdir", path=self.new_dir_path(), mode=self.rng.choice([0o755, 0o755, 0o700, 0o775]))

    def g_rmdir(self):
        return Op("rmdir", path=self.some_dir(p_other=0.1))

    def g_rmtree(self):
        top = self.some_dir(p_other=0)
        if top not in self.entries:
            return Op("rmdir", path=top)
        entries = []
        for rel in sorted(self.entries, key=lambda p: -p.count("/")):
            if rel == top or rel.startswith(top + "/"):
                entries.append((rel, stat.S_ISDIR(self.entries[rel][0])))
        # deepest first, files before their directory
        entries.sort(key=lambda e: (-e[0].count("/"), e[1], e[0]))
        return Op("rmtree", path=top, entries=entries)

    def g_chmod(self):
        if self.rng.random() < 0.35:
            path = self.some_dir()
            mode = self.rng.choice(DIR_MODES)
        else:
            path = self.existing_file()
            mode = self.rng.choice(FILE_MODES)
        if path in self.dirs:
            mode = self.rng.choice(DIR_MODES)
        return Op("chmod", path=path, mode=mode)

    def g_symlink(self):
        return Op("symlink", path=self.new_file_path(), target=self.rng.choice(SYMLINK_TARGETS))

    def g_stat(self):
        return Op("stat", path=self.any_path())

    def g_listdir(self):
        return Op("listdir", path=self.some_dir(p_other=0.1) if self.rng.random() < 0.8 else "")

    def g_unlink_open(self):
        path = self.existing_file(p_other=0)
        size = self.sizes.get(path, 0)
        off = self.offset(size)
        recreate = self.data(self.size(small_only=True)) if self.rng.random() < 0.4 else None
        return Op("unlink_open", path=path, read_n=self.rng.randint(0, size + 10),
                  write=(off, self.data(min(self.write_len(off), 512 * KiB))), recreate=recreate)

    def g_rename_open(self):
        if self.rng.random() < 0.5 or not self.files:
            path = self.new_file_path()
            flags = os.O_CREAT | os.O_TRUNC | os.O_WRONLY
        else:
            path = self.existing_file(p_other=0)
            flags = self.rng.choice([os.O_WRONLY | os.O_TRUNC, os.O_RDWR | os.O_APPEND,
                                     os.O_WRONLY | os.O_APPEND])
        r = self.rng.random()
        if r < 0.5:
            dst = self.new_file_path()
        elif self.files:
            dst = self.rng.choice(sorted(self.files))
        else:
            dst = self.new_file_path()
        before = self.data(self.size())
        after = self.data(self.size(small_only=True))
        return Op("rename_open", path=path, flags=flags, dst=dst, before=before, after=after)

    def g_open_then(self):
        if self.rng.random() < 0.3 or not self.files:
            path = self.new_file_path()
            flags = os.O_CREAT | os.O_TRUNC | self.rng.choice([os.O_WRONLY, os.O_WRONLY, os.O_RDWR])
        else:
            path = self.existing_file(p_other=0)
            flags = self.rng.choice([os.O_WRONLY, os.O_RDWR, os.O_WRONLY | os.O_TRUNC,
                                     os.O_RDWR | os.O_TRUNC, os.O_WRONLY | os.O_APPEND,
                                     os.O_RDWR | os.O_APPEND])
        size = 0 if flags & os.O_TRUNC else self.sizes.get(path, 0)
        streaming = flags & os.O_TRUNC and not flags & os.O_RDWR

        def one_write():
            nonlocal size
            # a new or truncated O_WRONLY file is written in order (it streams, see
            # create_scattered for the rest)
            off = size if streaming or flags & os.O_APPEND else min(self.offset(size), MAX_FILE)
            n = self.write_len(off)
            if self.rng.random() < 0.2 and self.total < TREE_BUDGET:
                n = self.rng.randint(PART, PART + 2 * MiB)  # a part may be uploaded meanwhile
            data = self.data(max(0, min(n, MAX_FILE - off)))
            size = max(size, off + len(data))
            return (off, data)

        first = one_write() if self.rng.random() < 0.85 else None
        middle = self.rng.choice(["truncate", "truncate", "chmod", "lstat", "rename", "rename",
                                  "dupclose", "fsync"])
        extra = {}
        if middle == "truncate":
            extra["size"] = self.trunc_size(size)
            size = extra["size"]
        elif middle == "chmod":
            extra["mode"] = self.rng.choice(FILE_MODES)
        elif middle == "rename":
            extra["dst"] = (self.new_file_path() if self.rng.random() < 0.5 or not self.files
                            else self.rng.choice(sorted(self.files)))
        second = one_write() if self.rng.random() < 0.85 else None
        return Op("open_then", path=path, flags=flags, first=first, middle=middle,
                  second=second, **extra)


def op_paths(op):
    """Paths an operation may have changed (for re-syncing after an allowed divergence)."""
    return [v for k, v in op.params.items() if k in ("path", "src", "dst")]


def allowed(op, mount_out, ref_out):
    """The allowed divergence that covers this pair of outcomes, or None."""
    if mount_out.error is None or ref_out.error is not None:
        return None
    step, err = mount_out.error
    name, _, num = step.partition("#")
    for a in ALLOWED_DIVERGENCES:
        if op.kind in a["kinds"] and name in a["steps"] and err in a["errnos"] \
                and a["when"](op, int(num)):
            return a
    return None


def resync(mount, reference, rel):
    """Set mount/rel to what reference/rel is (a file: plain overwrite; else remove)."""
    m = os.path.join(mount, rel)
    r = os.path.join(reference, rel)
    if os.path.isfile(r) and not os.path.islink(r):
        with open(r, "rb") as f:
            data = f.read()
        fd = os.open(m, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
        os.chmod(m, stat.S_IMODE(os.stat(r).st_mode))
    elif not os.path.lexists(r) and os.path.lexists(m) and not os.path.isdir(m):
        os.unlink(m)


# ---------------------------------------------------------------- main


def fail(title, lines, history):
    print("random_ops: FAILED: " + title)
    for line in lines:
        print(line)
    if history:
        print("last %d operations (number, operation, mount outcome / reference outcome):"
              % len(history))
        for n, op, mo, ro in history:
            print("  #%d %s\n      mount: %s | reference: %s" % (n, op, mo, ro))
    sys.stdout.flush()
    sys.exit(1)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mount", required=True, help="directory in the bucketfs mount")
    ap.add_argument("--reference", required=True, help="directory on a local filesystem")
    ap.add_argument("--seed", type=int, required=True)
    ap.add_argument("--ops", type=int, default=300)
    ap.add_argument("--phase", choices=["run", "compare"], default="run")
    ap.add_argument("--name", help="subdirectory used in both trees (default random-ops-SEED)")
    ap.add_argument("--check-every", type=int, default=25, metavar="K",
                    help="compare the trees' state every K operations (default 25)")
    ap.add_argument("--verbose", action="store_true", help="print every operation")
    args = ap.parse_args()

    name = args.name or "random-ops-%d" % args.seed
    mount = os.path.join(args.mount, name)
    reference = os.path.join(args.reference, name)
    os.umask(UMASK)
    started = time.monotonic()

    if args.phase == "compare":
        if not os.path.isdir(reference):
            print("random_ops: no reference tree %s (run --phase run first)" % reference)
            sys.exit(2)
        diffs, n = compare_state(mount, reference)
        if diffs:
            fail("state differs after remount (%s vs %s)" % (mount, reference), diffs, [])
        print("random_ops: compare ok: %d entries identical in %s and %s (%.1fs)"
              % (n, mount, reference, time.monotonic() - started))
        return

    for d in (mount, reference):
        if os.path.lexists(d):
            print("random_ops: %s exists already; use a fresh tree or another --name" % d)
            sys.exit(2)
    os.mkdir(reference, 0o755)
    try:
        os.mkdir(mount, 0o755)
    except OSError as e:
        print("random_ops: FAILED: mkdir %s: %s" % (mount, e))
        sys.exit(1)

    gen = Gen(args.seed, reference)
    history = collections.deque(maxlen=20)
    counts = collections.Counter()
    failures = collections.Counter()
    divergences = collections.Counter()
    written = 0
    checks = 0
    last_check = 0
    rerun = ("  to replay: python3 %s --mount M --reference R --seed %d --ops N --verbose"
             " (fresh trees; the same seed gives the same operations)"
             % (sys.argv[0], args.seed))
    n = 0
    try:
        for n in range(1, args.ops + 1):
            op = gen.next_op()
            t0 = time.monotonic()
            mount_out, w = execute(mount, op)
            ref_out, _ = execute(reference, op)
            written += w
            counts[op.kind] += 1
            history.append((n, op, mount_out.short(), ref_out.short()))
            if args.verbose:
                print("#%d %.2fs %s -> %s" % (n, time.monotonic() - t0, op, mount_out.short()),
                      flush=True)
            if mount_out != ref_out:
                a = allowed(op, mount_out, ref_out)
                if a is None:
                    fail("operation #%d differs" % n,
                         ["  operation: %s" % op.describe(1000), "  mount:", mount_out.long(),
                          "  reference:", ref_out.long(), first_difference(mount_out, ref_out),
                          rerun], history)
                divergences[op.kind] += 1
                if args.verbose:
                    print("   allowed divergence: %s" % a["reason"])
                for rel in op_paths(op):
                    resync(mount, reference, rel)
            elif ref_out.error is not None:
                failures[op.kind] += 1
            if n % args.check_every == 0 or n == args.ops:
                checks += 1
                diffs, _ = compare_state(mount, reference)
                if diffs:
                    fail("state differs after operation #%d, made by one of operations #%d-#%d"
                         " (--check-every 1 pinpoints it)" % (n, last_check + 1, n),
                         diffs + [rerun], history)
                last_check = n
    except Exception:  # a bug of this script, or of the filesystem under it
        import traceback
        fail("unexpected error at operation #%d" % n, [traceback.format_exc()], history)

    kinds = " ".join("%s=%d" % (k, counts[k]) for k in sorted(counts))
    print("random_ops: ok: seed %d, %d ops (%s), %d failed alike, %d allowed divergences%s, "
          "%.1f MiB written to the mount, %d state checks, %.1fs"
          % (args.seed, args.ops, kinds, sum(failures.values()), sum(divergences.values()),
             (" (" + " ".join("%s=%d" % kv for kv in sorted(divergences.items())) + ")")
             if divergences else "", written / MiB, checks, time.monotonic() - started))


if __name__ == "__main__":
    main()
