//! The explorer: a deterministic search for races between operations on shared names.
//!
//! Each schedule draws, from its seed, a small tree (a few files and directories) and a few
//! programs that act on the same names at once: files written through descriptors (created,
//! or opened with O_TRUNC), descriptors held across other programs' renames and unlinks and
//! used for fchmod, fsetxattr, ftruncate, fstat and fsync, and path operations (truncate,
//! unlink, rename of files and directories, chmod, setxattr, mkdir, rmdir, listings,
//! copy_file_range, and a SIGTERM's shutdown). They run
//! as tasks on a single-threaded runtime over a store that holds every request; the explorer
//! lets one held request through at a time, chosen by the seed, and fails some (503). So one
//! seed replays exactly, and the requests of different operations interleave in every order
//! the seeds reach.
//!
//! After the programs end, the mount settles (every file stored, unlinked files' objects
//! deleted) and the explorer checks:
//! - what S3 holds (names, bytes, modes, xattrs) is the result of some serial order of the
//!   steps, each program's own order kept: a step that returned 0 did what it says, a step
//!   that failed did nothing or what a documented rule allows (see `Model::failure_outcomes`);
//! - the mount shows what S3 holds; no multipart upload is left open; every inode the
//!   kernel was given a reference to is forgotten at the end;
//! - no schedule deadlocks (every task waiting and no request in flight).
//!
//! `BUCKETFS_EXPLORE_SCHEDULES=N` runs N schedules (default 100,000: about half a minute); `BUCKETFS_EXPLORE_SEED=S`
//! replays the one schedule of seed S and prints its whole trace;
//! `BUCKETFS_EXPLORE_REPORT=FILE` writes the full report of every failed schedule there.

mod model;
mod run;
mod store;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use bucketfs::fs::disk_cache::DiskCacheConfig;
use bucketfs::fs::{Fs, FsConfig};
use bucketfs::testdata::SeededRng;

use model::{store_view, Model, Step, View};
use run::{list, read_file, run_program, TestFs, STEPS};
use store::ScheduledStore;

/// A schedule that lets this many requests through has run away (a retry loop, say).
const MAX_RELEASES: usize = 5_000;

struct Rng(SeededRng);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        (self.0.next_u64() % n as u64) as usize
    }
    fn chance(&mut self, per_mille: u64) -> bool {
        self.0.next_u64() % 1000 < per_mille
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

const FILES: [&str; 5] = ["a", "b", "d/x", "d/y", "e/x"];
const DIRS: [&str; 3] = ["d", "e", "f"];
const MODES: [u32; 3] = [0o600, 0o640, 0o604];

/// One schedule's setup, drawn from its seed.
struct Plan {
    files: Vec<(&'static str, Vec<u8>)>,
    dirs: Vec<&'static str>,
    programs: Vec<Vec<Step>>,
    ttl: Duration,
    fault_per_mille: u64,
    /// Small parts make even these small files multipart uploads.
    part_size: u64,
}

fn plan(seed: u64) -> Plan {
    let mut rng = Rng(SeededRng::new(seed));
    let mut dirs = vec!["d"];
    if rng.chance(600) {
        dirs.push("e");
    }
    let mut files = vec![
        ("a", b"a0-old".to_vec()),
        ("d/x", b"x0-old-content".to_vec()),
    ];
    for extra in ["b", "d/y", "e/x"] {
        if rng.chance(400) && (extra != "e/x" || dirs.contains(&"e")) {
            files.push((extra, format!("{extra}-old").into_bytes()));
        }
    }
    let count = 2 + rng.below(3);
    let mut programs = Vec::new();
    for p in 0..count {
        let data = format!("p{p}-{}", "new".repeat(1 + rng.below(3))).into_bytes();
        let file = rng.pick(&FILES).to_string();
        let xattr = format!("user.k{}", rng.below(2));
        let fd_extra = |rng: &mut Rng| match rng.below(6) {
            0 => Step::Fchmod(*rng.pick(&MODES)),
            1 => Step::Fsetxattr(format!("user.k{}", rng.below(2)), format!("f{p}")),
            2 => Step::Fstat,
            3 => Step::Fsync,
            4 => Step::Ftruncate(rng.below(4) as u64),
            _ => Step::Fstat,
        };
        let program = match rng.below(5) {
            0 => {
                // Written, or copied server-side from another file (copy_file_range).
                let content = match rng.chance(300) {
                    true => Step::CopyFrom(rng.pick(&FILES).to_string()),
                    false => Step::Write(data),
                };
                let mut steps = vec![Step::Create(file), content];
                if rng.chance(500) {
                    steps.push(fd_extra(&mut rng));
                }
                steps.push(Step::Close);
                steps
            }
            1 => {
                let mut steps = vec![Step::OpenTrunc(file), Step::Write(data)];
                if rng.chance(500) {
                    steps.push(fd_extra(&mut rng));
                }
                steps.push(Step::Close);
                steps
            }
            4 => {
                // A change in place: written into the middle and past the end.
                let mut steps = vec![Step::OpenRw(file)];
                for _ in 0..1 + rng.below(2) {
                    steps.push(match rng.below(4) {
                        0 => Step::Ftruncate(rng.below(8) as u64),
                        1 => fd_extra(&mut rng),
                        _ => Step::Pwrite(rng.below(12) as u64, format!("w{p}").into_bytes()),
                    });
                }
                steps.push(Step::Close);
                steps
            }
            2 => {
                let mut steps = vec![Step::OpenRead(file)];
                for _ in 0..1 + rng.below(2) {
                    steps.push(match rng.below(3) {
                        0 => Step::Fchmod(*rng.pick(&MODES)),
                        1 => Step::Fsetxattr(xattr.clone(), format!("f{p}")),
                        _ => Step::Fstat,
                    });
                }
                steps.push(Step::Close);
                steps
            }
            // A SIGTERM, in schedules without injected faults (a failed store at shutdown is
            // reported by its exit status, not modelled here).
            3 if p == 0 && rng.chance(150) => vec![Step::Shutdown],
            _ => {
                let mut steps: Vec<Step> = Vec::new();
                for _ in 0..1 + rng.below(2) {
                    let file = rng.pick(&FILES).to_string();
                    let other = rng.pick(&FILES).to_string();
                    let dir = rng.pick(&DIRS).to_string();
                    let other_dir = rng.pick(&DIRS).to_string();
                    // `mv a b; mv b c`: a rename on from where the last one went, often.
                    if let Some(Step::Rename(_, to)) = steps.last() {
                        if rng.chance(500) {
                            let from = to.clone();
                            let pool: &[&str] = if DIRS.contains(&from.as_str()) {
                                &DIRS
                            } else {
                                &FILES
                            };
                            steps.push(Step::Rename(from, rng.pick(pool).to_string()));
                            continue;
                        }
                    }
                    steps.push(match rng.below(9) {
                        0 => Step::Truncate(file, rng.below(4) as u64),
                        1 => Step::Unlink(file),
                        2 | 3 => Step::Rename(file, other),
                        4 => Step::Rename(dir, other_dir),
                        5 => Step::Chmod(file, *rng.pick(&MODES)),
                        6 => Step::SetXattr(file, xattr.clone(), format!("s{p}")),
                        7 if rng.chance(500) => Step::Mkdir(dir),
                        7 => Step::Rmdir(dir),
                        _ => Step::List(dir),
                    });
                }
                steps
            }
        };
        programs.push(program);
    }
    let shutdown = programs.contains(&vec![Step::Shutdown]);
    let ttl = if rng.chance(500) {
        Duration::ZERO
    } else {
        Duration::from_secs(3600)
    };
    let fault_per_mille = if rng.chance(500) || shutdown {
        0
    } else {
        30 + rng.below(120) as u64
    };
    let part_size = if rng.chance(300) { 4 } else { 8 << 20 };
    // Another client writing the same keys, where the mount must see it at once (no
    // caching): its writes land between any two of the mount's requests. Its objects carry
    // no metadata, so these schedules change none through the mount either (a mode the other
    // client's PUT dropped is not what they are about).
    if ttl.is_zero() && rng.chance(400) {
        for steps in &mut programs {
            for step in steps.iter_mut() {
                let kept = match &*step {
                    Step::Fchmod(_) | Step::Fsetxattr(..) => Step::Fstat,
                    Step::Chmod(path, _) | Step::SetXattr(path, ..) => {
                        Step::List(model::parent(path).to_string())
                    }
                    other => other.clone(),
                };
                *step = kept;
            }
        }
        let foreign = (0..1 + rng.below(2))
            .map(|n| Step::ForeignPut(rng.pick(&FILES).to_string(), format!("o{n}").into_bytes()))
            .collect();
        programs.push(foreign);
    }
    Plan {
        files,
        dirs,
        programs,
        ttl,
        fault_per_mille,
        part_size,
    }
}

/// What one schedule did, for the report.
struct Trace {
    outcomes: Vec<Vec<model::Outcome>>,
    schedule: Vec<String>,
}

/// Runs the schedule of `seed`; Err(report) when a check fails.
fn explore(seed: u64) -> Result<(), String> {
    let plan = plan(seed);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut trace = Trace {
        outcomes: Vec::new(),
        schedule: Vec::new(),
    };
    let result = runtime.block_on(run_schedule(seed, &plan, &mut trace));
    result.map_err(|problem| report(seed, &plan, &trace, &problem))
}

async fn run_schedule(seed: u64, plan: &Plan, trace: &mut Trace) -> Result<(), String> {
    let store = Arc::new(ScheduledStore::default());
    for dir in &plan.dirs {
        store.inner.insert(&format!("{dir}/"), "");
    }
    for (path, data) in &plan.files {
        store.inner.insert(path, data.clone());
    }
    let config = FsConfig {
        metadata_ttl: plan.ttl,
        user_xattrs: true,
        write_part_size: plan.part_size,
        // Local disk for changes in place (small files: never staged, so no blocking task
        // runs beside the schedule).
        disk_cache: Some(DiskCacheConfig {
            dir: std::env::temp_dir(),
            max_bytes: 1 << 30,
            chunk_size: 1 << 20,
            concurrency: 2,
        }),
        ..FsConfig::default()
    };
    let fs: Arc<TestFs> = Arc::new(Fs::new(store.clone(), config));
    let mut rng = Rng(SeededRng::new(seed ^ 0x005e_ed0f_5c4e_d01e));
    store.hold(true);
    let tasks: Vec<_> = plan
        .programs
        .iter()
        .map(|steps| tokio::spawn(run_program(fs.clone(), steps.clone())))
        .collect();
    let mut releases = 0;
    loop {
        quiesce(&store).await;
        if tasks.iter().all(|t| t.is_finished()) {
            break;
        }
        let held = store.held();
        if held.is_empty() {
            store.hold(false);
            return Err("deadlock: every operation waits and no request is in flight".into());
        }
        releases += 1;
        if releases > MAX_RELEASES {
            store.hold(false);
            return Err(format!("ran away: over {MAX_RELEASES} requests"));
        }
        let index = rng.below(held.len());
        let fail = rng.chance(plan.fault_per_mille);
        let what = store.release(index, fail);
        trace
            .schedule
            .push(format!("{what}{}", if fail { "  -> 503" } else { "" }));
    }
    store.hold(false);
    for task in tasks {
        trace
            .outcomes
            .push(task.await.map_err(|e| format!("a program panicked: {e}"))?);
    }
    // Settle: what an unmount does.
    let unstored = fs.commit_all().await;
    fs.delete_orphans().await;
    let observed = store_view(&store.objects());
    let mut problems = Vec::new();
    if !unstored.is_empty() {
        problems.push(format!("the settle could not store {unstored:?}"));
    }
    if store.inner.open_uploads() > 0 {
        problems.push(format!(
            "{} multipart upload(s) left open",
            store.inner.open_uploads()
        ));
    }
    let mut refs = Vec::new();
    match mount_view(&fs, &mut refs).await {
        Ok(shown) => {
            let stored: BTreeMap<String, Option<Vec<u8>>> = observed
                .iter()
                .map(|(k, v)| (k.clone(), v.as_ref().map(|(data, _, _)| data.clone())))
                .collect();
            if shown != stored {
                problems.push(format!(
                    "the mount shows {}\n  but S3 holds {}",
                    show_data(&shown),
                    show_data(&stored)
                ));
            }
        }
        Err(e) => problems.push(format!("the mount's tree could not be read: {e}")),
    }
    for ino in refs {
        fs.forget(ino, 1);
    }
    if fs.inode_count() != 1 {
        problems.push(format!(
            "{} inode(s) still held after every reference was forgotten",
            fs.inode_count() - 1
        ));
    }
    let programs: Vec<Vec<(Step, model::Outcome)>> = plan
        .programs
        .iter()
        .zip(&trace.outcomes)
        .map(|(steps, outcomes)| {
            steps
                .iter()
                .cloned()
                .zip(outcomes.iter().cloned())
                .collect()
        })
        .collect();
    let start = Model::new(
        &plan
            .files
            .iter()
            .map(|(p, d)| (*p, d.as_slice()))
            .collect::<Vec<_>>(),
        &plan.dirs,
    );
    if !model::explains(&start, &programs, &observed) {
        problems.push(format!(
            "no serial order of the steps gives what S3 holds: {}",
            show_view(&observed)
        ));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("\n"))
    }
}

/// Lets every runnable task run until none moves: the programs and the store stop counting.
async fn quiesce(store: &ScheduledStore) {
    let mut last = (store.progress(), STEPS.with(|s| s.get()));
    let mut still = 0;
    while still < 20 {
        tokio::task::yield_now().await;
        let now = (store.progress(), STEPS.with(|s| s.get()));
        if now == last {
            still += 1;
        } else {
            still = 0;
            last = now;
        }
    }
}

/// The tree as the mount shows it: path -> bytes for files, None for directories.
async fn mount_view(
    fs: &TestFs,
    refs: &mut Vec<u64>,
) -> Result<BTreeMap<String, Option<Vec<u8>>>, String> {
    let mut shown = BTreeMap::new();
    let mut dirs = vec![(String::new(), 1u64)];
    while let Some((path, ino)) = dirs.pop() {
        let entries = list(fs, ino, refs)
            .await
            .map_err(|e| format!("listing {path:?}: {e:?}"))?;
        for (name, child, is_dir) in entries {
            let child_path = if path.is_empty() {
                name
            } else {
                format!("{path}/{name}")
            };
            if shown.contains_key(&child_path) {
                return Err(format!("{child_path} listed twice"));
            }
            if is_dir {
                shown.insert(child_path.clone(), None);
                dirs.push((child_path, child));
            } else {
                let data = read_file(fs, child)
                    .await
                    .map_err(|e| format!("reading {child_path}: {e:?}"))?;
                shown.insert(child_path, Some(data));
            }
        }
    }
    Ok(shown)
}

fn show_data(view: &BTreeMap<String, Option<Vec<u8>>>) -> String {
    let items: Vec<String> = view
        .iter()
        .map(|(k, v)| match v {
            Some(data) => format!("{k}={:?}", String::from_utf8_lossy(data)),
            None => format!("{k}/"),
        })
        .collect();
    items.join(" ")
}

fn show_view(view: &View) -> String {
    let items: Vec<String> = view
        .iter()
        .map(|(k, v)| match v {
            Some((data, mode, xattrs)) => format!(
                "{k}={:?} {mode:o}{}",
                String::from_utf8_lossy(data),
                xattrs
                    .iter()
                    .map(|(n, v)| format!(" {n}={v}"))
                    .collect::<String>()
            ),
            None => format!("{k}/"),
        })
        .collect();
    items.join(", ")
}

fn report(seed: u64, plan: &Plan, trace: &Trace, problem: &str) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "seed {seed} (replay: BUCKETFS_EXPLORE_SEED={seed})");
    let _ = writeln!(out, "  {problem}");
    let _ = writeln!(
        out,
        "  tree: dirs {:?}, files {}",
        plan.dirs,
        plan.files
            .iter()
            .map(|(p, d)| format!("{p}={:?}", String::from_utf8_lossy(d)))
            .collect::<Vec<_>>()
            .join(" ")
    );
    let _ = writeln!(
        out,
        "  metadata TTL {:?}, faults {} per mille, part size {}",
        plan.ttl, plan.fault_per_mille, plan.part_size
    );
    for (i, steps) in plan.programs.iter().enumerate() {
        let outcomes = trace.outcomes.get(i);
        let shown: Vec<String> = steps
            .iter()
            .enumerate()
            .map(|(j, step)| {
                let outcome = outcomes.and_then(|o| o.get(j));
                let result = match outcome {
                    Some(Some(Ok(()))) => "ok".to_string(),
                    Some(Some(Err(e))) => e.clone(),
                    Some(None) => "skipped".to_string(),
                    None => "?".to_string(),
                };
                format!("{} -> {result}", show_step(step))
            })
            .collect();
        let _ = writeln!(out, "  program {i}: {}", shown.join("; "));
    }
    let _ = writeln!(out, "  requests, in the order let through:");
    for (i, what) in trace.schedule.iter().enumerate() {
        let _ = writeln!(out, "    {i:3} {what}");
    }
    out
}

fn show_step(step: &Step) -> String {
    match step {
        Step::Write(data) => format!("write {:?}", String::from_utf8_lossy(data)),
        Step::Pwrite(offset, data) => {
            format!("pwrite {:?} at {offset}", String::from_utf8_lossy(data))
        }
        other => format!("{other:?}"),
    }
}

fn schedules() -> u64 {
    std::env::var("BUCKETFS_EXPLORE_SCHEDULES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000)
}

#[test]
fn concurrent_operations_on_shared_names_match_a_serial_order() {
    if let Some(seed) = std::env::var("BUCKETFS_EXPLORE_SEED")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    {
        // RUST_LOG=debug shows what the filesystem did, in the order it did it.
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        match explore(seed) {
            Ok(()) => println!("seed {seed}: every check holds"),
            Err(report) => panic!("{report}"),
        }
        return;
    }
    let count = schedules();
    let mut failures = Vec::new();
    for seed in 1..=count {
        if let Err(report) = explore(seed) {
            failures.push(report);
        }
    }
    if let Ok(path) = std::env::var("BUCKETFS_EXPLORE_REPORT") {
        std::fs::write(&path, failures.join("\n")).expect("report file");
    }
    if !failures.is_empty() {
        let first: Vec<&String> = failures.iter().take(3).collect();
        let summary: Vec<String> = failures
            .iter()
            .map(|r| r.lines().take(2).collect::<Vec<_>>().join(": "))
            .collect();
        panic!(
            "{} of {count} schedules failed:\n{}\nthe first in full:\n{}",
            failures.len(),
            summary.join("\n"),
            first
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    println!("{count} schedules explored, every check held");
}

#[test]
fn a_seed_replays_the_same_schedule() {
    for seed in [7, 1234, 99_999] {
        let runs: Vec<String> = (0..2)
            .map(|_| {
                let plan = plan(seed);
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                let mut trace = Trace {
                    outcomes: Vec::new(),
                    schedule: Vec::new(),
                };
                let _ = runtime.block_on(run_schedule(seed, &plan, &mut trace));
                format!("{:?}\n{:?}", trace.outcomes, trace.schedule)
            })
            .collect();
        assert_eq!(runs[0], runs[1], "seed {seed} ran two different schedules");
    }
}
