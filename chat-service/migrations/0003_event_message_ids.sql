-- The message a log event is about, so deleting a message can redact the
-- events that carried its content.
ALTER TABLE room_events ADD COLUMN message_id TEXT;

CREATE INDEX room_events_by_message ON room_events (room_id, message_id);
