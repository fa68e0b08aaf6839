//! Cache lookups: a guild or member at the cluster that owns the guild's shard, a user or
//! channel at every cluster, the first hit winning.

use std::time::Duration;

use super::Router;
use super::calls::{Route, Waiter};
use super::commands::Ask;
use crate::ipc::proto::{Fetch, Refusal, Reply, Target};

impl Router {
    /// Starts a cache lookup: at the guild's owner, or at every cluster.
    pub(super) fn fetch(&mut self, from: &Target, waiter: Waiter, query: Fetch, timeout: Duration) {
        let plan = &self.plan;
        let (targets, owner) = if let Some(guild) = query.guild() {
            let shard = guild_shard(guild, plan.shard_total);
            let Some(cluster) = plan
                .clusters
                .iter()
                .find(|c| (c.first_shard..=c.last_shard).contains(&shard))
            else {
                let refusal = Refusal::Invalid(format!(
                    "guild {guild} is on shard {shard}, which this fleet does not run"
                ));
                self.reply(waiter, Reply::Refused(refusal));
                return;
            };
            let owner = Target::Cluster(cluster.id);
            (vec![owner.clone()], Some(owner))
        } else {
            let all = plan.clusters.iter().map(|c| Target::Cluster(c.id));
            (all.collect(), None)
        };
        match self.calls.search(waiter, targets.len(), owner) {
            Ok(search) => {
                for target in targets {
                    let route = Route::Search(search);
                    self.forward(from, target, Ask::Fetch(query), timeout, route);
                }
            }
            Err(answer) => self.answer(answer),
        }
    }
}

/// The shard that holds `guild`: `(guild_id >> 22) % shard_total`.
pub(super) fn guild_shard(guild: u64, shard_total: u32) -> u32 {
    ((guild >> 22) % u64::from(shard_total.max(1))) as u32
}

#[cfg(test)]
mod tests {
    use super::guild_shard;

    #[test]
    fn a_guild_lives_on_the_shard_its_id_names() {
        // (81384788765712384 >> 22) % 16 = 2.
        assert_eq!(guild_shard(81_384_788_765_712_384, 16), 2);
        assert_eq!(guild_shard(u64::MAX, 1), 0);
        assert_eq!(
            guild_shard(5 << 22, 0),
            0,
            "no shards: shard 0, never a division by zero"
        );
    }
}
