//! The latest events of each busy room, kept in memory so that a storm of
//! reconnecting clients (`room.join{since}` after a deploy or an ingress
//! reload) reads them from here and not 10,000 times from the database.
//!
//! What makes it safe to serve from:
//! - A room's entry holds events `first..=last` without a gap. The writer
//!   adds each event it commits only when it follows the entry's last one;
//!   otherwise (another replica appended in between, or the entry was
//!   dropped) the entry starts again at that event.
//! - A read asks for `(after, upto]`, with `upto` the room's `last_seq`
//!   just read from the database, and is served only when the entry holds
//!   all of it. An event another replica appended is therefore never
//!   missed: the entry ends before it, and the read goes to the database.
//! - Stored events change only in a transaction that also appends to the
//!   same room (an edit or delete rewrites the quotes and tombstones of
//!   earlier events). The writer drops the room's entry after such a
//!   commit, and a later read that knows of the new `last_seq` cannot be
//!   served by an entry that ended before it.
//! - A read that missed fills the room's entry with what it read only
//!   while the room has none, so it never overwrites newer events.
//!
//! Bounded: at most `per_room` events per room (the oldest go first) and
//! `max_bytes` of event JSON in all (the least recently used room goes
//! first). Retention needs nothing here: a join checks `truncated_seq`
//! before it reads, and only reads after it.

use std::collections::VecDeque;
use std::sync::Mutex;

use hashlink::LruCache;
use proto::chat::v1::RoomEvent;

/// Bytes an event is counted as: its JSON and names, plus bookkeeping.
fn weight(event: &RoomEvent) -> usize {
    event.json.len() + event.kind.len() + event.room_id.len() + 64
}

/// One room's latest events, consecutive by seq.
#[derive(Default)]
struct Tail {
    events: VecDeque<RoomEvent>,
    bytes: usize,
}

impl Tail {
    fn first(&self) -> Option<i64> {
        self.events.front().map(|e| e.seq)
    }

    fn last(&self) -> Option<i64> {
        self.events.back().map(|e| e.seq)
    }

    fn push(&mut self, event: RoomEvent, per_room: usize) -> isize {
        let mut delta = weight(&event) as isize;
        self.events.push_back(event);
        while self.events.len() > per_room {
            if let Some(old) = self.events.pop_front() {
                delta -= weight(&old) as isize;
            }
        }
        self.bytes = self.bytes.saturating_add_signed(delta);
        delta
    }
}

struct Rooms {
    tails: LruCache<String, Tail>,
    bytes: usize,
}

/// What [`RecentEvents::read`] found.
#[derive(Debug, PartialEq)]
pub(crate) enum Cached {
    /// Every event of the range, in order.
    Hit(Vec<RoomEvent>),
    /// The range is not (all) here: read the log.
    Miss,
}

/// The per-room cache of latest events (see the module docs).
pub(crate) struct RecentEvents {
    per_room: usize,
    max_bytes: usize,
    rooms: Mutex<Rooms>,
}

impl RecentEvents {
    /// At most `per_room` events per room (`0`: the cache is off) and
    /// `max_bytes` in all.
    pub(crate) fn new(per_room: usize, max_bytes: usize) -> Self {
        Self {
            per_room,
            max_bytes,
            rooms: Mutex::new(Rooms {
                tails: LruCache::new_unbounded(),
                bytes: 0,
            }),
        }
    }

    fn rooms(&self) -> std::sync::MutexGuard<'_, Rooms> {
        self.rooms.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The events of `room` with `after < seq <= upto`, if the cache holds
    /// every one of them.
    pub(crate) fn read(&self, room: &str, after: i64, upto: i64) -> Cached {
        if self.per_room == 0 || upto <= after {
            return Cached::Miss;
        }
        let mut rooms = self.rooms();
        let Some(tail) = rooms.tails.get(room) else {
            return Cached::Miss;
        };
        let (Some(first), Some(last)) = (tail.first(), tail.last()) else {
            return Cached::Miss;
        };
        if first > after + 1 || last < upto {
            return Cached::Miss;
        }
        let skip = usize::try_from(after + 1 - first).unwrap_or(0);
        let take = usize::try_from(upto - after).unwrap_or(0);
        Cached::Hit(tail.events.iter().skip(skip).take(take).cloned().collect())
    }

    /// Events the writer committed to one or more rooms, in commit order.
    pub(crate) fn committed(&self, events: &[RoomEvent]) {
        if self.per_room == 0 || events.is_empty() {
            return;
        }
        let mut rooms = self.rooms();
        for event in events {
            let follows = rooms
                .tails
                .peek(&event.room_id)
                .and_then(Tail::last)
                .is_some_and(|last| last + 1 == event.seq);
            if !follows {
                rooms.drop_room(&event.room_id);
                rooms.tails.insert(event.room_id.clone(), Tail::default());
            }
            let per_room = self.per_room;
            let Some(tail) = rooms.tails.get_mut(&event.room_id) else {
                continue;
            };
            let delta = tail.push(event.clone(), per_room);
            rooms.bytes = rooms.bytes.saturating_add_signed(delta);
        }
        rooms.trim(self.max_bytes);
    }

    /// The room's stored events may have changed (an edit or delete
    /// rewrote earlier ones): forget them.
    pub(crate) fn forget(&self, room: &str) {
        self.rooms().drop_room(room);
    }

    /// What a read from the log returned for `(after, upto]`, complete and
    /// in order: kept if the room has no entry yet.
    pub(crate) fn fill(&self, room: &str, after: i64, upto: i64, events: &[RoomEvent]) {
        if self.per_room == 0 || events.is_empty() {
            return;
        }
        let consecutive = events
            .iter()
            .zip(after + 1..)
            .all(|(event, seq)| event.seq == seq && event.room_id == room);
        if !consecutive || events.last().map(|e| e.seq) != Some(upto) {
            return;
        }
        let mut rooms = self.rooms();
        if rooms.tails.contains_key(room) {
            return;
        }
        let mut tail = Tail::default();
        for event in events {
            tail.push(event.clone(), self.per_room);
        }
        rooms.bytes += tail.bytes;
        rooms.tails.insert(room.to_string(), tail);
        rooms.trim(self.max_bytes);
    }

    /// Bytes held (as [`weight`] counts them).
    #[cfg(test)]
    fn bytes(&self) -> usize {
        self.rooms().bytes
    }
}

impl Rooms {
    fn drop_room(&mut self, room: &str) {
        if let Some(tail) = self.tails.remove(room) {
            self.bytes = self.bytes.saturating_sub(tail.bytes);
        }
    }

    /// Drops the least recently used rooms until within `max_bytes`.
    fn trim(&mut self, max_bytes: usize) {
        while self.bytes > max_bytes {
            let Some((_, tail)) = self.tails.remove_lru() else {
                self.bytes = 0;
                break;
            };
            self.bytes = self.bytes.saturating_sub(tail.bytes);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(room: &str, seq: i64) -> RoomEvent {
        RoomEvent {
            room_id: room.into(),
            seq,
            kind: "message.new".into(),
            json: format!("{{\"seq\":{seq}}}"),
        }
    }

    fn seqs(found: Cached) -> Option<Vec<i64>> {
        match found {
            Cached::Hit(events) => Some(events.iter().map(|e| e.seq).collect()),
            Cached::Miss => None,
        }
    }

    #[test]
    fn serves_a_range_only_when_it_holds_all_of_it() {
        let cache = RecentEvents::new(100, 1 << 20);
        cache.committed(&(5..=9).map(|s| event("r", s)).collect::<Vec<_>>());
        assert_eq!(seqs(cache.read("r", 6, 9)), Some(vec![7, 8, 9]));
        assert_eq!(seqs(cache.read("r", 4, 8)), Some(vec![5, 6, 7, 8]));
        // Before the entry's first event, or past its last: the log.
        assert_eq!(seqs(cache.read("r", 3, 9)), None);
        assert_eq!(seqs(cache.read("r", 6, 10)), None);
        assert_eq!(seqs(cache.read("other", 0, 1)), None);
        // Nothing missed: nothing to read.
        assert_eq!(seqs(cache.read("r", 9, 9)), None);
    }

    #[test]
    fn an_event_that_does_not_follow_starts_the_room_again() {
        let cache = RecentEvents::new(100, 1 << 20);
        cache.committed(&[event("r", 1), event("r", 2)]);
        // Seq 3 was appended by another replica.
        cache.committed(&[event("r", 4)]);
        assert_eq!(seqs(cache.read("r", 1, 4)), None);
        assert_eq!(seqs(cache.read("r", 3, 4)), Some(vec![4]));
    }

    #[test]
    fn a_forgotten_room_is_read_from_the_log_until_it_fills_again() {
        let cache = RecentEvents::new(100, 1 << 20);
        cache.committed(&[event("r", 1), event("r", 2)]);
        cache.forget("r");
        assert_eq!(seqs(cache.read("r", 0, 2)), None);
        cache.fill("r", 0, 2, &[event("r", 1), event("r", 2)]);
        assert_eq!(seqs(cache.read("r", 0, 2)), Some(vec![1, 2]));
    }

    #[test]
    fn a_fill_never_replaces_what_the_writer_put_there() {
        let cache = RecentEvents::new(100, 1 << 20);
        cache.committed(&[event("r", 3)]);
        // An older read finishing late.
        cache.fill("r", 0, 2, &[event("r", 1), event("r", 2)]);
        assert_eq!(seqs(cache.read("r", 2, 3)), Some(vec![3]));
        assert_eq!(seqs(cache.read("r", 0, 2)), None);
        // A read with a gap or not reaching `upto` is not kept.
        cache.fill("s", 0, 3, &[event("s", 1), event("s", 3)]);
        cache.fill("t", 0, 3, &[event("t", 1), event("t", 2)]);
        assert_eq!(seqs(cache.read("s", 0, 1)), None);
        assert_eq!(seqs(cache.read("t", 0, 1)), None);
    }

    #[test]
    fn rooms_and_bytes_stay_bounded() {
        let cache = RecentEvents::new(3, 1 << 20);
        cache.committed(&(1..=10).map(|s| event("r", s)).collect::<Vec<_>>());
        assert_eq!(seqs(cache.read("r", 7, 10)), Some(vec![8, 9, 10]));
        assert_eq!(seqs(cache.read("r", 6, 10)), None);
        let kept: usize = (8..=10).map(|s| weight(&event("r", s))).sum();
        assert_eq!(cache.bytes(), kept);

        let room_bytes = 3 * weight(&event("a", 1));
        let cache = RecentEvents::new(3, 2 * room_bytes);
        for room in ["a", "b"] {
            cache.committed(&(1..=3).map(|s| event(room, s)).collect::<Vec<_>>());
        }
        // "a" was read last, so "b" goes when "c" arrives.
        assert!(seqs(cache.read("a", 0, 3)).is_some());
        cache.committed(&(1..=3).map(|s| event("c", s)).collect::<Vec<_>>());
        assert!(seqs(cache.read("b", 0, 3)).is_none());
        assert!(seqs(cache.read("a", 0, 3)).is_some());
        assert!(seqs(cache.read("c", 0, 3)).is_some());
        assert!(cache.bytes() <= 2 * room_bytes);
    }

    #[test]
    fn per_room_zero_turns_it_off() {
        let cache = RecentEvents::new(0, 1 << 20);
        cache.committed(&[event("r", 1)]);
        cache.fill("r", 0, 1, &[event("r", 1)]);
        assert_eq!(seqs(cache.read("r", 0, 1)), None);
    }
}
