//! Server-side copies: CopyObject, or a multipart UploadPartCopy for objects over 5 GiB
//! (S3's CopyObject limit). A multipart copy is journaled like any upload, and aborted when it
//! fails, so it leaves no orphan parts.

use futures::{StreamExt, TryStreamExt};
use tracing::warn;

use super::error::FsResult;
use super::journal::UploadJournal;
use crate::store::{Expect, ObjectStore, PutOptions, StoreError, UploadedPart};

/// Largest object a single CopyObject can copy; bigger ones are copied part by part.
pub const MAX_COPY_OBJECT: u64 = 5 << 30;
/// Part size of a multipart server-side copy.
const COPY_PART_SIZE: u64 = 1 << 30;
/// Part copies in flight at once.
const COPY_CONCURRENCY: usize = 8;

pub struct ServerCopy<'a, S> {
    pub store: &'a S,
    pub journal: Option<&'a UploadJournal>,
    /// Copy only this version of the source (its ETag): `PreconditionFailed` otherwise.
    pub if_match: Option<&'a str>,
}

impl<S: ObjectStore> ServerCopy<'_, S> {
    /// Copies `source` (of `size` bytes) to `dest`. With `replace_metadata` the copy gets
    /// `opts`' content type and metadata, otherwise the source's. Returns the copy's ETag.
    pub async fn copy(
        &self,
        source: &str,
        dest: &str,
        size: u64,
        opts: &PutOptions,
        replace_metadata: bool,
    ) -> FsResult<Option<String>> {
        if size <= MAX_COPY_OBJECT {
            return Ok(match self.if_match {
                Some(etag) => {
                    self.store
                        .copy_if_match(source, dest, opts, replace_metadata, etag)
                        .await?
                }
                None => {
                    self.store
                        .copy(source, dest, opts, replace_metadata)
                        .await?
                }
            });
        }
        let opts = if replace_metadata {
            opts.clone()
        } else {
            let info = self.store.head(source).await?;
            PutOptions {
                content_type: info.content_type,
                user_metadata: info.user_metadata,
                ..opts.clone()
            }
        };
        let id = self.store.create_multipart(dest, &opts).await?;
        if let Some(journal) = self.journal {
            journal.record(dest, &id);
        }
        let ranges: Vec<(i32, std::ops::Range<u64>)> = (0..size.div_ceil(COPY_PART_SIZE))
            .map(|i| {
                let start = i * COPY_PART_SIZE;
                (i as i32 + 1, start..(start + COPY_PART_SIZE).min(size))
            })
            .collect();
        let copied: Result<Vec<UploadedPart>, StoreError> = futures::stream::iter(ranges)
            .map(|(number, range)| {
                let id = id.clone();
                async move {
                    self.store
                        .upload_part_copy(dest, &id, number, source, range, self.if_match)
                        .await
                }
            })
            .buffered(COPY_CONCURRENCY)
            .try_collect()
            .await;
        let result = match (copied, self.if_match) {
            // A copy onto itself (new metadata) completes only over the version it copied:
            // another client's newer version written after the last part is kept.
            (Ok(parts), Some(etag)) if source == dest => {
                let expect = Expect::Version(etag.to_string());
                self.store
                    .complete_multipart_expecting(dest, &id, &parts, &expect)
                    .await
            }
            (Ok(parts), _) => self.store.complete_multipart(dest, &id, &parts).await,
            (Err(e), _) => Err(e),
        };
        let outcome = match result {
            Ok(etag) => Ok(etag),
            Err(e) => match self.store.abort_multipart(dest, &id).await {
                Ok(()) => Err(e.into()),
                Err(abort) => {
                    warn!(dest, "aborting the multipart copy failed: {abort}");
                    // Left in the journal: the next mount aborts it.
                    return Err(e.into());
                }
            },
        };
        if let Some(journal) = self.journal {
            journal.forget(&id);
        }
        outcome
    }
}
