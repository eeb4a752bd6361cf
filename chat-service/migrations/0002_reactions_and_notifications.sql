-- Reactions on messages and stored notifications (mentions, later calls).

CREATE TABLE reactions (
    message_id TEXT NOT NULL REFERENCES messages (id) ON DELETE CASCADE,
    user_id TEXT NOT NULL,
    emoji TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    -- One reaction per (message, user, emoji).
    PRIMARY KEY (message_id, user_id, emoji)
);

CREATE TABLE notifications (
    id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    -- mention (later: missed_call)
    kind TEXT NOT NULL,
    room_id TEXT NOT NULL,
    message_id TEXT,
    -- The notification object as clients receive it.
    body TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    read_at BIGINT
);

CREATE INDEX notifications_by_user ON notifications (user_id, created_at);
