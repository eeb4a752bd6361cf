//! Room settings and deletion, roles, mutes and bans (each a room-log
//! event), the member list and the directory, and message reports.

use proto::chat::v1::{Member, Report, Room, RoomEvent, Sanction, User};
use protocol::{
    MemberRoleEvent, Role, RoomDeleted, RoomUpdated, SanctionEvent, ServerFrame, UserRef,
};
use sqlx::{Any, AnyConnection, Connection, Row, Transaction};
use tracing::Instrument;

use super::rooms::member_event;
use super::rows::{ROOM_COLUMNS, ROOM_COLUMNS_R, room_from};
use super::{Bind, Store, bind_all, insert_event, log_event, next_seq};
use crate::error::ChatError;

/// What `room.update` changes (`None`: unchanged).
#[derive(Debug, Clone, Default)]
pub(crate) struct RoomChanges {
    pub name: Option<String>,
    pub topic: Option<String>,
    /// JSON object, or empty for none.
    pub metadata: Option<String>,
}

/// A page of members: those after `after` (join time, user id).
#[derive(Debug, Clone)]
pub(crate) struct MembersPage {
    pub after: Option<(i64, String)>,
    pub limit: u32,
}

/// A page of the directory.
#[derive(Debug, Clone)]
pub(crate) struct DirectoryPage {
    /// Lower-cased name prefix.
    pub prefix: String,
    /// Rooms after this room id in name order.
    pub after: Option<String>,
    pub limit: u32,
}

fn user_ref(user: &User) -> UserRef {
    UserRef::new(&user.id, &user.name)
}

impl Store {
    /// Changes a room's settings and logs `room.updated`. A taken public
    /// name is a `Conflict`; a missing or deleted room `NotFound`.
    pub(crate) async fn update_room(
        &self,
        conn: &mut AnyConnection,
        room_id: &str,
        changes: RoomChanges,
        by: &User,
    ) -> Result<(Room, RoomEvent), ChatError> {
        async {
            let mut tx = conn.begin().await?;
            let seq = next_seq(&mut tx, room_id).await?;
            let changed = sqlx::query(
                "UPDATE rooms SET name = COALESCE($1, name), topic = COALESCE($2, topic), \
                 metadata = COALESCE($3, metadata) WHERE id = $4 AND deleted_at IS NULL",
            )
            .bind(changes.name)
            .bind(changes.topic)
            .bind(changes.metadata)
            .bind(room_id.to_string())
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if changed == 0 {
                tx.rollback().await?;
                return Err(ChatError::NotFound("room"));
            }
            let sql = format!("SELECT {ROOM_COLUMNS} FROM rooms WHERE id = $1");
            let row = sqlx::query(&sql)
                .bind(room_id.to_string())
                .fetch_one(&mut *tx)
                .await?;
            let room = room_from(&row)?;
            let event = log_event(ServerFrame::RoomUpdated(RoomUpdated {
                room: room_id.to_string(),
                seq,
                name: room.name.clone(),
                topic: room.topic.clone(),
                metadata: protocol::metadata_of(&room.metadata_json),
                by: user_ref(by),
            }));
            insert_event(&mut tx, &event, None, common::ids::now_ms()).await?;
            tx.commit().await?;
            Ok((room, event))
        }
        .instrument(self.span("sql UPDATE rooms"))
        .await
    }

    /// Deletes a room: its messages, reactions, members, bans, reports,
    /// notifications and log go at once; the room's row stays as a
    /// tombstone with one event, `room.deleted`, so a recovering member
    /// learns what happened.
    pub(crate) async fn delete_room(
        &self,
        conn: &mut AnyConnection,
        room_id: &str,
        by: &User,
    ) -> Result<RoomEvent, ChatError> {
        async {
            let mut tx = conn.begin().await?;
            let seq = next_seq(&mut tx, room_id).await?;
            let now = common::ids::now_ms();
            let changed = sqlx::query(
                "UPDATE rooms SET deleted_at = $1, name = '', topic = '', metadata = '', \
                 direct_key = NULL WHERE id = $2 AND deleted_at IS NULL",
            )
            .bind(now)
            .bind(room_id.to_string())
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if changed == 0 {
                tx.rollback().await?;
                return Err(ChatError::NotFound("room"));
            }
            for sql in [
                "DELETE FROM reactions WHERE message_id IN \
                 (SELECT id FROM messages WHERE room_id = $1)",
                "DELETE FROM messages WHERE room_id = $1",
                "DELETE FROM room_events WHERE room_id = $1",
                "DELETE FROM members WHERE room_id = $1",
                "DELETE FROM room_bans WHERE room_id = $1",
                "DELETE FROM reports WHERE room_id = $1",
                "DELETE FROM notifications WHERE room_id = $1",
            ] {
                sqlx::query(sql)
                    .bind(room_id.to_string())
                    .execute(&mut *tx)
                    .await?;
            }
            let event = log_event(ServerFrame::RoomDeleted(RoomDeleted {
                room: room_id.to_string(),
                seq,
                by: user_ref(by),
            }));
            insert_event(&mut tx, &event, None, now).await?;
            tx.commit().await?;
            Ok(event)
        }
        .instrument(self.span("sql DELETE rooms"))
        .await
    }

    /// A deleted room and its `room.deleted` event (what a recovering join
    /// of it gets); `None` when the room is not deleted.
    pub(crate) async fn deleted_room(
        &self,
        room_id: &str,
    ) -> Result<Option<(Room, RoomEvent)>, ChatError> {
        async {
            let sql = format!(
                "SELECT {ROOM_COLUMNS_R}, e.kind, e.body FROM rooms r \
                 JOIN room_events e ON e.room_id = r.id AND e.seq = r.last_seq \
                 WHERE r.id = $1 AND r.deleted_at IS NOT NULL"
            );
            let row = sqlx::query(&sql)
                .bind(room_id.to_string())
                .fetch_optional(&self.reader)
                .await?;
            row.map(|row| {
                let room = room_from(&row)?;
                let event = RoomEvent {
                    room_id: room.id.clone(),
                    seq: room.last_seq,
                    kind: row.try_get("kind")?,
                    json: row.try_get("body")?,
                };
                Ok((room, event))
            })
            .transpose()
        }
        .instrument(self.span("sql SELECT rooms"))
        .await
    }

    /// Gives a member a role and logs `member.role`. `Owner` transfers
    /// ownership: the previous owner becomes an admin (two events).
    /// `NotFound` when `user_id` is not a member.
    pub(crate) async fn set_role(
        &self,
        conn: &mut AnyConnection,
        room_id: &str,
        user_id: &str,
        role: Role,
        by: &User,
    ) -> Result<Vec<RoomEvent>, ChatError> {
        async {
            let mut tx = conn.begin().await?;
            let now = common::ids::now_ms();
            let mut events = Vec::new();
            let previous_owner: String = sqlx::query("SELECT owner_id FROM rooms WHERE id = $1")
                .bind(room_id.to_string())
                .fetch_optional(&mut *tx)
                .await?
                .ok_or(ChatError::NotFound("room"))?
                .try_get("owner_id")?;
            let mut changes = vec![(user_id.to_string(), role)];
            if role == Role::Owner && previous_owner != user_id {
                changes.push((previous_owner.clone(), Role::Admin));
            }
            for (user, role) in changes {
                let seq = next_seq(&mut tx, room_id).await?;
                let row = sqlx::query(
                    "UPDATE members SET role = $1 WHERE room_id = $2 AND user_id = $3 \
                     RETURNING user_name",
                )
                .bind(role.as_str())
                .bind(room_id.to_string())
                .bind(user.clone())
                .fetch_optional(&mut *tx)
                .await?;
                let Some(row) = row else {
                    tx.rollback().await?;
                    return Err(ChatError::NotFound("member"));
                };
                let event = log_event(ServerFrame::MemberRole(MemberRoleEvent {
                    room: room_id.to_string(),
                    seq,
                    user: UserRef::new(&user, row.try_get::<String, _>("user_name")?),
                    role,
                    by: user_ref(by),
                }));
                insert_event(&mut tx, &event, None, now).await?;
                events.push(event);
            }
            if role == Role::Owner {
                sqlx::query("UPDATE rooms SET owner_id = $1 WHERE id = $2")
                    .bind(user_id.to_string())
                    .bind(room_id.to_string())
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
            Ok(events)
        }
        .instrument(self.span("sql UPDATE members"))
        .await
    }

    /// Mutes, unmutes, bans or unbans `user_id` and logs it. Muting and
    /// banning need a member (`NotFound` otherwise); a ban also removes the
    /// member (`member.left`, then `member.banned`). Undoing what is not
    /// there is `NotFound`.
    pub(crate) async fn sanction(
        &self,
        conn: &mut AnyConnection,
        room_id: &str,
        user_id: &str,
        sanction: Sanction,
        until: Option<i64>,
        by: &User,
    ) -> Result<Vec<RoomEvent>, ChatError> {
        async {
            let mut tx = conn.begin().await?;
            let now = common::ids::now_ms();
            let mut events = Vec::new();
            let name: Option<String> =
                sqlx::query("SELECT user_name FROM members WHERE room_id = $1 AND user_id = $2")
                    .bind(room_id.to_string())
                    .bind(user_id.to_string())
                    .fetch_optional(&mut *tx)
                    .await?
                    .map(|row| row.try_get("user_name"))
                    .transpose()?;
            let target = User {
                id: user_id.to_string(),
                name: name.clone().unwrap_or_else(|| user_id.to_string()),
            };
            let found =
                match sanction {
                    Sanction::Mute => sqlx::query(
                        "UPDATE members SET muted_until = $1 WHERE room_id = $2 AND user_id = $3",
                    )
                    .bind(until.unwrap_or(i64::MAX))
                    .bind(room_id.to_string())
                    .bind(user_id.to_string())
                    .execute(&mut *tx)
                    .await?
                    .rows_affected()
                        > 0,
                    Sanction::Unmute => {
                        sqlx::query(
                            "UPDATE members SET muted_until = NULL \
                         WHERE room_id = $1 AND user_id = $2 AND muted_until IS NOT NULL",
                        )
                        .bind(room_id.to_string())
                        .bind(user_id.to_string())
                        .execute(&mut *tx)
                        .await?
                        .rows_affected()
                            > 0
                    }
                    Sanction::Ban => {
                        if name.is_some() {
                            sqlx::query("DELETE FROM members WHERE room_id = $1 AND user_id = $2")
                                .bind(room_id.to_string())
                                .bind(user_id.to_string())
                                .execute(&mut *tx)
                                .await?;
                            let seq = next_seq(&mut tx, room_id).await?;
                            let left = member_event(false, room_id, seq, &target);
                            insert_event(&mut tx, &left, None, now).await?;
                            events.push(left);
                            sqlx::query(
                                "INSERT INTO room_bans (room_id, user_id, until_at, created_at) \
                             VALUES ($1, $2, $3, $4) ON CONFLICT (room_id, user_id) \
                             DO UPDATE SET until_at = $3, created_at = $4",
                            )
                            .bind(room_id.to_string())
                            .bind(user_id.to_string())
                            .bind(until)
                            .bind(now)
                            .execute(&mut *tx)
                            .await?;
                        }
                        name.is_some()
                    }
                    Sanction::Unban => {
                        sqlx::query("DELETE FROM room_bans WHERE room_id = $1 AND user_id = $2")
                            .bind(room_id.to_string())
                            .bind(user_id.to_string())
                            .execute(&mut *tx)
                            .await?
                            .rows_affected()
                            > 0
                    }
                    Sanction::Unspecified => {
                        return Err(ChatError::BadRequest("sanction is required".into()));
                    }
                };
            if !found {
                tx.rollback().await?;
                return Err(ChatError::NotFound(match sanction {
                    Sanction::Unmute => "mute",
                    Sanction::Unban => "ban",
                    _ => "member",
                }));
            }
            let seq = next_seq(&mut tx, room_id).await?;
            let body = SanctionEvent {
                room: room_id.to_string(),
                seq,
                user: user_ref(&target),
                until: until.filter(|_| matches!(sanction, Sanction::Mute | Sanction::Ban)),
                by: user_ref(by),
            };
            let frame = match sanction {
                Sanction::Mute => ServerFrame::MemberMuted(body),
                Sanction::Unmute => ServerFrame::MemberUnmuted(body),
                Sanction::Ban => ServerFrame::MemberBanned(body),
                _ => ServerFrame::MemberUnbanned(body),
            };
            let event = log_event(frame);
            insert_event(&mut tx, &event, None, now).await?;
            events.push(event);
            tx.commit().await?;
            Ok(events)
        }
        .instrument(self.span("sql UPDATE members"))
        .await
    }

    /// Whether `user_id` is banned from the room now.
    pub(crate) async fn is_banned(&self, room_id: &str, user_id: &str) -> Result<bool, ChatError> {
        async {
            let mut conn = self.reader.acquire().await?;
            let mut tx = conn.begin().await?;
            let banned = banned(&mut tx, room_id, user_id, common::ids::now_ms()).await?;
            tx.rollback().await?;
            Ok(banned)
        }
        .instrument(self.span("sql SELECT room_bans"))
        .await
    }

    /// A page of a room's members in join order, with `limit + 1` read to
    /// tell whether more follow.
    pub(crate) async fn members_page(
        &self,
        room_id: &str,
        page: &MembersPage,
    ) -> Result<(Vec<Member>, bool), ChatError> {
        async {
            let mut sql = "SELECT user_id, user_name, role, joined_at, muted_until FROM members \
                           WHERE room_id = $1"
                .to_string();
            let mut binds = vec![Bind::Text(room_id.to_string())];
            if let Some((joined_at, user)) = &page.after {
                binds.push(Bind::Int(*joined_at));
                binds.push(Bind::Text(user.clone()));
                sql.push_str(" AND (joined_at > $2 OR (joined_at = $2 AND user_id > $3))");
            }
            binds.push(Bind::Int(i64::from(page.limit) + 1));
            sql.push_str(&format!(
                " ORDER BY joined_at, user_id LIMIT ${}",
                binds.len()
            ));
            let rows = bind_all(sqlx::query(&sql), binds)
                .fetch_all(&self.reader)
                .await?;
            let mut members = rows
                .iter()
                .map(|r| {
                    let role: String = r.try_get("role")?;
                    Ok(Member {
                        user: Some(User {
                            id: r.try_get("user_id")?,
                            name: r.try_get("user_name")?,
                        }),
                        role: Role::parse(&role).unwrap_or(Role::Member).to_proto() as i32,
                        joined_at: r.try_get("joined_at")?,
                        muted_until: r
                            .try_get::<Option<i64>, _>("muted_until")?
                            .filter(|until| *until > common::ids::now_ms()),
                        status: String::new(),
                    })
                })
                .collect::<Result<Vec<_>, ChatError>>()?;
            let more = members.len() > page.limit as usize;
            members.truncate(page.limit as usize);
            Ok((members, more))
        }
        .instrument(self.span("sql SELECT members"))
        .await
    }

    /// Public rooms whose lower-cased name starts with the prefix, by name,
    /// with their member counts; `limit + 1` read to tell whether more follow.
    pub(crate) async fn directory(
        &self,
        page: &DirectoryPage,
    ) -> Result<(Vec<Room>, bool), ChatError> {
        async {
            let pattern = format!("{}%", escape_like(&page.prefix));
            let mut sql = format!(
                "SELECT {ROOM_COLUMNS_R}, \
                   (SELECT COUNT(*) FROM members m WHERE m.room_id = r.id) AS member_count \
                 FROM rooms r WHERE r.visibility = 'public' AND r.deleted_at IS NULL \
                 AND LOWER(r.name) LIKE $1 ESCAPE '\\'"
            );
            let mut binds = vec![Bind::Text(pattern)];
            if let Some(after) = &page.after {
                binds.push(Bind::Text(after.clone()));
                sql.push_str(
                    " AND (r.name > (SELECT name FROM rooms WHERE id = $2) \
                     OR (r.name = (SELECT name FROM rooms WHERE id = $2) AND r.id > $2))",
                );
            }
            binds.push(Bind::Int(i64::from(page.limit) + 1));
            sql.push_str(&format!(" ORDER BY r.name, r.id LIMIT ${}", binds.len()));
            let rows = bind_all(sqlx::query(&sql), binds)
                .fetch_all(&self.reader)
                .await?;
            let mut rooms = rows
                .iter()
                .map(|row| {
                    let mut room = room_from(row)?;
                    room.member_count = row.try_get("member_count")?;
                    Ok(room)
                })
                .collect::<Result<Vec<_>, ChatError>>()?;
            let more = rooms.len() > page.limit as usize;
            rooms.truncate(page.limit as usize);
            Ok((rooms, more))
        }
        .instrument(self.span("sql SELECT rooms"))
        .await
    }

    /// Stores a report.
    pub(crate) async fn add_report(&self, report: &Report) -> Result<(), ChatError> {
        async {
            sqlx::query(
                "INSERT INTO reports (id, room_id, message_id, reporter_id, reason, sender_id, \
                 text, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            )
            .bind(report.id.clone())
            .bind(report.room_id.clone())
            .bind(report.message_id.clone())
            .bind(report.reporter_id.clone())
            .bind(report.reason.clone())
            .bind(report.sender_id.clone())
            .bind(report.text.clone())
            .bind(report.created_at)
            .execute(&self.reader)
            .await?;
            Ok(())
        }
        .instrument(self.span("sql INSERT reports"))
        .await
    }

    /// Reports newest first, optionally one room's, before the report id
    /// `before` (ids are time-ordered).
    pub(crate) async fn reports(
        &self,
        room_id: Option<&str>,
        before: Option<&str>,
        limit: u32,
    ) -> Result<Vec<Report>, ChatError> {
        async {
            let mut sql = "SELECT id, room_id, message_id, reporter_id, reason, sender_id, text, \
                           created_at FROM reports WHERE 1 = 1"
                .to_string();
            let mut binds = Vec::new();
            if let Some(room) = room_id {
                binds.push(Bind::Text(room.to_string()));
                sql.push_str(&format!(" AND room_id = ${}", binds.len()));
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
            rows.iter()
                .map(|r| {
                    Ok(Report {
                        id: r.try_get("id")?,
                        room_id: r.try_get("room_id")?,
                        message_id: r.try_get("message_id")?,
                        reporter_id: r.try_get("reporter_id")?,
                        reason: r.try_get("reason")?,
                        sender_id: r.try_get("sender_id")?,
                        text: r.try_get("text")?,
                        created_at: r.try_get("created_at")?,
                    })
                })
                .collect()
        }
        .instrument(self.span("sql SELECT reports"))
        .await
    }
}

/// Whether `user_id` is banned from the room at `now`.
pub(super) async fn banned(
    tx: &mut Transaction<'_, Any>,
    room_id: &str,
    user_id: &str,
    now: i64,
) -> Result<bool, ChatError> {
    let row = sqlx::query(
        "SELECT user_id FROM room_bans WHERE room_id = $1 AND user_id = $2 \
         AND (until_at IS NULL OR until_at > $3)",
    )
    .bind(room_id.to_string())
    .bind(user_id.to_string())
    .bind(now)
    .fetch_optional(&mut **tx)
    .await?;
    Ok(row.is_some())
}

/// `text` with LIKE's wildcards and escape character escaped (`\`).
fn escape_like(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '%' | '_' | '\\') {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn like_wildcards_are_escaped() {
        assert_eq!(escape_like("a%b_c\\d"), "a\\%b\\_c\\\\d");
        assert_eq!(escape_like("plain"), "plain");
    }
}
