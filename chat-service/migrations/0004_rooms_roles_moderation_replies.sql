-- Room settings and deletion, moderation, reports and replies (issue 21).

-- A room's topic and metadata (JSON object or empty), and when it was
-- deleted (its row stays as a tombstone with the `room.deleted` event).
ALTER TABLE rooms ADD COLUMN topic TEXT NOT NULL DEFAULT '';
ALTER TABLE rooms ADD COLUMN metadata TEXT NOT NULL DEFAULT '';
ALTER TABLE rooms ADD COLUMN deleted_at BIGINT;

-- A deleted public room gives its name back.
DROP INDEX rooms_public_name;
CREATE UNIQUE INDEX rooms_public_name ON rooms (name)
    WHERE visibility = 'public' AND deleted_at IS NULL;

-- The directory pages public rooms by name.
CREATE INDEX rooms_by_name ON rooms (visibility, name, id);

-- Until when a member is muted (NULL: not muted).
ALTER TABLE members ADD COLUMN muted_until BIGINT;

-- Users banned from a room: removed and kept out until `until` (NULL: until unbanned).
CREATE TABLE room_bans (
    room_id TEXT NOT NULL REFERENCES rooms (id) ON DELETE CASCADE,
    user_id TEXT NOT NULL,
    until_at BIGINT,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (room_id, user_id)
);

-- Reports of messages, for backends (not in the room log: the reporter stays private).
CREATE TABLE reports (
    id TEXT PRIMARY KEY,
    room_id TEXT NOT NULL,
    message_id TEXT NOT NULL,
    reporter_id TEXT NOT NULL,
    reason TEXT NOT NULL,
    sender_id TEXT NOT NULL,
    text TEXT NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE INDEX reports_by_room ON reports (room_id, id);

-- The message a message replies to, and the quote shown with it (JSON of
-- {id, sender, excerpt, deleted, edited_at?}, or empty); an edit or delete
-- of the original rewrites the quote.
ALTER TABLE messages ADD COLUMN reply_to_id TEXT;
ALTER TABLE messages ADD COLUMN reply_to TEXT NOT NULL DEFAULT '';

CREATE INDEX messages_by_reply ON messages (room_id, reply_to_id);
