//! Whose presence a connection follows by `presence.subscribe`. The members
//! of joined rooms are followed room-wide by the hub, once per edge, not
//! here (see `hub`).

use std::collections::HashSet;

use common::ErrorCode;
use common::bus::presence_channel;

use crate::frames::CommandError;
use crate::link::Link;

/// A connection's `presence.subscribe` follows; dropped with the connection.
#[derive(Default)]
pub(crate) struct Follows {
    users: HashSet<String>,
}

impl Follows {
    /// The users this connection follows by `presence.subscribe`.
    pub(crate) fn users(&self) -> &HashSet<String> {
        &self.users
    }

    /// `presence.subscribe`: subscribes the connection to each user's
    /// presence channel (once).
    pub(crate) async fn subscribe(
        &mut self,
        link: &Link,
        me: &str,
        users: &[String],
    ) -> Result<(), CommandError> {
        for user in users {
            if self.users.contains(user) {
                continue;
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
            self.users.insert(user.clone());
        }
        Ok(())
    }

    /// `presence.unsubscribe`.
    pub(crate) async fn unsubscribe(&mut self, link: &Link, users: &[String]) {
        for user in users {
            if self.users.remove(user) {
                link.shared
                    .hub
                    .leave(&presence_channel(user), link.key)
                    .await;
            }
        }
    }

    /// On close: leaves every presence channel.
    pub(crate) async fn close(&mut self, link: &Link) {
        for user in std::mem::take(&mut self.users) {
            link.shared
                .hub
                .leave(&presence_channel(&user), link.key)
                .await;
        }
    }
}
