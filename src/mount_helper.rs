//! fstab and mount(8): `-o` option lists, and the binary acting as mount(8)'s helper.
//!
//! For a line of type `fuse.bucketfs`, util-linux mount(8) runs
//! `/sbin/mount.fuse.bucketfs SOURCE DIR [-sfnv] [-N NS] -o OPTIONS` (for type `bucketfs`:
//! `/sbin/mount.bucketfs`) with its own environment, and waits for it to exit. Without that
//! helper it falls back to `/sbin/mount.fuse` (fuse3), which runs `bucketfs SOURCE DIR -o
//! OPTIONS` from a standard PATH. So the binary installed (or linked) under a helper name speaks
//! mount(8)'s argument convention, and `-o` works on the ordinary command line too.
//!
//! An `-o` list is translated into the long options of the clap definition, generically:
//! `NAME=VALUE` is `--NAME=VALUE`, `NAME` is the flag `--NAME` (underscores and dashes alike:
//! `allow_other` is `--allow-other`), so every option the command line has is an `-o` option
//! with no list to keep up. `ro` is `--read-only`; what fstab, mount(8) and systemd put there
//! for themselves (`_netdev`, `nofail`, `noauto`, `x-systemd.*`, ...) is accepted and ignored
//! (see [`IGNORED`]); anything else is an error naming the option (with mount's `-s`, sloppy,
//! a warning).

use std::ffi::{OsStr, OsString};
use std::path::Path;

use clap::{Arg, Command, CommandFactory};

use crate::cli::Cli;

/// File names under which the binary acts as mount(8)'s helper.
pub const HELPER_NAMES: &[&str] = &["mount.fuse.bucketfs", "mount.bucketfs"];

const HELPER_USAGE: &str =
    "usage: mount.fuse.bucketfs BUCKET[:PREFIX] MOUNTPOINT [-sfnv] [-o OPTIONS] \
     (as mount(8) runs it for fstab type fuse.bucketfs)";

/// Options of fstab, mount(8), systemd and FUSE in general that bucketfs accepts and ignores.
/// bucketfs always mounts `nodev,nosuid,noatime` (and `default_permissions`), so `nodev`,
/// `nosuid`, `noatime` already hold, and `dev`, `suid` and the other atime modes cannot be
/// had; `exec`/`noexec` are not applied (mount(8) adds `noexec` by itself to `user` lines,
/// which must not fail); `sync`/`async`: a file reaches S3 at close or fsync either way.
pub const IGNORED: &[&str] = &[
    "defaults",
    "auto",
    "noauto",
    "_netdev",
    "nofail",
    "user",
    "users",
    "nouser",
    "owner",
    "group",
    "rw",
    "dev",
    "nodev",
    "suid",
    "nosuid",
    "exec",
    "noexec",
    "atime",
    "noatime",
    "relatime",
    "norelatime",
    "strictatime",
    "nostrictatime",
    "diratime",
    "nodiratime",
    "lazytime",
    "nolazytime",
    "sync",
    "async",
    "default_permissions",
    "nonempty",
];

/// Prefixes of ignored options: userspace options of mount(8) and systemd (`x-systemd.*`,
/// `x-gvfs-show`, ...) and fstab comments.
const IGNORED_PREFIXES: &[&str] = &["x-", "comment="];

/// Arguments of the command line that are actions or process modes, not mount options.
const NOT_MOUNT_OPTIONS: &[&str] = &[
    "help",
    "version",
    "foreground",
    "list_uploads",
    "abort_uploads",
    "older_than",
    "options",
];

/// The command line to hand to clap, after mount(8)'s conventions were translated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandLine {
    /// The program name, then ordinary arguments only (every `-o` list expanded).
    pub args: Vec<OsString>,
    /// Running as mount(8)'s helper: always returns once mounted (mount waits for it).
    pub helper: bool,
    /// mount's `-f` (fake): check the options, mount nothing.
    pub fake: bool,
    /// mount's `-v`: say which options were ignored.
    pub verbose: bool,
    /// Options accepted and ignored.
    pub ignored: Vec<String>,
}

impl CommandLine {
    /// With mount's `-v`, tells on stderr which options were ignored (the mount has no log
    /// yet at this point).
    pub fn report_ignored(&self) {
        if self.verbose && !self.ignored.is_empty() {
            eprintln!(
                "bucketfs: mount options ignored: {}",
                self.ignored.join(",")
            );
        }
    }
}

/// Translates the process's arguments: mount(8)'s helper convention when the program is
/// named as a helper, and every `-o` list into long options.
pub fn command_line(args: Vec<OsString>) -> Result<CommandLine, String> {
    let cmd = Cli::command();
    let program = args.first().cloned().unwrap_or_else(|| "bucketfs".into());
    let helper = Path::new(&program)
        .file_name()
        .and_then(OsStr::to_str)
        .is_some_and(|name| HELPER_NAMES.contains(&name));
    if helper {
        helper_command_line(&args[1..], &cmd)
    } else {
        expand_option_lists(program, &args[1..], &cmd)
    }
}

/// `SOURCE DIR [-sfnv] [-N NS] [-t TYPE] -o OPTIONS`, flags anywhere; long options pass
/// through as on the ordinary command line.
fn helper_command_line(args: &[OsString], cmd: &Command) -> Result<CommandLine, String> {
    let mut line = CommandLine {
        args: vec!["bucketfs".into()],
        helper: true,
        fake: false,
        verbose: false,
        ignored: Vec::new(),
    };
    let mut positionals = Vec::new();
    let mut lists = Vec::new();
    let mut longs = Vec::new();
    let mut sloppy = false;
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        let text = match arg.to_str() {
            Some(text) if text.starts_with('-') && text.len() > 1 => text,
            _ => {
                positionals.push(arg.clone());
                continue;
            }
        };
        if text == "--" {
            positionals.extend(rest.by_ref().cloned());
            break;
        }
        if let Some(long) = text.strip_prefix("--") {
            longs.push(arg.clone());
            if takes_value_long(cmd, long) {
                longs.extend(rest.next().cloned());
            }
            continue;
        }
        let flags = &text[1..];
        for (at, flag) in flags.char_indices() {
            match flag {
                's' => sloppy = true,
                'f' => line.fake = true,
                'v' => line.verbose = true,
                'n' => {}
                'o' | 't' | 'N' => {
                    let attached = &flags[at + 1..];
                    let value = if attached.is_empty() {
                        rest.next()
                            .and_then(|v| v.to_str())
                            .ok_or_else(|| format!("-{flag} needs a value; {HELPER_USAGE}"))?
                    } else {
                        attached
                    };
                    match flag {
                        'o' => lists.push(value.to_string()),
                        'N' => {
                            return Err(format!(
                                "mount -N (mounting in another namespace, {value}) is not \
                                 supported"
                            ))
                        }
                        _ => {} // -t fuse.bucketfs: we know.
                    }
                    break;
                }
                other => return Err(format!("unknown flag -{other}; {HELPER_USAGE}")),
            }
        }
    }
    if positionals.len() != 2 {
        return Err(HELPER_USAGE.to_string());
    }
    line.args.extend(positionals);
    for list in &lists {
        let translated = translate_options(list, cmd, sloppy)?;
        line.args.extend(translated.args);
        line.ignored.extend(translated.ignored);
    }
    line.args.extend(longs);
    Ok(line)
}

/// The ordinary command line with each `-o LIST` (also `-oLIST`, or ending a cluster of short
/// flags) replaced by its long options. Follows clap's reading: the value of an option that
/// takes one is never taken for `-o`, and nothing after `--` is touched.
fn expand_option_lists(
    program: OsString,
    args: &[OsString],
    cmd: &Command,
) -> Result<CommandLine, String> {
    let mut line = CommandLine {
        args: vec![program],
        helper: false,
        fake: false,
        verbose: false,
        ignored: Vec::new(),
    };
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        let text = match arg.to_str() {
            Some(text) if text.starts_with('-') && text.len() > 1 => text,
            _ => {
                line.args.push(arg.clone());
                continue;
            }
        };
        if text == "--" {
            line.args.push(arg.clone());
            line.args.extend(rest.by_ref().cloned());
            break;
        }
        if let Some(long) = text.strip_prefix("--") {
            line.args.push(arg.clone());
            if takes_value_long(cmd, long) {
                line.args.extend(rest.next().cloned());
            }
            continue;
        }
        // A cluster of short flags, where the first one taking a value takes the rest (or the
        // next argument).
        let flags = &text[1..];
        let mut kept = String::from("-");
        let mut done = false;
        for (at, flag) in flags.char_indices() {
            let attached = &flags[at + flag.len_utf8()..];
            if flag == 'o' {
                let attached = attached.strip_prefix('=').unwrap_or(attached);
                let list = if attached.is_empty() {
                    rest.next()
                        .and_then(|v| v.to_str())
                        .ok_or("-o needs a list of mount options")?
                } else {
                    attached
                };
                if kept.len() > 1 {
                    line.args.push(std::mem::take(&mut kept).into());
                }
                let translated = translate_options(list, cmd, false)?;
                line.args.extend(translated.args);
                line.ignored.extend(translated.ignored);
                done = true;
                break;
            }
            kept.push(flag);
            if takes_value_short(cmd, flag) {
                kept.push_str(attached);
                line.args.push(std::mem::take(&mut kept).into());
                if attached.is_empty() {
                    line.args.extend(rest.next().cloned());
                }
                done = true;
                break;
            }
        }
        if !done {
            line.args.push(kept.into());
        }
    }
    Ok(line)
}

/// A line mounted already is not mounted again (mount -a after the boot, or twice by hand):
/// the helper says so and mounts nothing, instead of stacking a second mount. The mount's
/// source in /proc is the source as given, so mount(8) itself usually skips such lines.
pub fn already_mounted(cli: &Cli) -> Option<String> {
    let (source, mountpoint) = cli.source_and_mountpoint();
    let dir = std::fs::canonicalize(mountpoint?).ok()?;
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let source = source.to_string();
    mounted_at(&mountinfo, &dir, &source).then(|| {
        format!(
            "{} is mounted already ({source}); nothing done",
            dir.display()
        )
    })
}

/// Whether `mountinfo` has a FUSE mount of `source` on `dir`.
fn mounted_at(mountinfo: &str, dir: &Path, source: &str) -> bool {
    mountinfo.lines().any(|line| {
        let Some((left, right)) = line.split_once(" - ") else {
            return false;
        };
        let mut right = right.split(' ');
        let (fstype, mount_source) = (right.next(), right.next());
        left.split(' ').nth(4).map(unescape_mountinfo).as_deref() == Some(dir.as_os_str())
            && fstype.is_some_and(|t| t == "fuse" || t.starts_with("fuse."))
            && mount_source.map(unescape_mountinfo).as_deref() == Some(OsStr::new(source))
    })
}

/// mountinfo writes space, tab, newline and backslash as octal escapes (`\040`).
fn unescape_mountinfo(field: &str) -> OsString {
    use std::os::unix::ffi::OsStringExt;
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).and_then(|d| {
            std::str::from_utf8(d)
                .ok()
                .and_then(|d| u8::from_str_radix(d, 8).ok())
        });
        match (bytes[i], octal) {
            (b'\\', Some(byte)) => {
                out.push(byte);
                i += 4;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    OsString::from_vec(out)
}

fn takes_value(arg: &Arg) -> bool {
    arg.get_action().takes_values()
}

/// Whether `--NAME` (without `=VALUE`) is followed by its value.
fn takes_value_long(cmd: &Command, long: &str) -> bool {
    !long.contains('=')
        && cmd
            .get_arguments()
            .find(|a| long_names(a).any(|n| n == long))
            .is_some_and(takes_value)
}

fn takes_value_short(cmd: &Command, short: char) -> bool {
    cmd.get_arguments()
        .find(|a| a.get_short() == Some(short))
        .is_some_and(takes_value)
}

/// The long name and long aliases of an argument.
fn long_names(arg: &Arg) -> impl Iterator<Item = &str> {
    arg.get_long()
        .into_iter()
        .chain(arg.get_all_aliases().unwrap_or_default())
}

/// One `-o` list translated.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Translation {
    /// Long options, each one argument (`--name=value` or `--flag`).
    pub args: Vec<OsString>,
    /// Options accepted and ignored, as written.
    pub ignored: Vec<String>,
}

/// Translates one comma-separated `-o` list (a value in double quotes may hold commas) into
/// the long options of `cmd`. Unknown options are an error naming them, or with `sloppy`
/// (mount's `-s`) ignored.
pub fn translate_options(list: &str, cmd: &Command, sloppy: bool) -> Result<Translation, String> {
    let mut out = Translation::default();
    let mut read_only = false;
    for item in split_options(list) {
        let (name, value) = match item.split_once('=') {
            Some((name, value)) => (name, Some(unquote(value))),
            None => (item.as_str(), None),
        };
        if IGNORED.contains(&name) || IGNORED_PREFIXES.iter().any(|p| item.starts_with(p)) {
            if name == "rw" {
                read_only = false;
            }
            out.ignored.push(item.clone());
            continue;
        }
        if name == "ro" && value.is_none() {
            read_only = true;
            continue;
        }
        let wanted = name.replace('_', "-");
        let arg = cmd
            .get_arguments()
            .filter(|a| !a.is_positional())
            .find(|a| long_names(a).any(|n| n == wanted));
        let Some(arg) = arg else {
            if sloppy {
                eprintln!("bucketfs: unknown mount option '{name}' ignored (mount -s)");
                out.ignored.push(item.clone());
                continue;
            }
            return Err(format!(
                "unknown mount option '{name}': bucketfs takes its long options without the \
                 dashes (allow_other, uid=1000, endpoint_url=URL; see bucketfs --help) and \
                 ignores fstab's own (_netdev, nofail, noauto, x-systemd.*)"
            ));
        };
        let id = arg.get_id().as_str();
        if arg.is_hide_set() || NOT_MOUNT_OPTIONS.contains(&id) {
            let why = if id == "foreground" {
                " (mount waits for bucketfs, which returns once the mount is live)"
            } else {
                ""
            };
            return Err(format!("'{name}' is not a mount option{why}"));
        }
        let long = arg.get_long().unwrap_or(&wanted);
        match (takes_value(arg), value) {
            (true, Some(value)) => out.args.push(format!("--{long}={value}").into()),
            (true, None) => {
                return Err(format!(
                    "mount option '{name}' needs a value ({name}=VALUE)"
                ))
            }
            (false, None) => {
                let flag = OsString::from(format!("--{long}"));
                if !out.args.contains(&flag) {
                    out.args.push(flag);
                }
            }
            (false, Some(_)) => return Err(format!("mount option '{name}' takes no value")),
        }
    }
    let read_only_flag = OsString::from("--read-only");
    if read_only && !out.args.contains(&read_only_flag) {
        out.args.push(read_only_flag);
    }
    Ok(out)
}

/// Splits at commas outside double quotes; empty items are dropped.
fn split_options(list: &str) -> Vec<String> {
    let mut items = Vec::new();
    let mut current = String::new();
    let mut quoted = false;
    for c in list.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                current.push(c);
            }
            ',' if !quoted => items.push(std::mem::take(&mut current)),
            _ => current.push(c),
        }
    }
    items.push(current);
    items.retain(|item| !item.is_empty());
    items
}

fn unquote(value: &str) -> &str {
    value
        .strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .unwrap_or(value)
}

/// mount(8) runs its helpers with a sanitized environment that has no `HOME` (util-linux
/// drops it, with PATH), and some service managers start programs without one. Without it the
/// SDK finds no `~/.aws` (credentials, profiles) and the state directory falls back to
/// /var/lib. So a missing `HOME` is taken from the password database, as a login would set it.
/// Called first thing in `main`, before any thread starts.
pub fn ensure_home() {
    if std::env::var_os("HOME").is_some_and(|h| !h.is_empty()) {
        return;
    }
    // SAFETY: getuid cannot fail.
    if let Some(home) = home_of(unsafe { libc::getuid() }) {
        std::env::set_var("HOME", home);
    }
}

/// The home directory of `uid` in the password database.
pub fn home_of(uid: libc::uid_t) -> Option<std::path::PathBuf> {
    use std::os::unix::ffi::OsStrExt;
    let mut buffer = vec![0 as libc::c_char; 16 * 1024];
    // SAFETY: an all-zero passwd is a valid value for getpwuid_r to fill.
    let mut entry: libc::passwd = unsafe { std::mem::zeroed() };
    let mut found: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call, and the buffer's length is passed with it.
    let rc = unsafe {
        libc::getpwuid_r(
            uid,
            &mut entry,
            buffer.as_mut_ptr(),
            buffer.len(),
            &mut found,
        )
    };
    if rc != 0 || found.is_null() || entry.pw_dir.is_null() {
        return None;
    }
    // SAFETY: getpwuid_r succeeded, so pw_dir points at a NUL-terminated string in `buffer`.
    let dir = unsafe { std::ffi::CStr::from_ptr(entry.pw_dir) };
    (!dir.to_bytes().is_empty())
        .then(|| std::path::PathBuf::from(OsStr::from_bytes(dir.to_bytes())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_home_directory_comes_from_the_password_database() {
        assert_eq!(home_of(0).as_deref(), Some(Path::new("/root")));
        assert_eq!(home_of(4_000_000_000), None);
    }
    use clap::Parser;

    fn os(args: &[&str]) -> Vec<OsString> {
        args.iter().map(OsString::from).collect()
    }

    fn strings(args: &[OsString]) -> Vec<String> {
        args.iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    fn translate(list: &str) -> Result<Translation, String> {
        translate_options(list, &Cli::command(), false)
    }

    #[test]
    fn options_become_long_options_from_the_clap_definition() {
        let t = translate(
            "allow_other,endpoint-url=http://10.0.0.5:3900,uid=1000,file_mode=600,cache=/var/c",
        )
        .unwrap();
        assert_eq!(
            strings(&t.args),
            [
                "--allow-other",
                "--endpoint-url=http://10.0.0.5:3900",
                "--uid=1000",
                "--file-mode=600",
                "--cache-dir=/var/c",
            ]
        );
        assert!(t.ignored.is_empty());
    }

    #[test]
    fn fstab_and_systemd_options_are_ignored_and_ro_is_read_only() {
        let t = translate(
            "rw,_netdev,nofail,noauto,defaults,x-systemd.automount,x-systemd.mount-timeout=30,\
             comment=x,nodev,nosuid,noexec,relatime,user",
        )
        .unwrap();
        assert!(t.args.is_empty(), "{:?}", t.args);
        assert_eq!(t.ignored.len(), 13);
        assert_eq!(
            strings(&translate("ro,uid=1").unwrap().args),
            ["--uid=1", "--read-only"]
        );
        assert!(translate("ro,rw").unwrap().args.is_empty());
        assert_eq!(
            strings(&translate("ro,read_only").unwrap().args),
            ["--read-only"]
        );
    }

    #[test]
    fn unknown_and_misused_options_are_errors_naming_them() {
        let err = translate("allow_other,frobnicate=3").unwrap_err();
        assert!(err.contains("unknown mount option 'frobnicate'"), "{err}");
        assert!(translate("uid")
            .unwrap_err()
            .contains("'uid' needs a value"));
        assert!(translate("allow_other=1")
            .unwrap_err()
            .contains("'allow_other' takes no value"));
        for not_mount in ["foreground", "list_uploads", "completions=bash", "man_page"] {
            let err = translate(not_mount).unwrap_err();
            assert!(err.contains("is not a mount option"), "{not_mount}: {err}");
        }
        let sloppy = translate_options("frobnicate,uid=2", &Cli::command(), true).unwrap();
        assert_eq!(strings(&sloppy.args), ["--uid=2"]);
        assert_eq!(sloppy.ignored, ["frobnicate"]);
    }

    #[test]
    fn quoted_values_may_hold_commas() {
        let t = translate("content_type=\"text/plain; a=1,b=2\",debug").unwrap();
        assert_eq!(
            strings(&t.args),
            ["--content-type=text/plain; a=1,b=2", "--debug"]
        );
    }

    #[test]
    fn mount_runs_the_helper_with_its_own_flags() {
        // As util-linux 2.38 runs it for `mount -v -T FSTAB DIR`.
        let line = command_line(os(&[
            "/sbin/mount.fuse.bucketfs",
            "my-bucket:photos",
            "/mnt/photos",
            "-v",
            "-o",
            "rw,allow_other,endpoint-url=http://10.0.0.5:3900,uid=1000,_netdev,nofail",
        ]))
        .unwrap();
        assert!(line.helper && line.verbose && !line.fake);
        assert_eq!(
            strings(&line.args),
            [
                "bucketfs",
                "my-bucket:photos",
                "/mnt/photos",
                "--allow-other",
                "--endpoint-url=http://10.0.0.5:3900",
                "--uid=1000",
            ]
        );
        assert_eq!(line.ignored, ["rw", "_netdev", "nofail"]);
        let cli = Cli::try_parse_from(&line.args).unwrap();
        assert!(cli.allow_other && !cli.foreground && cli.uid == Some(1000));

        let line = command_line(os(&["mount.bucketfs", "b", "/m", "-sfn", "-oro,bogus"])).unwrap();
        assert!(line.helper && line.fake);
        assert_eq!(strings(&line.args), ["bucketfs", "b", "/m", "--read-only"]);
        assert!(
            command_line(os(&["mount.bucketfs", "b", "/m", "-N", "/proc/1/ns/mnt"]))
                .unwrap_err()
                .contains("-N")
        );
        assert!(command_line(os(&["mount.bucketfs", "b"]))
            .unwrap_err()
            .contains("usage"));
        let line = command_line(os(&["mount.bucketfs", "b", "/m", "--debug"])).unwrap();
        assert_eq!(strings(&line.args), ["bucketfs", "b", "/m", "--debug"]);
    }

    #[test]
    fn a_line_mounted_already_is_recognized() {
        let mountinfo = "27 1 8:1 / / rw,relatime - ext4 /dev/sda1 rw\n\
            42 27 0:39 / /mnt/my\\040photos rw,nosuid,nodev,noatime - fuse bucketfs:my-bucket \
            rw,user_id=0,group_id=0,default_permissions\n";
        let dir = Path::new("/mnt/my photos");
        assert!(mounted_at(mountinfo, dir, "bucketfs:my-bucket"));
        assert!(!mounted_at(mountinfo, dir, "bucketfs:other"));
        assert!(!mounted_at(
            mountinfo,
            Path::new("/mnt/my"),
            "bucketfs:my-bucket"
        ));
        assert!(!mounted_at(mountinfo, Path::new("/"), "/dev/sda1"));
    }

    #[test]
    fn dash_o_works_on_the_ordinary_command_line() {
        let line = command_line(os(&[
            "bucketfs",
            "b:p",
            "/mnt",
            "-o",
            "allow_other,uid=7",
            "-f",
            "--content-type",
            "-o",
            "-fo",
            "gid=8",
            "-dofile_mode=600",
            "--",
            "-o",
        ]))
        .unwrap();
        assert!(!line.helper);
        assert_eq!(
            strings(&line.args),
            [
                "bucketfs",
                "b:p",
                "/mnt",
                "--allow-other",
                "--uid=7",
                "-f",
                "--content-type",
                "-o",
                "-f",
                "--gid=8",
                "-d",
                "--file-mode=600",
                "--",
                "-o",
            ]
        );
        let err = command_line(os(&["bucketfs", "b", "/m", "-o", "nope"])).unwrap_err();
        assert!(err.contains("'nope'"), "{err}");
        // Nothing to translate: the arguments are as given.
        let plain = os(&["bucketfs", "b", "/m", "--uid", "3", "-fd"]);
        assert_eq!(command_line(plain.clone()).unwrap().args, plain);
    }
}
