//! Receipt calls: marking how far a member has read or received a room.

use common::bus::{envelope, room_channel, user_channel};
use common::grpc::Actor;
use proto::chat::v1::{MarkReceiptRequest, ReceiptKind};
use protocol::{ReceiptEvent, ServerFrame};

use super::ChatHandler;
use crate::error::ChatError;

impl ChatHandler {
    pub(super) async fn receipt(
        &self,
        actor: &Actor,
        request: MarkReceiptRequest,
    ) -> Result<i64, ChatError> {
        let kind = match ReceiptKind::try_from(request.kind) {
            Ok(kind @ (ReceiptKind::Read | ReceiptKind::Delivered)) => kind,
            _ => {
                return Err(ChatError::BadRequest(
                    "kind must be read or delivered".into(),
                ));
            }
        };
        if request.seq < 0 {
            return Err(ChatError::BadRequest("seq must not be negative".into()));
        }
        let (room, _) = self.member_room(&request.room_id, actor).await?;
        // A mark past the end of the log means "everything so far".
        let seq = request.seq.min(room.last_seq);
        let (mark, moved) = self
            .store
            .mark_receipt(&room.id, &actor.user_id, kind, seq)
            .await?
            .ok_or_else(|| ChatError::Forbidden("join the room first".into()))?;
        if moved {
            let event = ServerFrame::Receipt(ReceiptEvent {
                room: room.id.clone(),
                user: actor.user_id.clone(),
                kind: if kind == ReceiptKind::Read {
                    protocol::ReceiptKind::Read
                } else {
                    protocol::ReceiptKind::Delivered
                },
                seq: mark,
            });
            // The room's members see it, and so do all of the user's own
            // devices (edges skip the copy for devices that joined the room).
            let envelope = envelope(&room.id, 0, event.kind(), event.to_json());
            for channel in [room_channel(&room.id), user_channel(&actor.user_id)] {
                if let Err(error) = self.bus.publish(&channel, &envelope).await {
                    tracing::warn!(%error, "cannot publish receipt");
                }
            }
        }
        Ok(mark)
    }
}
