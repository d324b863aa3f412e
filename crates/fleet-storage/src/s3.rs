//! The S3 store: any S3-compatible endpoint through `aws-sdk-s3`.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use aws_config::BehaviorVersion;
use aws_sdk_s3::Client;
use aws_sdk_s3::config::endpoint::DefaultResolver;
use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{Credentials, Region, RequestChecksumCalculation};
use aws_sdk_s3::presigning::PresigningConfig;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use fleet_core::config::S3Config;
use futures::{StreamExt, TryStreamExt};

use crate::endpoint_memo::EndpointMemo;
use crate::error::{Ctx, Failure};
use crate::{ObjectMeta, StorageError, Stored, StoredObject, decode_meta_value, sha256_hex, validate_key};

/// Smallest part S3 accepts in a multipart upload (except the last one).
pub const MIN_PART_SIZE: u64 = 5 * 1024 * 1024;

/// Presigned URLs may live at most this long (SigV4).
pub const MAX_PRESIGN_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// Region used when neither the configuration nor the AWS chain names one; S3-compatible servers
/// accept any region, and a request cannot be signed without one.
const FALLBACK_REGION: &str = "us-east-1";

/// Timeouts, retries and multipart settings of an [`S3Store`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Options {
    /// Time to open a TCP (and TLS) connection.
    pub connect_timeout: Duration,
    /// Time for one attempt of a call, from sending to the last byte of the answer.
    pub attempt_timeout: Duration,
    /// Time for a whole call, all retries included. A multipart upload is many calls, each with
    /// this limit.
    pub operation_timeout: Duration,
    /// Attempts per call (1 = no retries). Retries back off with jitter.
    pub max_attempts: u32,
    /// Bodies larger than this are uploaded in parts.
    pub multipart_threshold: u64,
    /// Size of each part (the last may be smaller); at least [`MIN_PART_SIZE`].
    pub part_size: u64,
    /// Parts uploaded at the same time.
    pub part_concurrency: usize,
}

impl Default for S3Options {
    fn default() -> Self {
        S3Options {
            connect_timeout: Duration::from_secs(3),
            attempt_timeout: Duration::from_secs(10),
            operation_timeout: Duration::from_secs(30),
            max_attempts: 3,
            multipart_threshold: 16 * 1024 * 1024,
            part_size: 8 * 1024 * 1024,
            part_concurrency: 4,
        }
    }
}

/// An S3-compatible bucket.
#[derive(Clone)]
pub struct S3Store {
    client: Client,
    ctx: Ctx,
    options: S3Options,
}

impl fmt::Debug for S3Store {
    // By hand, so the client's configuration (credentials) can never end up in a log.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Store")
            .field("endpoint", &self.ctx.endpoint)
            .field("bucket", &self.ctx.bucket)
            .field("options", &self.options)
            .finish()
    }
}

impl S3Store {
    /// A client for `cfg.bucket` at `cfg.endpoint` (AWS when empty), path-style if asked.
    ///
    /// With `access_key_id`/`secret_access_key` set, those are used; with both empty the standard
    /// AWS chain (environment, profiles, web identity, ECS/instance roles) provides credentials.
    /// Nothing is contacted here.
    pub async fn new(cfg: &S3Config, options: S3Options) -> Result<S3Store, StorageError> {
        if cfg.bucket.is_empty() {
            return Err(StorageError::InvalidConfig("s3.bucket must not be empty".into()));
        }
        if cfg.access_key_id.is_empty() != cfg.secret_access_key.is_empty() {
            return Err(StorageError::InvalidConfig(
                "s3.access_key_id and s3.secret_access_key: set both or neither".into(),
            ));
        }
        if options.part_size < MIN_PART_SIZE {
            return Err(StorageError::InvalidConfig(format!(
                "multipart part size {} is below S3's minimum of {MIN_PART_SIZE} bytes",
                options.part_size
            )));
        }
        if options.max_attempts == 0 || options.part_concurrency == 0 {
            return Err(StorageError::InvalidConfig("max_attempts and part_concurrency must be at least 1".into()));
        }

        let timeouts = TimeoutConfig::builder()
            .connect_timeout(options.connect_timeout)
            .operation_attempt_timeout(options.attempt_timeout)
            .operation_timeout(options.operation_timeout)
            .build();
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .timeout_config(timeouts)
            .retry_config(RetryConfig::standard().with_max_attempts(options.max_attempts));
        if !cfg.region.is_empty() {
            loader = loader.region(Region::new(cfg.region.clone()));
        }
        if !cfg.access_key_id.is_empty() {
            loader = loader.credentials_provider(Credentials::new(
                cfg.access_key_id.clone(),
                cfg.secret_access_key.clone(),
                None,
                None,
                "fleet-config",
            ));
        }
        if !cfg.endpoint.is_empty() {
            loader = loader.endpoint_url(cfg.endpoint.clone());
        }
        let sdk = loader.load().await;
        let region = sdk.region().map(|r| r.to_string()).unwrap_or_else(|| FALLBACK_REGION.to_owned());

        let mut builder = aws_sdk_s3::config::Builder::from(&sdk)
            .force_path_style(cfg.path_style)
            .endpoint_resolver(EndpointMemo::new(DefaultResolver::new()));
        if sdk.region().is_none() {
            builder = builder.region(Region::new(FALLBACK_REGION));
        }
        if !cfg.endpoint.is_empty() {
            // S3-compatible servers vary in support for the SDK's default flexible checksums
            // (CRC32 trailers on every upload, since aws-sdk-s3 1.69); send them only where the
            // API requires them. Integrity is still covered: the SHA-256 goes along as metadata.
            builder = builder.request_checksum_calculation(RequestChecksumCalculation::WhenRequired);
        }
        let endpoint = if cfg.endpoint.is_empty() { format!("AWS S3 ({region})") } else { cfg.endpoint.clone() };
        Ok(S3Store {
            client: Client::from_conf(builder.build()),
            ctx: Ctx { endpoint, bucket: cfg.bucket.clone() },
            options,
        })
    }

    /// The bucket name.
    pub fn bucket(&self) -> &str {
        &self.ctx.bucket
    }

    /// The endpoint, as shown in errors.
    pub fn endpoint(&self) -> &str {
        &self.ctx.endpoint
    }

    /// The underlying client, for operations this crate does not wrap.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// See [`crate::ImageStore::put`]. Bodies above the multipart threshold go up in parts.
    pub async fn put(
        &self,
        key: &str,
        body: Vec<u8>,
        content_type: &str,
        meta: &ObjectMeta,
    ) -> Result<Stored, StorageError> {
        let sha256 = sha256_hex(&body);
        let metadata = meta.to_metadata(&sha256);
        self.put_hashed(key, body, sha256, content_type, metadata).await
    }

    /// Stores any object (not only a job's image) with the given metadata; `put` is this plus the
    /// image metadata. Used for dataset shards and their manifests.
    pub async fn put_object(
        &self,
        key: &str,
        body: Vec<u8>,
        content_type: &str,
        metadata: BTreeMap<String, String>,
    ) -> Result<Stored, StorageError> {
        let sha256 = sha256_hex(&body);
        self.put_hashed(key, body, sha256, content_type, metadata).await
    }

    /// [`Self::put_object`] for a body whose SHA-256 is already known.
    async fn put_hashed(
        &self,
        key: &str,
        body: Vec<u8>,
        sha256: String,
        content_type: &str,
        metadata: BTreeMap<String, String>,
    ) -> Result<Stored, StorageError> {
        validate_key(key)?;
        let bytes = body.len() as u64;
        let metadata = metadata.into_iter().collect();
        // The SDK's futures are ≈ 10 KB; boxed, they stop inflating every future that awaits a
        // PUT (a worker's whole job pipeline), which tokio moves whole when spawning it.
        if bytes > self.options.multipart_threshold {
            Box::pin(self.put_multipart(key, body, content_type, metadata)).await?;
        } else {
            let request = self
                .client
                .put_object()
                .bucket(&self.ctx.bucket)
                .key(key)
                .content_type(content_type)
                .set_metadata(Some(metadata))
                .body(ByteStream::from(body));
            Box::pin(request.send()).await.map_err(|e| self.ctx.error("PutObject", Some(key), e))?;
        }
        tracing::debug!(bucket = %self.ctx.bucket, key, bytes, "stored object");
        Ok(Stored { key: key.to_owned(), sha256, bytes })
    }

    async fn put_multipart(
        &self,
        key: &str,
        body: Vec<u8>,
        content_type: &str,
        metadata: std::collections::HashMap<String, String>,
    ) -> Result<(), StorageError> {
        let created = self
            .client
            .create_multipart_upload()
            .bucket(&self.ctx.bucket)
            .key(key)
            .content_type(content_type)
            .set_metadata(Some(metadata))
            .send()
            .await
            .map_err(|e| self.ctx.error("CreateMultipartUpload", Some(key), e))?;
        let Some(upload_id) = created.upload_id().map(str::to_owned) else {
            return Err(StorageError::Rejected {
                endpoint: self.ctx.endpoint.clone(),
                bucket: self.ctx.bucket.clone(),
                op: "CreateMultipartUpload",
                key: Some(key.to_owned()),
                status: None,
                detail: "the answer has no upload id".into(),
            });
        };
        let result = self.upload_parts(key, &upload_id, &body).await;
        if result.is_err() {
            // Abandoned parts are stored (and billed) until aborted; try once, but report the
            // original failure either way.
            if let Err(e) = self
                .client
                .abort_multipart_upload()
                .bucket(&self.ctx.bucket)
                .key(key)
                .upload_id(&upload_id)
                .send()
                .await
            {
                let e = self.ctx.error("AbortMultipartUpload", Some(key), e);
                tracing::warn!(error = %e, upload_id, "could not abort a failed multipart upload");
            }
        }
        result
    }

    async fn upload_parts(&self, key: &str, upload_id: &str, body: &[u8]) -> Result<(), StorageError> {
        let part_size = usize::try_from(self.options.part_size).unwrap_or(usize::MAX).max(1);
        // Part ranges, not borrowed chunks: a closure taking `&[u8]` makes this future `Send` for
        // one lifetime only, and then callers cannot `tokio::spawn` anything that uploads.
        let ranges =
            (0..body.len().div_ceil(part_size)).map(|i| (i, i * part_size, ((i + 1) * part_size).min(body.len())));
        let parts: Vec<CompletedPart> = futures::stream::iter(ranges)
            .map(|(i, start, end)| async move {
                let chunk = &body[start..end];
                // Part numbers start at 1; at most 10 000 parts, so this cannot overflow an i32
                // for any body S3 accepts (S3 rejects the rest).
                let number = i32::try_from(i + 1).unwrap_or(i32::MAX);
                let out = self
                    .client
                    .upload_part()
                    .bucket(&self.ctx.bucket)
                    .key(key)
                    .upload_id(upload_id)
                    .part_number(number)
                    .body(ByteStream::from(chunk.to_vec()))
                    .send()
                    .await
                    .map_err(|e| self.ctx.error("UploadPart", Some(key), e))?;
                Ok::<_, StorageError>(
                    CompletedPart::builder().part_number(number).set_e_tag(out.e_tag().map(str::to_owned)).build(),
                )
            })
            .buffered(self.options.part_concurrency)
            .try_collect()
            .await?;
        let count = parts.len();
        self.client
            .complete_multipart_upload()
            .bucket(&self.ctx.bucket)
            .key(key)
            .upload_id(upload_id)
            .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(parts)).build())
            .send()
            .await
            .map_err(|e| self.ctx.error("CompleteMultipartUpload", Some(key), e))?;
        tracing::debug!(bucket = %self.ctx.bucket, key, parts = count, "multipart upload complete");
        Ok(())
    }

    /// See [`crate::ImageStore::get`].
    pub async fn get(&self, key: &str) -> Result<Option<StoredObject>, StorageError> {
        self.get_in(&self.ctx, key).await
    }

    /// See [`crate::ImageStore::get_from`]: `key` in `bucket` at this store's endpoint, with its
    /// credentials; errors name `bucket`.
    pub async fn get_from(&self, bucket: &str, key: &str) -> Result<Option<StoredObject>, StorageError> {
        if bucket == self.ctx.bucket {
            return self.get(key).await;
        }
        if bucket.is_empty() {
            return Err(StorageError::InvalidConfig(format!(
                "reading `{key}`: the bucket name is empty (endpoint {})",
                self.ctx.endpoint
            )));
        }
        let ctx = Ctx { endpoint: self.ctx.endpoint.clone(), bucket: bucket.to_owned() };
        self.get_in(&ctx, key).await
    }

    /// GetObject of `key` in `ctx.bucket`; `ctx` names the bucket in errors.
    async fn get_in(&self, ctx: &Ctx, key: &str) -> Result<Option<StoredObject>, StorageError> {
        validate_key(key)?;
        let out = match self.client.get_object().bucket(&ctx.bucket).key(key).send().await {
            Ok(out) => out,
            Err(e) => {
                return match ctx.classify("GetObject", Some(key), e) {
                    Failure::Missing(_) => Ok(None),
                    Failure::Error(e) => Err(e),
                };
            }
        };
        let content_type = out.content_type().unwrap_or("application/octet-stream").to_owned();
        let metadata: BTreeMap<String, String> = out
            .metadata()
            .map(|m| m.iter().map(|(k, v)| (k.to_ascii_lowercase(), decode_meta_value(v))).collect())
            .unwrap_or_default();
        let body = out.body.collect().await.map_err(|e| StorageError::Unavailable {
            endpoint: ctx.endpoint.clone(),
            bucket: ctx.bucket.clone(),
            op: "GetObject",
            key: Some(key.to_owned()),
            detail: format!("reading the body: {e}"),
            source: Box::new(e),
        })?;
        Ok(Some(StoredObject { body: body.into_bytes().to_vec(), content_type, metadata }))
    }

    /// See [`crate::ImageStore::exists`].
    pub async fn exists(&self, key: &str) -> Result<bool, StorageError> {
        validate_key(key)?;
        match self.client.head_object().bucket(&self.ctx.bucket).key(key).send().await {
            Ok(_) => Ok(true),
            Err(e) => match self.ctx.classify("HeadObject", Some(key), e) {
                Failure::Missing(_) => Ok(false),
                Failure::Error(e) => Err(e),
            },
        }
    }

    /// A presigned GET URL for `key`, valid for `ttl` (at most [`MAX_PRESIGN_TTL`]).
    pub async fn presign_get(&self, key: &str, ttl: Duration) -> Result<String, StorageError> {
        validate_key(key)?;
        let config = PresigningConfig::expires_in(ttl).map_err(|e| {
            StorageError::InvalidConfig(format!("presign TTL {}s: {e} (S3 allows 1 s to 7 days)", ttl.as_secs()))
        })?;
        let request = self
            .client
            .get_object()
            .bucket(&self.ctx.bucket)
            .key(key)
            .presigned(config)
            .await
            .map_err(|e| self.ctx.error("GetObject (presign)", Some(key), e))?;
        Ok(request.uri().to_owned())
    }

    /// Readiness: HeadBucket succeeds.
    pub async fn check(&self) -> Result<(), StorageError> {
        match self.client.head_bucket().bucket(&self.ctx.bucket).send().await {
            Ok(_) => Ok(()),
            Err(e) => match self.ctx.classify("HeadBucket", None, e) {
                // HeadBucket answers a bare 404 (no error code) for a missing bucket.
                Failure::Missing(_) => Err(StorageError::NoSuchBucket {
                    endpoint: self.ctx.endpoint.clone(),
                    bucket: self.ctx.bucket.clone(),
                }),
                Failure::Error(e) => Err(e),
            },
        }
    }

    /// See [`crate::ImageStore::list`].
    pub async fn list(&self, prefix: &str) -> Result<Vec<String>, StorageError> {
        let mut pages = self.client.list_objects_v2().bucket(&self.ctx.bucket).prefix(prefix).into_paginator().send();
        let mut keys = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| self.ctx.error("ListObjectsV2", None, e))?;
            keys.extend(page.contents().iter().filter_map(|o| o.key().map(str::to_owned)));
        }
        keys.sort();
        Ok(keys)
    }

    /// See [`crate::ImageStore::delete`].
    pub async fn delete(&self, key: &str) -> Result<(), StorageError> {
        validate_key(key)?;
        match self.client.delete_object().bucket(&self.ctx.bucket).key(key).send().await {
            Ok(_) => Ok(()),
            Err(e) => match self.ctx.classify("DeleteObject", Some(key), e) {
                Failure::Missing(_) => Ok(()),
                Failure::Error(e) => Err(e),
            },
        }
    }
}
