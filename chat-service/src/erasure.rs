//! `EraseUser`: removing a user's data (GDPR Art. 17). Their messages
//! become tombstones through the writer, like `message.delete` — so the
//! log's copies, quotes of them and mention excerpts are redacted too and
//! live members see `message.deleted` — their attachments' bytes and
//! metadata go, they leave every room (`member.left`, receipts with the
//! membership), what else is theirs is deleted, auth-service revokes every
//! token issued to them, presence-service forgets their status and last
//! seen, and an audit record says who asked, when, with which credential.
//! Every step is idempotent, so a failed erasure is simply called again.

use proto::auth::v1::RevokeRequest;
use proto::chat::v1::{Erasure, User};
use proto::presence::v1::ForgetUserRequest;
use sha2::{Digest, Sha256};

use crate::error::ChatError;
use crate::service::{ChatHandler, check_id};
use crate::writer::Op;

/// Rows read per step of an erasure.
const BATCH: u32 = 200;

/// `sha256:` and the first 16 hex digits of the SHA-256 of `credential`:
/// enough to tell credentials apart in the audit record, never the secret.
pub(crate) fn fingerprint(credential: &str) -> String {
    let digest = Sha256::digest(credential.as_bytes());
    format!("sha256:{}", &hex::encode(digest)[..16])
}

impl ChatHandler {
    pub(crate) async fn erase_user(
        &self,
        user_id: &str,
        credential: String,
        requested_by: &str,
    ) -> Result<Erasure, ChatError> {
        check_id("user_id", user_id)?;
        let mut messages = 0;
        loop {
            let batch = self.store.live_messages_of(user_id, BATCH).await?;
            if batch.is_empty() {
                break;
            }
            for (room_id, message_id) in batch {
                let applied = self
                    .writer
                    .submit(Op::DeleteMessage {
                        room_id,
                        message_id,
                    })
                    .await?;
                messages += i64::from(!applied.events.is_empty());
            }
        }
        let mut attachments = 0;
        loop {
            let ids = self.store.attachments_of(user_id, BATCH).await?;
            if ids.is_empty() {
                break;
            }
            let gone = self.delete_attachments(&ids).await?;
            attachments += gone as i64;
            if gone < ids.len() {
                return Err(ChatError::Commit(
                    "attachment store unavailable; erase again".into(),
                ));
            }
        }
        loop {
            let rooms = self.store.memberships_of(user_id, BATCH).await?;
            if rooms.is_empty() {
                break;
            }
            for room_id in rooms {
                let user = User {
                    id: user_id.to_string(),
                    name: String::new(),
                };
                self.writer
                    .submit(Op::RemoveMember { room_id, user })
                    .await?;
            }
        }
        self.store.forget_user(user_id).await?;
        if let Some(auth) = &self.auth {
            auth.clone()
                .revoke(RevokeRequest {
                    user_id: user_id.to_string(),
                    ..RevokeRequest::default()
                })
                .await
                .map_err(|status| {
                    ChatError::Commit(format!("auth-service revocation: {}", status.message()))
                })?;
        }
        if let Some(presence) = &self.presence {
            presence
                .clone()
                .forget_user(ForgetUserRequest {
                    user_id: user_id.to_string(),
                })
                .await
                .map_err(|status| {
                    ChatError::Commit(format!("presence-service: {}", status.message()))
                })?;
        }
        let erasure = Erasure {
            id: common::ids::new_id("er"),
            user_id: user_id.to_string(),
            credential,
            requested_by: requested_by.chars().take(200).collect(),
            messages,
            attachments,
            at: common::ids::now_ms(),
        };
        self.store.record_erasure(&erasure).await?;
        tracing::info!(
            user_id,
            erasure_id = %erasure.id,
            credential = %erasure.credential,
            messages,
            attachments,
            "user erased"
        );
        Ok(erasure)
    }
}
