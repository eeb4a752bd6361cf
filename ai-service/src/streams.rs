//! Replies in progress. Each replica keeps its own running replies here —
//! the text streamed so far and the next delta index, who asked, and the
//! token that stops it — and mirrors every room reply into the [`AiStore`],
//! so any replica can list a room's replies for late joiners and have a
//! reply cancelled wherever it runs.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use common::bus::{AI_CONTROL_CHANNEL, Bus, envelope};
use proto::ai::v1::StreamState;
use serde_json::json;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::error::AiError;
use crate::store::{AiStore, StreamInfo};

/// The bus event asking the replica that runs a reply to cancel it.
pub(crate) const CANCEL_REQUEST: &str = "ai.cancel_request";

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

    /// Appends a chunk here; returns its delta index.
    fn push(&self, chunk: &str) -> u64 {
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

    /// How every replica sees it; `None` for a direct caller's stream,
    /// which no room lists.
    fn info(&self) -> Option<StreamInfo> {
        Some(StreamInfo {
            id: self.id.clone(),
            room_id: self.room_id.clone()?,
            asker: self.asker.clone(),
        })
    }
}

/// The room replies this replica runs, and the store every replica lists.
pub(crate) struct Streams {
    live: Mutex<HashMap<String, Arc<LiveStream>>>,
    store: Arc<dyn AiStore>,
    /// Carries cancel requests to the replica running a reply.
    bus: Arc<dyn Bus>,
    /// Signalled when a stream starts here, so the renewal starts.
    pub(crate) activity: Notify,
}

impl std::fmt::Debug for Streams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Streams")
            .field("live", &self.live().len())
            .finish_non_exhaustive()
    }
}

impl Streams {
    pub(crate) fn new(store: Arc<dyn AiStore>, bus: Arc<dyn Bus>) -> Self {
        Self {
            live: Mutex::default(),
            store,
            bus,
            activity: Notify::new(),
        }
    }

    fn live(&self) -> MutexGuard<'_, HashMap<String, Arc<LiveStream>>> {
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a room's stream; `false` when one with its id is already
    /// running, here or on another replica.
    pub(crate) async fn start(&self, stream: Arc<LiveStream>) -> bool {
        let Some(info) = stream.info() else {
            return true;
        };
        {
            let mut live = self.live();
            if live.contains_key(&stream.id) {
                return false;
            }
            live.insert(stream.id.clone(), stream.clone());
        }
        self.activity.notify_one();
        match self.store.open(&info).await {
            Ok(true) => true,
            Ok(false) => {
                self.live().remove(&stream.id);
                false
            }
            Err(error) => {
                // The reply still streams; only other replicas miss it.
                tracing::warn!(%error, stream_id = %stream.id, "cannot list a reply in the store");
                true
            }
        }
    }

    /// Appends a chunk and returns its delta index. The text is recorded —
    /// here and in the store — before the caller publishes the delta, so a
    /// late joiner's list never misses it (at worst the delta also reaches
    /// it live, with an index it already has).
    pub(crate) async fn push(&self, stream: &LiveStream, chunk: &str) -> u64 {
        let index = stream.push(chunk);
        let Some(info) = stream.info() else {
            return index;
        };
        let recorded = match self.store.record(&stream.id, index, chunk).await {
            Ok(true) => Ok(()),
            // A chunk was missed (or the stream's lease ran out): send all.
            Ok(false) => {
                let (text, next) = {
                    let progress = stream.progress();
                    (progress.text.clone(), progress.next)
                };
                self.store.sync(&info, &text, next).await
            }
            Err(error) => Err(error),
        };
        if let Err(error) = recorded {
            tracing::warn!(%error, index, "cannot record a reply's progress in the store");
        }
        index
    }

    /// Unlists a stream (before its last event goes out).
    pub(crate) async fn finish(&self, stream: &LiveStream) {
        self.live().remove(&stream.id);
        if let Some(info) = stream.info()
            && let Err(error) = self.store.close(&info).await
        {
            tracing::warn!(%error, "cannot unlist a reply in the store");
        }
    }

    /// A stream in progress, wherever it runs.
    pub(crate) async fn find(&self, id: &str) -> Result<Option<StreamInfo>, AiError> {
        if let Some(info) = self.live().get(id).and_then(|s| s.info()) {
            return Ok(Some(info));
        }
        Ok(self.store.find(id).await?)
    }

    /// Stops a stream: at once when it runs here; otherwise by flagging it
    /// in the store and asking every replica over the bus (the one running
    /// it stops on the message, or at its next renewal if the bus lost it).
    pub(crate) async fn cancel(&self, id: &str) -> Result<(), AiError> {
        if self.cancel_here(id) {
            return Ok(());
        }
        if !self.store.flag_cancel(id).await? {
            return Err(AiError::NotFound("stream"));
        }
        let request = json!({ "stream_id": id }).to_string();
        if let Err(error) = self
            .bus
            .publish(
                AI_CONTROL_CHANNEL,
                &envelope("", 0, CANCEL_REQUEST, request),
            )
            .await
        {
            tracing::warn!(%error, stream_id = %id, "cannot publish a cancel request; it waits for the renewal");
        }
        Ok(())
    }

    /// Cancels a stream if it runs here.
    pub(crate) fn cancel_here(&self, id: &str) -> bool {
        match self.live().get(id) {
            Some(stream) => {
                stream.cancel.cancel();
                true
            }
            None => false,
        }
    }

    /// The room's streams in progress on every replica, oldest id first.
    pub(crate) async fn in_room(&self, room_id: &str) -> Result<Vec<StreamState>, AiError> {
        Ok(self.store.in_room(room_id).await?)
    }

    /// The room streams running here (to renew their leases).
    pub(crate) fn running(&self) -> Vec<StreamInfo> {
        self.live().values().filter_map(|s| s.info()).collect()
    }

    pub(crate) fn has_running(&self) -> bool {
        !self.live().is_empty()
    }
}

#[cfg(test)]
mod tests {
    use common::bus::MemoryBus;

    use super::*;
    use crate::store::MemoryStore;

    #[tokio::test]
    async fn a_room_lists_its_streams_with_text_so_far_and_next_index() {
        let streams = Streams::new(Arc::new(MemoryStore::new()), Arc::new(MemoryBus::new()));
        let a = Arc::new(LiveStream::new("s_a".into(), Some("r_1".into()), None));
        let b = Arc::new(LiveStream::new("s_b".into(), Some("r_2".into()), None));
        assert!(streams.start(a.clone()).await);
        assert!(streams.start(b).await);
        assert!(
            !streams
                .start(Arc::new(LiveStream::new(
                    "s_a".into(),
                    Some("r_1".into()),
                    None
                )))
                .await,
            "one stream per id"
        );
        assert_eq!(streams.push(&a, "Hel").await, 0);
        assert_eq!(streams.push(&a, "lo").await, 1);
        let listed = streams.in_room("r_1").await.expect("list");
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].text_so_far, "Hello");
        assert_eq!(listed[0].index, 2);
        assert_eq!(streams.running().len(), 2);
        streams.finish(&a).await;
        assert!(streams.in_room("r_1").await.expect("list").is_empty());
        assert_eq!(streams.in_room("r_2").await.expect("list").len(), 1);
    }

    #[tokio::test]
    async fn a_stream_running_elsewhere_is_flagged_and_asked_to_stop_over_the_bus() {
        let store: Arc<dyn AiStore> = Arc::new(MemoryStore::new());
        let bus = Arc::new(MemoryBus::new());
        let (subscriber, mut events) = bus.subscriber().await.expect("subscriber");
        subscriber
            .subscribe(AI_CONTROL_CHANNEL)
            .await
            .expect("subscribe");
        let here = Streams::new(store.clone(), bus.clone());
        let there = Streams::new(store.clone(), bus);
        let stream = Arc::new(LiveStream::new(
            "s_x".into(),
            Some("r_1".into()),
            Some("alice".into()),
        ));
        assert!(there.start(stream.clone()).await);
        let found = here.find("s_x").await.expect("find").expect("listed");
        assert_eq!(found.asker.as_deref(), Some("alice"));
        here.cancel("s_x").await.expect("cancel");
        assert!(!stream.cancel.is_cancelled(), "another replica runs it");
        match events.recv().await.expect("a control message") {
            common::bus::BusEvent::Message { envelope, .. } => {
                assert_eq!(envelope.kind, CANCEL_REQUEST);
                assert!(envelope.json.contains("s_x"), "{}", envelope.json);
            }
            other => panic!("expected a message, got {other:?}"),
        }
        assert_eq!(
            store
                .renew(&there.running(), &[], common::ids::now_ms())
                .await
                .expect("renew"),
            ["s_x"],
            "and flagged, in case the bus lost it"
        );
        assert!(matches!(
            here.cancel("s_nope").await,
            Err(AiError::NotFound(_))
        ));
    }
}
