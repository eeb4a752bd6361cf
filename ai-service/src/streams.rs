//! Replies in progress: the text streamed so far and the next delta index
//! of each (for clients joining late), who asked it (for cancelling), and a
//! token that stops it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use proto::ai::v1::StreamState;
use tokio_util::sync::CancellationToken;

/// One reply being generated.
#[derive(Debug)]
pub(crate) struct LiveStream {
    pub(crate) id: String,
    /// The room it streams into; `None` for a direct caller's stream.
    pub(crate) room_id: Option<String>,
    /// The user whose question it answers; `None` when a backend asked.
    pub(crate) asker: Option<String>,
    /// Fired by `Cancel` (or a direct caller going away).
    pub(crate) cancel: CancellationToken,
    progress: Mutex<Progress>,
}

#[derive(Debug, Default)]
struct Progress {
    text: String,
    /// Index of the next delta; deltas are numbered from 0 without gaps.
    next: u64,
}

impl LiveStream {
    pub(crate) fn new(id: String, room_id: Option<String>, asker: Option<String>) -> Self {
        Self {
            id,
            room_id,
            asker,
            cancel: CancellationToken::new(),
            progress: Mutex::default(),
        }
    }

    fn progress(&self) -> MutexGuard<'_, Progress> {
        self.progress.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Appends a chunk; returns its delta index. The text is recorded before
    /// the delta is published, so a late joiner's list never misses it (at
    /// worst the delta also reaches it live, with an index it already has).
    pub(crate) fn push(&self, chunk: &str) -> u64 {
        let mut progress = self.progress();
        progress.text.push_str(chunk);
        let index = progress.next;
        progress.next += 1;
        index
    }

    /// The text so far, in characters.
    pub(crate) fn chars(&self) -> usize {
        self.progress().text.chars().count()
    }

    pub(crate) fn text(&self) -> String {
        self.progress().text.clone()
    }

    fn state(&self) -> StreamState {
        let progress = self.progress();
        StreamState {
            stream_id: self.id.clone(),
            room_id: self.room_id.clone().unwrap_or_default(),
            text_so_far: progress.text.clone(),
            index: progress.next,
        }
    }
}

/// Every room reply in progress on this ai-service.
#[derive(Debug, Default)]
pub(crate) struct Streams {
    live: Mutex<HashMap<String, Arc<LiveStream>>>,
}

impl Streams {
    fn live(&self) -> MutexGuard<'_, HashMap<String, Arc<LiveStream>>> {
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a stream; `false` when one with its id is already running.
    pub(crate) fn start(&self, stream: Arc<LiveStream>) -> bool {
        let mut live = self.live();
        if live.contains_key(&stream.id) {
            return false;
        }
        live.insert(stream.id.clone(), stream);
        true
    }

    pub(crate) fn get(&self, id: &str) -> Option<Arc<LiveStream>> {
        self.live().get(id).cloned()
    }

    pub(crate) fn finish(&self, id: &str) {
        self.live().remove(id);
    }

    /// The room's streams in progress, oldest id first.
    pub(crate) fn in_room(&self, room_id: &str) -> Vec<StreamState> {
        let mut states: Vec<StreamState> = self
            .live()
            .values()
            .filter(|s| s.room_id.as_deref() == Some(room_id))
            .map(|s| s.state())
            .collect();
        states.sort_by(|a, b| a.stream_id.cmp(&b.stream_id));
        states
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_room_lists_its_streams_with_text_so_far_and_next_index() {
        let streams = Streams::default();
        let a = Arc::new(LiveStream::new("s_a".into(), Some("r_1".into()), None));
        let b = Arc::new(LiveStream::new("s_b".into(), Some("r_2".into()), None));
        assert!(streams.start(a.clone()));
        assert!(streams.start(b));
        assert!(
            !streams.start(Arc::new(LiveStream::new("s_a".into(), None, None))),
            "one stream per id"
        );
        assert_eq!(a.push("Hel"), 0);
        assert_eq!(a.push("lo"), 1);
        let listed = streams.in_room("r_1");
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].text_so_far, "Hello");
        assert_eq!(listed[0].index, 2);
        streams.finish("s_a");
        assert!(streams.in_room("r_1").is_empty());
        assert_eq!(streams.in_room("r_2").len(), 1);
    }
}
