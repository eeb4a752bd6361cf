//! The clean-up job: every `chat.cleanup_interval_s` it deletes what
//! retention no longer keeps (each room's log, messages, reactions and
//! their notifications older than the room's `retention_days`, else
//! `chat.retention_days`), purges rooms deleted more than
//! `chat.deleted_room_purge_s` ago, and deletes attachments no message
//! carries (after `attachments.unreferenced_ttl_s`) or whose message is
//! gone. Every step works in batches of `chat.cleanup_batch` rows, each its
//! own short transaction outside the group-commit writer, so sends go on
//! between batches. [`Cleanup::run_at`] takes the time as an argument:
//! tests run it at any instant instead of waiting.

use std::time::Duration;

use common::attachments::Blobs;
use common::shutdown::ShutdownSignal;

use crate::error::ChatError;
use crate::store::Store;

const DAY_MS: i64 = 24 * 3600 * 1000;

/// The clean-up job of one chat-service; cheap to clone.
#[derive(Clone)]
pub struct Cleanup {
    pub(crate) store: Store,
    pub(crate) blobs: Option<Blobs>,
    /// `chat.retention_days` (0: keep forever, unless a room says otherwise).
    pub(crate) retention_days: u32,
    /// `chat.cleanup_batch`.
    pub(crate) batch: u32,
    /// `chat.deleted_room_purge_s`, in ms.
    pub(crate) deleted_room_purge_ms: i64,
    /// `attachments.unreferenced_ttl_s`, in ms.
    pub(crate) unreferenced_ttl_ms: i64,
}

impl std::fmt::Debug for Cleanup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cleanup")
            .field("retention_days", &self.retention_days)
            .field("batch", &self.batch)
            .finish_non_exhaustive()
    }
}

/// What one run deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CleanupReport {
    /// Log events past retention.
    pub events: u64,
    /// Deleted rooms purged.
    pub rooms: u64,
    /// Attachments deleted (bytes and metadata).
    pub attachments: u64,
}

impl Cleanup {
    /// One run as if the time were `now_ms` (Unix ms).
    pub async fn run_at(&self, now_ms: i64) -> Result<CleanupReport, ChatError> {
        let mut report = CleanupReport::default();
        for (room_id, days) in self.store.retained_rooms(self.retention_days).await? {
            let cutoff = now_ms.saturating_sub(days.saturating_mul(DAY_MS));
            loop {
                let deleted = self
                    .store
                    .expire_batch(&room_id, cutoff, self.batch)
                    .await?;
                report.events += deleted;
                if deleted < u64::from(self.batch) {
                    break;
                }
                // Let the writer's appends in between batches.
                tokio::task::yield_now().await;
            }
        }
        loop {
            let purged = self
                .store
                .purge_deleted_rooms(now_ms - self.deleted_room_purge_ms, self.batch)
                .await?;
            report.rooms += purged;
            if purged < u64::from(self.batch) {
                break;
            }
        }
        loop {
            let ids = self
                .store
                .unwanted_attachments(now_ms - self.unreferenced_ttl_ms, self.batch)
                .await?;
            let gone =
                crate::service::delete_attachments(&self.store, self.blobs.as_ref(), &ids).await?;
            report.attachments += gone as u64;
            // Stop on a short batch, or when the store refused to delete
            // (tried again next run).
            if ids.len() < self.batch as usize || gone < ids.len() {
                break;
            }
        }
        Ok(report)
    }

    /// Runs every `interval` until `shutdown`.
    pub(crate) fn spawn(self, interval: Duration, shutdown: ShutdownSignal) {
        tokio::spawn(async move {
            // The first run one interval after start, not during it.
            let mut ticks =
                tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = ticks.tick() => {}
                    () = shutdown.clone().wait() => return,
                }
                match self.run_at(common::ids::now_ms()).await {
                    Ok(report) if report != CleanupReport::default() => tracing::info!(
                        events = report.events,
                        rooms = report.rooms,
                        attachments = report.attachments,
                        "clean-up deleted expired data"
                    ),
                    Ok(_) => {}
                    Err(error) => tracing::warn!(%error, "clean-up failed; trying again later"),
                }
            }
        });
    }
}
