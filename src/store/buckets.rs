//! Every bucket at once (a mount with no bucket named): the store's keys are `BUCKET/KEY`, so
//! the filesystem above sees each bucket the credentials can list as a top-level directory
//! and needs no notion of buckets. The only keys that are not objects are the top-level
//! markers `BUCKET/`: listing or HEADing one asks about the bucket, storing one (mkdir)
//! creates the bucket, deleting one (rmdir, after the filesystem found it empty) deletes it.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;

use super::buffers::BufferPool;
use super::s3::S3Store;
use super::{
    Expect, ListPage, ObjectInfo, ObjectStore, PendingUpload, PutOptions, StoreError, StoreResult,
    UploadedPart,
};

/// Where a key of the combined namespace lives.
#[derive(Debug, PartialEq, Eq)]
enum Place<'a> {
    /// The root itself, or a name directly under it that is no directory (`name`, never an
    /// object: only buckets live at the top).
    Top,
    /// `BUCKET/`: the bucket itself.
    Bucket(&'a str),
    /// `BUCKET/KEY`.
    Object(&'a str, &'a str),
}

fn place(key: &str) -> Place<'_> {
    match key.split_once('/') {
        None => Place::Top,
        Some((bucket, "")) => Place::Bucket(bucket),
        Some((bucket, rest)) => Place::Object(bucket, rest),
    }
}

pub struct BucketsStore {
    /// Bucket-level calls (ListBuckets, CreateBucket, DeleteBucket).
    service: S3Store,
    /// One store per bucket used so far, sharing the service's client and connection bound.
    buckets: Mutex<HashMap<String, Arc<S3Store>>>,
    /// Creation dates from the last ListBuckets, shown as the directories' times.
    created: Mutex<HashMap<String, SystemTime>>,
}

impl BucketsStore {
    pub fn new(service: S3Store) -> Self {
        Self {
            service,
            buckets: Mutex::new(HashMap::new()),
            created: Mutex::new(HashMap::new()),
        }
    }

    fn bucket(&self, name: &str) -> Arc<S3Store> {
        self.buckets
            .lock()
            .unwrap()
            .entry(name.to_string())
            .or_insert_with(|| Arc::new(self.service.for_bucket(name)))
            .clone()
    }

    /// The store of the bucket `key` is in, and the key inside it; top-level names that are
    /// not buckets cannot hold objects (EPERM at the filesystem, which refuses them first).
    fn object(&self, key: &str) -> StoreResult<(Arc<S3Store>, String)> {
        match place(key) {
            Place::Object(bucket, rest) => Ok((self.bucket(bucket), rest.to_string())),
            _ => Err(StoreError::InvalidRequest(format!(
                "{key}: only buckets (directories) live at the top of a mount of every bucket"
            ))),
        }
    }

    /// A bucket's directory marker: exists when the bucket does (HeadBucket).
    async fn bucket_marker(&self, bucket: &str) -> StoreResult<ObjectInfo> {
        match self.bucket(bucket).check_bucket().await {
            Ok(()) => Ok(self.marker_of(bucket)),
            Err(StoreError::NoSuchBucket(_)) => Err(StoreError::NotFound),
            Err(e) => Err(e),
        }
    }

    /// The marker of a bucket known to exist, dated by its creation when ListBuckets said.
    fn marker_of(&self, bucket: &str) -> ObjectInfo {
        ObjectInfo {
            key: format!("{bucket}/"),
            size: 0,
            etag: None,
            last_modified: self
                .created
                .lock()
                .unwrap()
                .get(bucket)
                .copied()
                .unwrap_or_else(SystemTime::now),
            user_metadata: HashMap::new(),
            content_type: None,
            storage_class: None,
            version_id: None,
            restore: None,
        }
    }

    async fn list_buckets(&self) -> StoreResult<Vec<String>> {
        let buckets = self.service.list_buckets().await?;
        let mut created = self.created.lock().unwrap();
        created.clear();
        for b in &buckets {
            created.insert(b.name.clone(), b.created);
        }
        Ok(buckets.into_iter().map(|b| b.name).collect())
    }
}

/// `page` of a bucket's listing, with every key under `BUCKET/`.
fn prefixed(bucket: &str, mut page: ListPage) -> ListPage {
    for object in &mut page.objects {
        object.key = format!("{bucket}/{}", object.key);
    }
    for prefix in &mut page.prefixes {
        *prefix = format!("{bucket}/{prefix}");
    }
    page
}

#[async_trait]
impl ObjectStore for BucketsStore {
    fn buffers(&self) -> Option<&Arc<BufferPool>> {
        self.service.buffers()
    }

    /// The credentials can list buckets.
    async fn check_bucket(&self) -> StoreResult<()> {
        self.list_buckets().await.map(|_| ())
    }

    async fn head(&self, key: &str) -> StoreResult<ObjectInfo> {
        match place(key) {
            Place::Top => Err(StoreError::NotFound),
            Place::Bucket(bucket) => self.bucket_marker(bucket).await,
            Place::Object(bucket, rest) => {
                let mut info = match self.bucket(bucket).head(rest).await {
                    Err(StoreError::NoSuchBucket(_)) => return Err(StoreError::NotFound),
                    other => other?,
                };
                info.key = key.to_string();
                Ok(info)
            }
        }
    }

    async fn list_page(
        &self,
        prefix: &str,
        delimited: bool,
        token: Option<String>,
        max_keys: Option<i32>,
    ) -> StoreResult<ListPage> {
        let (bucket, rest) = match place(prefix) {
            // The root: the buckets, as directories.
            Place::Top if prefix.is_empty() => {
                let mut prefixes: Vec<String> = self
                    .list_buckets()
                    .await?
                    .into_iter()
                    .map(|b| format!("{b}/"))
                    .collect();
                prefixes.sort();
                return Ok(ListPage {
                    prefixes,
                    ..ListPage::default()
                });
            }
            // `name` (a probe of a top-level name) or `name/...`: nothing but below buckets.
            Place::Top => return Ok(ListPage::default()),
            Place::Bucket(bucket) => (bucket, ""),
            Place::Object(bucket, rest) => (bucket, rest),
        };
        let page = match self
            .bucket(bucket)
            .list_page(rest, delimited, token.clone(), max_keys)
            .await
        {
            // A name that is no bucket: an empty directory listing, so a lookup finds nothing.
            Err(StoreError::NoSuchBucket(_)) => return Ok(ListPage::default()),
            other => other?,
        };
        let mut page = prefixed(bucket, page);
        // The bucket's own directory marker, first, so an empty bucket is a directory too.
        // The listing succeeded, so the bucket exists: no HeadBucket needed.
        if rest.is_empty() && token.is_none() {
            page.objects.insert(0, self.marker_of(bucket));
        }
        Ok(page)
    }

    async fn get_range(
        &self,
        key: &str,
        range: Range<u64>,
        if_match: Option<&str>,
    ) -> StoreResult<Bytes> {
        let (store, key) = self.object(key)?;
        store.get_range(&key, range, if_match).await
    }

    /// Storing `BUCKET/` (mkdir at the top) creates the bucket; its metadata (mode, owner) is
    /// not kept: a bucket has no object to keep it on.
    async fn put(&self, key: &str, body: Bytes, opts: &PutOptions) -> StoreResult<Option<String>> {
        if let Place::Bucket(bucket) = place(key) {
            crate::config::validate_bucket_name(bucket)
                .map_err(|e| StoreError::InvalidBucketName(format!("mkdir {bucket}: {e}")))?;
            self.service.create_bucket(bucket).await?;
            tracing::info!(bucket, "bucket created");
            return Ok(None);
        }
        let (store, key) = self.object(key)?;
        store.put(&key, body, opts).await
    }

    /// Deleting `BUCKET/` (rmdir at the top, once the directory looked empty) deletes the
    /// bucket; S3 refuses one that still holds objects (BucketNotEmpty).
    async fn delete(&self, key: &str) -> StoreResult<()> {
        if let Place::Bucket(bucket) = place(key) {
            self.service.delete_bucket(bucket).await?;
            self.buckets.lock().unwrap().remove(bucket);
            tracing::info!(bucket, "bucket deleted");
            return Ok(());
        }
        let (store, key) = self.object(key)?;
        store.delete(&key).await
    }

    async fn create_multipart(&self, key: &str, opts: &PutOptions) -> StoreResult<String> {
        let (store, key) = self.object(key)?;
        store.create_multipart(&key, opts).await
    }

    // Conditional writes are of files, which live in buckets: the bucket's store sends them.
    async fn put_expecting(
        &self,
        key: &str,
        body: Bytes,
        opts: &PutOptions,
        expect: &Expect,
    ) -> StoreResult<Option<String>> {
        let (store, key) = self.object(key)?;
        store.put_expecting(&key, body, opts, expect).await
    }

    async fn complete_multipart_expecting(
        &self,
        key: &str,
        upload_id: &str,
        parts: &[UploadedPart],
        expect: &Expect,
    ) -> StoreResult<Option<String>> {
        let (store, key) = self.object(key)?;
        store
            .complete_multipart_expecting(&key, upload_id, parts, expect)
            .await
    }

    async fn delete_version(&self, key: &str, etag: &str) -> StoreResult<()> {
        let (store, key) = self.object(key)?;
        store.delete_version(&key, etag).await
    }

    async fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        number: i32,
        body: Bytes,
    ) -> StoreResult<UploadedPart> {
        let (store, key) = self.object(key)?;
        store.upload_part(&key, upload_id, number, body).await
    }

    async fn upload_part_from_file(
        &self,
        key: &str,
        upload_id: &str,
        number: i32,
        file: &std::fs::File,
        len: u64,
    ) -> StoreResult<UploadedPart> {
        let (store, key) = self.object(key)?;
        store
            .upload_part_from_file(&key, upload_id, number, file, len)
            .await
    }

    async fn upload_part_copy(
        &self,
        key: &str,
        upload_id: &str,
        number: i32,
        source: &str,
        range: Range<u64>,
        if_match: Option<&str>,
    ) -> StoreResult<UploadedPart> {
        let (store, key) = self.object(key)?;
        let Place::Object(source_bucket, source_key) = place(source) else {
            return Err(StoreError::InvalidRequest(format!("copy from {source}")));
        };
        store
            .upload_part_copy_between(
                &key,
                upload_id,
                number,
                source_bucket,
                source_key,
                range,
                if_match,
            )
            .await
    }

    async fn complete_multipart(
        &self,
        key: &str,
        upload_id: &str,
        parts: &[UploadedPart],
    ) -> StoreResult<Option<String>> {
        let (store, key) = self.object(key)?;
        store.complete_multipart(&key, upload_id, parts).await
    }

    async fn abort_multipart(&self, key: &str, upload_id: &str) -> StoreResult<()> {
        let (store, key) = self.object(key)?;
        store.abort_multipart(&key, upload_id).await
    }

    async fn list_uploads(&self, prefix: &str) -> StoreResult<Vec<PendingUpload>> {
        let buckets = match place(prefix) {
            Place::Top => self.list_buckets().await?,
            Place::Bucket(bucket) | Place::Object(bucket, _) => vec![bucket.to_string()],
        };
        let inner = match place(prefix) {
            Place::Object(_, rest) => rest,
            _ => "",
        };
        let mut all = Vec::new();
        for bucket in buckets {
            for mut upload in self.bucket(&bucket).list_uploads(inner).await? {
                upload.key = format!("{bucket}/{}", upload.key);
                all.push(upload);
            }
        }
        Ok(all)
    }

    async fn restore(&self, key: &str, days: u32, tier: Option<&str>) -> StoreResult<()> {
        let (store, key) = self.object(key)?;
        store.restore(&key, days, tier).await
    }

    async fn presign_get(&self, key: &str, expires: std::time::Duration) -> StoreResult<String> {
        let (store, key) = self.object(key)?;
        store.presign_get(&key, expires).await
    }

    async fn copy(
        &self,
        source: &str,
        dest: &str,
        opts: &PutOptions,
        replace_metadata: bool,
    ) -> StoreResult<Option<String>> {
        self.copy_pinned(source, dest, opts, replace_metadata, None)
            .await
    }

    async fn copy_if_match(
        &self,
        source: &str,
        dest: &str,
        opts: &PutOptions,
        replace_metadata: bool,
        if_match: &str,
    ) -> StoreResult<Option<String>> {
        self.copy_pinned(source, dest, opts, replace_metadata, Some(if_match))
            .await
    }
}

impl BucketsStore {
    /// CopyObject, across buckets when the two keys are in different ones.
    async fn copy_pinned(
        &self,
        source: &str,
        dest: &str,
        opts: &PutOptions,
        replace_metadata: bool,
        if_match: Option<&str>,
    ) -> StoreResult<Option<String>> {
        let (store, dest) = self.object(dest)?;
        let Place::Object(source_bucket, source_key) = place(source) else {
            return Err(StoreError::InvalidRequest(format!("copy from {source}")));
        };
        store
            .copy_between(
                source_bucket,
                source_key,
                &dest,
                opts,
                replace_metadata,
                if_match,
            )
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_split_into_bucket_and_key() {
        assert_eq!(place(""), Place::Top);
        assert_eq!(place("name"), Place::Top);
        assert_eq!(place("photos/"), Place::Bucket("photos"));
        assert_eq!(
            place("photos/2024/a.jpg"),
            Place::Object("photos", "2024/a.jpg")
        );
        assert_eq!(place("photos/dir/"), Place::Object("photos", "dir/"));
    }

    #[test]
    fn listings_of_a_bucket_are_put_under_its_name() {
        let page = ListPage {
            objects: vec![ObjectInfo {
                key: "a.txt".into(),
                size: 1,
                etag: None,
                last_modified: SystemTime::UNIX_EPOCH,
                user_metadata: HashMap::new(),
                content_type: None,
                storage_class: None,
                version_id: None,
                restore: None,
            }],
            prefixes: vec!["dir/".into()],
            next_token: None,
        };
        let page = prefixed("b", page);
        assert_eq!(page.objects[0].key, "b/a.txt");
        assert_eq!(page.prefixes, vec!["b/dir/".to_string()]);
    }
}
