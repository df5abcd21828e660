//! The raw S3 ceiling: the transfers a benchmark compares bucketfs against, done straight with
//! aws-sdk-s3 and no filesystem in between. Also fills buckets for benchmarks.
//!
//!   s3-ceiling get  BUCKET KEY  [--part-size 8M] [--concurrency 16]
//!   s3-ceiling put  BUCKET KEY SIZE [--part-size 8M] [--concurrency 16]   (random data)
//!   s3-ceiling put-many BUCKET PREFIX COUNT SIZE [DIRS] [--concurrency 16]   (small objects,
//!              spread over DIRS sub-prefixes d000/, d001/, ... when given)
//!   s3-ceiling randget BUCKET KEY BLOCK SECONDS   (aligned random ranged GETs, 1 at a time)
//!   s3-ceiling ttfb BUCKET KEY                     (one 1-byte GET)
//!   s3-ceiling list BUCKET PREFIX
//!   s3-ceiling mb   BUCKET
//!
//! Endpoint and credentials come from the usual AWS environment variables. Prints one line of
//! `key=value` results (bytes, seconds, MiB/s) for scripts to read.

use std::sync::Arc;
use std::time::Instant;

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use aws_sdk_s3::Client;
use bucketfs::cli::parse_size;
use bucketfs::testdata::random_bytes;
use tokio::sync::Semaphore;

struct Args {
    positional: Vec<String>,
    part_size: u64,
    concurrency: usize,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        positional: Vec::new(),
        part_size: 8 << 20,
        concurrency: 16,
    };
    let mut iter = std::env::args().skip(1);
    while let Some(arg) = iter.next() {
        match arg.as_str() {
            "--part-size" => {
                args.part_size = parse_size(&iter.next().ok_or("--part-size needs a value")?)?
            }
            "--concurrency" => {
                args.concurrency = iter
                    .next()
                    .and_then(|v| v.parse().ok())
                    .filter(|n| *n > 0)
                    .ok_or("--concurrency needs a positive number")?
            }
            _ => args.positional.push(arg),
        }
    }
    Ok(args)
}

async fn client() -> Client {
    let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .load()
        .await;
    let s3 = aws_sdk_s3::config::Builder::from(&config)
        .force_path_style(true)
        .request_checksum_calculation(aws_sdk_s3::config::RequestChecksumCalculation::WhenRequired)
        .response_checksum_validation(aws_sdk_s3::config::ResponseChecksumValidation::WhenRequired)
        .build();
    Client::from_conf(s3)
}

fn report(op: &str, bytes: u64, started: Instant) {
    let secs = started.elapsed().as_secs_f64();
    let mib_s = bytes as f64 / (1 << 20) as f64 / secs;
    println!("op={op} bytes={bytes} seconds={secs:.3} mib_per_s={mib_s:.1}");
}

/// The object's size, from a HEAD.
async fn object_size(client: &Client, bucket: &str, key: &str) -> Result<u64, String> {
    let head = client
        .head_object()
        .bucket(bucket)
        .key(key)
        .send()
        .await
        .map_err(|e| format!("head: {e:?}"))?;
    Ok(head.content_length().unwrap_or(0).max(0) as u64)
}

/// Concurrent ranged GETs of the whole object, bytes discarded.
async fn get(
    client: Client,
    bucket: &str,
    key: &str,
    part: u64,
    concurrency: usize,
) -> Result<(), String> {
    let started = Instant::now();
    let size = object_size(&client, bucket, key).await?;
    let permits = Arc::new(Semaphore::new(concurrency));
    let mut tasks = Vec::new();
    let mut offset = 0;
    while offset < size {
        let end = (offset + part).min(size);
        let permit = permits.clone().acquire_owned().await.expect("semaphore");
        let (client, bucket, key) = (client.clone(), bucket.to_string(), key.to_string());
        tasks.push(tokio::spawn(async move {
            let _permit = permit;
            let out = client
                .get_object()
                .bucket(bucket)
                .key(key)
                .range(format!("bytes={}-{}", offset, end - 1))
                .send()
                .await
                .map_err(|e| format!("get: {e:?}"))?;
            let body = out.body.collect().await.map_err(|e| e.to_string())?;
            Ok::<u64, String>(body.into_bytes().len() as u64)
        }));
        offset = end;
    }
    let mut total = 0;
    for task in tasks {
        total += task.await.map_err(|e| e.to_string())??;
    }
    if total != size {
        return Err(format!("got {total} bytes of {size}"));
    }
    report("get", total, started);
    Ok(())
}

/// A multipart upload of `size` random bytes with `concurrency` parts in flight.
async fn put(
    client: Client,
    bucket: &str,
    key: &str,
    size: u64,
    part: u64,
    concurrency: usize,
) -> Result<(), String> {
    if size <= part {
        let started = Instant::now();
        client
            .put_object()
            .bucket(bucket)
            .key(key)
            .body(ByteStream::from(random_bytes(size as usize, 1)))
            .send()
            .await
            .map_err(|e| format!("put: {e:?}"))?;
        report("put", size, started);
        return Ok(());
    }
    // Parts are generated before the clock starts: the ceiling measures S3, not the RNG.
    let count = size.div_ceil(part);
    let parts: Vec<Vec<u8>> = (0..count)
        .map(|i| random_bytes((part.min(size - i * part)) as usize, i + 1))
        .collect();
    let started = Instant::now();
    let upload = client
        .create_multipart_upload()
        .bucket(bucket)
        .key(key)
        .send()
        .await
        .map_err(|e| format!("create upload: {e:?}"))?;
    let upload_id = upload.upload_id().ok_or("no upload id")?.to_string();
    let permits = Arc::new(Semaphore::new(concurrency));
    let mut tasks = Vec::new();
    for (i, body) in parts.into_iter().enumerate() {
        let permit = permits.clone().acquire_owned().await.expect("semaphore");
        let (client, bucket, key, id) = (
            client.clone(),
            bucket.to_string(),
            key.to_string(),
            upload_id.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let _permit = permit;
            let number = i as i32 + 1;
            let out = client
                .upload_part()
                .bucket(bucket)
                .key(key)
                .upload_id(id)
                .part_number(number)
                .body(ByteStream::from(body))
                .send()
                .await
                .map_err(|e| format!("upload part {number}: {e:?}"))?;
            Ok::<CompletedPart, String>(
                CompletedPart::builder()
                    .part_number(number)
                    .set_e_tag(out.e_tag().map(String::from))
                    .build(),
            )
        }));
    }
    let mut completed = Vec::new();
    for task in tasks {
        completed.push(task.await.map_err(|e| e.to_string())??);
    }
    client
        .complete_multipart_upload()
        .bucket(bucket)
        .key(key)
        .upload_id(upload_id)
        .multipart_upload(
            CompletedMultipartUpload::builder()
                .set_parts(Some(completed))
                .build(),
        )
        .send()
        .await
        .map_err(|e| format!("complete: {e:?}"))?;
    report("put", size, started);
    Ok(())
}

/// `count` PutObjects of `size` random bytes under `prefix`, `concurrency` at a time.
async fn put_many(
    client: Client,
    bucket: &str,
    prefix: &str,
    count: u64,
    size: u64,
    dirs: Option<u64>,
    concurrency: usize,
) -> Result<(), String> {
    let body = random_bytes(size as usize, 3);
    let started = Instant::now();
    let permits = Arc::new(Semaphore::new(concurrency));
    let mut tasks = Vec::new();
    for i in 0..count {
        let permit = permits.clone().acquire_owned().await.expect("semaphore");
        let (client, bucket) = (client.clone(), bucket.to_string());
        let key = match dirs {
            Some(dirs) => format!("{prefix}d{:03}/f{i:06}", i % dirs),
            None => format!("{prefix}{i:06}"),
        };
        let body = body.clone();
        tasks.push(tokio::spawn(async move {
            let _permit = permit;
            client
                .put_object()
                .bucket(bucket)
                .key(key)
                .body(ByteStream::from(body))
                .send()
                .await
                .map(|_| ())
                .map_err(|e| format!("put: {e:?}"))
        }));
    }
    for task in tasks {
        task.await.map_err(|e| e.to_string())??;
    }
    println!(
        "op=put-many count={count} seconds={:.3}",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Random aligned ranged GETs of `block` bytes, one at a time, for `seconds`: what a single
/// random reader (fio, iodepth 1) could get straight from S3.
async fn randget(
    client: Client,
    bucket: &str,
    key: &str,
    block: u64,
    seconds: f64,
) -> Result<(), String> {
    let blocks = (object_size(&client, bucket, key).await? / block).max(1);
    let mut state: u64 = 0x2545_F491_4F6C_DD1D;
    let started = Instant::now();
    let mut ops = 0u64;
    while started.elapsed().as_secs_f64() < seconds {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let offset = (state % blocks) * block;
        let out = client
            .get_object()
            .bucket(bucket)
            .key(key)
            .range(format!("bytes={}-{}", offset, offset + block - 1))
            .send()
            .await
            .map_err(|e| format!("get: {e:?}"))?;
        out.body.collect().await.map_err(|e| e.to_string())?;
        ops += 1;
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "op=randget ops={ops} seconds={secs:.3} iops={:.1} mib_per_s={:.1}",
        ops as f64 / secs,
        (ops * block) as f64 / (1 << 20) as f64 / secs
    );
    Ok(())
}

/// Time to the first byte of an object: one 1-byte ranged GET.
async fn ttfb(client: Client, bucket: &str, key: &str) -> Result<(), String> {
    let started = Instant::now();
    let out = client
        .get_object()
        .bucket(bucket)
        .key(key)
        .range("bytes=0-0")
        .send()
        .await
        .map_err(|e| format!("get: {e:?}"))?;
    out.body.collect().await.map_err(|e| e.to_string())?;
    println!("op=ttfb seconds={:.6}", started.elapsed().as_secs_f64());
    Ok(())
}

/// A full paginated, delimited listing of a prefix.
async fn list(client: Client, bucket: &str, prefix: &str) -> Result<(), String> {
    let started = Instant::now();
    let mut token = None;
    let mut entries = 0u64;
    loop {
        let out = client
            .list_objects_v2()
            .bucket(bucket)
            .prefix(prefix)
            .delimiter("/")
            .set_continuation_token(token)
            .send()
            .await
            .map_err(|e| format!("list: {e:?}"))?;
        entries += (out.contents().len() + out.common_prefixes().len()) as u64;
        token = out.next_continuation_token().map(String::from);
        if token.is_none() {
            break;
        }
    }
    println!(
        "op=list entries={entries} seconds={:.3}",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

async fn run(args: Args) -> Result<(), String> {
    let client = client().await;
    let p: Vec<&str> = args.positional.iter().map(String::as_str).collect();
    match p.as_slice() {
        ["get", bucket, key] => get(client, bucket, key, args.part_size, args.concurrency).await,
        ["put", bucket, key, size] => {
            put(client, bucket, key, parse_size(size)?, args.part_size, args.concurrency).await
        }
        ["put-many", bucket, prefix, count, size, rest @ ..] if rest.len() <= 1 => {
            let count = count.parse().map_err(|_| "COUNT must be a number")?;
            let dirs = match rest.first() {
                Some(d) => Some(d.parse().map_err(|_| "DIRS must be a number")?),
                None => None,
            };
            put_many(client, bucket, prefix, count, parse_size(size)?, dirs, args.concurrency).await
        }
        ["randget", bucket, key, block, seconds] => {
            let seconds = seconds.parse().map_err(|_| "SECONDS must be a number")?;
            randget(client, bucket, key, parse_size(block)?, seconds).await
        }
        ["ttfb", bucket, key] => ttfb(client, bucket, key).await,
        ["list", bucket, prefix] => list(client, bucket, prefix).await,
        ["list", bucket] => list(client, bucket, "").await,
        ["mb", bucket] => client
            .create_bucket()
            .bucket(*bucket)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| format!("create bucket: {e:?}")),
        _ => Err("usage: s3-ceiling get BUCKET KEY | put BUCKET KEY SIZE | list BUCKET [PREFIX] | mb BUCKET [--part-size 8M] [--concurrency 16]".into()),
    }
}

fn main() {
    let result = parse_args().and_then(|args| {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?
            .block_on(run(args))
    });
    if let Err(message) = result {
        eprintln!("s3-ceiling: {message}");
        std::process::exit(1);
    }
}
