//! The `[attachments]` section: where uploaded files are stored, what may be
//! uploaded, and how download URLs are signed. The edge stores and serves
//! the bytes; chat-service keeps the metadata and deletes what is no longer
//! wanted, so both read this section and must reach the same store.

use serde::{Deserialize, Serialize};

use super::{ConfigError, at_least, string_or_list};
use crate::secret::Secret;

/// Attachment storage and limits.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AttachmentsConfig {
    /// `local` (a directory) or `s3` (any S3-compatible store).
    pub store: StoreKind,
    /// Directory of the `local` store, created on demand.
    pub dir: String,
    /// Bucket of the `s3` store.
    pub s3_bucket: String,
    /// Endpoint of an S3-compatible store (MinIO, Ceph, moto…); empty: AWS.
    pub s3_endpoint: String,
    /// Region of the bucket.
    pub s3_region: String,
    /// Access key id; empty: the usual AWS environment and instance credentials.
    pub s3_access_key_id: String,
    /// Secret access key, with `s3_access_key_id`.
    pub s3_secret_access_key: Secret,
    /// Whether an `http://` endpoint is allowed (local test servers).
    pub s3_allow_http: bool,
    /// Largest upload in bytes; a larger one is refused with 413 before it
    /// is stored whole.
    pub max_bytes: u64,
    /// MIME types accepted, as recognised from the file's own bytes.
    #[serde(deserialize_with = "string_or_list")]
    pub allowed_types: Vec<String>,
    /// Bytes one user may have stored in total.
    pub quota_bytes_per_user: u64,
    /// How long a signed download URL stays valid.
    pub url_ttl_s: u64,
    /// HMAC key of download URLs (32+ bytes), shared by every edge; empty:
    /// a random key per edge process (URLs then only work on the edge that
    /// signed them).
    pub signing_key: Secret,
    /// An upload no message refers to after this long is deleted.
    pub unreferenced_ttl_s: u64,
    /// Most attachments one message may carry.
    pub max_per_message: usize,
}

/// Where attachment bytes live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    Local,
    S3,
}

impl Default for AttachmentsConfig {
    fn default() -> Self {
        Self {
            store: StoreKind::Local,
            dir: "data/attachments".into(),
            s3_bucket: String::new(),
            s3_endpoint: String::new(),
            s3_region: "us-east-1".into(),
            s3_access_key_id: String::new(),
            s3_secret_access_key: Secret::default(),
            s3_allow_http: false,
            max_bytes: 10 * 1024 * 1024,
            allowed_types: [
                "image/png",
                "image/jpeg",
                "image/gif",
                "image/webp",
                "video/mp4",
                "video/webm",
                "audio/mpeg",
                "audio/ogg",
                "audio/x-wav",
                "audio/m4a",
                "application/pdf",
                "application/zip",
            ]
            .into_iter()
            .map(String::from)
            .collect(),
            quota_bytes_per_user: 100 * 1024 * 1024,
            url_ttl_s: 300,
            signing_key: Secret::default(),
            unreferenced_ttl_s: 3600,
            max_per_message: 10,
        }
    }
}

impl AttachmentsConfig {
    /// Checks what types alone cannot; errors name the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        match self.store {
            StoreKind::Local if self.dir.is_empty() => {
                return Err(ConfigError::new(
                    "key `attachments.dir`: must not be empty with store = \"local\"",
                ));
            }
            StoreKind::S3 if self.s3_bucket.is_empty() => {
                return Err(ConfigError::new(
                    "key `attachments.s3_bucket`: required with store = \"s3\"",
                ));
            }
            _ => {}
        }
        let endpoint = &self.s3_endpoint;
        let scheme = endpoint.starts_with("https://") || endpoint.starts_with("http://");
        if !(endpoint.is_empty() || scheme) {
            return Err(ConfigError::new(
                "key `attachments.s3_endpoint`: must start with https:// or http://",
            ));
        }
        at_least("attachments.max_bytes", self.max_bytes, 1)?;
        at_least("attachments.url_ttl_s", self.url_ttl_s, 1)?;
        at_least("attachments.unreferenced_ttl_s", self.unreferenced_ttl_s, 1)?;
        at_least(
            "attachments.max_per_message",
            self.max_per_message as u64,
            1,
        )?;
        if self.allowed_types.iter().any(|t| !t.contains('/')) {
            return Err(ConfigError::new(
                "key `attachments.allowed_types`: every entry must be a MIME type (type/subtype)",
            ));
        }
        if !self.signing_key.is_empty() && self.signing_key.expose().len() < 32 {
            return Err(ConfigError::new(
                "key `attachments.signing_key`: must be at least 32 bytes",
            ));
        }
        Ok(())
    }
}
