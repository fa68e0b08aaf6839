//! Fan-outs whose answers arrive one by one ([`Ipc::command_all_streamed`]): one command per
//! target, each yielded the moment its answer (or its failure) is in, all within one deadline.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::Stream;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;

use super::client::{Ipc, IpcError};
use super::proto::{Group, Outcome, Payload, Refusal, Reply, Request, Target};

/// The answers of a streamed fan-out, each as it arrives: a [`Stream`] of `(target, outcome)`,
/// one item per target, ending when every target has answered, failed or timed out.
pub struct FanOut {
    calls: FuturesUnordered<BoxFuture<'static, (Target, Outcome)>>,
    targets: Vec<Target>,
}

impl std::fmt::Debug for FanOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FanOut")
            .field("targets", &self.targets)
            .field("waiting", &self.calls.len())
            .finish()
    }
}

impl FanOut {
    /// Every target asked, in the order they were asked.
    #[must_use]
    pub fn targets(&self) -> &[Target] {
        &self.targets
    }

    /// How many answers are still to come.
    #[must_use]
    pub fn waiting(&self) -> usize {
        self.calls.len()
    }

    /// The next answer to arrive; `None` once all have.
    pub async fn next(&mut self) -> Option<(Target, Outcome)> {
        futures::StreamExt::next(self).await
    }
}

impl Stream for FanOut {
    type Item = (Target, Outcome);

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        Pin::new(&mut self.calls).poll_next(cx)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.calls.len(), Some(self.calls.len()))
    }
}

impl Ipc {
    /// Runs the command handler of every worker of `group` and hands each answer over as it
    /// arrives (discord-hybrid-sharding's per-reply callback), all within `timeout`: a slow
    /// target holds back nobody else's answer, and one that has not answered by the deadline is
    /// `TimedOut`. The targets are the group's workers when the call is made (dead or failed
    /// ones answer `Unavailable`). Fails only if the list of workers cannot be had.
    pub async fn command_all_streamed(
        &self,
        group: Group,
        payload: Payload,
        timeout: Duration,
    ) -> Result<FanOut, IpcError> {
        let deadline = tokio::time::Instant::now() + timeout.min(super::proto::MAX_TIMEOUT);
        let targets: Vec<Target> = self
            .workers()
            .await?
            .into_iter()
            .map(|w| w.worker)
            .filter(|t| match group {
                Group::Clusters => matches!(t, Target::Cluster(_)),
                Group::Services => matches!(t, Target::Service(_)),
            })
            .collect();
        let calls = targets
            .iter()
            .map(|target| {
                let (ipc, target, payload) = (self.clone(), target.clone(), payload.clone());
                let call: BoxFuture<'static, (Target, Outcome)> = Box::pin(async move {
                    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                    let outcome = ipc.command_outcome(target.clone(), payload, left).await;
                    (target, outcome)
                });
                call
            })
            .collect();
        Ok(FanOut { calls, targets })
    }

    /// One target's command as a fan-out outcome: whatever happened, said as an [`Outcome`].
    async fn command_outcome(
        &self,
        target: Target,
        payload: Payload,
        timeout: Duration,
    ) -> Outcome {
        let request = Request::Command {
            target: target.clone(),
            payload,
        };
        match self.request(request, timeout).await {
            Ok(Reply::Outcome(outcome)) => outcome,
            Ok(Reply::Refused(Refusal::Unavailable(_) | Refusal::UnknownTarget(_))) => {
                Outcome::Unavailable
            }
            Ok(Reply::Refused(refusal)) => Outcome::Error(refusal.to_string()),
            Ok(other) => Outcome::Error(format!("unexpected reply: {other:?}")),
            Err(IpcError::Timeout(_)) => Outcome::TimedOut,
            Err(error) => Outcome::Error(error.to_string()),
        }
    }
}
