//! Attachments: the quota check and record of an upload (the edge stores
//! the bytes), which uploads a message may carry, who may download one, and
//! deleting bytes and metadata together.

use common::grpc::Actor;
use proto::chat::v1::{
    Attachment, AttachmentUsageResponse, CreateAttachmentRequest, GetAttachmentRequest,
    ResolveAttachmentRequest,
};
use protocol::MessageKind;

use super::{ChatHandler, check_id, check_no_nul};
use crate::error::ChatError;

/// Longest file name kept with an upload, in characters.
const MAX_NAME_CHARS: usize = 255;

impl ChatHandler {
    pub(super) async fn attachment_usage(
        &self,
        actor: &Actor,
    ) -> Result<AttachmentUsageResponse, ChatError> {
        Ok(AttachmentUsageResponse {
            used_bytes: self.store.attachment_usage(&actor.user_id).await?,
            quota_bytes: self.limits.attachment_quota,
        })
    }

    pub(super) async fn create_attachment(
        &self,
        actor: &Actor,
        request: CreateAttachmentRequest,
    ) -> Result<Attachment, ChatError> {
        let mut attachment = request
            .attachment
            .ok_or_else(|| ChatError::BadRequest("attachment is required".into()))?;
        check_id("attachment.id", &attachment.id)?;
        check_id("attachment.mime", &attachment.mime)?;
        check_no_nul("attachment.name", &attachment.name)?;
        if attachment.size < 0 {
            return Err(ChatError::BadRequest("size must not be negative".into()));
        }
        attachment.name = attachment.name.chars().take(MAX_NAME_CHARS).collect();
        attachment.owner_id = actor.user_id.clone();
        attachment.created_at = common::ids::now_ms();
        attachment.room_id = String::new();
        self.store
            .create_attachment(&attachment, self.limits.attachment_quota)
            .await?;
        Ok(attachment)
    }

    pub(super) async fn get_attachment(
        &self,
        actor: &Actor,
        request: GetAttachmentRequest,
    ) -> Result<Attachment, ChatError> {
        check_id("room_id", &request.room_id)?;
        check_id("attachment_id", &request.attachment_id)?;
        self.store
            .visible_attachment(&request.room_id, &request.attachment_id, &actor.user_id)
            .await?
            .ok_or(ChatError::NotFound("attachment"))
    }

    pub(super) async fn resolve_attachment(
        &self,
        request: ResolveAttachmentRequest,
    ) -> Result<Attachment, ChatError> {
        check_id("attachment_id", &request.attachment_id)?;
        self.store
            .live_attachment(&request.attachment_id)
            .await?
            .ok_or(ChatError::NotFound("attachment"))
    }

    /// The uploads a message from `sender_id` of `kind` carries: each the
    /// sender's, not sent yet, of a type the kind accepts.
    pub(super) async fn attachments_for(
        &self,
        sender_id: &str,
        kind: MessageKind,
        ids: &[String],
    ) -> Result<Vec<Attachment>, ChatError> {
        if ids.len() > self.limits.max_attachments {
            return Err(ChatError::TooLarge(format!(
                "a message carries at most {} attachments",
                self.limits.max_attachments
            )));
        }
        if !kind.is_text() && ids.is_empty() {
            return Err(ChatError::BadRequest(format!(
                "a {} message needs attachments",
                kind.as_str()
            )));
        }
        let mut seen = std::collections::HashSet::new();
        for id in ids {
            check_id("attachment_ids", id)?;
            if !seen.insert(id) {
                return Err(ChatError::BadRequest(format!(
                    "attachment {id} is repeated"
                )));
            }
        }
        let found = self.store.unsent_attachments(sender_id, ids).await?;
        if let Some(wrong) = found.iter().find(|a| !kind.accepts(&a.mime)) {
            return Err(ChatError::BadRequest(format!(
                "a {} message cannot carry {} ({})",
                kind.as_str(),
                wrong.mime,
                wrong.id
            )));
        }
        Ok(found)
    }

    /// Deletes attachments' bytes, then their metadata (bytes that cannot
    /// be deleted now keep their row, so a later run tries again). Returns
    /// how many went.
    pub(crate) async fn delete_attachments(&self, ids: &[String]) -> Result<usize, ChatError> {
        delete_attachments(&self.store, self.blobs.as_ref(), ids).await
    }
}

/// See [`ChatHandler::delete_attachments`].
pub(crate) async fn delete_attachments(
    store: &crate::store::Store,
    blobs: Option<&common::attachments::Blobs>,
    ids: &[String],
) -> Result<usize, ChatError> {
    let mut gone = Vec::with_capacity(ids.len());
    for id in ids {
        let deleted = match blobs {
            Some(blobs) => match blobs.delete(&common::attachments::path(id)).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => true,
                Err(error) => {
                    tracing::warn!(attachment = %id, %error, "cannot delete attachment bytes");
                    false
                }
            },
            None => true,
        };
        if deleted {
            gone.push(id.clone());
        }
    }
    store.delete_attachment_rows(&gone).await?;
    Ok(gone.len())
}
