//! The store of one process: quota counters and the room streams of this
//! ai-service alone.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use async_trait::async_trait;
use proto::ai::v1::StreamState;

use super::{AiStore, LEASE, SlotRef, StoreError, StreamInfo, Take, WINDOW, millis};
use crate::quota::Limit;

#[derive(Debug, Default)]
pub(crate) struct MemoryStore {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    users: HashMap<String, Usage>,
    streams: HashMap<String, Entry>,
}

#[derive(Debug, Default)]
struct Usage {
    /// When the questions of the window were counted, and their tickets;
    /// oldest first.
    recent: Vec<(i64, String)>,
    /// Reply slots held, by ticket: until when their lease runs.
    running: HashMap<String, i64>,
}

#[derive(Debug)]
struct Entry {
    info: StreamInfo,
    text: String,
    /// Index of the next delta.
    next: u64,
    cancel: bool,
}

impl MemoryStore {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl State {
    /// Forgets a user with nothing counted and nothing held.
    fn tidy(&mut self, user: &str) {
        if self
            .users
            .get(user)
            .is_some_and(|u| u.recent.is_empty() && u.running.is_empty())
        {
            self.users.remove(user);
        }
    }
}

#[async_trait]
impl AiStore for MemoryStore {
    async fn take(&self, slot: &SlotRef, limit: Limit, now_ms: i64) -> Result<Take, StoreError> {
        let mut state = self.state();
        let usage = state.users.entry(slot.user.clone()).or_default();
        let window = millis(WINDOW);
        usage.recent.retain(|(at, _)| *at > now_ms - window);
        usage.running.retain(|_, until| *until > now_ms);
        if usage.running.len() >= limit.concurrent as usize {
            return Ok(Take::Busy);
        }
        if usage.recent.len() >= limit.per_minute as usize {
            let oldest = usage.recent.first().map_or(now_ms, |(at, _)| *at);
            return Ok(Take::TooMany {
                retry_after_ms: oldest + window - now_ms,
            });
        }
        usage.recent.push((now_ms, slot.ticket.clone()));
        usage
            .running
            .insert(slot.ticket.clone(), now_ms + millis(LEASE));
        Ok(Take::Granted)
    }

    async fn release(&self, slot: &SlotRef) -> Result<(), StoreError> {
        let mut state = self.state();
        if let Some(usage) = state.users.get_mut(&slot.user) {
            usage.running.remove(&slot.ticket);
        }
        state.tidy(&slot.user);
        Ok(())
    }

    async fn refund(&self, slot: &SlotRef) -> Result<(), StoreError> {
        let mut state = self.state();
        if let Some(usage) = state.users.get_mut(&slot.user) {
            usage.running.remove(&slot.ticket);
            usage.recent.retain(|(_, ticket)| *ticket != slot.ticket);
        }
        state.tidy(&slot.user);
        Ok(())
    }

    async fn open(&self, stream: &StreamInfo) -> Result<bool, StoreError> {
        let mut state = self.state();
        if state.streams.contains_key(&stream.id) {
            return Ok(false);
        }
        state.streams.insert(
            stream.id.clone(),
            Entry {
                info: stream.clone(),
                text: String::new(),
                next: 0,
                cancel: false,
            },
        );
        Ok(true)
    }

    async fn record(&self, id: &str, index: u64, chunk: &str) -> Result<bool, StoreError> {
        let mut state = self.state();
        match state.streams.get_mut(id) {
            Some(entry) if entry.next == index => {
                entry.text.push_str(chunk);
                entry.next += 1;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn sync(&self, stream: &StreamInfo, text: &str, next: u64) -> Result<(), StoreError> {
        let mut state = self.state();
        let entry = state
            .streams
            .entry(stream.id.clone())
            .or_insert_with(|| Entry {
                info: stream.clone(),
                text: String::new(),
                next: 0,
                cancel: false,
            });
        entry.text = text.to_string();
        entry.next = next;
        Ok(())
    }

    async fn close(&self, stream: &StreamInfo) -> Result<(), StoreError> {
        self.state().streams.remove(&stream.id);
        Ok(())
    }

    async fn in_room(&self, room_id: &str) -> Result<Vec<StreamState>, StoreError> {
        let mut states: Vec<StreamState> = self
            .state()
            .streams
            .values()
            .filter(|e| e.info.room_id == room_id)
            .map(|e| StreamState {
                stream_id: e.info.id.clone(),
                room_id: e.info.room_id.clone(),
                text_so_far: e.text.clone(),
                index: e.next,
            })
            .collect();
        states.sort_by(|a, b| a.stream_id.cmp(&b.stream_id));
        Ok(states)
    }

    async fn find(&self, id: &str) -> Result<Option<StreamInfo>, StoreError> {
        Ok(self.state().streams.get(id).map(|e| e.info.clone()))
    }

    async fn flag_cancel(&self, id: &str) -> Result<bool, StoreError> {
        Ok(self
            .state()
            .streams
            .get_mut(id)
            .map(|e| e.cancel = true)
            .is_some())
    }

    async fn renew(
        &self,
        streams: &[StreamInfo],
        slots: &[SlotRef],
        now_ms: i64,
    ) -> Result<Vec<String>, StoreError> {
        let mut state = self.state();
        for slot in slots {
            if let Some(until) = state
                .users
                .get_mut(&slot.user)
                .and_then(|u| u.running.get_mut(&slot.ticket))
            {
                *until = now_ms + millis(LEASE);
            }
        }
        Ok(streams
            .iter()
            .filter(|s| state.streams.get(&s.id).is_some_and(|e| e.cancel))
            .map(|s| s.id.clone())
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_memory_store_keeps_the_contract() {
        super::super::contract::run(&MemoryStore::new()).await;
    }
}
