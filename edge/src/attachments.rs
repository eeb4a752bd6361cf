//! Attachments over HTTP: `POST /v1/attachments` stores an upload of a
//! signed-in user (the same bearer token the WebSocket accepts), and
//! `GET /v1/attachments/{id}?exp=…&sig=…` serves one through a short-lived
//! URL that `attachment.url` signed for a room member.
//!
//! An upload streams into the attachment store (`object_store`: a local
//! directory or an S3-compatible bucket) as a multipart upload; it is
//! refused with 413 as soon as it passes `attachments.max_bytes` or the
//! user's remaining quota — before it is stored whole, and the partial
//! upload is aborted. Its type is what its first bytes are (`infer`),
//! never what `Content-Type` claims: anything not recognised as one of
//! `attachments.allowed_types` (HTML sent as `image/png`, say) is refused
//! with 415. Images get their width and height from their header
//! (`imagesize`). Metadata lives in chat-service, which counts the quota.
//!
//! A download URL carries its expiry and an HMAC-SHA256 over the
//! attachment id and that expiry with `attachments.signing_key`; an expired
//! or altered one is 403. The attachment must still be live (its message
//! not deleted, erased or expired), else 404.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use common::attachments::Blobs;
use common::config::AttachmentsConfig;
use common::grpc::Actor;
use futures::StreamExt;
use hmac::{Hmac, Mac};
use object_store::{ObjectStore, WriteMultipart};
use proto::chat::v1::{
    Attachment, AttachmentUsageRequest, CreateAttachmentRequest, ResolveAttachmentRequest,
};
use serde::Deserialize;
use serde_json::json;
use sha2::Sha256;

use crate::Shared;

/// Bytes read before the type is decided: enough for every signature
/// `infer` knows and for the headers `imagesize` reads.
const SNIFF_BYTES: usize = 64 * 1024;

/// Storage and signing of attachments on this edge.
pub(crate) struct Attachments {
    blobs: Blobs,
    config: AttachmentsConfig,
    /// `attachments.signing_key`, or a random key of this process.
    key: Vec<u8>,
}

impl Attachments {
    pub(crate) fn new(config: &AttachmentsConfig, blobs: Blobs) -> Self {
        let key = if config.signing_key.is_empty() {
            common::ids::random_secret(32).into_bytes()
        } else {
            config.signing_key.expose().as_bytes().to_vec()
        };
        Self {
            blobs,
            config: config.clone(),
            key,
        }
    }

    fn mac(&self, id: &str, expires_at: i64) -> Hmac<Sha256> {
        // HMAC takes a key of any length.
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.key)
            .unwrap_or_else(|_| unreachable!("hmac accepts every key length"));
        mac.update(id.as_bytes());
        mac.update(b"\n");
        mac.update(expires_at.to_string().as_bytes());
        mac
    }

    /// A download URL of `id` valid until `now_ms + attachments.url_ttl_s`,
    /// and that expiry.
    pub(crate) fn signed_url(&self, id: &str, now_ms: i64) -> (String, i64) {
        let ttl = i64::try_from(self.config.url_ttl_s.saturating_mul(1000)).unwrap_or(i64::MAX);
        let expires_at = now_ms.saturating_add(ttl);
        let sig = hex::encode(self.mac(id, expires_at).finalize().into_bytes());
        (
            format!("/v1/attachments/{id}?exp={expires_at}&sig={sig}"),
            expires_at,
        )
    }

    /// Whether `sig` is this edge's signature of `id` until `expires_at`,
    /// and that time has not passed.
    fn verify(&self, id: &str, expires_at: i64, sig: &str, now_ms: i64) -> bool {
        let Ok(sig) = hex::decode(sig) else {
            return false;
        };
        expires_at > now_ms && self.mac(id, expires_at).verify_slice(&sig).is_ok()
    }
}

/// The routes, to merge into the edge's router.
pub(crate) fn routes() -> Router<Arc<Shared>> {
    Router::new()
        .route("/v1/attachments", post(upload))
        .route("/v1/attachments/{id}", get(download))
}

/// An error answer: the status and `{"error":{"code","message"}}`.
fn refuse(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    let body = json!({"error": {"code": code, "message": message.into()}});
    (status, axum::Json(body)).into_response()
}

#[derive(Debug, Deserialize)]
struct UploadParams {
    /// The file's name, kept with it (optional).
    #[serde(default)]
    name: String,
}

async fn upload(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Query(params): Query<UploadParams>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let Some(attachments) = shared.attachments.get() else {
        return refuse(
            StatusCode::NOT_FOUND,
            "not_found",
            "attachments are not enabled",
        );
    };
    let peer = crate::client_addr(&shared.trusted_proxies, peer, &headers);
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let Some(token) = token else {
        return refuse(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "Authorization: Bearer <token> required",
        );
    };
    let identity = match crate::session::verify(&shared, token.trim(), peer).await {
        Ok(identity) => identity,
        Err(e) => {
            let status =
                StatusCode::from_u16(e.code.http_status()).unwrap_or(StatusCode::UNAUTHORIZED);
            return refuse(status, e.code.as_str(), e.message);
        }
    };
    let actor = Actor {
        user_id: identity.user_id,
        name: identity.name,
        anonymous: identity.anonymous,
    };
    let mut chat = shared.backends.chat.clone();
    let usage = match chat
        .attachment_usage(actor.request(AttachmentUsageRequest {}))
        .await
    {
        Ok(usage) => usage.into_inner(),
        Err(status) => return from_status(&status),
    };
    let remaining = u64::try_from(usage.quota_bytes.saturating_sub(usage.used_bytes)).unwrap_or(0);
    let cap = attachments.config.max_bytes.min(remaining);
    let too_large = |over_quota: bool| {
        let message = if over_quota {
            format!(
                "storage quota reached: {} of {} bytes used",
                usage.used_bytes, usage.quota_bytes
            )
        } else {
            format!(
                "larger than attachments.max_bytes ({} bytes)",
                attachments.config.max_bytes
            )
        };
        refuse(StatusCode::PAYLOAD_TOO_LARGE, "too_large", message)
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(declared) = declared
        && declared > cap
    {
        return too_large(declared <= attachments.config.max_bytes);
    }
    let mut stream = body.into_data_stream();
    // The head decides the type before anything is stored.
    let mut head = Vec::new();
    let mut ended = false;
    while head.len() < SNIFF_BYTES {
        match stream.next().await {
            Some(Ok(chunk)) => {
                head.extend_from_slice(&chunk);
                if head.len() as u64 > cap {
                    return too_large(head.len() as u64 <= attachments.config.max_bytes);
                }
            }
            Some(Err(_)) => {
                return refuse(StatusCode::BAD_REQUEST, "bad_request", "upload interrupted");
            }
            None => {
                ended = true;
                break;
            }
        }
    }
    if head.is_empty() {
        return refuse(StatusCode::BAD_REQUEST, "bad_request", "empty upload");
    }
    let Some(mime) = infer::get(&head).map(|t| t.mime_type().to_string()) else {
        return refuse(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "the file's type is not recognised",
        );
    };
    if !attachments.config.allowed_types.contains(&mime) {
        return refuse(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!("{mime} is not allowed"),
        );
    }
    let (width, height) = if mime.starts_with("image/") {
        match imagesize::blob_size(&head) {
            Ok(size) => (
                i64::try_from(size.width).ok(),
                i64::try_from(size.height).ok(),
            ),
            Err(_) => (None, None),
        }
    } else {
        (None, None)
    };
    let id = common::ids::new_id("at");
    let path = common::attachments::path(&id);
    let upload = match attachments.blobs.put_multipart(&path).await {
        Ok(upload) => upload,
        Err(error) => return store_failed(&error),
    };
    let mut writer = WriteMultipart::new(upload);
    let mut size = head.len() as u64;
    writer.write(&head);
    drop(head);
    while !ended {
        match stream.next().await {
            Some(Ok(chunk)) => {
                size += chunk.len() as u64;
                if size > cap {
                    let _ = writer.abort().await;
                    return too_large(size <= attachments.config.max_bytes);
                }
                if let Err(error) = writer.wait_for_capacity(4).await {
                    return store_failed(&error);
                }
                writer.write(&chunk);
            }
            Some(Err(_)) => {
                let _ = writer.abort().await;
                return refuse(StatusCode::BAD_REQUEST, "bad_request", "upload interrupted");
            }
            None => ended = true,
        }
    }
    if let Err(error) = writer.finish().await {
        return store_failed(&error);
    }
    let attachment = Attachment {
        id: id.clone(),
        mime,
        size: i64::try_from(size).unwrap_or(i64::MAX),
        width,
        height,
        name: params.name,
        ..Attachment::default()
    };
    let created = chat
        .create_attachment(actor.request(CreateAttachmentRequest {
            attachment: Some(attachment),
        }))
        .await;
    match created {
        Ok(created) => {
            let attachment = created.into_inner().attachment.unwrap_or_default();
            let body = json!({"attachment": protocol::Attachment::from(&attachment)});
            (StatusCode::CREATED, axum::Json(body)).into_response()
        }
        Err(status) => {
            // Not recorded (quota passed meanwhile, chat unavailable): the
            // bytes go too.
            let _ = attachments.blobs.delete(&path).await;
            from_status(&status)
        }
    }
}

#[derive(Debug, Deserialize)]
struct DownloadParams {
    #[serde(default)]
    exp: i64,
    #[serde(default)]
    sig: String,
}

async fn download(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    Query(params): Query<DownloadParams>,
) -> Response {
    let Some(attachments) = shared.attachments.get() else {
        return refuse(
            StatusCode::NOT_FOUND,
            "not_found",
            "attachments are not enabled",
        );
    };
    if !attachments.verify(&id, params.exp, &params.sig, common::ids::now_ms()) {
        return refuse(
            StatusCode::FORBIDDEN,
            "forbidden",
            "the link expired or is not valid",
        );
    }
    let resolved = shared
        .backends
        .chat
        .clone()
        .resolve_attachment(ResolveAttachmentRequest {
            attachment_id: id.clone(),
        })
        .await;
    let attachment = match resolved {
        Ok(response) => response.into_inner().attachment.unwrap_or_default(),
        Err(status) => return from_status(&status),
    };
    let object = match attachments.blobs.get(&common::attachments::path(&id)).await {
        Ok(object) => object,
        Err(object_store::Error::NotFound { .. }) => {
            return refuse(StatusCode::NOT_FOUND, "not_found", "attachment not found");
        }
        Err(error) => return store_failed(&error),
    };
    let mut response = Body::from_stream(object.into_stream()).into_response();
    let headers = response.headers_mut();
    let value = |s: &str| HeaderValue::from_str(s).unwrap_or(HeaderValue::from_static(""));
    headers.insert(header::CONTENT_TYPE, value(&attachment.mime));
    headers.insert(header::CONTENT_LENGTH, value(&attachment.size.to_string()));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; sandbox"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("private"));
    let inline = ["image/", "video/", "audio/"]
        .iter()
        .any(|p| attachment.mime.starts_with(p));
    if !inline {
        headers.insert(
            header::CONTENT_DISPOSITION,
            HeaderValue::from_static("attachment"),
        );
    }
    response
}

/// A failed chat-service call as an HTTP answer.
fn from_status(status: &tonic::Status) -> Response {
    let error = crate::frames::CommandError::from_status("chat", status);
    let code =
        StatusCode::from_u16(error.code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let code = if error.code == common::ErrorCode::TooLarge {
        StatusCode::PAYLOAD_TOO_LARGE
    } else {
        code
    };
    refuse(code, error.code.as_str(), error.message)
}

fn store_failed(error: &object_store::Error) -> Response {
    tracing::warn!(%error, "attachment store failed");
    refuse(
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
        "attachment store unavailable",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attachments() -> Attachments {
        let config = AttachmentsConfig {
            signing_key: common::Secret::new("k".repeat(32)),
            ..AttachmentsConfig::default()
        };
        Attachments::new(&config, Arc::new(object_store::memory::InMemory::new()))
    }

    fn query(url: &str) -> (i64, String) {
        let query = url.split_once('?').map(|(_, q)| q).unwrap_or_default();
        let mut exp = 0;
        let mut sig = String::new();
        for pair in query.split('&') {
            match pair.split_once('=') {
                Some(("exp", v)) => exp = v.parse().unwrap_or_default(),
                Some(("sig", v)) => sig = v.to_string(),
                _ => {}
            }
        }
        (exp, sig)
    }

    #[test]
    fn a_signed_url_holds_until_it_expires_and_only_unaltered() {
        let a = attachments();
        let now = 1_000_000;
        let (url, expires_at) = a.signed_url("at_1", now);
        assert_eq!(expires_at, now + 300_000);
        let (exp, sig) = query(&url);
        assert_eq!(exp, expires_at);
        assert!(a.verify("at_1", exp, &sig, now));
        assert!(a.verify("at_1", exp, &sig, expires_at - 1));
        assert!(!a.verify("at_1", exp, &sig, expires_at), "expired");
        assert!(!a.verify("at_2", exp, &sig, now), "another attachment");
        assert!(!a.verify("at_1", exp + 60_000, &sig, now), "a later expiry");
        let mut altered = sig.clone().into_bytes();
        altered[0] = if altered[0] == b'0' { b'1' } else { b'0' };
        let altered = String::from_utf8(altered).unwrap_or_default();
        assert!(
            !a.verify("at_1", exp, &altered, now),
            "an altered signature"
        );
        assert!(!a.verify("at_1", exp, "zz", now), "not hex");
    }
}
