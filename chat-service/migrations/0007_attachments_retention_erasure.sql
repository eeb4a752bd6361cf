-- Attachments, retention and erasure (issue 22).

-- Uploaded files: the metadata; the bytes are in the attachment store
-- (attachments.store) under attachments/<id>. `message_id` is set when a
-- message refers to the file; one left unreferenced is deleted after
-- attachments.unreferenced_ttl_s.
CREATE TABLE attachments (
    id TEXT PRIMARY KEY,
    owner_id TEXT NOT NULL,
    mime TEXT NOT NULL,
    size BIGINT NOT NULL,
    width BIGINT,
    height BIGINT,
    name TEXT NOT NULL DEFAULT '',
    created_at BIGINT NOT NULL,
    room_id TEXT,
    message_id TEXT
);

CREATE INDEX attachments_by_owner ON attachments (owner_id);
CREATE INDEX attachments_by_message ON attachments (message_id, created_at);

-- A message's kind (text, image, video, audio, file, voice) and its
-- attachments as the JSON array clients receive (empty: none).
ALTER TABLE messages ADD COLUMN kind TEXT NOT NULL DEFAULT 'text';
ALTER TABLE messages ADD COLUMN attachments TEXT NOT NULL DEFAULT '';

-- Erasure finds a user's messages.
CREATE INDEX messages_by_sender ON messages (sender_id);

-- A room's own retention in days (NULL: chat.retention_days; 0: forever),
-- and the highest seq retention deleted: recovery from before it is
-- answered with history_truncated.
ALTER TABLE rooms ADD COLUMN retention_days BIGINT;
ALTER TABLE rooms ADD COLUMN truncated_seq BIGINT NOT NULL DEFAULT 0;

-- Who erased whom, when, with which credential (EraseUser).
CREATE TABLE erasures (
    id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    -- sha256 fingerprint of the service credential presented.
    credential TEXT NOT NULL,
    -- Free text of the caller (a ticket, an operator).
    requested_by TEXT NOT NULL,
    messages BIGINT NOT NULL,
    attachments BIGINT NOT NULL,
    created_at BIGINT NOT NULL
);
