//! Message commands: send, history, edit, delete, reactions, receipts and
//! notifications.

use proto::chat::v1::{
    ClearNotificationsRequest, DeleteMessageRequest, EditMessageRequest, GetAttachmentRequest,
    GetHistoryRequest, ListNotificationsRequest, MarkReceiptRequest, ReactionRequest,
    ReadNotificationsRequest, ReceiptKind, SendMessageRequest,
};
use protocol::{
    AttachmentUrl, AttachmentUrlReply, HistoryReply, Message, MessageDelete, MessageEdit,
    MessageHistory, MessageReply, MessageSend, Notification, NotificationIds, NotificationList,
    NotificationListReply, ReactionArgs, ReceiptArgs, ReceiptReply, ReplyResult,
};
use std::future::Future;

use serde_json::Value;

use super::{Outcome, RoomCtx, done, failed, missing, reply};
use crate::frames::CommandError;
use crate::session::Session;

/// `message.send`: handed to the edge's send stream at once, in the
/// lane's order (see [`crate::sends`]); the future answers once chat has
/// stored it. `flags` are content inspection's findings, stored in the
/// metadata.
pub(super) fn send(
    s: &RoomCtx,
    args: MessageSend,
    flags: &[&'static str],
) -> impl Future<Output = Result<Outcome, CommandError>> + Send + 'static {
    let metadata_json = match args.metadata {
        _ if !flags.is_empty() => crate::inspect::flag_metadata(args.metadata, flags).to_string(),
        Some(m) => Value::Object(m).to_string(),
        None => String::new(),
    };
    let lane = s.lane(&args.room);
    let request = SendMessageRequest {
        room_id: args.room,
        text: args.text,
        client_msg_id: args.client_msg_id,
        thread_id: args.thread,
        metadata_json,
        reply_to: args.reply_to,
        kind: args.kind.as_str().to_string(),
        attachment_ids: args.attachments,
    };
    let answer = s.shared.sends.send(s.actor(), lane, request);
    async move {
        let message = answer
            .await
            .map_err(failed("chat"))?
            .message
            .ok_or_else(|| missing("message"))?;
        Ok(message_reply(&message))
    }
}

/// `attachment.url`: chat-service says whether the caller may see the
/// attachment (a member of the room of a live message carrying it); the
/// edge signs a URL it will serve.
pub(super) async fn attachment_url(
    s: &mut Session,
    args: AttachmentUrl,
) -> Result<Outcome, CommandError> {
    let shared = s.link.shared.clone();
    let Some(attachments) = shared.attachments.get() else {
        return Err(CommandError::new(
            common::ErrorCode::NotFound,
            "attachments are not enabled",
        ));
    };
    let request = s.actor()?.request(GetAttachmentRequest {
        room_id: args.room,
        attachment_id: args.attachment,
    });
    let attachment = s
        .chat()
        .get_attachment(request)
        .await
        .map_err(failed("chat"))?
        .into_inner()
        .attachment
        .ok_or_else(|| missing("attachment"))?;
    let (url, expires_at) = attachments.signed_url(&attachment.id, common::ids::now_ms());
    Ok(reply(ReplyResult::AttachmentUrl(AttachmentUrlReply {
        url,
        expires_at,
        attachment: protocol::Attachment::from(&attachment),
    })))
}

fn message_reply(message: &proto::chat::v1::Message) -> Outcome {
    reply(ReplyResult::Message(MessageReply {
        message: Message::from(message),
    }))
}

pub(super) async fn history(s: &RoomCtx, args: MessageHistory) -> Result<Outcome, CommandError> {
    let limit = args.limit();
    let seq = |v: Option<u64>| v.and_then(|v| i64::try_from(v).ok());
    let request = s.actor().request(GetHistoryRequest {
        room_id: args.room,
        before: seq(args.before),
        after: seq(args.after),
        limit,
        thread_id: args.thread,
    });
    let response = s
        .chat()
        .get_history(request)
        .await
        .map_err(failed("chat"))?
        .into_inner();
    Ok(reply(ReplyResult::History(HistoryReply {
        messages: response.messages.iter().map(Message::from).collect(),
        has_more: response.has_more,
    })))
}

/// An edit cannot carry metadata: in `flag` mode inspection only logs it.
pub(super) async fn edit(s: &RoomCtx, args: MessageEdit) -> Result<Outcome, CommandError> {
    let request = s.actor().request(EditMessageRequest {
        room_id: args.room,
        message_id: args.message_id,
        text: args.text,
    });
    let message = s
        .chat()
        .edit_message(request)
        .await
        .map_err(failed("chat"))?
        .into_inner()
        .message
        .ok_or_else(|| missing("message"))?;
    Ok(message_reply(&message))
}

pub(super) async fn delete(s: &RoomCtx, args: MessageDelete) -> Result<Outcome, CommandError> {
    let request = s.actor().request(DeleteMessageRequest {
        room_id: args.room,
        message_id: args.message_id,
    });
    s.chat()
        .delete_message(request)
        .await
        .map_err(failed("chat"))?;
    Ok(done())
}

pub(super) async fn reaction(
    s: &RoomCtx,
    args: ReactionArgs,
    add: bool,
) -> Result<Outcome, CommandError> {
    let request = s.actor().request(ReactionRequest {
        room_id: args.room,
        message_id: args.message_id,
        emoji: args.emoji,
    });
    let mut chat = s.chat();
    if add {
        chat.add_reaction(request).await.map_err(failed("chat"))?;
    } else {
        chat.remove_reaction(request)
            .await
            .map_err(failed("chat"))?;
    }
    Ok(done())
}

pub(super) async fn receipt(
    s: &mut Session,
    args: ReceiptArgs,
    read: bool,
) -> Result<Outcome, CommandError> {
    let kind = if read {
        ReceiptKind::Read
    } else {
        ReceiptKind::Delivered
    };
    let request = s.actor()?.request(MarkReceiptRequest {
        room_id: args.room,
        kind: kind as i32,
        seq: i64::try_from(args.seq).unwrap_or(i64::MAX),
    });
    let seq = s
        .chat()
        .mark_receipt(request)
        .await
        .map_err(failed("chat"))?
        .into_inner()
        .seq;
    Ok(reply(ReplyResult::Receipt(ReceiptReply { seq })))
}

pub(super) async fn notification_list(
    s: &mut Session,
    args: NotificationList,
) -> Result<Outcome, CommandError> {
    let request = s.actor()?.request(ListNotificationsRequest {
        unread_only: args.unread_only.unwrap_or(false),
        limit: 0,
    });
    let notifications = s
        .chat()
        .list_notifications(request)
        .await
        .map_err(failed("chat"))?
        .into_inner()
        .notifications;
    Ok(reply(ReplyResult::Notifications(NotificationListReply {
        notifications: notifications.iter().map(Notification::from).collect(),
    })))
}

pub(super) async fn notification_read(
    s: &mut Session,
    args: NotificationIds,
) -> Result<Outcome, CommandError> {
    let all = args.all();
    let request = s.actor()?.request(ReadNotificationsRequest {
        ids: args.ids.unwrap_or_default(),
        all,
    });
    s.chat()
        .read_notifications(request)
        .await
        .map_err(failed("chat"))?;
    Ok(done())
}

/// The user's other connections get `notification.cleared` (carrying this
/// connection's id, so it can tell the echo from its own reply).
pub(super) async fn notification_clear(
    s: &mut Session,
    args: NotificationIds,
) -> Result<Outcome, CommandError> {
    let all = args.all();
    let request = s.actor()?.request(ClearNotificationsRequest {
        ids: args.ids.unwrap_or_default(),
        all,
        conn_id: s.link.id.clone(),
    });
    s.chat()
        .clear_notifications(request)
        .await
        .map_err(failed("chat"))?;
    Ok(done())
}
