//! Identify permission: a cluster asks before each shard identifies; the identify queue paces
//! the grants, off the router's task, and a grant still waiting when its connection closes is
//! given up.

use super::calls::Waiter;
use super::{Inbox, Router};
use crate::ipc::proto::{Refusal, Reply, Target};

impl Router {
    pub(super) fn identify(&mut self, from: &Target, waiter: Waiter, shard: u32) {
        // Services run no shards: a slot one of them took would be one a cluster waits for.
        if let Target::Service(name) = from {
            let refusal = Refusal::Invalid(format!("service {name} runs no shards to identify"));
            self.reply(waiter, Reply::Refused(refusal));
            return;
        }
        let current = self.plan.shard_total;
        let total = self
            .next_plan
            .as_ref()
            .map_or(current, |next| next.shard_total.max(current));
        if shard >= total {
            let refusal = Refusal::Invalid(format!("shard {shard} is not below the total {total}"));
            self.reply(waiter, Reply::Refused(refusal));
            return;
        }
        let conn = match &waiter {
            Waiter::Conn(conn, _) => Some(*conn),
            Waiter::Local(_) => None,
            Waiter::Remote { .. } | Waiter::Merge { .. } => {
                let refusal = Refusal::Invalid("identifies do not cross hosts".into());
                self.reply(waiter, Reply::Refused(refusal));
                return;
            }
        };
        let grant = self.identify.acquire(shard);
        let inbox = self.inbox.clone();
        let task = tokio::spawn(async move {
            grant.await;
            let _ = inbox.send(Inbox::Granted { waiter, shard }).await;
        });
        if let Some(c) = conn.and_then(|c| self.links.get_mut(c)) {
            c.identifies.retain(|t| !t.is_finished());
            c.identifies.push(task.abort_handle());
        }
    }
}
