//! Rooms and their members: reading, creating, joining and leaving rooms,
//! and the `member.joined` / `member.left` log events.

use proto::chat::v1::{Room, RoomEvent, User};
use protocol::{MemberEvent, Role, ServerFrame, UserRef};
use sqlx::{Any, AnyConnection, Connection, Row, Transaction};
use tracing::Instrument;

use super::invitations::{insert_invitation, take_invitation};
use super::rows::{ROOM_COLUMNS, ROOM_COLUMNS_R, room_from};
use super::{
    Bind, Membership, NewRoom, Params, RoomAndRole, Store, bind_all, in_list, insert_event,
    log_event, next_seq,
};
use crate::error::{ChatError, Denial};

impl Store {
    /// A room by id (not a deleted one).
    pub(crate) async fn room(&self, room_id: &str) -> Result<Option<Room>, ChatError> {
        async {
            let sql =
                format!("SELECT {ROOM_COLUMNS} FROM rooms WHERE id = $1 AND deleted_at IS NULL");
            let row = sqlx::query(&sql)
                .bind(room_id.to_string())
                .fetch_optional(&self.reader)
                .await?;
            row.as_ref().map(room_from).transpose()
        }
        .instrument(self.span("sql SELECT rooms"))
        .await
    }

    /// A room (not a deleted one), `user_id`'s membership of it and the
    /// seq retention truncated its log to, in one query.
    pub(crate) async fn room_and_role(
        &self,
        room_id: &str,
        user_id: &str,
    ) -> Result<Option<RoomAndRole>, ChatError> {
        async {
            let sql = format!(
                "SELECT {ROOM_COLUMNS_R}, r.truncated_seq, m.role, m.muted_until \
                 FROM rooms r LEFT JOIN members m ON m.room_id = r.id AND m.user_id = $2 \
                 WHERE r.id = $1 AND r.deleted_at IS NULL"
            );
            let row = sqlx::query(&sql)
                .bind(room_id.to_string())
                .bind(user_id.to_string())
                .fetch_optional(&self.reader)
                .await?;
            row.map(|row| {
                let membership = row
                    .try_get::<Option<String>, _>("role")?
                    .map(|role| -> Result<Membership, ChatError> {
                        Ok(Membership {
                            role: Role::parse(&role).unwrap_or(Role::Member),
                            muted_until: row.try_get("muted_until")?,
                        })
                    })
                    .transpose()?;
                Ok(RoomAndRole {
                    room: room_from(&row)?,
                    membership,
                    truncated_seq: row.try_get("truncated_seq")?,
                })
            })
            .transpose()
        }
        .instrument(self.span("sql SELECT rooms"))
        .await
    }

    /// The direct room of a sorted user pair.
    pub(crate) async fn direct_room(&self, key: &str) -> Result<Option<Room>, ChatError> {
        async {
            let sql = format!(
                "SELECT {ROOM_COLUMNS} FROM rooms WHERE direct_key = $1 AND deleted_at IS NULL"
            );
            let row = sqlx::query(&sql)
                .bind(key.to_string())
                .fetch_optional(&self.reader)
                .await?;
            row.as_ref().map(room_from).transpose()
        }
        .instrument(self.span("sql SELECT rooms"))
        .await
    }

    /// Creates a room with its owner and members, logging `member.joined`
    /// for each. A taken public name or direct pair is a `Conflict`.
    pub(crate) async fn create_room(
        &self,
        conn: &mut AnyConnection,
        new: NewRoom,
    ) -> Result<(Room, Vec<RoomEvent>), ChatError> {
        async {
            let mut members = vec![new.owner.clone()];
            members.extend(new.members.iter().cloned());
            let mut tx = conn.begin().await?;
            let room = Room {
                id: new.id.clone(),
                name: new.name.clone(),
                visibility: new.visibility as i32,
                owner_id: new.owner.id.clone(),
                last_seq: members.len() as i64,
                created_at: new.created_at,
                ..Room::default()
            };
            sqlx::query(
                "INSERT INTO rooms (id, name, visibility, owner_id, last_seq, direct_key, created_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
            )
            .bind(room.id.clone())
            .bind(room.name.clone())
            .bind(protocol::Visibility::from_proto(room.visibility).as_str())
            .bind(room.owner_id.clone())
            .bind(room.last_seq)
            .bind(new.direct_key.clone())
            .bind(room.created_at)
            .execute(&mut *tx)
            .await?;
            let mut events = Vec::with_capacity(members.len());
            for (index, user) in members.iter().enumerate() {
                let seq = index as i64 + 1;
                // The creator is the owner; the others of a room that is not
                // direct are invited and become members when they accept.
                if index > 0 && new.direct_key.is_none() {
                    let event = insert_invitation(
                        &mut tx,
                        &room.id,
                        seq,
                        user,
                        &new.owner,
                        new.created_at,
                        self.caps.invitations,
                    )
                    .await?;
                    events.push(event);
                    continue;
                }
                check_memberships(&mut tx, &user.id, self.caps.memberships).await?;
                let role = if index == 0 { "owner" } else { "member" };
                insert_member(&mut tx, &room.id, user, role, new.created_at).await?;
                let event = member_event(true, &room.id, seq, user);
                insert_event(&mut tx, &event, None, new.created_at).await?;
                events.push(event);
            }
            tx.commit().await?;
            Ok((room, events))
        }
        .instrument(self.span("sql INSERT rooms"))
        .await
    }

    /// Adds `user` to the room and logs `member.joined`; `None` when already a member.
    pub(crate) async fn add_member(
        &self,
        conn: &mut AnyConnection,
        room_id: &str,
        user: &User,
    ) -> Result<Option<RoomEvent>, ChatError> {
        async {
            let mut tx = conn.begin().await?;
            let seq = next_seq(&mut tx, room_id).await?;
            let now = common::ids::now_ms();
            let standing = standing(&mut tx, room_id, &user.id, now).await?;
            if standing.member {
                tx.rollback().await?;
                return Ok(None);
            }
            if standing.banned {
                tx.rollback().await?;
                return Err(ChatError::Denied(Denial::Banned));
            }
            if let Err(error) =
                memberships_below(&user.id, standing.memberships, self.caps.memberships)
            {
                tx.rollback().await?;
                return Err(error);
            }
            // Joining a room one was invited to settles the invitation.
            take_invitation(&mut tx, room_id, &user.id).await?;
            insert_member(&mut tx, room_id, user, "member", now).await?;
            let event = member_event(true, room_id, seq, user);
            insert_event(&mut tx, &event, None, now).await?;
            tx.commit().await?;
            Ok(Some(event))
        }
        .instrument(self.span("sql INSERT members"))
        .await
    }

    /// Removes `user` from the room and logs `member.left`; `None` when not a member.
    pub(crate) async fn remove_member(
        &self,
        conn: &mut AnyConnection,
        room_id: &str,
        user: &User,
    ) -> Result<Option<RoomEvent>, ChatError> {
        async {
            let mut tx = conn.begin().await?;
            let seq = next_seq(&mut tx, room_id).await?;
            let removed = sqlx::query(
                "DELETE FROM members WHERE room_id = $1 AND user_id = $2 RETURNING user_name",
            )
            .bind(room_id.to_string())
            .bind(user.id.clone())
            .fetch_optional(&mut *tx)
            .await?;
            let Some(removed) = removed else {
                tx.rollback().await?;
                return Ok(None);
            };
            // Named as they joined, whoever removes them.
            let user = User {
                id: user.id.clone(),
                name: removed.try_get("user_name")?,
            };
            let event = member_event(false, room_id, seq, &user);
            insert_event(&mut tx, &event, None, common::ids::now_ms()).await?;
            tx.commit().await?;
            Ok(Some(event))
        }
        .instrument(self.span("sql DELETE members"))
        .await
    }

    /// The rooms `user_id` is a member of, the most recently joined first
    /// (after the membership `after` = (joined_at, room id), when paging),
    /// at most `limit`, with the messages from others after their read mark
    /// as `unread`; and whether more follow.
    pub(crate) async fn rooms_of(
        &self,
        user_id: &str,
        after: Option<(i64, String)>,
        limit: u32,
    ) -> Result<(Vec<(Room, i64)>, bool), ChatError> {
        async {
            let mut binds = vec![Bind::Text(user_id.to_string())];
            let mut page = String::new();
            if let Some((joined_at, room_id)) = after {
                binds.push(Bind::Int(joined_at));
                binds.push(Bind::Text(room_id));
                page.push_str(" AND (mem.joined_at < $2 OR (mem.joined_at = $2 AND r.id < $3))");
            }
            binds.push(Bind::Int(i64::from(limit) + 1));
            let limit_at = binds.len();
            let sql = format!(
                "SELECT {ROOM_COLUMNS_R}, \
                   mem.joined_at AS member_since, \
                   (SELECT COUNT(*) FROM messages m \
                     WHERE m.room_id = r.id AND m.seq > mem.read_seq \
                       AND m.sender_id <> mem.user_id AND m.deleted_at IS NULL) AS unread \
                 FROM members mem JOIN rooms r ON r.id = mem.room_id \
                 WHERE mem.user_id = $1 AND r.deleted_at IS NULL{page} \
                 ORDER BY mem.joined_at DESC, r.id DESC LIMIT ${limit_at}"
            );
            let rows = bind_all(sqlx::query(&sql), binds)
                .fetch_all(&self.reader)
                .await?;
            let mut rooms = rows
                .iter()
                .map(|row| {
                    let mut room = room_from(row)?;
                    room.unread = row.try_get::<i64, _>("unread")?;
                    Ok((room, row.try_get::<i64, _>("member_since")?))
                })
                .collect::<Result<Vec<_>, ChatError>>()?;
            let more = rooms.len() > limit as usize;
            rooms.truncate(limit as usize);
            Ok((rooms, more))
        }
        .instrument(self.span("sql SELECT rooms"))
        .await
    }

    /// Up to `limit` members of a room, with the names they joined under.
    pub(crate) async fn members(&self, room_id: &str, limit: u32) -> Result<Vec<User>, ChatError> {
        async {
            let rows = sqlx::query(
                "SELECT user_id, user_name FROM members WHERE room_id = $1 \
                 ORDER BY joined_at, user_id LIMIT $2",
            )
            .bind(room_id.to_string())
            .bind(i64::from(limit))
            .fetch_all(&self.reader)
            .await?;
            users_of(&rows)
        }
        .instrument(self.span("sql SELECT members"))
        .await
    }

    /// The members of `room_id` whose id or name, lower-cased, is one of
    /// `handles` (lower-case ASCII), in joining order: a mention's lookup
    /// reads the few members it names, not the room's member list.
    pub(crate) async fn members_named(
        &self,
        room_id: &str,
        handles: &[String],
    ) -> Result<Vec<User>, ChatError> {
        if handles.is_empty() {
            return Ok(Vec::new());
        }
        async {
            let mut params = Params::new(self.positional);
            let room = params.push(Bind::Text(room_id.to_string()));
            let ids = in_list(&mut params, handles);
            let names = in_list(&mut params, handles);
            let sql = format!(
                "SELECT user_id, user_name FROM members WHERE room_id = {room} \
                 AND (LOWER(user_id) IN ({ids}) OR LOWER(user_name) IN ({names})) \
                 ORDER BY joined_at, user_id"
            );
            let rows = params.query(&sql).fetch_all(&self.reader).await?;
            users_of(&rows)
        }
        .instrument(self.span("sql SELECT members"))
        .await
    }

    /// Rooms newest first, optionally only `user_id`'s, before the room id
    /// `before` (ids are time-ordered).
    pub(crate) async fn all_rooms(
        &self,
        user_id: Option<&str>,
        before: Option<&str>,
        limit: u32,
    ) -> Result<Vec<Room>, ChatError> {
        async {
            let mut sql = format!("SELECT {ROOM_COLUMNS} FROM rooms WHERE deleted_at IS NULL");
            let mut binds = Vec::new();
            if let Some(user) = user_id {
                binds.push(Bind::Text(user.to_string()));
                sql.push_str(&format!(
                    " AND id IN (SELECT room_id FROM members WHERE user_id = ${})",
                    binds.len()
                ));
            }
            if let Some(before) = before {
                binds.push(Bind::Text(before.to_string()));
                sql.push_str(&format!(" AND id < ${}", binds.len()));
            }
            binds.push(Bind::Int(i64::from(limit)));
            sql.push_str(&format!(" ORDER BY id DESC LIMIT ${}", binds.len()));
            let rows = bind_all(sqlx::query(&sql), binds)
                .fetch_all(&self.reader)
                .await?;
            rows.iter().map(room_from).collect()
        }
        .instrument(self.span("sql SELECT rooms"))
        .await
    }
}

pub(super) async fn member_exists(
    tx: &mut Transaction<'_, Any>,
    room_id: &str,
    user_id: &str,
) -> Result<bool, ChatError> {
    let row = sqlx::query("SELECT user_id FROM members WHERE room_id = $1 AND user_id = $2")
        .bind(room_id.to_string())
        .bind(user_id.to_string())
        .fetch_optional(&mut **tx)
        .await?;
    Ok(row.is_some())
}

/// `TooLarge` when `user_id` is already a member of `cap` rooms.
pub(super) async fn check_memberships(
    tx: &mut Transaction<'_, Any>,
    user_id: &str,
    cap: u32,
) -> Result<(), ChatError> {
    let row = sqlx::query("SELECT COUNT(*) AS n FROM members WHERE user_id = $1")
        .bind(user_id.to_string())
        .fetch_one(&mut **tx)
        .await?;
    memberships_below(user_id, row.try_get("n")?, cap)
}

fn memberships_below(user_id: &str, count: i64, cap: u32) -> Result<(), ChatError> {
    if count >= i64::from(cap) {
        return Err(ChatError::TooLarge(format!(
            "{user_id} is a member of {cap} rooms, the most one user may be in"
        )));
    }
    Ok(())
}

/// What a join must know of a user and a room, read in one statement.
struct Standing {
    member: bool,
    /// Banned from the room at the given time.
    banned: bool,
    /// Rooms the user is a member of.
    memberships: i64,
}

async fn standing(
    tx: &mut Transaction<'_, Any>,
    room_id: &str,
    user_id: &str,
    now: i64,
) -> Result<Standing, ChatError> {
    let row = sqlx::query(
        "SELECT \
           (SELECT COUNT(*) FROM members WHERE room_id = $1 AND user_id = $2) AS member, \
           (SELECT COUNT(*) FROM room_bans WHERE room_id = $1 AND user_id = $2 \
              AND (until_at IS NULL OR until_at > $3)) AS banned, \
           (SELECT COUNT(*) FROM members WHERE user_id = $2) AS memberships",
    )
    .bind(room_id.to_string())
    .bind(user_id.to_string())
    .bind(now)
    .fetch_one(&mut **tx)
    .await?;
    Ok(Standing {
        member: row.try_get::<i64, _>("member")? > 0,
        banned: row.try_get::<i64, _>("banned")? > 0,
        memberships: row.try_get("memberships")?,
    })
}

pub(super) async fn insert_member(
    tx: &mut Transaction<'_, Any>,
    room_id: &str,
    user: &User,
    role: &str,
    now: i64,
) -> Result<(), ChatError> {
    sqlx::query(
        "INSERT INTO members (room_id, user_id, user_name, role, joined_at) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(room_id.to_string())
    .bind(user.id.clone())
    .bind(user.name.clone())
    .bind(role.to_string())
    .bind(now)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// A `member.joined` / `member.left` log event.
pub(super) fn member_event(joined: bool, room_id: &str, seq: i64, user: &User) -> RoomEvent {
    let event = MemberEvent {
        room: room_id.to_string(),
        seq,
        user: UserRef::new(&user.id, &user.name),
    };
    log_event(if joined {
        ServerFrame::MemberJoined(event)
    } else {
        ServerFrame::MemberLeft(event)
    })
}

/// Members' `user_id` and `user_name` as users.
fn users_of(rows: &[sqlx::any::AnyRow]) -> Result<Vec<User>, ChatError> {
    rows.iter()
        .map(|r| {
            Ok(User {
                id: r.try_get("user_id")?,
                name: r.try_get("user_name")?,
            })
        })
        .collect()
}
