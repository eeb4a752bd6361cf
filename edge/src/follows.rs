//! Whose presence a connection follows, and why: users named by
//! `presence.subscribe`, and the other members of small joined rooms
//! (`edge.room_presence_max_members`), kept up to date as members come and
//! go. A user is followed while any reason is left.

use std::collections::{HashMap, HashSet};

use common::ErrorCode;
use common::bus::presence_channel;
use tokio::sync::mpsc;

use crate::frames::CommandError;
use crate::hub::RosterChange;
use crate::link::Link;

/// Why a connection follows one user's presence.
#[derive(Default)]
struct Reasons {
    /// `presence.subscribe` named them.
    subscribed: bool,
    /// Joined rooms (small enough for room-wide presence) they are in.
    rooms: HashSet<String>,
}

impl Reasons {
    fn is_empty(&self) -> bool {
        !self.subscribed && self.rooms.is_empty()
    }
}

/// A connection's followed users; dropped with the connection.
#[derive(Default)]
pub(crate) struct Follows {
    /// user id → why this connection receives their `presence` events.
    follows: HashMap<String, Reasons>,
    /// Joined rooms with room-wide presence on: members who join later are
    /// followed too, members who leave no longer.
    rooms: HashSet<String>,
    /// Where the hub reports joins and leaves in joined rooms; created by
    /// the first `room.join`, so an idle connection holds no channel.
    roster: Option<(
        mpsc::UnboundedSender<RosterChange>,
        mpsc::UnboundedReceiver<RosterChange>,
    )>,
}

impl Follows {
    /// The sender the hub reports a joined room's membership changes to.
    pub(crate) fn roster_sender(&mut self) -> mpsc::UnboundedSender<RosterChange> {
        self.roster
            .get_or_insert_with(mpsc::unbounded_channel)
            .0
            .clone()
    }

    /// A membership change already waiting, if any.
    pub(crate) fn waiting_roster_change(&mut self) -> Option<RosterChange> {
        self.roster.as_mut()?.1.try_recv().ok()
    }

    /// The next membership change in a joined room; never, before the first join.
    pub(crate) async fn next_roster_change(&mut self) -> RosterChange {
        match self.roster.as_mut() {
            Some((_, changes)) => match changes.recv().await {
                Some(change) => change,
                // Unreachable while this struct holds a sender.
                None => std::future::pending().await,
            },
            None => std::future::pending().await,
        }
    }

    /// How many users this connection follows, for any reason.
    pub(crate) fn len(&self) -> usize {
        self.follows.len()
    }

    /// Whether this connection follows `user`, for any reason.
    pub(crate) fn follows(&self, user: &str) -> bool {
        self.follows.contains_key(user)
    }

    /// `presence.subscribe`: follows `users` for their own sake.
    pub(crate) async fn subscribe(
        &mut self,
        link: &Link,
        me: &str,
        users: &[String],
    ) -> Result<(), CommandError> {
        for user in users {
            self.follow(link, me, user).await?;
            if let Some(reasons) = self.follows.get_mut(user) {
                reasons.subscribed = true;
            }
        }
        Ok(())
    }

    /// `presence.unsubscribe`: drops the users' own reason.
    pub(crate) async fn unsubscribe(&mut self, link: &Link, users: &[String]) {
        for user in users {
            if let Some(reasons) = self.follows.get_mut(user) {
                reasons.subscribed = false;
            }
        }
        self.prune(link).await;
    }

    /// Subscribes the connection to a user's presence channel (once).
    async fn follow(&mut self, link: &Link, me: &str, user: &str) -> Result<(), CommandError> {
        if self.follows.contains_key(user) {
            return Ok(());
        }
        let max = link.shared.config.presence_subscribe_max;
        if self.follows.len() >= max {
            return Err(CommandError::new(
                ErrorCode::TooLarge,
                format!("a connection may follow at most {max} users"),
            ));
        }
        link.shared
            .hub
            .join(
                &presence_channel(user),
                link.key,
                me,
                link.outbox.clone(),
                false,
            )
            .await
            .map_err(|e| {
                CommandError::new(
                    ErrorCode::Unavailable,
                    format!("event bus unavailable: {e}"),
                )
            })?;
        self.follows.insert(user.to_string(), Reasons::default());
        Ok(())
    }

    /// Unsubscribes from the users no reason is left for.
    async fn prune(&mut self, link: &Link) {
        let done: Vec<String> = self
            .follows
            .iter()
            .filter(|(_, reasons)| reasons.is_empty())
            .map(|(user, _)| user.clone())
            .collect();
        for user in done {
            self.follows.remove(&user);
            link.shared
                .hub
                .leave(&presence_channel(&user), link.key)
                .await;
        }
    }

    /// After a `room.join`: follows the presence of the room's members when
    /// the room is small enough (`edge.room_presence_max_members`).
    pub(crate) async fn follow_room(
        &mut self,
        link: &Link,
        me: &str,
        room: &str,
        members: &[String],
    ) {
        let max = link.shared.config.room_presence_max_members;
        if members.is_empty() || members.len() > max {
            return;
        }
        self.rooms.insert(room.to_string());
        for member in members.iter().filter(|m| *m != me) {
            if let Err(e) = self.follow(link, me, member).await {
                if e.code == ErrorCode::TooLarge {
                    // At `edge.presence_subscribe_max`: the rest go unfollowed.
                    break;
                }
                tracing::warn!(conn_id = %link.id, room, error = %e.message, "cannot follow a member's presence");
                continue;
            }
            if let Some(reasons) = self.follows.get_mut(member) {
                reasons.rooms.insert(room.to_string());
            }
        }
    }

    /// A user joined or left a room this connection follows room-wide:
    /// follow the newcomer (unless the room has outgrown
    /// `edge.room_presence_max_members`, which ends room-wide presence for
    /// it), or stop following who left.
    pub(crate) async fn roster_changed(&mut self, link: &Link, me: &str, change: RosterChange) {
        let RosterChange { room, user, joined } = change;
        if !self.rooms.contains(&room) {
            return;
        }
        if !joined {
            if let Some(reasons) = self.follows.get_mut(&user) {
                reasons.rooms.remove(&room);
            }
            self.prune(link).await;
            return;
        }
        let known = |reasons: &Reasons| reasons.rooms.contains(&room);
        if self.follows.get(&user).is_some_and(known) {
            return;
        }
        // Me, the members followed for this room, and the newcomer.
        let members = 2 + self.follows.values().filter(|r| known(r)).count();
        if members > link.shared.config.room_presence_max_members {
            self.unfollow_room(link, &room).await;
            return;
        }
        if let Err(e) = self.follow(link, me, &user).await {
            tracing::warn!(conn_id = %link.id, room, error = %e.message, "cannot follow a member's presence");
            return;
        }
        if let Some(reasons) = self.follows.get_mut(&user) {
            reasons.rooms.insert(room);
        }
    }

    /// After a `room.leave`: stops following members only that room explained.
    pub(crate) async fn unfollow_room(&mut self, link: &Link, room: &str) {
        self.rooms.remove(room);
        for reasons in self.follows.values_mut() {
            reasons.rooms.remove(room);
        }
        self.prune(link).await;
    }

    /// On close: leaves every presence channel.
    pub(crate) async fn close(&mut self, link: &Link) {
        self.rooms.clear();
        for reasons in self.follows.values_mut() {
            *reasons = Reasons::default();
        }
        self.prune(link).await;
    }
}
