//! In-memory object store with S3's listing semantics, for unit and model tests.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::ops::Range;
use std::sync::Mutex;
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;

use std::collections::HashMap;

use super::{
    Expect, ListPage, ObjectInfo, ObjectStore, PutOptions, StoreError, StoreResult, UploadedPart,
};

const DEFAULT_MAX_KEYS: usize = 1000;

#[derive(Debug, Clone)]
struct StoredObject {
    data: Bytes,
    info: ObjectInfo,
}

struct Upload {
    key: String,
    initiated: SystemTime,
    opts: PutOptions,
    parts: BTreeMap<i32, Bytes>,
}

#[derive(Default)]
pub struct MemoryStore {
    objects: Mutex<BTreeMap<String, StoredObject>>,
    uploads: Mutex<HashMap<String, Upload>>,
    etag_counter: Mutex<u64>,
    /// Page size used when the caller does not ask for one (small values exercise pagination).
    page_size: Option<usize>,
    /// Smallest size of a part that is not the last (S3: 5 MiB); 0 checks nothing.
    min_part_size: usize,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// A store whose listings return at most `page_size` entries per page.
    pub fn with_page_size(page_size: usize) -> Self {
        Self {
            page_size: Some(page_size),
            ..Self::default()
        }
    }

    /// Enforces S3's rule that every part but the last has at least `bytes`.
    pub fn with_min_part_size(mut self, bytes: usize) -> Self {
        self.min_part_size = bytes;
        self
    }

    /// Multipart uploads started and neither completed nor aborted.
    pub fn open_uploads(&self) -> usize {
        self.uploads.lock().unwrap().len()
    }

    /// Test helper: the stored metadata of `key`.
    pub fn info(&self, key: &str) -> Option<ObjectInfo> {
        self.objects
            .lock()
            .unwrap()
            .get(key)
            .map(|o| o.info.clone())
    }

    /// Test helper: moves `key` to an archive storage class (its bytes readable only once
    /// restored, as in S3).
    pub fn archive(&self, key: &str, class: &str) {
        if let Some(object) = self.objects.lock().unwrap().get_mut(key) {
            object.info.storage_class = Some(class.to_string());
            object.info.restore = None;
        }
    }

    /// Test helper: the restore asked for `key` is done; the copy is readable.
    pub fn finish_restore(&self, key: &str) {
        if let Some(object) = self.objects.lock().unwrap().get_mut(key) {
            object.info.restore = Some(
                "ongoing-request=\"false\", expiry-date=\"Fri, 01 Jan 2100 00:00:00 GMT\"".into(),
            );
        }
    }

    fn next_id(&self) -> u64 {
        let mut counter = self.etag_counter.lock().unwrap();
        *counter += 1;
        *counter
    }

    /// Test helper: put an object synchronously.
    pub fn insert(&self, key: &str, data: impl Into<Bytes>) {
        self.insert_with(key, data.into(), &PutOptions::default());
    }

    /// `expect` checked against what `objects` holds, under their lock.
    fn expected(
        objects: &BTreeMap<String, StoredObject>,
        key: &str,
        expect: &Expect,
    ) -> StoreResult<()> {
        let holds = match (objects.get(key), expect) {
            (None, Expect::Absent) => true,
            (Some(o), Expect::Version(etag)) => o.info.etag.as_ref() == Some(etag),
            _ => false,
        };
        holds.then_some(()).ok_or(StoreError::PreconditionFailed)
    }

    fn insert_with(&self, key: &str, data: Bytes, opts: &PutOptions) -> String {
        let mut objects = self.objects.lock().unwrap();
        self.insert_locked(&mut objects, key, data, opts)
    }

    fn insert_locked(
        &self,
        objects: &mut BTreeMap<String, StoredObject>,
        key: &str,
        data: Bytes,
        opts: &PutOptions,
    ) -> String {
        let etag = format!("\"etag-{}\"", self.next_id());
        let info = ObjectInfo {
            key: key.to_string(),
            size: data.len() as u64,
            etag: Some(etag.clone()),
            last_modified: SystemTime::now(),
            user_metadata: opts.user_metadata.clone(),
            content_type: opts.content_type.clone(),
            storage_class: opts.storage_class.clone(),
            version_id: None,
            restore: None,
        };
        objects.insert(key.to_string(), StoredObject { data, info });
        etag
    }

    /// Test helper: the bytes stored under `key`.
    pub fn get(&self, key: &str) -> Option<Bytes> {
        self.objects
            .lock()
            .unwrap()
            .get(key)
            .map(|o| o.data.clone())
    }

    /// Test helper: every key, in order.
    pub fn keys(&self) -> Vec<String> {
        self.objects.lock().unwrap().keys().cloned().collect()
    }
}

#[async_trait]
impl ObjectStore for MemoryStore {
    async fn check_bucket(&self) -> StoreResult<()> {
        Ok(())
    }

    async fn head(&self, key: &str) -> StoreResult<ObjectInfo> {
        let objects = self.objects.lock().unwrap();
        objects
            .get(key)
            .map(|o| o.info.clone())
            .ok_or(StoreError::NotFound)
    }

    async fn list_page(
        &self,
        prefix: &str,
        delimited: bool,
        token: Option<String>,
        max_keys: Option<i32>,
    ) -> StoreResult<ListPage> {
        let max = max_keys
            .map(|m| m.max(1) as usize)
            .or(self.page_size)
            .unwrap_or(DEFAULT_MAX_KEYS);
        let objects = self.objects.lock().unwrap();
        let mut page = ListPage::default();
        // The token names the last key ("K" + key) or common prefix ("P" + prefix) returned:
        // continue strictly after it, and after everything below it when it was a prefix.
        let (after, mut last_prefix) = match token.as_deref() {
            Some(t) if t.starts_with('P') => (Some(t[1..].to_string()), Some(t[1..].to_string())),
            Some(t) => (Some(t[1..].to_string()), None),
            None => (None, None),
        };
        let range = match &after {
            Some(t) => (Bound::Excluded(t.clone()), Bound::Unbounded),
            None => (Bound::Included(prefix.to_string()), Bound::Unbounded),
        };
        let mut last_returned: Option<String> = None;
        let mut count = 0;
        for (key, object) in objects.range::<String, _>(range) {
            if !key.starts_with(prefix) {
                break;
            }
            if let Some(p) = &last_prefix {
                if key.starts_with(p.as_str()) {
                    continue;
                }
            }
            if count == max {
                page.next_token = last_returned;
                return Ok(page);
            }
            let rest = &key[prefix.len()..];
            match rest.find('/') {
                Some(slash) if delimited => {
                    let common = format!("{}{}", prefix, &rest[..=slash]);
                    last_prefix = Some(common.clone());
                    last_returned = Some(format!("P{common}"));
                    page.prefixes.push(common);
                }
                _ => {
                    last_returned = Some(format!("K{key}"));
                    page.objects.push(object.info.clone());
                }
            }
            count += 1;
        }
        Ok(page)
    }

    async fn get_range(
        &self,
        key: &str,
        range: Range<u64>,
        if_match: Option<&str>,
    ) -> StoreResult<Bytes> {
        let objects = self.objects.lock().unwrap();
        let object = objects.get(key).ok_or(StoreError::NotFound)?;
        if let Some(expected) = if_match {
            if object.info.etag.as_deref() != Some(expected) {
                return Err(StoreError::PreconditionFailed);
            }
        }
        let archived = matches!(
            object.info.storage_class.as_deref(),
            Some("GLACIER" | "DEEP_ARCHIVE")
        );
        let restored = object
            .info
            .restore
            .as_deref()
            .is_some_and(|r| r.contains("ongoing-request=\"false\""));
        if archived && !restored {
            return Err(StoreError::Archived(format!(
                "{key}: InvalidObjectState (HTTP 403)"
            )));
        }
        let len = object.data.len() as u64;
        let start = range.start.min(len) as usize;
        let end = range.end.min(len) as usize;
        Ok(object.data.slice(start..end))
    }

    async fn put(&self, key: &str, body: Bytes, opts: &PutOptions) -> StoreResult<Option<String>> {
        Ok(Some(self.insert_with(key, body, opts)))
    }

    async fn delete(&self, key: &str) -> StoreResult<()> {
        self.objects.lock().unwrap().remove(key);
        Ok(())
    }

    async fn put_expecting(
        &self,
        key: &str,
        body: Bytes,
        opts: &PutOptions,
        expect: &Expect,
    ) -> StoreResult<Option<String>> {
        let mut objects = self.objects.lock().unwrap();
        Self::expected(&objects, key, expect)?;
        Ok(Some(self.insert_locked(&mut objects, key, body, opts)))
    }

    async fn complete_multipart_expecting(
        &self,
        key: &str,
        upload_id: &str,
        parts: &[UploadedPart],
        expect: &Expect,
    ) -> StoreResult<Option<String>> {
        // Checked, then completed: the memory store runs both without a yield between.
        Self::expected(&self.objects.lock().unwrap(), key, expect)?;
        self.complete_multipart(key, upload_id, parts).await
    }

    async fn delete_version(&self, key: &str, etag: &str) -> StoreResult<()> {
        let mut objects = self.objects.lock().unwrap();
        if Self::expected(&objects, key, &Expect::Version(etag.to_string())).is_ok() {
            objects.remove(key);
        }
        Ok(())
    }

    async fn create_multipart(&self, key: &str, opts: &PutOptions) -> StoreResult<String> {
        let id = format!("upload-{}", self.next_id());
        self.uploads.lock().unwrap().insert(
            id.clone(),
            Upload {
                key: key.to_string(),
                initiated: SystemTime::now(),
                opts: opts.clone(),
                parts: BTreeMap::new(),
            },
        );
        Ok(id)
    }

    async fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        number: i32,
        body: Bytes,
    ) -> StoreResult<UploadedPart> {
        let mut uploads = self.uploads.lock().unwrap();
        let upload = uploads
            .get_mut(upload_id)
            .filter(|u| u.key == key)
            .ok_or_else(|| StoreError::InvalidRequest("NoSuchUpload".into()))?;
        upload.parts.insert(number, body);
        Ok(UploadedPart {
            number,
            etag: Some(format!("\"part-{number}\"")),
        })
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
        let data = self.get_range(source, range, if_match).await?;
        self.upload_part(key, upload_id, number, data).await
    }

    async fn complete_multipart(
        &self,
        key: &str,
        upload_id: &str,
        parts: &[UploadedPart],
    ) -> StoreResult<Option<String>> {
        let upload = {
            let mut uploads = self.uploads.lock().unwrap();
            match uploads.get(upload_id) {
                Some(u) if u.key == key => {}
                _ => return Err(StoreError::InvalidRequest("NoSuchUpload".into())),
            }
            uploads.remove(upload_id).expect("checked above")
        };
        let mut body = Vec::new();
        for (i, part) in parts.iter().enumerate() {
            let data = upload
                .parts
                .get(&part.number)
                .ok_or_else(|| StoreError::InvalidRequest("InvalidPart".into()))?;
            if i + 1 < parts.len() && data.len() < self.min_part_size {
                return Err(StoreError::InvalidRequest("EntityTooSmall".into()));
            }
            body.extend_from_slice(data);
        }
        Ok(Some(self.insert_with(key, Bytes::from(body), &upload.opts)))
    }

    async fn abort_multipart(&self, _key: &str, upload_id: &str) -> StoreResult<()> {
        match self.uploads.lock().unwrap().remove(upload_id) {
            Some(_) => Ok(()),
            // S3 answers 404 NoSuchUpload.
            None => Err(StoreError::NotFound),
        }
    }

    async fn list_uploads(&self, prefix: &str) -> StoreResult<Vec<super::PendingUpload>> {
        let uploads = self.uploads.lock().unwrap();
        let mut found: Vec<_> = uploads
            .iter()
            .filter(|(_, u)| u.key.starts_with(prefix))
            .map(|(id, u)| super::PendingUpload {
                key: u.key.clone(),
                upload_id: id.clone(),
                initiated: u.initiated,
            })
            .collect();
        found.sort_by(|a, b| (&a.key, &a.upload_id).cmp(&(&b.key, &b.upload_id)));
        Ok(found)
    }

    async fn restore(&self, key: &str, _days: u32, _tier: Option<&str>) -> StoreResult<()> {
        let mut objects = self.objects.lock().unwrap();
        let object = objects.get_mut(key).ok_or(StoreError::NotFound)?;
        if !matches!(
            object.info.storage_class.as_deref(),
            Some("GLACIER" | "DEEP_ARCHIVE")
        ) {
            return Err(StoreError::InvalidRequest(format!(
                "{key}: InvalidObjectState (HTTP 403): not an archived object"
            )));
        }
        if object.info.restore.is_none() {
            object.info.restore = Some("ongoing-request=\"true\"".into());
        }
        Ok(())
    }

    async fn presign_get(&self, key: &str, expires: std::time::Duration) -> StoreResult<String> {
        if !self.objects.lock().unwrap().contains_key(key) {
            return Err(StoreError::NotFound);
        }
        Ok(format!("memory:///{key}?expires={}", expires.as_secs()))
    }

    async fn copy(
        &self,
        source: &str,
        dest: &str,
        opts: &PutOptions,
        replace_metadata: bool,
    ) -> StoreResult<Option<String>> {
        self.copy_checked(source, dest, opts, replace_metadata, None)
    }

    async fn copy_if_match(
        &self,
        source: &str,
        dest: &str,
        opts: &PutOptions,
        replace_metadata: bool,
        if_match: &str,
    ) -> StoreResult<Option<String>> {
        self.copy_checked(source, dest, opts, replace_metadata, Some(if_match))
    }
}

impl MemoryStore {
    fn copy_checked(
        &self,
        source: &str,
        dest: &str,
        opts: &PutOptions,
        replace_metadata: bool,
        if_match: Option<&str>,
    ) -> StoreResult<Option<String>> {
        let (data, info) = {
            let objects = self.objects.lock().unwrap();
            let object = objects.get(source).ok_or(StoreError::NotFound)?;
            if if_match.is_some_and(|etag| object.info.etag.as_deref() != Some(etag)) {
                return Err(StoreError::PreconditionFailed);
            }
            (object.data.clone(), object.info.clone())
        };
        let opts = if replace_metadata {
            opts.clone()
        } else {
            PutOptions {
                content_type: info.content_type,
                user_metadata: info.user_metadata,
                ..opts.clone()
            }
        };
        Ok(Some(self.insert_with(dest, data, &opts)))
    }
}
