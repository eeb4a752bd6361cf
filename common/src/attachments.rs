//! Opening the attachment store the `[attachments]` section names: a local
//! directory or an S3-compatible bucket, both behind `object_store`'s one
//! interface, so the edge (which writes and reads the bytes) and
//! chat-service (which deletes them) use the same code for either.

use std::sync::Arc;

use object_store::ObjectStore;
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path;

use crate::config::{AttachmentsConfig, ConfigError, StoreKind};

/// The store of attachment bytes.
pub type Blobs = Arc<dyn ObjectStore>;

/// Opens the configured store; the local directory is created on demand.
/// The error names the key at fault.
pub fn open(config: &AttachmentsConfig) -> Result<Blobs, ConfigError> {
    match config.store {
        StoreKind::Local => {
            std::fs::create_dir_all(&config.dir).map_err(|e| {
                ConfigError::new(format!("key `attachments.dir`: cannot create it: {e}"))
            })?;
            let store = LocalFileSystem::new_with_prefix(&config.dir)
                .map_err(|e| ConfigError::new(format!("key `attachments.dir`: {e}")))?;
            Ok(Arc::new(store))
        }
        StoreKind::S3 => {
            let mut builder = AmazonS3Builder::new()
                .with_bucket_name(&config.s3_bucket)
                .with_region(&config.s3_region)
                .with_allow_http(config.s3_allow_http);
            if !config.s3_endpoint.is_empty() {
                builder = builder.with_endpoint(&config.s3_endpoint);
            }
            if !config.s3_access_key_id.is_empty() {
                builder = builder
                    .with_access_key_id(&config.s3_access_key_id)
                    .with_secret_access_key(config.s3_secret_access_key.expose());
            }
            let store = builder
                .build()
                .map_err(|e| ConfigError::new(format!("key `attachments.store` (s3): {e}")))?;
            Ok(Arc::new(store))
        }
    }
}

/// Where the bytes of attachment `id` are stored.
pub fn path(id: &str) -> Path {
    Path::from(format!("attachments/{id}"))
}
