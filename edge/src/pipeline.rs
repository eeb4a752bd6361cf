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

/// A command in two parts: the first, run in the lane's order, hands its
/// work on (a send put on the stream to chat-service, which keeps the
/// order from there) and resolves to the second, which waits for the
/// answer beside the lane's next commands.
pub(crate) type Staged = BoxFuture<'static, Command>;

enum Queued {
    Whole(Command),
    Staged(Staged),
}

/// A busy lane.
#[derive(Default)]
struct Lane {
    /// Commands not started yet.
    queue: VecDeque<Queued>,
    /// Whether a command (or a staged command's first part) is running.
    head: bool,
    /// Second parts of staged commands still waiting for their answers:
    /// a whole command waits for them, a staged one does not.
    tails: usize,
}

/// What finished.
enum Finished {
    /// A lane's head; a staged command's first part hands on its second.
    Head(String, Option<Command>),
    /// A staged command's second part.
    Tail(String),
}

#[derive(Default)]
pub(crate) struct Pipeline {
    running: FuturesUnordered<BoxFuture<'static, Finished>>,
    /// The busy lanes (an entry exists exactly while the lane is busy).
    lanes: HashMap<String, Lane>,
    /// Commands running or waiting.
    in_flight: usize,
}

impl Pipeline {
    /// Commands running or waiting.
    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Queues a command on `room`'s lane; it starts once everything before
    /// it in the lane has finished.
    pub(crate) fn push(&mut self, room: String, command: Command) {
        self.enqueue(room, Queued::Whole(command));
    }

    /// Queues a staged command on `room`'s lane; its first part starts
    /// once the lane's head has finished, even while earlier staged
    /// commands still wait for their answers.
    pub(crate) fn push_staged(&mut self, room: String, command: Staged) {
        self.enqueue(room, Queued::Staged(command));
    }

    fn enqueue(&mut self, room: String, command: Queued) {
        self.in_flight += 1;
        self.lanes
            .entry(room.clone())
            .or_default()
            .queue
            .push_back(command);
        self.advance(room);
    }

    /// Waits until one command (or part) finishes and starts what it held
    /// up; never resolves when nothing is in flight.
    pub(crate) async fn next(&mut self) {
        let Some(finished) = self.running.next().await else {
            return std::future::pending().await;
        };
        let room = match finished {
            Finished::Head(room, tail) => {
                let lane = self.lanes.get_mut(&room);
                match (tail, lane) {
                    (Some(tail), Some(lane)) => {
                        lane.head = false;
                        lane.tails += 1;
                        let name = room.clone();
                        self.running.push(Box::pin(async move {
                            tail.await;
                            Finished::Tail(name)
                        }));
                    }
                    (_, lane) => {
                        if let Some(lane) = lane {
                            lane.head = false;
                        }
                        self.in_flight -= 1;
                    }
                }
                room
            }
            Finished::Tail(room) => {
                if let Some(lane) = self.lanes.get_mut(&room) {
                    lane.tails -= 1;
                }
                self.in_flight -= 1;
                room
            }
        };
        self.advance(room);
    }

    /// Starts `room`'s next command if the lane allows it, or forgets the
    /// lane once nothing of it is left.
    fn advance(&mut self, room: String) {
        let Some(lane) = self.lanes.get_mut(&room) else {
            return;
        };
        if lane.head {
            return;
        }
        let may_start = match lane.queue.front() {
            Some(Queued::Staged(_)) => true,
            Some(Queued::Whole(_)) => lane.tails == 0,
            None => {
                if lane.tails == 0 {
                    self.lanes.remove(&room);
                }
                return;
            }
        };
        if !may_start {
            return;
        }
        lane.head = true;
        let head: BoxFuture<'static, Finished> = match lane.queue.pop_front() {
            Some(Queued::Whole(command)) => Box::pin(async move {
                command.await;
                Finished::Head(room, None)
            }),
            Some(Queued::Staged(first)) => Box::pin(async move {
                let tail = first.await;
                Finished::Head(room, Some(tail))
            }),
            None => return,
        };
        self.running.push(head);
    }

    /// Waits for every command in flight.
    pub(crate) async fn drain(&mut self) {
        while self.in_flight > 0 {
            self.next().await;
        }
    }
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
        assert!(pipeline.lanes.is_empty(), "no lane left behind");
        assert_eq!(
            *log.lock().expect("log"),
            [
                "start a1", "start b1", "end b1", "end a1", "start a2", "end a2"
            ]
        );
    }

    /// A staged command: its first part logs `queue {name}` and hands on
    /// a second part that ends when told.
    fn staged(name: &'static str, log: &Arc<Mutex<Vec<String>>>) -> (Staged, oneshot::Sender<()>) {
        let (tail, finish) = command(name, log);
        let log = log.clone();
        let first = futures::future::lazy(move |_| {
            log.lock().expect("log").push(format!("queue {name}"));
            tail
        });
        (Box::pin(first), finish)
    }

    #[tokio::test]
    async fn staged_commands_overlap_and_a_whole_command_waits_for_them() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let mut pipeline = Pipeline::default();
        let (s1, end_s1) = staged("s1", &log);
        let (s2, end_s2) = staged("s2", &log);
        let (w, end_w) = command("w", &log);
        let (s3, end_s3) = staged("s3", &log);
        pipeline.push_staged("a".into(), s1);
        pipeline.push_staged("a".into(), s2);
        pipeline.push("a".into(), w);
        pipeline.push_staged("a".into(), s3);
        assert_eq!(pipeline.in_flight(), 4);
        // Both sends are handed on, in order, before either is answered;
        // `w` and what follows it wait.
        for _ in 0..4 {
            let _ = pipeline.next().now_or_never();
        }
        assert_eq!(
            *log.lock().expect("log"),
            ["queue s1", "start s1", "queue s2", "start s2"]
        );
        end_s2.send(()).expect("s2");
        pipeline.next().await;
        assert!(pipeline.next().now_or_never().is_none(), "w waits for s1");
        end_s1.send(()).expect("s1");
        pipeline.next().await;
        assert!(pipeline.next().now_or_never().is_none());
        assert_eq!(
            log.lock().expect("log").last().map(String::as_str),
            Some("start w")
        );
        end_w.send(()).expect("w");
        pipeline.next().await;
        let _ = pipeline.next().now_or_never();
        end_s3.send(()).expect("s3");
        pipeline.drain().await;
        assert!(pipeline.lanes.is_empty(), "no lane left behind");
        assert_eq!(
            *log.lock().expect("log"),
            [
                "queue s1", "start s1", "queue s2", "start s2", "end s2", "end s1", "start w",
                "end w", "queue s3", "start s3", "end s3"
            ]
        );
    }
}
