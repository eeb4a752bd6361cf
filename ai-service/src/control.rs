//! What keeps replicas acting as one while replies run: cancel requests for
//! replies running here arrive on the bus ([`AI_CONTROL_CHANNEL`]), and a
//! heartbeat renews the leases of this replica's streams and reply slots in
//! the store — picking up, from the cancel flags, any request the bus lost.
//! An idle replica holds nothing and sets no timer.

use std::sync::Arc;

use common::bus::{AI_CONTROL_CHANNEL, Bus, BusEvent, Subscriber};
use common::shutdown::ShutdownSignal;
use serde_json::Value;
use tokio::sync::mpsc::UnboundedReceiver;

use crate::quota::Quotas;
use crate::store::{AiStore, RENEW_EVERY};
use crate::streams::{CANCEL_REQUEST, Streams};

/// The keeper of one replica, subscribed and ready to run.
pub(crate) struct Keeper {
    streams: Arc<Streams>,
    quotas: Arc<Quotas>,
    store: Arc<dyn AiStore>,
    /// `None` when the bus refused a subscriber: cancels from other
    /// replicas then arrive with the renewal only.
    control: Option<(Box<dyn Subscriber>, UnboundedReceiver<BusEvent>)>,
}

impl Keeper {
    /// Subscribes to the control channel before the server serves, so no
    /// cancel sent once a reply runs is missed.
    pub(crate) async fn subscribe(
        bus: &Arc<dyn Bus>,
        streams: Arc<Streams>,
        quotas: Arc<Quotas>,
        store: Arc<dyn AiStore>,
    ) -> Keeper {
        let control = match bus.subscriber().await {
            Ok((subscriber, events)) => match subscriber.subscribe(AI_CONTROL_CHANNEL).await {
                Ok(()) => Some((subscriber, events)),
                Err(error) => {
                    tracing::warn!(%error, "cannot subscribe to ai control; cancels from other replicas wait for the renewal");
                    None
                }
            },
            Err(error) => {
                tracing::warn!(%error, "cannot subscribe to ai control; cancels from other replicas wait for the renewal");
                None
            }
        };
        Keeper {
            streams,
            quotas,
            store,
            control,
        }
    }

    /// Runs until `shutdown` fires.
    pub(crate) async fn run(self, shutdown: ShutdownSignal) {
        let Keeper {
            streams,
            quotas,
            store,
            control,
        } = self;
        let (_subscriber, mut events) = match control {
            Some((subscriber, events)) => (Some(subscriber), Some(events)),
            None => (None, None),
        };
        let stopped = shutdown.wait();
        tokio::pin!(stopped);
        loop {
            let busy = streams.has_running() || quotas.has_held();
            tokio::select! {
                () = &mut stopped => break,
                event = next(&mut events) => match event {
                    Some(BusEvent::Message { envelope, .. }) if envelope.kind == CANCEL_REQUEST => {
                        let request: Value = serde_json::from_str(&envelope.json).unwrap_or_default();
                        if let Some(id) = request["stream_id"].as_str()
                            && streams.cancel_here(id)
                        {
                            tracing::info!(stream_id = %id, "assistant reply cancelled through another replica");
                        }
                    }
                    Some(_) => {}
                    None => events = None,
                },
                () = streams.activity.notified(), if !busy => {}
                () = quotas.activity.notified(), if !busy => {}
                () = async { tokio::time::sleep(RENEW_EVERY).await }, if busy => {
                    let running = streams.running();
                    let held = quotas.holding();
                    match store.renew(&running, &held, common::ids::now_ms()).await {
                        Ok(cancelled) => {
                            for id in cancelled {
                                if streams.cancel_here(&id) {
                                    tracing::info!(stream_id = %id, "assistant reply cancelled by its flag");
                                }
                            }
                        }
                        Err(error) => tracing::warn!(%error, "cannot renew the leases of replies in progress"),
                    }
                }
            }
        }
    }
}

/// The next control event; pending forever without a subscription.
async fn next(events: &mut Option<UnboundedReceiver<BusEvent>>) -> Option<BusEvent> {
    match events {
        Some(events) => events.recv().await,
        None => std::future::pending().await,
    }
}
