//! The mounting process: checks, the FUSE session, and a clean unmount on SIGINT/SIGTERM.

use std::sync::Arc;
use std::time::Duration;

use fuser::{MountOption, SessionACL};
use tracing::{error, info};

use crate::cli::Cli;
use crate::config::Config;
use crate::daemon::Ready;
use crate::fs::Fs;
use crate::fuse::FuseAdapter;
use crate::store::buckets::BucketsStore;
use crate::store::s3::S3Store;
use crate::store::{ObjectStore, StoreError};

/// How long the pre-mount checks may take before the endpoint counts as unreachable.
const CHECK_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs bucketfs in this process until the mount ends; reports the mount's outcome to `ready`.
/// glibc's allocator, left alone, keeps a heap arena per busy thread and keeps freed memory in
/// them: under a mixed load (readers, writers, staging at once) freed part buffers stayed in 15
/// fragmented arenas, 40-85 MiB over the memory budget at --max-memory 64 and 128. Two arenas,
/// and a trim of free memory back to the system four times a second, keep the process near its
/// budget (measured: 127/189/429 MiB at 64/128/512 under the mixed load). Mapping every large
/// buffer directly (a fixed mmap threshold) would bound it too, but its page faults cost a tenth
/// of the sequential write speed.
fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only sets an allocator parameter; called before other threads start.
        unsafe { libc::mallopt(libc::M_ARENA_MAX, 2) };
        let trimmer = std::thread::Builder::new()
            .name("bucketfs-trim".into())
            .spawn(|| loop {
                std::thread::sleep(ALLOCATOR_TRIM_EVERY);
                // SAFETY: malloc_trim only returns free memory to the system.
                unsafe { libc::malloc_trim(0) };
            });
        if let Err(e) = trimmer {
            tracing::debug!("allocator trim thread not started: {e}");
        }
    }
}

/// How often free heap memory is returned to the system (see `tune_allocator`).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const ALLOCATOR_TRIM_EVERY: std::time::Duration = std::time::Duration::from_millis(250);

pub fn run(cli: Cli, ready: Ready) -> i32 {
    tune_allocator();
    // A daemonized mount has no terminal: it logs to a file under the state directory.
    let default_log = (!ready.is_terminal() && !cli.list_uploads).then(|| {
        let source = match cli.source_and_mountpoint().0 {
            "s3://" => "all-buckets",
            source => source,
        };
        let name: String = source
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        cli.state_dir().join("log").join(format!("{name}.log"))
    });
    // Every directory bucketfs uses under the state directory must be its own (not another
    // user's, not a symlink): checked before anything is read or written there (the upload
    // journals' directory is checked in `serve`).
    let state_dir = cli.state_dir();
    if let Err(message) =
        crate::private_files::check_owned_below(&state_dir, &state_dir.join("log"))
    {
        ready.failure(&message);
        return 1;
    }
    // The default log lives under the state directory: private, and never a planted link.
    let private_log = cli.log_file.is_none() && default_log.is_some();
    let log_file = cli.log_file.clone().or(default_log);
    if let Some(dir) = log_file.as_deref().and_then(std::path::Path::parent) {
        let _ = crate::private_files::create_dir(dir);
    }
    if let Err(message) = crate::logging::init(cli.debug, log_file.as_deref(), private_log) {
        ready.failure(&message);
        return 1;
    }
    let logs_to_file = log_file.is_some();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("bucketfs-io")
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            ready.failure(&format!("cannot start the async runtime: {e}"));
            return 1;
        }
    };
    let prepared = Config::resolve(&cli)
        .map_err(|e| e.to_string())
        .and_then(|mut config| {
            runtime
                .block_on(connect(&mut config))
                .map(|store| (config, store))
        });
    let (config, store) = match prepared {
        Ok(ok) => ok,
        Err(message) => {
            report_failure(ready, logs_to_file, &message);
            return 1;
        }
    };
    if cli.list_uploads {
        return match &store {
            Connected::Bucket(store) => list_uploads(&runtime, store, &config, &cli),
            Connected::Buckets(_) => {
                ready.failure("--list-uploads needs a bucket");
                1
            }
        };
    }
    match store {
        Connected::Bucket(store) => serve(store, &config, &cli, &runtime, ready, logs_to_file),
        Connected::Buckets(store) => serve(store, &config, &cli, &runtime, ready, logs_to_file),
    }
}

/// Mounts `store` and serves the mount until it ends; the exit status.
fn serve<S: ObjectStore>(
    store: S,
    config: &Config,
    cli: &Cli,
    runtime: &tokio::runtime::Runtime,
    ready: Ready,
    logs_to_file: bool,
) -> i32 {
    let scope = crate::uploads::journal_scope(
        &cli.state_dir(),
        config.s3.endpoint_url.as_deref(),
        &config.target.bucket,
        &config.target.prefix,
    );
    if let Err(message) = crate::private_files::check_owned_below(&cli.state_dir(), &scope) {
        report_failure(ready, logs_to_file, &message);
        return 1;
    }
    let journal = runtime.block_on(crate::uploads::recover_and_start_journal(&store, &scope));
    let journal = match journal {
        Ok((journal, aborted)) => {
            if aborted > 0 {
                info!(aborted, "incomplete uploads of a previous bucketfs aborted");
            }
            journal
        }
        Err(message) => {
            report_failure(ready, logs_to_file, &message);
            return 1;
        }
    };

    let fs = Arc::new(Fs::new(Arc::new(store), config.fs.clone()).with_journal(journal));
    if let Some(addr) = cli.metrics_addr {
        let sampled = fs.clone();
        match crate::metrics::serve(addr, Arc::new(move || sampled.usage())) {
            Ok(bound) => info!("metrics at http://{bound}/metrics"),
            Err(e) => {
                let message = format!("cannot serve metrics on --metrics-addr {addr}: {e}");
                report_failure(ready, logs_to_file, &message);
                return 1;
            }
        }
    }
    let adapter = FuseAdapter::new(fs.clone(), runtime.handle().clone());
    // Paths of open files, as /proc shows them, start with the canonical mountpoint.
    adapter.set_mountpoint(
        std::fs::canonicalize(&config.mountpoint).unwrap_or_else(|_| config.mountpoint.clone()),
    );
    let mut session = match fuser::Session::new(adapter, &config.mountpoint, &fuse_config(config)) {
        Ok(session) => session,
        Err(e) => {
            let message = mount_error_message(config, &e);
            report_failure(ready, logs_to_file, &message);
            return 1;
        }
    };
    let mut unmounter = session.unmount_callable();
    let (done_tx, mut done_rx) = tokio::sync::oneshot::channel();
    let session_thread = std::thread::Builder::new()
        .name("bucketfs-fuse".into())
        .spawn(move || {
            let result = session.run();
            let _ = done_tx.send(());
            result
        });
    let session_thread = match session_thread {
        Ok(thread) => thread,
        Err(e) => {
            ready.failure(&format!("cannot start the FUSE session thread: {e}"));
            return 1;
        }
    };
    tune_readahead(&config.mountpoint);
    info!(
        bucket = %config.target.bucket,
        prefix = %config.target.prefix,
        mountpoint = %config.mountpoint.display(),
        "mounted"
    );
    // The handlers are in place before anyone hears the mount is ready: a SIGTERM right
    // after READY=1 (systemd stopping the unit at once) must run the shutdown, not kill us
    // with the mount left behind.
    let signals = {
        use tokio::signal::unix::{signal, SignalKind};
        let _runtime = runtime.enter();
        signal(SignalKind::terminate())
            .and_then(|term| Ok((term, signal(SignalKind::interrupt())?)))
    };
    let (mut term, mut interrupt) = match signals {
        Ok(signals) => signals,
        Err(e) => {
            let message = format!("cannot install the SIGTERM/SIGINT handlers: {e}");
            error!("{message}");
            let _ = unmounter.unmount();
            ready.failure(&message);
            return 1;
        }
    };
    let foreground = ready.is_terminal();
    ready.success();
    if foreground {
        eprintln!(
            "bucketfs: {} mounted at {} (Ctrl-C or fusermount3 -u to unmount)",
            config.source,
            config.mountpoint.display()
        );
    }

    let signalled = runtime.block_on(async {
        tokio::select! {
            _ = &mut done_rx => { info!("unmounted"); false }
            _ = interrupt.recv() => { info!("SIGINT: storing open files, then unmounting"); true }
            _ = term.recv() => { info!("SIGTERM: storing open files, then unmounting"); true }
        }
    });
    crate::notify::stopping(signalled);
    let status = if signalled {
        shutdown(runtime, &fs, config, unmounter, done_rx)
    } else {
        match session_thread.join() {
            Ok(Ok(())) => 0,
            Ok(Err(e)) => {
                error!("FUSE session ended with an error: {e}");
                1
            }
            Err(_) => 1,
        }
    };
    info!("stats: {}", crate::metrics::metrics().summary());
    status
}

/// How long a shutdown waits for open files to be stored.
const SHUTDOWN_COMMIT_WAIT: Duration = Duration::from_secs(60);
/// How long it then waits for the FUSE session to end after the unmount.
const SHUTDOWN_SESSION_WAIT: Duration = Duration::from_secs(10);

/// SIGTERM/SIGINT: new writes are refused, files open for writing are stored (bounded wait),
/// the mount goes (lazily when busy), and the exit status says whether everything written
/// reached S3. Never hangs.
fn shutdown<S: ObjectStore>(
    runtime: &tokio::runtime::Runtime,
    fs: &Arc<Fs<S>>,
    config: &Config,
    mut unmounter: fuser::SessionUnmounter,
    done_rx: tokio::sync::oneshot::Receiver<()>,
) -> i32 {
    fs.begin_shutdown();
    // A task, not a future dropped at the timeout: a commit cut off halfway would leave its
    // writer in a state a later commit could complete wrongly. At the timeout the process
    // exits with the task still running, so nothing completes it later.
    let committing = {
        let fs = fs.clone();
        runtime.spawn(async move {
            let failed = fs.commit_all().await;
            fs.delete_orphans().await;
            failed
        })
    };
    let committed =
        runtime.block_on(async { tokio::time::timeout(SHUTDOWN_COMMIT_WAIT, committing).await });
    let failed = match committed {
        Ok(Ok(failed)) => failed,
        Ok(Err(e)) => {
            error!("storing open files failed: {e}");
            fs.open_for_writing()
        }
        Err(_) => {
            error!(
                "open files were still being stored after {}s",
                SHUTDOWN_COMMIT_WAIT.as_secs()
            );
            fs.open_for_writing()
        }
    };
    if let Err(e) = unmounter.unmount() {
        info!("unmount: {e}; the mount is busy, detaching it lazily");
        let lazy = std::process::Command::new("fusermount3")
            .arg("-u")
            .arg("-z")
            .arg(&config.mountpoint)
            .status();
        if !lazy.is_ok_and(|s| s.success()) {
            error!("lazy unmount of {} failed", config.mountpoint.display());
        }
    }
    let ended =
        runtime.block_on(async { tokio::time::timeout(SHUTDOWN_SESSION_WAIT, done_rx).await });
    if ended.is_err() {
        info!("the FUSE session is still busy; exiting (open files there get ENOTCONN)");
    }
    if failed.is_empty() {
        info!("every file written was stored; exiting");
        0
    } else {
        error!(files = ?failed, "exiting with files that could not be stored in S3");
        eprintln!("bucketfs: could not store in S3: {}", failed.join(", "));
        1
    }
}

/// `--list-uploads`: lists (and with `--abort-uploads` aborts) incomplete uploads.
fn list_uploads<S: ObjectStore>(
    runtime: &tokio::runtime::Runtime,
    store: &S,
    config: &Config,
    cli: &Cli,
) -> i32 {
    let mut stdout = std::io::stdout();
    let listed = runtime.block_on(crate::uploads::list_and_abort(
        store,
        &config.target.prefix,
        cli.older_than,
        cli.abort_uploads,
        &mut stdout,
    ));
    match listed {
        Ok(_) => 0,
        Err(message) => {
            eprintln!("bucketfs: {message}");
            1
        }
    }
}

/// Tells the user (terminal or daemonizing parent) why the mount failed, once; the log file,
/// when there is one, gets it too.
fn report_failure(ready: Ready, to_log_file: bool, message: &str) {
    if to_log_file {
        error!("{message}");
    }
    ready.failure(message);
}

/// The store a mount serves: one bucket, or every bucket as top-level directories.
enum Connected {
    Bucket(S3Store),
    Buckets(BucketsStore),
}

/// Builds the store and checks what can be checked before mounting: credentials, then that
/// the bucket is there and reachable (for every bucket: that buckets can be listed).
async fn connect(config: &mut Config) -> Result<Connected, String> {
    if config.s3.region.is_empty() {
        config.s3.region = profile_region(config.s3.profile.as_deref())
            .await
            .unwrap_or_else(|| "us-east-1".to_string());
    }
    let store = S3Store::new(&config.s3).await?;
    let bucket = &config.target.bucket;
    let endpoint = config
        .s3
        .endpoint_url
        .clone()
        .unwrap_or_else(|| format!("AWS S3 ({})", config.s3.region));
    if !config.s3.no_sign_request {
        let creds = tokio::time::timeout(CHECK_TIMEOUT, store.check_credentials()).await;
        match creds {
            Ok(Ok(_)) => {}
            Ok(Err(detail)) => {
                tracing::debug!("credential chain: {detail}");
                return Err("no AWS credentials found: set AWS_ACCESS_KEY_ID and \
                     AWS_SECRET_ACCESS_KEY (or S3_ACCESS_KEY and S3_SECRET_KEY), pass --profile, \
                     or use --no-sign-request for a public bucket"
                    .to_string());
            }
            Err(_) => return Err("timed out looking for AWS credentials".to_string()),
        }
    }
    if bucket.is_empty() {
        let store = BucketsStore::new(store);
        let checked = tokio::time::timeout(CHECK_TIMEOUT, store.check_bucket()).await;
        return match checked {
            Ok(Ok(())) => Ok(Connected::Buckets(store)),
            Ok(Err(StoreError::AccessDenied(detail))) => Err(format!(
                "access denied listing the buckets at {endpoint}: a mount of every bucket \
                 needs s3:ListAllMyBuckets ({detail})"
            )),
            Ok(Err(StoreError::Transient(detail))) => Err(tls_failure(&endpoint, &detail)
                .unwrap_or_else(|| format!("cannot reach the S3 endpoint {endpoint}: {detail}"))),
            Ok(Err(other)) => Err(format!("cannot list the buckets at {endpoint}: {other}")),
            Err(_) => Err(format!(
                "cannot reach the S3 endpoint {endpoint}: no answer within {}s",
                CHECK_TIMEOUT.as_secs()
            )),
        };
    }
    let checked = tokio::time::timeout(CHECK_TIMEOUT, store.check_bucket()).await;
    match checked {
        Ok(Ok(())) => Ok(Connected::Bucket(store)),
        Ok(Err(StoreError::NoSuchBucket(_))) => {
            Err(format!("bucket '{bucket}' does not exist at {endpoint}"))
        }
        Ok(Err(StoreError::AccessDenied(detail))) => Err(format!(
            "access denied to bucket '{bucket}' at {endpoint}: check the credentials and the \
             bucket policy ({detail})"
        )),
        Ok(Err(StoreError::Transient(detail))) | Ok(Err(StoreError::Throttled(detail))) => {
            Err(tls_failure(&endpoint, &detail)
                .unwrap_or_else(|| format!("cannot reach the S3 endpoint {endpoint}: {detail}")))
        }
        Ok(Err(other)) => Err(format!(
            "cannot use bucket '{bucket}' at {endpoint}: {other}"
        )),
        Err(_) => Err(format!(
            "cannot reach the S3 endpoint {endpoint}: no answer within {}s",
            CHECK_TIMEOUT.as_secs()
        )),
    }
}

/// A failed TLS handshake in `detail` (the SDK's error chain, as `DisplayErrorContext` shows
/// it), said plainly: an untrusted certificate is no unreachable endpoint.
fn tls_failure(endpoint: &str, detail: &str) -> Option<String> {
    const HANDSHAKE: &str = "TLS handshake failed: ";
    const CERTIFICATE: &str = "invalid peer certificate: ";
    let reason = &detail[detail.find(HANDSHAKE)? + HANDSHAKE.len()..];
    // Drop the debug form of the whole error that follows the readable chain.
    let reason = reason.split(" (DispatchFailure(").next().unwrap_or(reason);
    Some(match reason.strip_prefix(CERTIFICATE) {
        Some(why) if why.starts_with("UnknownIssuer") => format!(
            "the TLS certificate of the S3 endpoint {endpoint} is not trusted: no trusted CA \
             issued it ({why}); pass the issuing CA's certificate with --ca-bundle FILE (or \
             AWS_CA_BUNDLE)"
        ),
        Some(why) => format!("the TLS certificate of the S3 endpoint {endpoint} is refused: {why}"),
        None => format!("TLS handshake with the S3 endpoint {endpoint} failed: {reason}"),
    })
}

/// The region named in the AWS config files for the profile, without asking any network
/// service (the instance metadata service is never contacted for the region).
async fn profile_region(profile: Option<&str>) -> Option<String> {
    let mut builder = aws_config::profile::ProfileFileRegionProvider::builder();
    if let Some(profile) = profile {
        builder = builder.profile_name(profile);
    }
    use aws_config::meta::region::ProvideRegion;
    builder
        .build()
        .region()
        .await
        .map(|r| r.as_ref().to_string())
}

/// Kernel readahead for the mount, in KiB. FUSE mounts start at 128 KiB, which cuts sequential
/// reads into 128 KiB requests; 1 MiB requests cost a quarter of the CPU per byte (measured:
/// 1 GiB read from Garage went from about 426 to about 490 MiB/s on two cores).
const READAHEAD_KB: u32 = 1024;

/// Raises the readahead of this mount's backing device (best effort: needs root; without it
/// the kernel's default stays).
fn tune_readahead(mountpoint: &std::path::Path) {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = std::fs::metadata(mountpoint) else {
        return;
    };
    let dev = meta.dev();
    let (major, minor) = (libc::major(dev), libc::minor(dev));
    let path = format!("/sys/class/bdi/{major}:{minor}/read_ahead_kb");
    match std::fs::write(&path, READAHEAD_KB.to_string()) {
        Ok(()) => tracing::debug!(path, kb = READAHEAD_KB, "readahead raised"),
        Err(e) => tracing::debug!(path, "readahead left at the kernel default: {e}"),
    }
}

fn fuse_config(config: &Config) -> fuser::Config {
    let mut options = vec![
        // The source as given (fstab's first field): mount -a then sees the line is mounted.
        MountOption::FSName(config.source.clone()),
        MountOption::Subtype("bucketfs".into()),
        MountOption::DefaultPermissions,
        MountOption::NoDev,
        MountOption::NoSuid,
        MountOption::NoAtime,
    ];
    options.push(if config.fs.read_only {
        MountOption::RO
    } else {
        MountOption::RW
    });
    if config.auto_unmount {
        options.push(MountOption::AutoUnmount);
    }
    let mut fuse = fuser::Config::default();
    fuse.mount_options = options;
    fuse.acl = if config.allow_other {
        SessionACL::All
    } else if config.allow_root {
        SessionACL::RootAndOwner
    } else {
        SessionACL::Owner
    };
    // FUSE threads only hand requests to the async runtime, so a few are enough.
    fuse.n_threads = Some(4);
    fuse.clone_fd = true;
    fuse
}

fn mount_error_message(config: &Config, err: &std::io::Error) -> String {
    let text = err.to_string();
    let hint = if text.contains("fusermount") || err.kind() == std::io::ErrorKind::NotFound {
        " (is fuse3 installed? apt-get install fuse3)"
    } else if text.contains("auto_unmount") {
        " (--auto-unmount needs --allow-other or --allow-root)"
    } else if text.contains("user_allow_other") {
        " (add user_allow_other to /etc/fuse.conf)"
    } else {
        ""
    };
    format!(
        "cannot mount at {}: {text}{hint}",
        config.mountpoint.display()
    )
}

/// Used by tests and tools: the same pre-mount checks against any store.
pub async fn check_store<S: ObjectStore>(store: &S) -> Result<(), StoreError> {
    store.check_bucket().await
}
