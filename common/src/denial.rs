//! Why chat-service refused a member's action although the role allows it
//! (`forbidden` with a `reason`), as it crosses gRPC: encoded by
//! chat-service in the `x-parley-reason` response metadata, decoded by the
//! edge into the error's `reason`.

use tonic::Status;
use tonic::metadata::AsciiMetadataValue;

use crate::auth_reason::METADATA;

/// A refusal the client can act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Denial {
    /// The member is muted in the room: no sending, reacting or typing.
    Muted,
    /// The user is banned from the room: no joining, no invitation.
    Banned,
    /// The other user blocks the caller: no direct room, direct message,
    /// call or mention notification.
    Blocked,
    /// The caller shares no room with the user (calls, presence follows).
    NoSharedRoom,
}

impl Denial {
    /// Every denial.
    pub const ALL: &'static [Denial] = &[
        Denial::Muted,
        Denial::Banned,
        Denial::Blocked,
        Denial::NoSharedRoom,
    ];

    /// The wire name, also the protocol error's `reason`.
    pub fn as_str(self) -> &'static str {
        match self {
            Denial::Muted => "muted",
            Denial::Banned => "banned",
            Denial::Blocked => "blocked",
            Denial::NoSharedRoom => "no_shared_room",
        }
    }

    /// Attaches the denial to a status (chat-service).
    pub fn encode(self, status: &mut Status) {
        status
            .metadata_mut()
            .insert(METADATA, AsciiMetadataValue::from_static(self.as_str()));
    }

    /// The denial a status carries (the edge).
    pub fn decode(status: &Status) -> Option<Self> {
        let name = status.metadata().get(METADATA)?.to_str().ok()?;
        Denial::ALL.iter().copied().find(|d| d.as_str() == name)
    }
}

impl std::fmt::Display for Denial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_denial_round_trips_through_a_status() {
        for denial in Denial::ALL {
            let mut status = Status::permission_denied("no");
            denial.encode(&mut status);
            assert_eq!(Denial::decode(&status), Some(*denial));
        }
        assert_eq!(Denial::decode(&Status::permission_denied("no")), None);
    }
}
