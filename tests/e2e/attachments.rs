//! Attachments through the edge: `POST /v1/attachments` with the user's
//! bearer token, `message.send{kind, attachments}`, signed download URLs
//! from `attachment.url`, and what is refused — an upload over the cap or
//! the quota (413, before it is stored whole), a disguised file (415), an
//! expired or altered URL (403), a non-member (`not_found`) — and uploads
//! no message took, removed by the clean-up job at an injected time.

use object_store::ObjectStore;
use serde_json::{Value, json};

use crate::helpers::{Body, TestApp, http_request, spawn_app, spawn_app_with, token};

/// A PNG's signature and header (what `infer` and `imagesize` read) for
/// an image of `width` × `height`, padded to `len` bytes.
pub fn png(width: u32, height: u32, len: usize) -> Vec<u8> {
    let mut bytes = b"\x89PNG\r\n\x1a\n".to_vec();
    bytes.extend_from_slice(&13u32.to_be_bytes());
    bytes.extend_from_slice(b"IHDR");
    bytes.extend_from_slice(&width.to_be_bytes());
    bytes.extend_from_slice(&height.to_be_bytes());
    bytes.extend_from_slice(&[8, 2, 0, 0, 0]);
    bytes.extend_from_slice(&[0, 0, 0, 0]);
    while bytes.len() < len {
        bytes.push((bytes.len() % 251) as u8);
    }
    bytes
}

/// Uploads `bytes` as `user`; the status and the JSON answer.
pub async fn upload(app: &TestApp, user: &str, bytes: &[u8], content_type: &str) -> (u16, Value) {
    let auth = format!("Bearer {}", token(user, user, 3600));
    let (status, _, body) = http_request(
        app.addrs.edge,
        "POST",
        "/v1/attachments?name=picture.png",
        &[("Authorization", &auth), ("Content-Type", content_type)],
        Body::Bytes(bytes),
    )
    .await;
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

/// Uploads a PNG as `user` and returns its id.
pub async fn upload_png(app: &TestApp, user: &str) -> String {
    let (status, body) = upload(app, user, &png(3, 2, 600), "image/png").await;
    assert_eq!(status, 201, "{body}");
    body["attachment"]["id"]
        .as_str()
        .expect("attachment id")
        .to_string()
}

/// GETs a signed URL; the status and body.
pub async fn download(app: &TestApp, url: &str) -> (u16, Vec<u8>) {
    let (status, _, body) = http_request(app.addrs.edge, "GET", url, &[], Body::Empty).await;
    (status, body)
}

/// Files under the attachment store's directory (finished or partial).
fn stored_files(app: &TestApp) -> Vec<std::path::PathBuf> {
    fn walk(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, out);
            } else {
                out.push(path);
            }
        }
    }
    let mut files = Vec::new();
    walk(
        std::path::Path::new(&app.config.attachments.dir),
        &mut files,
    );
    files
}

#[tokio::test]
async fn an_image_is_sent_and_only_members_can_download_it() {
    let app = spawn_app().await;
    let mut alice = app.user("alice", "Alice").await;
    let mut bob = app.user("bob", "Bob").await;
    let mut carol = app.user("carol", "Carol").await;
    let room = alice.share_room_with(&mut [&mut bob]).await;
    bob.ok("room.join", json!({"room": room})).await;

    let bytes = png(3, 2, 600);
    let (status, body) = upload(&app, "alice", &bytes, "application/octet-stream").await;
    assert_eq!(status, 201, "{body}");
    let attachment = &body["attachment"];
    assert_eq!(attachment["mime"], "image/png", "sniffed, not the header");
    assert_eq!(
        (attachment["width"].as_i64(), attachment["height"].as_i64()),
        (Some(3), Some(2))
    );
    assert_eq!(attachment["size"], 600);
    assert_eq!(attachment["name"], "picture.png");
    let id = attachment["id"].as_str().expect("id").to_string();

    let reply = alice
        .ok(
            "message.send",
            json!({"room": room, "text": "", "client_msg_id": "pic-1",
                   "kind": "image", "attachments": [id]}),
        )
        .await;
    assert_eq!(reply["message"]["kind"], "image");
    assert_eq!(reply["message"]["attachments"][0]["id"], id.as_str());
    let event = bob.event("message.new").await;
    assert_eq!(event["message"]["attachments"][0]["width"], 3);

    let signed = bob
        .ok("attachment.url", json!({"room": room, "attachment": id}))
        .await;
    let url = signed["url"].as_str().expect("url");
    assert!(signed["expires_at"].as_i64() > Some(common::ids::now_ms()));
    let (status, _, body) = http_request(app.addrs.edge, "GET", url, &[], Body::Empty).await;
    assert_eq!(status, 200);
    assert_eq!(body, bytes, "the bytes as uploaded");

    // Not a member: the attachment does not exist for carol.
    carol
        .err(
            "attachment.url",
            json!({"room": room, "attachment": id}),
            "not_found",
        )
        .await;
    // Sent once: it cannot be sent again.
    alice
        .err(
            "message.send",
            json!({"room": room, "text": "again", "client_msg_id": "pic-2", "attachments": [id]}),
            "not_found",
        )
        .await;
    // Someone else's upload cannot be sent.
    let bobs = upload_png(&app, "bob").await;
    alice
        .err(
            "message.send",
            json!({"room": room, "text": "mine?", "client_msg_id": "pic-3", "attachments": [bobs]}),
            "not_found",
        )
        .await;
    // A kind its files do not fit.
    bob.err(
        "message.send",
        json!({"room": room, "text": "", "client_msg_id": "v-1", "kind": "video",
               "attachments": [bobs]}),
        "bad_request",
    )
    .await;
    // Deleting the message takes the download with it.
    let message_id = reply["message"]["id"].as_str().expect("message id");
    alice
        .ok(
            "message.delete",
            json!({"room": room, "message_id": message_id}),
        )
        .await;
    assert_eq!(download(&app, url).await.0, 404);
    crate::helpers::assert_no_task_panicked();
}

#[tokio::test]
async fn a_disguised_or_unknown_file_is_refused() {
    let app = spawn_app().await;
    let html = b"<!DOCTYPE html><html><script>alert(1)</script></html>".repeat(20);
    let (status, body) = upload(&app, "alice", &html, "image/png").await;
    assert_eq!(status, 415, "{body}");
    assert_eq!(body["error"]["code"], "unsupported_media_type");
    // A recognised type that is not allowed (a Windows executable).
    let mut exe = b"MZ".to_vec();
    exe.resize(600, 0);
    let (status, _) = upload(&app, "alice", &exe, "image/png").await;
    assert_eq!(status, 415);
    // Without a token nothing is stored either.
    let (status, _, _) = http_request(
        app.addrs.edge,
        "POST",
        "/v1/attachments",
        &[],
        Body::Bytes(&png(1, 1, 100)),
    )
    .await;
    assert_eq!(status, 401);
    assert!(stored_files(&app).is_empty(), "{:?}", stored_files(&app));
}

#[tokio::test]
async fn an_upload_over_the_cap_is_refused_before_it_is_stored_whole() {
    let app = spawn_app_with(|c| c.attachments.max_bytes = 100 * 1024).await;
    // Declared too large: refused on the headers.
    let (status, body) = upload(&app, "alice", &png(1, 1, 100 * 1024 + 1), "image/png").await;
    assert_eq!(status, 413, "{body}");
    assert_eq!(body["error"]["code"], "too_large");
    // Streamed without a length: refused once past the cap, the partial
    // upload aborted.
    let mut chunks = vec![png(1, 1, 64 * 1024)];
    chunks.extend((0..8).map(|_| vec![7u8; 32 * 1024]));
    let auth = format!("Bearer {}", token("alice", "Alice", 3600));
    let (status, _, _) = http_request(
        app.addrs.edge,
        "POST",
        "/v1/attachments",
        &[("Authorization", &auth)],
        Body::Chunked(chunks),
    )
    .await;
    assert_eq!(status, 413);
    assert!(stored_files(&app).is_empty(), "{:?}", stored_files(&app));
    // Exactly the cap is fine.
    let (status, body) = upload(&app, "alice", &png(1, 1, 100 * 1024), "image/png").await;
    assert_eq!(status, 201, "{body}");
}

#[tokio::test]
async fn the_quota_counts_every_upload_of_a_user() {
    let app = spawn_app_with(|c| c.attachments.quota_bytes_per_user = 1_500).await;
    upload_png(&app, "alice").await;
    upload_png(&app, "alice").await;
    let (status, body) = upload(&app, "alice", &png(3, 2, 600), "image/png").await;
    assert_eq!(status, 413, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("quota")),
        "{body}"
    );
    // Another user has a quota of their own.
    upload_png(&app, "bob").await;
}

#[tokio::test]
/// Expiry itself is checked on a given clock in `edge::attachments`
/// (`a_signed_url_holds_until_it_expires_and_only_unaltered`); here, that
/// a URL changed in any part is refused through the real route.
async fn an_altered_url_is_forbidden() {
    let app = spawn_app().await;
    let mut alice = app.user("alice", "Alice").await;
    let room = alice.share_room(&[]).await;
    let id = upload_png(&app, "alice").await;
    alice
        .ok(
            "message.send",
            json!({"room": room, "text": "look", "client_msg_id": "c1", "attachments": [id]}),
        )
        .await;
    let signed = alice
        .ok("attachment.url", json!({"room": room, "attachment": id}))
        .await;
    let url = signed["url"].as_str().expect("url").to_string();
    assert_eq!(download(&app, &url).await.0, 200);

    let exp = signed["expires_at"].as_i64().expect("expires_at");
    let later = url.replace(&format!("exp={exp}"), &format!("exp={}", exp + 3_600_000));
    assert_eq!(download(&app, &later).await.0, 403, "a later expiry");
    let (base, sig) = url.split_once("sig=").expect("sig");
    let flipped = if sig.starts_with('0') { "1" } else { "0" };
    let altered = format!("{base}sig={flipped}{}", &sig[1..]);
    assert_eq!(
        download(&app, &altered).await.0,
        403,
        "an altered signature"
    );
    let other = url.replace(&id, "at_someone_else");
    assert_eq!(download(&app, &other).await.0, 403, "another attachment");
}

#[tokio::test]
async fn an_upload_no_message_takes_is_removed_after_a_while() {
    let app = spawn_app_with(|c| c.attachments.unreferenced_ttl_s = 600).await;
    let mut alice = app.user("alice", "Alice").await;
    let room = alice.share_room(&[]).await;
    let kept = upload_png(&app, "alice").await;
    alice
        .ok(
            "message.send",
            json!({"room": room, "text": "", "client_msg_id": "c1", "kind": "image",
                   "attachments": [kept]}),
        )
        .await;
    let dropped = upload_png(&app, "alice").await;
    assert_eq!(stored_files(&app).len(), 2);

    let now = common::ids::now_ms();
    let early = app.clean_up_at(now + 599_000).await;
    assert_eq!(early.attachments, 0, "not yet");
    let report = app.clean_up_at(now + 601_000).await;
    assert_eq!(report.attachments, 1);
    assert_eq!(stored_files(&app).len(), 1, "only the sent one is left");
    alice
        .err(
            "message.send",
            json!({"room": room, "text": "late", "client_msg_id": "c2", "attachments": [dropped]}),
            "not_found",
        )
        .await;
    let signed = alice
        .ok("attachment.url", json!({"room": room, "attachment": kept}))
        .await;
    assert_eq!(
        download(&app, signed["url"].as_str().expect("url")).await.0,
        200
    );
}

/// The S3-compatible store given by `PARLEY_TEST_S3_URL` (e.g. `moto_server
/// -p 5000`, any credentials): unset, the test does nothing; set, it fails
/// loudly when the store cannot be reached.
fn test_s3_url() -> Option<String> {
    std::env::var("PARLEY_TEST_S3_URL")
        .ok()
        .filter(|url| !url.is_empty())
}

#[tokio::test]
async fn attachments_live_in_an_s3_compatible_store() {
    let Some(endpoint) = test_s3_url() else {
        return;
    };
    let bucket = common::ids::new_id("e2e").to_lowercase().replace('_', "-");
    let authority = endpoint
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();
    let addr = tokio::net::lookup_host(&authority)
        .await
        .ok()
        .and_then(|mut addrs| addrs.next())
        .unwrap_or_else(|| panic!("PARLEY_TEST_S3_URL={endpoint}: not a host:port"));
    let (status, _, body) =
        http_request(addr, "PUT", &format!("/{bucket}"), &[], Body::Empty).await;
    assert_eq!(
        status,
        200,
        "creating bucket {bucket} at {endpoint}: {}",
        String::from_utf8_lossy(&body)
    );
    let configure = |c: &mut common::config::Config| {
        c.attachments.store = common::config::StoreKind::S3;
        c.attachments.s3_endpoint = endpoint.clone();
        c.attachments.s3_bucket = bucket.clone();
        c.attachments.s3_allow_http = true;
        c.attachments.s3_access_key_id = "test".into();
        c.attachments.s3_secret_access_key = common::Secret::new("test");
    };
    let app = spawn_app_with(configure).await;
    let mut config = common::config::Config::default();
    configure(&mut config);
    let blobs = common::attachments::open(&config.attachments).expect("s3 store");

    let mut alice = app.user("alice", "Alice").await;
    let room = alice.share_room(&[]).await;
    let bytes = png(5, 4, 300 * 1024);
    let (status, body) = upload(&app, "alice", &bytes, "image/png").await;
    assert_eq!(status, 201, "{body}");
    let id = body["attachment"]["id"].as_str().expect("id").to_string();
    let stored = blobs
        .head(&common::attachments::path(&id))
        .await
        .expect("the object is in the bucket");
    assert_eq!(stored.size, bytes.len() as u64);
    assert!(stored_files(&app).is_empty(), "nothing on the local disk");

    let reply = alice
        .ok(
            "message.send",
            json!({"room": room, "text": "", "client_msg_id": "s3", "kind": "image",
                   "attachments": [id]}),
        )
        .await;
    let signed = alice
        .ok("attachment.url", json!({"room": room, "attachment": id}))
        .await;
    let (status, body) = download(&app, signed["url"].as_str().expect("url")).await;
    assert_eq!(status, 200);
    assert_eq!(body, bytes);

    // Deleted, then cleaned up: the object leaves the bucket.
    let message_id = reply["message"]["id"].as_str().expect("message id");
    alice
        .ok(
            "message.delete",
            json!({"room": room, "message_id": message_id}),
        )
        .await;
    assert_eq!(app.clean_up_at(common::ids::now_ms()).await.attachments, 1);
    assert!(matches!(
        blobs.head(&common::attachments::path(&id)).await,
        Err(object_store::Error::NotFound { .. })
    ));
}
