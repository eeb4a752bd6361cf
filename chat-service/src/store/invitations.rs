//! Invitations: adding someone to a room that is not direct asks them
//! first. A pending invitation is a row here and a `member.invited` event
//! in the room's log; accepting turns it into a membership
//! (`member.joined`), declining removes it (`member.declined`). Until then
//! the invitee is not a member: nothing of the room reaches them and it
//! does not count against their memberships.

use proto::chat::v1::{Invitation, Room, RoomEvent, User};
use protocol::{InvitationEvent, ServerFrame, UserRef};
use sqlx::{Any, AnyConnection, Connection, Row, Transaction};
use tracing::Instrument;

use super::moderation::banned;
use super::rooms::{check_memberships, insert_member, member_event, member_exists};
use super::rows::{ROOM_COLUMNS, ROOM_COLUMNS_R, room_from};
use super::{Store, insert_event, log_event, next_seq};
use crate::error::{ChatError, Denial};

impl Store {
    /// `by` invites `user` to the room and logs `member.invited`; `None`
    /// when `user` is already a member or already invited.
    pub(crate) async fn invite(
        &self,
        conn: &mut AnyConnection,
        room_id: &str,
        user: &User,
        by: &User,
    ) -> Result<Option<RoomEvent>, ChatError> {
        async {
            let mut tx = conn.begin().await?;
            let seq = next_seq(&mut tx, room_id).await?;
            if member_exists(&mut tx, room_id, &user.id).await?
                || invitation_exists(&mut tx, room_id, &user.id).await?
            {
                tx.rollback().await?;
                return Ok(None);
            }
            let now = common::ids::now_ms();
            if banned(&mut tx, room_id, &user.id, now).await? {
                tx.rollback().await?;
                return Err(ChatError::Denied(Denial::Banned));
            }
            let event = match insert_invitation(
                &mut tx,
                room_id,
                seq,
                user,
                by,
                now,
                self.caps.invitations,
            )
            .await
            {
                Ok(event) => event,
                Err(error) => {
                    tx.rollback().await?;
                    return Err(error);
                }
            };
            tx.commit().await?;
            Ok(Some(event))
        }
        .instrument(self.span("sql INSERT invitations"))
        .await
    }

    /// `user` accepts their invitation: they become a member (`member.joined`).
    /// `NotFound` without a pending invitation (or once the room is deleted).
    pub(crate) async fn accept_invitation(
        &self,
        conn: &mut AnyConnection,
        room_id: &str,
        user: &User,
    ) -> Result<(Room, RoomEvent), ChatError> {
        async {
            let mut tx = conn.begin().await?;
            let seq = next_seq(&mut tx, room_id).await?;
            if take_invitation(&mut tx, room_id, &user.id).await?.is_none() {
                tx.rollback().await?;
                return Err(ChatError::NotFound("invitation"));
            }
            let sql =
                format!("SELECT {ROOM_COLUMNS} FROM rooms WHERE id = $1 AND deleted_at IS NULL");
            let row = sqlx::query(&sql)
                .bind(room_id.to_string())
                .fetch_optional(&mut *tx)
                .await?;
            let Some(room) = row.as_ref().map(room_from).transpose()? else {
                tx.rollback().await?;
                return Err(ChatError::NotFound("invitation"));
            };
            let now = common::ids::now_ms();
            if banned(&mut tx, room_id, &user.id, now).await? {
                tx.rollback().await?;
                return Err(ChatError::Denied(Denial::Banned));
            }
            if let Err(error) = check_memberships(&mut tx, &user.id, self.caps.memberships).await {
                tx.rollback().await?;
                return Err(error);
            }
            insert_member(&mut tx, room_id, user, "member", now).await?;
            let event = member_event(true, room_id, seq, user);
            insert_event(&mut tx, &event, None, now).await?;
            tx.commit().await?;
            Ok((room, event))
        }
        .instrument(self.span("sql DELETE invitations"))
        .await
    }

    /// `user` declines their invitation (`member.declined`); `NotFound`
    /// without a pending one.
    pub(crate) async fn decline_invitation(
        &self,
        conn: &mut AnyConnection,
        room_id: &str,
        user: &User,
    ) -> Result<RoomEvent, ChatError> {
        async {
            let mut tx = conn.begin().await?;
            let seq = next_seq(&mut tx, room_id).await?;
            let Some(by) = take_invitation(&mut tx, room_id, &user.id).await? else {
                tx.rollback().await?;
                return Err(ChatError::NotFound("invitation"));
            };
            let event = invitation_event(false, room_id, seq, user, &by);
            insert_event(&mut tx, &event, None, common::ids::now_ms()).await?;
            tx.commit().await?;
            Ok(event)
        }
        .instrument(self.span("sql DELETE invitations"))
        .await
    }

    /// `user_id`'s pending invitations to rooms that still exist, newest first.
    pub(crate) async fn invitations(&self, user_id: &str) -> Result<Vec<Invitation>, ChatError> {
        async {
            let sql = format!(
                "SELECT {ROOM_COLUMNS_R}, i.inviter_id, i.inviter_name, i.created_at AS invited_at \
                 FROM invitations i JOIN rooms r ON r.id = i.room_id \
                 WHERE i.user_id = $1 AND r.deleted_at IS NULL \
                 ORDER BY i.created_at DESC, r.id DESC LIMIT $2"
            );
            let rows = sqlx::query(&sql)
                .bind(user_id.to_string())
                .bind(i64::from(self.caps.invitations))
                .fetch_all(&self.reader)
                .await?;
            rows.iter()
                .map(|row| {
                    Ok(Invitation {
                        room: Some(room_from(row)?),
                        by: Some(User {
                            id: row.try_get("inviter_id")?,
                            name: row.try_get("inviter_name")?,
                        }),
                        created_at: row.try_get("invited_at")?,
                    })
                })
                .collect()
        }
        .instrument(self.span("sql SELECT invitations"))
        .await
    }
}

/// Stores `by`'s invitation of `user` (checking `user`'s cap of pending
/// invitations and that `user` does not block `by`) and returns its
/// `member.invited` event with `seq`.
pub(super) async fn insert_invitation(
    tx: &mut Transaction<'_, Any>,
    room_id: &str,
    seq: i64,
    user: &User,
    by: &User,
    now: i64,
    cap: u32,
) -> Result<RoomEvent, ChatError> {
    let blocks =
        sqlx::query("SELECT blocker_id FROM user_blocks WHERE blocker_id = $1 AND blocked_id = $2")
            .bind(user.id.clone())
            .bind(by.id.clone())
            .fetch_optional(&mut **tx)
            .await?;
    if blocks.is_some() {
        return Err(ChatError::Denied(Denial::Blocked));
    }
    let pending: i64 = sqlx::query(
        "SELECT COUNT(*) AS n FROM invitations i JOIN rooms r ON r.id = i.room_id \
         WHERE i.user_id = $1 AND r.deleted_at IS NULL",
    )
    .bind(user.id.clone())
    .fetch_one(&mut **tx)
    .await?
    .try_get("n")?;
    if pending >= i64::from(cap) {
        return Err(ChatError::TooLarge(format!(
            "{} has {cap} pending invitations, the most one user may have",
            user.id
        )));
    }
    sqlx::query(
        "INSERT INTO invitations (room_id, user_id, inviter_id, inviter_name, created_at) \
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(room_id.to_string())
    .bind(user.id.clone())
    .bind(by.id.clone())
    .bind(by.name.clone())
    .bind(now)
    .execute(&mut **tx)
    .await?;
    let event = invitation_event(true, room_id, seq, user, by);
    insert_event(tx, &event, None, now).await?;
    Ok(event)
}

/// Removes `user_id`'s invitation to the room, if any (joining a public
/// room settles it too); returns who invited them.
pub(super) async fn take_invitation(
    tx: &mut Transaction<'_, Any>,
    room_id: &str,
    user_id: &str,
) -> Result<Option<User>, ChatError> {
    let row = sqlx::query(
        "DELETE FROM invitations WHERE room_id = $1 AND user_id = $2 \
         RETURNING inviter_id, inviter_name",
    )
    .bind(room_id.to_string())
    .bind(user_id.to_string())
    .fetch_optional(&mut **tx)
    .await?;
    row.map(|row| {
        Ok(User {
            id: row.try_get("inviter_id")?,
            name: row.try_get("inviter_name")?,
        })
    })
    .transpose()
}

async fn invitation_exists(
    tx: &mut Transaction<'_, Any>,
    room_id: &str,
    user_id: &str,
) -> Result<bool, ChatError> {
    let row = sqlx::query("SELECT user_id FROM invitations WHERE room_id = $1 AND user_id = $2")
        .bind(room_id.to_string())
        .bind(user_id.to_string())
        .fetch_optional(&mut **tx)
        .await?;
    Ok(row.is_some())
}

/// A `member.invited` (true) or `member.declined` (false) log event.
fn invitation_event(invited: bool, room_id: &str, seq: i64, user: &User, by: &User) -> RoomEvent {
    let event = InvitationEvent {
        room: room_id.to_string(),
        seq,
        user: UserRef::new(&user.id, &user.name),
        by: UserRef::new(&by.id, &by.name),
    };
    log_event(if invited {
        ServerFrame::MemberInvited(event)
    } else {
        ServerFrame::MemberDeclined(event)
    })
}
