-- Users a user blocks (issue 18): the blocked user cannot open a direct
-- room with the blocker, call them, notify them by a mention, or send them
-- direct messages.
CREATE TABLE user_blocks (
    blocker_id TEXT NOT NULL,
    blocked_id TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (blocker_id, blocked_id)
);

-- Who blocks a given user (checks run with the blocked user as the caller).
CREATE INDEX user_blocks_by_blocked ON user_blocks (blocked_id, blocker_id);
