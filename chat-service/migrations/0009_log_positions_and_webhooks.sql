-- A global position for every room-log event (issue 22: Watch), and the
-- durable queue of outgoing webhooks.
--
-- Positions are handed out by `log_head` inside the transaction that
-- appends: the writer locks its row first (before any room row), so a
-- replica's batch takes positions only after the previous batch committed,
-- and a reader never sees position k+1 before k. A rolled-back append gives
-- its positions back. Events that are deleted later (a deleted room's log,
-- retention) leave holes: the oldest position still stored is MIN(position).
ALTER TABLE room_events ADD COLUMN position BIGINT NOT NULL DEFAULT 0;

-- Events stored before this migration are numbered in the order they were
-- appended (by time, then room and seq).
UPDATE room_events SET position = numbered.n
FROM (
    SELECT room_id, seq, ROW_NUMBER() OVER (ORDER BY created_at, room_id, seq) AS n
    FROM room_events
) AS numbered
WHERE room_events.room_id = numbered.room_id AND room_events.seq = numbered.seq;

CREATE UNIQUE INDEX room_events_by_position ON room_events (position);

-- One row: the highest position handed out.
CREATE TABLE log_head (
    id INTEGER PRIMARY KEY,
    position BIGINT NOT NULL
);
INSERT INTO log_head (id, position) SELECT 1, COALESCE(MAX(position), 0) FROM room_events;

-- How far each configured webhook endpoint has read the log.
CREATE TABLE webhook_cursors (
    endpoint TEXT PRIMARY KEY,
    position BIGINT NOT NULL
);

-- Deliveries to make, being retried, or dead (dead_at set).
CREATE TABLE webhook_deliveries (
    -- Derived from what is delivered (endpoint, position, user), so a
    -- delivery planned twice is stored once; sent as the Idempotency-Key.
    id TEXT PRIMARY KEY,
    endpoint TEXT NOT NULL,
    -- The payload's `type`, e.g. room.event or notification.offline.
    kind TEXT NOT NULL,
    -- notification.offline: the user who must have no live connection when
    -- it is first sent (otherwise it is dropped).
    user_id TEXT,
    -- The JSON body, exactly as POSTed.
    body TEXT NOT NULL,
    attempts BIGINT NOT NULL DEFAULT 0,
    -- When it is due (Unix ms); while an attempt runs, when that attempt's
    -- claim lapses.
    next_at BIGINT NOT NULL,
    last_error TEXT NOT NULL DEFAULT '',
    dead_at BIGINT,
    created_at BIGINT NOT NULL
);

CREATE INDEX webhook_deliveries_due ON webhook_deliveries (endpoint, next_at);
CREATE INDEX webhook_deliveries_dead ON webhook_deliveries (dead_at);
