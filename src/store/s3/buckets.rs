//! Bucket-level operations, for a mount of every bucket (see `store::buckets`): listing,
//! creating and deleting buckets, and copies between buckets.

use std::ops::Range;
use std::time::SystemTime;

use aws_sdk_s3::types::{
    BucketLocationConstraint, CreateBucketConfiguration, MetadataDirective, ObjectCannedAcl,
    ServerSideEncryption, StorageClass,
};

use super::errors::classify;
use super::{copy_source, metadata_or_none, to_system_time, S3Store};
use crate::store::{PutOptions, StoreResult, UploadedPart};

/// A bucket the credentials can list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BucketInfo {
    pub name: String,
    pub created: SystemTime,
}

impl S3Store {
    /// The same client, connections and buffers, on another bucket.
    pub fn for_bucket(&self, bucket: &str) -> Self {
        Self {
            client: self.client.clone(),
            bucket: bucket.to_string(),
            permits: self.permits.clone(),
            sdk_config: self.sdk_config.clone(),
            buffers: self.buffers.clone(),
            // The same server: what it honours is known once asked.
            conditions: self.conditions.clone(),
        }
    }

    pub fn region(&self) -> Option<&str> {
        self.sdk_config.region().map(|r| r.as_ref())
    }

    pub async fn list_buckets(&self) -> StoreResult<Vec<BucketInfo>> {
        let _permit = self.connection().await;
        let out = self
            .client
            .list_buckets()
            .send()
            .await
            .map_err(|e| classify(e, "ListBuckets"))?;
        Ok(out
            .buckets()
            .iter()
            .filter_map(|b| {
                Some(BucketInfo {
                    name: b.name()?.to_string(),
                    created: to_system_time(b.creation_date()),
                })
            })
            .collect())
    }

    /// CreateBucket in the client's region (no location constraint in us-east-1, which
    /// refuses one).
    pub async fn create_bucket(&self, name: &str) -> StoreResult<()> {
        let mut request = self.client.create_bucket().bucket(name);
        if let Some(region) = self.region().filter(|r| *r != "us-east-1") {
            request = request.create_bucket_configuration(
                CreateBucketConfiguration::builder()
                    .location_constraint(BucketLocationConstraint::from(region))
                    .build(),
            );
        }
        let _permit = self.connection().await;
        request.send().await.map_err(|e| classify(e, name))?;
        Ok(())
    }

    pub async fn delete_bucket(&self, name: &str) -> StoreResult<()> {
        let _permit = self.connection().await;
        self.client
            .delete_bucket()
            .bucket(name)
            .send()
            .await
            .map_err(|e| classify(e, name))?;
        Ok(())
    }

    /// UploadPartCopy from a key of another bucket.
    #[allow(clippy::too_many_arguments)]
    pub async fn upload_part_copy_between(
        &self,
        key: &str,
        upload_id: &str,
        number: i32,
        source_bucket: &str,
        source: &str,
        range: Range<u64>,
        if_match: Option<&str>,
    ) -> StoreResult<UploadedPart> {
        let _permit = self.connection().await;
        let out = self
            .client
            .upload_part_copy()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .part_number(number)
            .copy_source(copy_source(source_bucket, source))
            .copy_source_range(format!("bytes={}-{}", range.start, range.end - 1))
            .set_copy_source_if_match(if_match.map(str::to_string))
            .send()
            .await
            .map_err(|e| classify(e, key))?;
        Ok(UploadedPart {
            number,
            etag: out
                .copy_part_result()
                .and_then(|r| r.e_tag())
                .map(str::to_string),
        })
    }

    /// CopyObject from a key of another bucket, conditioned on the source's ETag when
    /// `if_match` is given.
    pub async fn copy_between(
        &self,
        source_bucket: &str,
        source: &str,
        dest: &str,
        opts: &PutOptions,
        replace_metadata: bool,
        if_match: Option<&str>,
    ) -> StoreResult<Option<String>> {
        let _permit = self.connection().await;
        let mut request = self
            .client
            .copy_object()
            .bucket(&self.bucket)
            .key(dest)
            .copy_source(copy_source(source_bucket, source))
            .set_copy_source_if_match(if_match.map(str::to_string));
        if replace_metadata {
            request = request
                .metadata_directive(MetadataDirective::Replace)
                .set_content_type(opts.content_type.clone())
                .set_metadata(metadata_or_none(opts));
        }
        let out = with_upload_options!(request, opts)
            .send()
            .await
            .map_err(|e| classify(e, dest))?;
        Ok(out
            .copy_object_result()
            .and_then(|r| r.e_tag())
            .map(str::to_string))
    }
}
