//! Call correlation: which forwarded command or lookup waits for which answer, until when, and
//! for whom. A plain table with no I/O: the router records each forward it sends, hands in each
//! answer, close and expiry, and gets back the replies that are now due.
//!
//! Three shapes of call share it: a single command (its outcome answers the asker), a fan-out
//! (one outcome per target, answered once all are in) and a search (the first hit among several
//! clusters answers; misses wait for the rest).

use std::collections::BTreeMap;
use std::time::Duration;

use futures::StreamExt as _;
use tokio_util::time::{DelayQueue, delay_queue};

pub(crate) use super::inbox::Waiter;
use crate::admiral::lifecycle::ProcessId;
use crate::ids::IdMap;
use crate::ipc::proto::{MAX_TIMEOUT, Outcome, Refusal, Reply, Target};

/// A reply now due to its waiter.
#[derive(Debug)]
pub(crate) struct Answer {
    pub waiter: Waiter,
    pub reply: Reply,
}

/// Where a forward's outcome goes.
#[derive(Debug)]
pub(crate) enum Route {
    /// Straight to one waiter.
    Single(Waiter),
    /// Into fan-out number `n`.
    Part(u64),
    /// Into search number `n`.
    Search(u64),
    /// A message to one target: the waiter hears whether it arrived.
    Sent(Waiter),
    /// A request run on another host: the waiter gets its reply, carried in the outcome.
    Relay(Waiter),
}

#[derive(Debug)]
struct Forward {
    process: ProcessId,
    target: Target,
    route: Route,
    deadline: delay_queue::Key,
}

#[derive(Debug)]
struct Fanout {
    waiter: Waiter,
    remaining: usize,
    outcomes: BTreeMap<Target, Outcome>,
}

#[derive(Debug)]
struct Search {
    waiter: Waiter,
    remaining: usize,
    /// The one cluster that can know (guild-scoped lookups): its being down is an error, not a
    /// miss.
    owner: Option<Target>,
}

/// Forwards in flight, fan-outs and searches collecting, and the forwards' deadlines.
#[derive(Debug, Default)]
pub(crate) struct Calls {
    next_id: u64,
    forwards: IdMap<u64, Forward>,
    fanouts: IdMap<u64, Fanout>,
    searches: IdMap<u64, Search>,
    deadlines: DelayQueue<u64>,
}

impl Calls {
    /// A fresh number for a forward, fan-out or search (never 0, never reused).
    pub fn next_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// Opens a fan-out over `targets` targets, or answers at once when there are none.
    pub fn fan_out(&mut self, waiter: Waiter, targets: usize) -> Result<u64, Answer> {
        if targets == 0 {
            let reply = Reply::Outcomes(Vec::new());
            return Err(Answer { waiter, reply });
        }
        let id = self.next_id();
        let fanout = Fanout {
            waiter,
            remaining: targets,
            outcomes: BTreeMap::new(),
        };
        self.fanouts.insert(id, fanout);
        Ok(id)
    }

    /// Opens a search over `targets` targets (`owner`: the only one that can know), or answers
    /// "not found" at once when there are none.
    pub fn search(
        &mut self,
        waiter: Waiter,
        targets: usize,
        owner: Option<Target>,
    ) -> Result<u64, Answer> {
        if targets == 0 {
            let reply = Reply::Found(None);
            return Err(Answer { waiter, reply });
        }
        let id = self.next_id();
        let search = Search {
            waiter,
            remaining: targets,
            owner,
        };
        self.searches.insert(id, search);
        Ok(id)
    }

    /// Records forward `id`, sent to `process` serving `target`, due within `deadline` (capped
    /// at [`MAX_TIMEOUT`]).
    pub fn track(
        &mut self,
        id: u64,
        process: ProcessId,
        target: Target,
        route: Route,
        deadline: Duration,
    ) {
        let deadline = self.deadlines.insert(id, deadline.min(MAX_TIMEOUT));
        let forward = Forward {
            process,
            target,
            route,
            deadline,
        };
        self.forwards.insert(id, forward);
    }

    /// Forward `id` was answered. `from`: the process that answered, if it must be the one asked
    /// (a worker may not answer another's forward).
    pub fn answered(
        &mut self,
        id: u64,
        from: Option<ProcessId>,
        outcome: Outcome,
    ) -> Option<Answer> {
        if from.is_some_and(|p| self.forwards.get(&id).is_none_or(|f| f.process != p)) {
            return None;
        }
        let forward = self.forwards.remove(&id)?;
        self.deadlines.remove(&forward.deadline);
        self.settle(forward.route, forward.target, outcome)
    }

    /// Every forward to `process` ends as unavailable: its connection closed.
    pub fn orphaned(&mut self, process: ProcessId) -> Vec<Answer> {
        let ids: Vec<u64> = self
            .forwards
            .iter()
            .filter(|(_, f)| f.process == process)
            .map(|(id, _)| *id)
            .collect();
        ids.into_iter()
            .filter_map(|id| self.answered(id, None, Outcome::Unavailable))
            .collect()
    }

    /// Whether any forward has a deadline running.
    pub fn has_deadlines(&self) -> bool {
        !self.deadlines.is_empty()
    }

    /// Waits for the next forward to time out and returns the reply that is due, if any (a
    /// timed-out part of an unfinished fan-out makes none). Cancel-safe; `None` when no
    /// deadline runs.
    pub async fn next_expired(&mut self) -> Option<Option<Answer>> {
        let id = self.deadlines.next().await?.into_inner();
        let forward = self.forwards.remove(&id)?;
        Some(self.settle(forward.route, forward.target, Outcome::TimedOut))
    }

    /// Puts `target`'s outcome where `route` says: the reply it completes, if any. Also for a
    /// forward that could not be sent.
    pub fn settle(&mut self, route: Route, target: Target, outcome: Outcome) -> Option<Answer> {
        match route {
            Route::Single(waiter) => {
                let reply = Reply::Outcome(outcome);
                Some(Answer { waiter, reply })
            }
            Route::Relay(waiter) => {
                let reply = match outcome {
                    Outcome::Ok(reply) => reply.decode().unwrap_or_else(|error| {
                        Reply::Refused(Refusal::Invalid(format!(
                            "{target}'s host answered with a reply this build cannot read: {error}"
                        )))
                    }),
                    Outcome::Error(error) => Reply::Refused(Refusal::Invalid(error)),
                    Outcome::TimedOut => Reply::Refused(Refusal::Invalid(format!(
                        "{target}'s host did not answer in time"
                    ))),
                    Outcome::Unavailable => Reply::Refused(Refusal::Unavailable(target)),
                };
                Some(Answer { waiter, reply })
            }
            Route::Search(search) => self.searched(search, target, outcome),
            Route::Sent(waiter) => {
                let reply = match outcome {
                    Outcome::Ok(_) => Reply::Done,
                    Outcome::Error(error) => Reply::Refused(Refusal::Invalid(error)),
                    Outcome::TimedOut | Outcome::Unavailable => {
                        Reply::Refused(Refusal::Unavailable(target))
                    }
                };
                Some(Answer { waiter, reply })
            }
            Route::Part(fanout) => {
                let f = self.fanouts.get_mut(&fanout)?;
                f.outcomes.insert(target, outcome);
                f.remaining -= 1;
                if f.remaining > 0 {
                    return None;
                }
                let f = self.fanouts.remove(&fanout)?;
                let reply = Reply::Outcomes(f.outcomes.into_iter().collect());
                Some(Answer {
                    waiter: f.waiter,
                    reply,
                })
            }
        }
    }

    /// One target of a search answered: the first hit answers at once.
    fn searched(&mut self, search: u64, target: Target, outcome: Outcome) -> Option<Answer> {
        // None: answered already by an earlier hit.
        let s = self.searches.get_mut(&search)?;
        s.remaining -= 1;
        let reply = match outcome {
            Outcome::Ok(found) if !found.as_bytes().is_empty() => Some(Reply::Found(Some(found))),
            Outcome::Unavailable if s.owner.is_some() => {
                Some(Reply::Refused(Refusal::Unavailable(target)))
            }
            Outcome::TimedOut if s.owner.is_some() => {
                Some(Reply::Outcomes(vec![(target, Outcome::TimedOut)]))
            }
            Outcome::Error(error) => {
                tracing::warn!(target: "fleet::ipc", %target, %error, "a cache lookup failed");
                (s.remaining == 0).then_some(Reply::Found(None))
            }
            _ => (s.remaining == 0).then_some(Reply::Found(None)),
        };
        let reply = reply?;
        let s = self.searches.remove(&search)?;
        Some(Answer {
            waiter: s.waiter,
            reply,
        })
    }

    /// Calls of every kind still open (for tests and stats).
    #[cfg(test)]
    fn open(&self) -> (usize, usize, usize) {
        (self.forwards.len(), self.fanouts.len(), self.searches.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ipc::proto::Payload;
    use tokio::sync::oneshot;

    fn local() -> (Waiter, oneshot::Receiver<Reply>) {
        let (tx, rx) = oneshot::channel();
        (Waiter::Local(tx), rx)
    }

    fn deliver(answer: Option<Answer>) {
        let answer = answer.expect("a reply is due");
        let Waiter::Local(tx) = answer.waiter else {
            panic!("local waiters only here");
        };
        tx.send(answer.reply).expect("receiver alive");
    }

    fn ok(text: &str) -> Outcome {
        Outcome::Ok(Payload::encode(&text).unwrap())
    }

    const SECOND: Duration = Duration::from_secs(1);

    #[tokio::test(start_paused = true)]
    async fn a_single_command_is_answered_once_and_its_deadline_cancelled() {
        let mut calls = Calls::default();
        let (waiter, rx) = local();
        let id = calls.next_id();
        calls.track(id, 7, Target::Cluster(0), Route::Single(waiter), SECOND);
        assert!(calls.has_deadlines());
        // Another process may not answer it.
        assert!(calls.answered(id, Some(8), ok("no")).is_none());
        deliver(calls.answered(id, Some(7), ok("yes")));
        assert!(matches!(rx.await.unwrap(), Reply::Outcome(Outcome::Ok(_))));
        assert!(!calls.has_deadlines());
        assert!(calls.answered(id, Some(7), ok("again")).is_none());
        assert_eq!(calls.open(), (0, 0, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn a_forward_times_out_at_its_deadline_and_not_before() {
        let mut calls = Calls::default();
        let (waiter, rx) = local();
        let id = calls.next_id();
        calls.track(id, 7, Target::Cluster(0), Route::Single(waiter), SECOND);
        let started = tokio::time::Instant::now();
        deliver(calls.next_expired().await.expect("a deadline runs"));
        assert_eq!(started.elapsed(), SECOND);
        assert!(matches!(
            rx.await.unwrap(),
            Reply::Outcome(Outcome::TimedOut)
        ));
        // An answer after the deadline finds nothing.
        assert!(calls.answered(id, Some(7), ok("late")).is_none());
        assert!(calls.next_expired().await.is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn deadlines_are_capped() {
        let mut calls = Calls::default();
        let (waiter, _rx) = local();
        let id = calls.next_id();
        let years = Duration::from_hours(3 * 365 * 24);
        calls.track(id, 7, Target::Admiral, Route::Single(waiter), years);
        let started = tokio::time::Instant::now();
        calls.next_expired().await.expect("a deadline runs");
        assert_eq!(started.elapsed(), MAX_TIMEOUT);
    }

    #[tokio::test(start_paused = true)]
    async fn a_fan_out_answers_once_every_target_has_with_one_outcome_each() {
        let mut calls = Calls::default();
        let (waiter, rx) = local();
        let group = calls.fan_out(waiter, 3).unwrap();
        for (process, cluster) in [(1, 0), (2, 1), (3, 2)] {
            let id = calls.next_id();
            let target = Target::Cluster(cluster);
            calls.track(id, process, target, Route::Part(group), SECOND * cluster);
        }
        // Cluster 0's deadline is immediate; cluster 1 answers; cluster 2's process dies.
        assert!(calls.next_expired().await.unwrap().is_none());
        assert!(calls.answered(3, Some(2), ok("one")).is_none());
        let due = calls.orphaned(3);
        assert_eq!(due.len(), 1);
        deliver(due.into_iter().next());
        let Reply::Outcomes(outcomes) = rx.await.unwrap() else {
            panic!("outcomes expected");
        };
        let kinds: Vec<_> = outcomes
            .iter()
            .map(|(t, o)| (t.clone(), std::mem::discriminant(o)))
            .collect();
        assert_eq!(
            kinds,
            vec![
                (
                    Target::Cluster(0),
                    std::mem::discriminant(&Outcome::TimedOut)
                ),
                (Target::Cluster(1), std::mem::discriminant(&ok("one"))),
                (
                    Target::Cluster(2),
                    std::mem::discriminant(&Outcome::Unavailable)
                ),
            ]
        );
        assert_eq!(calls.open(), (0, 0, 0));
        assert!(!calls.has_deadlines());
    }

    #[test]
    fn empty_groups_answer_at_once() {
        let mut calls = Calls::default();
        let (waiter, _rx) = local();
        let answer = calls.fan_out(waiter, 0).unwrap_err();
        assert!(matches!(answer.reply, Reply::Outcomes(ref o) if o.is_empty()));
        let (waiter, _rx) = local();
        let answer = calls.search(waiter, 0, None).unwrap_err();
        assert!(matches!(answer.reply, Reply::Found(None)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_search_answers_with_the_first_hit_and_ignores_the_rest() {
        let mut calls = Calls::default();
        let (waiter, rx) = local();
        let search = calls.search(waiter, 3, None).unwrap();
        let ids: Vec<u64> = (0..3_u32)
            .map(|cluster| {
                let id = calls.next_id();
                let route = Route::Search(search);
                let process = u64::from(cluster) + 1;
                calls.track(id, process, Target::Cluster(cluster), route, SECOND);
                id
            })
            .collect();
        // A miss (empty answer) waits for the others; an error counts as a miss.
        let miss = Outcome::Ok(Payload::empty());
        assert!(calls.answered(ids[0], None, miss).is_none());
        let error = Outcome::Error("cache poisoned".into());
        assert!(calls.answered(ids[1], None, error).is_none());
        deliver(calls.answered(ids[2], None, ok("guild")));
        assert!(matches!(rx.await.unwrap(), Reply::Found(Some(_))));
        assert_eq!(calls.open(), (0, 0, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn a_search_of_many_misses_answers_not_found_once_all_missed() {
        let mut calls = Calls::default();
        let (waiter, rx) = local();
        let search = calls.search(waiter, 2, None).unwrap();
        for cluster in 0..2_u32 {
            let id = calls.next_id();
            let route = Route::Search(search);
            let process = u64::from(cluster) + 1;
            calls.track(id, process, Target::Cluster(cluster), route, SECOND);
        }
        // One cluster is gone (a miss, not an error: another may know), the other times out.
        assert!(calls.orphaned(1).is_empty());
        deliver(calls.next_expired().await.unwrap());
        assert!(matches!(rx.await.unwrap(), Reply::Found(None)));
    }

    #[tokio::test(start_paused = true)]
    async fn the_owner_of_a_guild_being_down_is_an_error_not_a_miss() {
        let mut calls = Calls::default();
        let (waiter, rx) = local();
        let owner = Target::Cluster(4);
        let search = calls.search(waiter, 1, Some(owner.clone())).unwrap();
        let id = calls.next_id();
        calls.track(id, 9, owner.clone(), Route::Search(search), SECOND);
        deliver(calls.orphaned(9).into_iter().next());
        assert!(matches!(
            rx.await.unwrap(),
            Reply::Refused(Refusal::Unavailable(t)) if t == owner
        ));

        let (waiter, rx) = local();
        let search = calls.search(waiter, 1, Some(owner.clone())).unwrap();
        let id = calls.next_id();
        calls.track(id, 9, owner.clone(), Route::Search(search), SECOND);
        deliver(calls.next_expired().await.unwrap());
        assert!(matches!(
            rx.await.unwrap(),
            Reply::Outcomes(o) if matches!(o[..], [(_, Outcome::TimedOut)])
        ));
    }

    #[tokio::test]
    async fn a_message_hears_whether_it_arrived_and_a_relayed_request_gets_its_reply_whole() {
        let mut calls = Calls::default();
        let target = Target::Cluster(3);
        let (waiter, rx) = local();
        let arrived = calls.settle(Route::Sent(waiter), target.clone(), ok("queued"));
        deliver(arrived);
        assert!(matches!(rx.await.unwrap(), Reply::Done));
        let (waiter, rx) = local();
        deliver(calls.settle(Route::Sent(waiter), target.clone(), Outcome::TimedOut));
        assert!(matches!(
            rx.await.unwrap(),
            Reply::Refused(Refusal::Unavailable(t)) if t == target
        ));

        let (waiter, rx) = local();
        let refused = Reply::Refused(Refusal::RestartFailed("not ready".into()));
        let carried = Outcome::Ok(Payload::encode(&refused).unwrap());
        deliver(calls.settle(Route::Relay(waiter), target.clone(), carried));
        assert_eq!(rx.await.unwrap(), refused);
        let (waiter, rx) = local();
        let garbled = Outcome::Ok(Payload::from("not a reply"));
        deliver(calls.settle(Route::Relay(waiter), target.clone(), garbled));
        assert!(matches!(
            rx.await.unwrap(),
            Reply::Refused(Refusal::Invalid(_))
        ));
        let (waiter, rx) = local();
        deliver(calls.settle(Route::Relay(waiter), target.clone(), Outcome::Unavailable));
        assert!(matches!(
            rx.await.unwrap(),
            Reply::Refused(Refusal::Unavailable(t)) if t == target
        ));
    }

    #[test]
    fn an_undeliverable_forward_settles_its_route_at_once() {
        let mut calls = Calls::default();
        let (waiter, _rx) = local();
        let group = calls.fan_out(waiter, 2).unwrap();
        let none = calls.settle(Route::Part(group), Target::Cluster(0), Outcome::Unavailable);
        assert!(none.is_none());
        let done = calls.settle(Route::Part(group), Target::Cluster(1), Outcome::Unavailable);
        assert!(matches!(done.unwrap().reply, Reply::Outcomes(o) if o.len() == 2));
    }
}
