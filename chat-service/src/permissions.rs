//! What each role may do in a room: the one table every permission check
//! reads. docs/protocol.md shows it (a test keeps the two equal).
//!
//! Besides the table, acting on another member (removing, muting, banning,
//! changing a role) needs a rank above theirs (owner > admin > member), and
//! a mute or ban stops a member whatever the role allows.

use common::config::InvitePolicy;
use protocol::Role;

/// Something a member may do in a room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Action {
    /// Send messages, react (unless muted).
    Post,
    /// Add a member to a public room.
    Invite,
    /// Add a member to a private room.
    InvitePrivate,
    /// Delete another member's message.
    DeleteOthersMessage,
    /// Remove a member.
    RemoveMember,
    /// Change the room's name, topic or metadata.
    UpdateRoom,
    /// Delete the room.
    DeleteRoom,
    /// Make a member an admin or a member.
    SetRole,
    /// Hand the room to another member.
    TransferOwnership,
    /// Mute and unmute.
    Mute,
    /// Ban and unban.
    Ban,
}

/// Whether a role may do an action.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Grant {
    Yes,
    No,
    /// Decided by a configuration key.
    Config(&'static str),
}

use Grant::{Config, No, Yes};

/// The table: each action, and whether the owner, an admin and a member may do it.
pub(crate) const PERMISSIONS: &[(Action, &str, [Grant; 3])] = &[
    (Action::Post, "send messages, react", [Yes, Yes, Yes]),
    (Action::Invite, "invite to a public room", [Yes, Yes, Yes]),
    (
        Action::InvitePrivate,
        "invite to a private room",
        [Yes, Yes, Config("chat.invite_policy")],
    ),
    (
        Action::DeleteOthersMessage,
        "delete another's message",
        [Yes, Yes, No],
    ),
    (Action::RemoveMember, "remove a member", [Yes, Yes, No]),
    (
        Action::UpdateRoom,
        "change name, topic, metadata (`room.update`)",
        [Yes, Yes, No],
    ),
    (Action::DeleteRoom, "delete the room", [Yes, No, No]),
    (
        Action::SetRole,
        "make a member admin or member (`room.set_role`)",
        [Yes, Config("chat.admins_set_roles"), No],
    ),
    (
        Action::TransferOwnership,
        "transfer ownership (`room.set_role` to `owner`)",
        [Yes, No, No],
    ),
    (Action::Mute, "mute, unmute", [Yes, Yes, No]),
    (Action::Ban, "ban, unban", [Yes, Yes, No]),
];

/// The settings the table's `Config` entries read.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Rules {
    pub invite_policy: InvitePolicy,
    pub admins_set_roles: bool,
}

impl Rules {
    /// Whether `role` may do `action`.
    pub(crate) fn allows(&self, role: Role, action: Action) -> bool {
        let column = match role {
            Role::Owner => 0,
            Role::Admin => 1,
            Role::Member => 2,
        };
        let grant = PERMISSIONS
            .iter()
            .find(|(a, _, _)| *a == action)
            .map_or(No, |(_, _, grants)| grants[column]);
        match grant {
            Yes => true,
            No => false,
            Config("chat.invite_policy") => self.invite_policy == InvitePolicy::Members,
            Config("chat.admins_set_roles") => self.admins_set_roles,
            Config(_) => false,
        }
    }
}

/// A role's rank: acting on another member needs a higher one.
pub(crate) fn rank(role: Role) -> u8 {
    match role {
        Role::Owner => 3,
        Role::Admin => 2,
        Role::Member => 1,
    }
}

/// The table as docs/protocol.md shows it.
pub fn table_markdown() -> String {
    let cell = |g: &Grant| match g {
        Yes => "yes".to_string(),
        No => "—".to_string(),
        Config(key) => format!("`{key}`"),
    };
    let mut out = String::from("| action | owner | admin | member |\n|---|---|---|---|\n");
    for (_, what, grants) in PERMISSIONS {
        out.push_str(&format!(
            "| {what} | {} | {} | {} |\n",
            cell(&grants[0]),
            cell(&grants[1]),
            cell(&grants[2])
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_action_is_in_the_table_once() {
        for action in [
            Action::Post,
            Action::Invite,
            Action::InvitePrivate,
            Action::DeleteOthersMessage,
            Action::RemoveMember,
            Action::UpdateRoom,
            Action::DeleteRoom,
            Action::SetRole,
            Action::TransferOwnership,
            Action::Mute,
            Action::Ban,
        ] {
            assert_eq!(
                PERMISSIONS.iter().filter(|(a, _, _)| *a == action).count(),
                1,
                "{action:?}"
            );
        }
    }

    #[test]
    fn config_keys_decide_their_cells() {
        let strict = Rules {
            invite_policy: InvitePolicy::Owner,
            admins_set_roles: false,
        };
        let open = Rules {
            invite_policy: InvitePolicy::Members,
            admins_set_roles: true,
        };
        assert!(!strict.allows(Role::Member, Action::InvitePrivate));
        assert!(open.allows(Role::Member, Action::InvitePrivate));
        assert!(!strict.allows(Role::Admin, Action::SetRole));
        assert!(open.allows(Role::Admin, Action::SetRole));
        assert!(!open.allows(Role::Admin, Action::DeleteRoom));
        assert!(open.allows(Role::Owner, Action::TransferOwnership));
        assert!(!open.allows(Role::Admin, Action::TransferOwnership));
    }

    #[test]
    fn the_protocol_document_shows_this_table() {
        let doc = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/protocol.md"),
        )
        .expect("docs/protocol.md");
        assert!(
            doc.contains(&table_markdown()),
            "docs/protocol.md must contain:\n{}",
            table_markdown()
        );
    }
}
