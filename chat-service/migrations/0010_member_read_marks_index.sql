-- Every room.join lists the room's read marks (members whose read_seq is
-- above 0, highest first). Without an index that read visits every member
-- row of the room on every join; with it, only the members who have read.
CREATE INDEX members_by_read ON members (room_id, read_seq);
