-- Invitations (issue 18): adding someone to a room that is not direct asks
-- them first. Until they accept they are not a member: they get none of the
-- room's events, it is not in their room list and does not count against
-- their memberships. Accepting makes the membership; declining removes the
-- invitation. One pending invitation per room and user.
CREATE TABLE invitations (
    room_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    inviter_id TEXT NOT NULL,
    inviter_name TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (room_id, user_id)
);

-- A user's pending invitations, newest first (and the per-user cap's count).
CREATE INDEX invitations_by_user ON invitations (user_id, created_at);
