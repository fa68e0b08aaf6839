//! The admiral's events: published to its own handle's stream ([`FleetEvent`]) and, for the
//! topics each connection subscribed to, to workers as [`Down::Event`]. Every event the router
//! makes goes through [`Router::publish`].

use super::Router;
use super::calls::Waiter;
use crate::admiral::FleetEvent;
use crate::admiral::lifecycle::{LifecycleEvent, WorkerId};
use crate::ipc::proto::{AdmiralEvent, Down, Refusal, Reply, Topic, Topics};

impl Router {
    /// Answers [`Request::Subscribe`](crate::ipc::proto::Request::Subscribe): the connection (or
    /// the admiral's own handle) hears these topics from now on. A subscriber for lifecycle
    /// events that arrives after the launch is told its outcome before it hears `Done`.
    pub(super) fn subscribe(&mut self, waiter: Waiter, topics: &[Topic]) {
        let topics = Topics::of(topics);
        let conn = match &waiter {
            Waiter::Conn(conn, _) => Some(*conn),
            Waiter::Local(_) => None,
            Waiter::Remote { .. } | Waiter::Merge { .. } => {
                let refusal = Refusal::Invalid("subscriptions do not cross hosts".into());
                self.reply(waiter, Reply::Refused(refusal));
                return;
            }
        };
        match conn {
            Some(conn) => {
                if let Some(c) = self.links.get_mut(conn) {
                    c.topics = topics;
                }
            }
            None => self.admiral_topics = topics,
        }
        // The launch's outcome goes first, so it is waiting when the subscriber hears `Done`.
        let launched = *self.ready.borrow();
        if let Some((live, failed)) = launched
            && topics.contains(Topic::Lifecycle)
        {
            let event = AdmiralEvent::AllReady {
                live: u32::try_from(live).unwrap_or(u32::MAX),
                failed: u32::try_from(failed).unwrap_or(u32::MAX),
            };
            match conn {
                Some(conn) => self.links.send(conn, &Down::Event(event)),
                None => self.ipc.deliver_event(event),
            }
        }
        self.reply(waiter, Reply::Done);
    }

    /// Publishes an event: to the admiral's stream, then to the workers subscribed to its topic.
    /// It is encoded once; a subscriber whose queue is full misses it.
    pub(super) fn publish(&mut self, event: FleetEvent) {
        // Made for workers only when someone subscribed to its topic.
        let wanted = topic_of(&event).filter(|topic| {
            self.admiral_topics.contains(*topic) || self.links.subscribers(*topic).next().is_some()
        });
        let forward = wanted.and_then(|_| self.admiral_event(&event));
        let _ = self.events.send(event);
        let Some(forward) = forward else {
            return;
        };
        let topic = forward.topic();
        let subscribers: Vec<_> = self.links.subscribers(topic).collect();
        let down = Down::Event(forward);
        if !subscribers.is_empty() {
            match self.links.encode(&down) {
                Ok(body) => {
                    for conn in subscribers {
                        let _ = self.links.send_body(conn, &body);
                    }
                }
                Err(refusal) => {
                    tracing::warn!(target: "fleet::ipc", %refusal, "an admiral event did not encode");
                }
            }
        }
        if self.admiral_topics.contains(topic)
            && let Down::Event(forward) = down
        {
            self.ipc.deliver_event(forward);
        }
    }

    /// The worker-facing form of an event, if workers can subscribe to it.
    fn admiral_event(&self, event: &FleetEvent) -> Option<AdmiralEvent> {
        let millis = |d: std::time::Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let count = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        Some(match event {
            FleetEvent::Lifecycle(event) => match event {
                LifecycleEvent::Ready(worker) => AdmiralEvent::WorkerReady {
                    worker: worker.target(),
                    process: self.process_of_worker(worker),
                },
                LifecycleEvent::Failed { worker, reason } => AdmiralEvent::WorkerFailed {
                    worker: worker.target(),
                    reason: reason.clone(),
                },
                LifecycleEvent::Restarting {
                    worker,
                    attempt,
                    after,
                    reason,
                } => AdmiralEvent::WorkerRestarting {
                    worker: worker.target(),
                    attempt: *attempt,
                    after_ms: millis(*after),
                    reason: reason.clone(),
                },
                LifecycleEvent::WorkerStopped(worker) => AdmiralEvent::WorkerStopped {
                    worker: worker.target(),
                },
                LifecycleEvent::RestartPending { worker, mode } => AdmiralEvent::RestartPending {
                    worker: worker.target(),
                    mode: *mode,
                },
                LifecycleEvent::SoftKillPending {
                    worker,
                    process,
                    notice,
                } => AdmiralEvent::SoftKillPending {
                    worker: worker.target(),
                    process: *process,
                    notice_ms: millis(*notice),
                },
                LifecycleEvent::Replaced { worker, old, new } => AdmiralEvent::Restarted {
                    worker: worker.target(),
                    old: *old,
                    new: *new,
                },
                LifecycleEvent::RestartFailed { worker, reason } => AdmiralEvent::RestartFailed {
                    worker: worker.target(),
                    reason: reason.clone(),
                },
                LifecycleEvent::ReshardProgress { ready, total } => AdmiralEvent::ReshardProgress {
                    ready: count(*ready),
                    total: count(*total),
                },
                LifecycleEvent::Resharded { clusters } => AdmiralEvent::Resharded {
                    generation: self.generation,
                    shard_total: self.plan.shard_total,
                    clusters: count(*clusters),
                },
                LifecycleEvent::ReshardFailed { reason } => AdmiralEvent::ReshardFailed {
                    reason: reason.clone(),
                },
                LifecycleEvent::ServicesLaunched => AdmiralEvent::ServicesLaunched,
                LifecycleEvent::AllReady { live, failed } => AdmiralEvent::AllReady {
                    live: count(*live),
                    failed: count(*failed),
                },
                LifecycleEvent::Stopped => return None,
            },
            FleetEvent::Shard {
                cluster,
                shard,
                process,
                generation,
                event,
            } => AdmiralEvent::Shard {
                cluster: *cluster,
                shard: *shard,
                process: *process,
                generation: *generation,
                event: event.clone(),
            },
            FleetEvent::Exited {
                worker,
                process,
                code,
            } => AdmiralEvent::WorkerExited {
                worker: worker.target(),
                process: *process,
                code: *code,
            },
            FleetEvent::Unresponsive {
                worker, process, ..
            } => AdmiralEvent::WorkerUnresponsive {
                worker: worker.target(),
                process: *process,
            },
            FleetEvent::ShuttingDown => AdmiralEvent::ShuttingDown,
            FleetEvent::Deployed(report) => AdmiralEvent::Deployed(report.clone()),
            FleetEvent::Stats(stats) => AdmiralEvent::Stats(Box::new((**stats).clone())),
            FleetEvent::Log { .. }
            | FleetEvent::Output { .. }
            | FleetEvent::ProtocolError { .. }
            | FleetEvent::Panic { .. } => return None,
        })
    }

    fn process_of_worker(&self, worker: &WorkerId) -> Option<u64> {
        self.lifecycle.worker(worker).and_then(|w| w.process)
    }
}

/// The topic workers hear an event under, if they can hear it at all.
fn topic_of(event: &FleetEvent) -> Option<Topic> {
    match event {
        FleetEvent::Lifecycle(LifecycleEvent::Stopped)
        | FleetEvent::Log { .. }
        | FleetEvent::Output { .. }
        | FleetEvent::ProtocolError { .. }
        | FleetEvent::Panic { .. } => None,
        FleetEvent::Shard { .. } => Some(Topic::Shards),
        FleetEvent::Stats(_) => Some(Topic::Stats),
        _ => Some(Topic::Lifecycle),
    }
}
