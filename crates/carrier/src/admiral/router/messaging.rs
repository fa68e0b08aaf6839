//! Messages: a broadcast to every serving worker (and the admiral's own handlers), and a message
//! to one target. Neither waits for the receivers; the asker hears whether it was queued.

use super::Router;
use super::calls::{Route, Waiter};
use super::commands::Ask;
use super::inbox::ConnId;
use crate::ipc::client::Message;
use crate::ipc::proto::{Down, Payload, Reply, Target};

impl Router {
    pub(super) fn broadcast(
        &mut self,
        from: &Target,
        waiter: Waiter,
        event: String,
        payload: Payload,
    ) {
        let down = Down::Message {
            from: from.clone(),
            event,
            payload,
        };
        let reply = match self.links.encode(&down) {
            Ok(body) => {
                let targets: Vec<ConnId> = self.serving_conns().collect();
                let mut refused = None;
                for conn in targets {
                    if let Err(refusal) = self.links.send_body(conn, &body) {
                        refused.get_or_insert(refusal);
                    }
                }
                if let Down::Message {
                    from,
                    event,
                    payload,
                } = down
                {
                    self.broadcast_remote(&from, &event, &payload);
                    self.ipc.deliver(&Message {
                        from,
                        event,
                        payload,
                    });
                }
                refused.map_or(Reply::Done, Reply::Refused)
            }
            Err(refusal) => Reply::Refused(refusal),
        };
        self.reply(waiter, reply);
    }

    pub(super) fn send_to(
        &mut self,
        from: &Target,
        waiter: Waiter,
        target: Target,
        event: String,
        payload: Payload,
        timeout: std::time::Duration,
    ) {
        if let Some(host) = self.remote_owner(&target) {
            // Another host's cluster: the waiter hears once that host has queued it.
            let ask = Ask::Message { event, payload };
            let deadline = timeout.saturating_sub(timeout / 20);
            self.forward_remote(&host, from, target, ask, deadline, Route::Sent(waiter));
            return;
        }
        let target = &target;
        let from = from.clone();
        let reply = if *target == Target::Admiral {
            self.ipc.deliver(&Message {
                from,
                event,
                payload,
            });
            Reply::Done
        } else {
            let down = Down::Message {
                from,
                event,
                payload,
            };
            let sent = self.live_conn(target).and_then(|(conn, _)| {
                let body = self.links.encode(&down)?;
                self.links.send_body(conn, &body)
            });
            sent.map_or_else(Reply::Refused, |()| Reply::Done)
        };
        self.reply(waiter, reply);
    }
}
