//! A connection's room-ordered commands in flight: one lane per room, run
//! first in, first out, lanes side by side. A connection's messages to one
//! room are therefore sent (and stored) in the order it sent them, while
//! its commands on other rooms go ahead. The connection task holds a
//! pipeline only while something is in flight, so an idle connection
//! carries none.

use std::collections::{HashMap, VecDeque};

use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;

/// One command, ready to run; it sends its own reply.
pub(crate) type Command = BoxFuture<'static, ()>;

#[derive(Default)]
pub(crate) struct Pipeline {
    /// The command at the head of each busy lane; yields the lane's room.
    running: FuturesUnordered<BoxFuture<'static, String>>,
    /// Per busy lane, the commands behind its head (an entry exists exactly
    /// while the lane is busy).
    waiting: HashMap<String, VecDeque<Command>>,
    /// Commands running or waiting.
    in_flight: usize,
}

impl Pipeline {
    /// Commands running or waiting.
    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Queues a command on `room`'s lane; it starts at once when the lane
    /// is free.
    pub(crate) fn push(&mut self, room: String, command: Command) {
        self.in_flight += 1;
        match self.waiting.get_mut(&room) {
            Some(lane) => lane.push_back(command),
            None => {
                self.waiting.insert(room.clone(), VecDeque::new());
                self.running.push(head(room, command));
            }
        }
    }

    /// Waits until one command finishes and starts the next of its lane;
    /// never resolves when nothing is in flight.
    pub(crate) async fn next(&mut self) {
        let Some(room) = self.running.next().await else {
            return std::future::pending().await;
        };
        self.in_flight -= 1;
        let next = self.waiting.get_mut(&room).and_then(VecDeque::pop_front);
        match next {
            Some(command) => self.running.push(head(room, command)),
            None => {
                self.waiting.remove(&room);
            }
        }
    }

    /// Waits for every command in flight.
    pub(crate) async fn drain(&mut self) {
        while self.in_flight > 0 {
            self.next().await;
        }
    }
}

fn head(room: String, command: Command) -> BoxFuture<'static, String> {
    Box::pin(async move {
        command.await;
        room
    })
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use futures::FutureExt;
    use tokio::sync::oneshot;

    use super::*;

    /// A command that logs when it starts and ends, and ends when told.
    fn command(
        name: &'static str,
        log: &Arc<Mutex<Vec<String>>>,
    ) -> (Command, oneshot::Sender<()>) {
        let (finish, finished) = oneshot::channel::<()>();
        let log = log.clone();
        let command = async move {
            log.lock().expect("log").push(format!("start {name}"));
            let _ = finished.await;
            log.lock().expect("log").push(format!("end {name}"));
        };
        (Box::pin(command), finish)
    }

    #[tokio::test]
    async fn one_lane_runs_in_order_and_lanes_run_side_by_side() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let mut pipeline = Pipeline::default();
        let (a1, end_a1) = command("a1", &log);
        let (a2, end_a2) = command("a2", &log);
        let (b1, end_b1) = command("b1", &log);
        pipeline.push("a".into(), a1);
        pipeline.push("a".into(), a2);
        pipeline.push("b".into(), b1);
        assert_eq!(pipeline.in_flight(), 3);
        // Nothing has finished: a1 and b1 run, a2 waits behind a1.
        assert!(pipeline.next().now_or_never().is_none());
        assert_eq!(*log.lock().expect("log"), ["start a1", "start b1"]);
        end_b1.send(()).expect("b1");
        pipeline.next().await;
        end_a1.send(()).expect("a1");
        pipeline.next().await;
        assert_eq!(pipeline.in_flight(), 1);
        // a2 has started now that a1 is done.
        assert!(pipeline.next().now_or_never().is_none());
        end_a2.send(()).expect("a2");
        pipeline.drain().await;
        assert_eq!(pipeline.in_flight(), 0);
        assert!(pipeline.waiting.is_empty(), "no lane left behind");
        assert_eq!(
            *log.lock().expect("log"),
            [
                "start a1", "start b1", "end b1", "end a1", "start a2", "end a2"
            ]
        );
    }
}
