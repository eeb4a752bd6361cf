-- Rooms, membership, messages and each room's append-only event log.
-- Portable SQL: the same file runs on SQLite and Postgres. Times are Unix
-- milliseconds; flags are nullable timestamps (no boolean type differences).

CREATE TABLE rooms (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    -- public | private | direct
    visibility TEXT NOT NULL,
    owner_id TEXT NOT NULL,
    -- Highest seq of the room's log, bumped in the transaction that appends.
    last_seq BIGINT NOT NULL DEFAULT 0,
    -- Sorted "<user>\n<user>" of a direct room, so each pair has one room.
    direct_key TEXT UNIQUE,
    created_at BIGINT NOT NULL
);

-- Public room names are unique (a taken name is a conflict).
CREATE UNIQUE INDEX rooms_public_name ON rooms (name) WHERE visibility = 'public';

CREATE TABLE members (
    room_id TEXT NOT NULL REFERENCES rooms (id) ON DELETE CASCADE,
    user_id TEXT NOT NULL,
    user_name TEXT NOT NULL,
    -- owner | member
    role TEXT NOT NULL,
    joined_at BIGINT NOT NULL,
    -- Receipt marks: highest seq read / delivered.
    read_seq BIGINT NOT NULL DEFAULT 0,
    delivered_seq BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (room_id, user_id)
);

CREATE INDEX members_by_user ON members (user_id);

CREATE TABLE messages (
    id TEXT PRIMARY KEY,
    room_id TEXT NOT NULL REFERENCES rooms (id) ON DELETE CASCADE,
    -- Seq of the message.new event that created it.
    seq BIGINT NOT NULL,
    sender_id TEXT NOT NULL,
    sender_name TEXT NOT NULL,
    text TEXT NOT NULL,
    -- Root message of the thread this message replies in.
    thread_id TEXT,
    -- JSON object, or empty.
    metadata TEXT NOT NULL DEFAULT '',
    client_msg_id TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    edited_at BIGINT,
    deleted_at BIGINT,
    UNIQUE (room_id, seq),
    -- A retried send stores one message.
    UNIQUE (room_id, sender_id, client_msg_id)
);

CREATE INDEX messages_by_thread ON messages (room_id, thread_id, seq);

CREATE TABLE room_events (
    room_id TEXT NOT NULL REFERENCES rooms (id) ON DELETE CASCADE,
    seq BIGINT NOT NULL,
    -- Protocol event type, e.g. message.new.
    kind TEXT NOT NULL,
    -- The complete protocol event object as clients receive it.
    body TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (room_id, seq)
);
