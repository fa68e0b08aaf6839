//! Shard planning: how many shards, and which contiguous range each cluster runs. Pure functions.

use std::ops::RangeInclusive;

use serde::{Deserialize, Serialize};

pub use crate::ipc::proto::ShardCount;

/// One cluster's share of the shards.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterPlan {
    /// Cluster id, from 0.
    pub id: u32,
    /// First shard (inclusive).
    pub first_shard: u32,
    /// Last shard (inclusive).
    pub last_shard: u32,
}

impl ClusterPlan {
    /// The shard ids.
    #[must_use]
    pub fn shards(&self) -> RangeInclusive<u32> {
        self.first_shard..=self.last_shard
    }
}

/// The shard plan of a fleet (or of this host's part of it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardPlan {
    /// Shards in the whole bot.
    pub shard_total: u32,
    /// Identify buckets.
    pub max_concurrency: u32,
    /// Clusters, in order, covering `first..=last` of this host.
    pub clusters: Vec<ClusterPlan>,
}

impl ShardPlan {
    /// Shards this plan runs.
    #[must_use]
    pub fn shard_count(&self) -> u32 {
        self.clusters
            .iter()
            .map(|c| c.last_shard - c.first_shard + 1)
            .sum()
    }

    /// The slice of the bot's shards this plan runs: `(first, last)`, inclusive.
    #[must_use]
    pub fn slice(&self) -> Option<(u32, u32)> {
        Some((
            self.clusters.first()?.first_shard,
            self.clusters.last()?.last_shard,
        ))
    }

    /// The cluster that runs a shard, if this plan runs it.
    #[must_use]
    pub fn cluster_of_shard(&self, shard: u32) -> Option<u32> {
        self.clusters
            .iter()
            .find(|c| c.shards().contains(&shard))
            .map(|c| c.id)
    }
}

/// Why no plan can be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PlanError {
    /// The shard total came out as zero.
    #[error("the shard total is zero")]
    NoShards,
    /// Zero clusters asked for.
    #[error("at least one cluster is needed")]
    NoClusters,
    /// `guilds_per_shard` of zero.
    #[error("guilds per shard must be above zero")]
    NoGuildsPerShard,
    /// An exact total a large bot may not run: Discord closes every shard with 4010 unless the
    /// total is a multiple of `max_concurrency` (large-bot sharding).
    #[error(
        "{total} shards is not a multiple of max_concurrency {max_concurrency}: a large bot's shard total must be (Discord closes its shards with 4010 otherwise)"
    )]
    NotAMultiple {
        /// The total asked for.
        total: u32,
        /// The bot's identify buckets.
        max_concurrency: u32,
    },
    /// A plan for a bot split across hosts, read from Redis or another host, past what fleet
    /// runs (65,536 shards, 1,024 clusters).
    #[error("{total} shards in {clusters} clusters is more than fleet runs")]
    TooLarge {
        /// The total.
        total: u32,
        /// The clusters.
        clusters: u32,
    },
    /// The first shard is after the last.
    #[error("first shard {first} is after last shard {last}")]
    FirstAfterLast {
        /// First shard asked for.
        first: u32,
        /// Last shard asked for.
        last: u32,
    },
    /// The last shard is not below the total.
    #[error("last shard {last} is not below the shard total {total}")]
    LastBeyondTotal {
        /// Last shard asked for.
        last: u32,
        /// The total.
        total: u32,
    },
}

/// The inputs of a plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlanInput {
    /// How to choose the total.
    pub count: ShardCount,
    /// Discord's recommended total (`/gateway/bot` `shards`).
    pub recommended: u32,
    /// Identify buckets (`session_start_limit.max_concurrency`).
    pub max_concurrency: u32,
    /// Clusters wanted; fewer are made when there are fewer shards.
    pub clusters: u32,
    /// First shard this host runs (default 0).
    pub first_shard: Option<u32>,
    /// Last shard this host runs (default total − 1).
    pub last_shard: Option<u32>,
}

/// The shard total for a count policy. Automatic totals are rounded up to a multiple of
/// `max_concurrency` when it is above 1, as large bots must run.
pub fn shard_total(
    count: ShardCount,
    recommended: u32,
    max_concurrency: u32,
) -> Result<u32, PlanError> {
    let round = |n: u32| {
        if max_concurrency > 1 {
            n.div_ceil(max_concurrency) * max_concurrency
        } else {
            n
        }
    };
    let total = match count {
        ShardCount::Auto => round(recommended.max(1)),
        ShardCount::Exact(n) if max_concurrency > 1 && n % max_concurrency != 0 => {
            return Err(PlanError::NotAMultiple {
                total: n,
                max_concurrency,
            });
        }
        ShardCount::Exact(n) => n,
        ShardCount::GuildsPerShard(0) => return Err(PlanError::NoGuildsPerShard),
        ShardCount::GuildsPerShard(g) => {
            round((u64::from(recommended.max(1)) * 1000).div_ceil(u64::from(g)) as u32)
        }
    };
    if total == 0 {
        return Err(PlanError::NoShards);
    }
    Ok(total)
}

/// This host's slice `first..=last` of `from_total` shards, scaled to `to_total`: each boundary
/// `b` moves to `floor(b * to_total / from_total)`, so hosts that split the old total between
/// them split the new one without gap or overlap (a host running the whole bot keeps running
/// all of it). `None` when the slice would be empty (shrinking far below the number of hosts).
#[must_use]
pub fn scale_slice(first: u32, last: u32, from_total: u32, to_total: u32) -> Option<(u32, u32)> {
    let scale = |b: u32| (u64::from(b) * u64::from(to_total) / u64::from(from_total.max(1))) as u32;
    let (start, end) = (scale(first), scale(last.saturating_add(1)));
    (end > start).then(|| (start, end - 1))
}

/// The whole bot's plan of `total` shards in `ranges` clusters: what every host of a bot split
/// across hosts by Redis plans (each runs the ranges it is assigned).
pub(crate) fn whole(total: u32, ranges: u32, max_concurrency: u32) -> Result<ShardPlan, PlanError> {
    // Read from Redis or another host's message: bounded before anything is allocated by it.
    if total > 65_536 || ranges > 1024 {
        return Err(PlanError::TooLarge {
            total,
            clusters: ranges,
        });
    }
    plan(PlanInput {
        count: ShardCount::Exact(total),
        recommended: 0,
        max_concurrency,
        clusters: ranges,
        first_shard: None,
        last_shard: None,
    })
}

/// Plans a fleet: the total, then contiguous ranges, larger ranges first when they do not divide
/// evenly.
pub fn plan(input: PlanInput) -> Result<ShardPlan, PlanError> {
    if input.clusters == 0 {
        return Err(PlanError::NoClusters);
    }
    let total = shard_total(input.count, input.recommended, input.max_concurrency)?;
    let first = input.first_shard.unwrap_or(0);
    let last = input.last_shard.unwrap_or(total - 1);
    if first > last {
        return Err(PlanError::FirstAfterLast { first, last });
    }
    if last >= total {
        return Err(PlanError::LastBeyondTotal { last, total });
    }
    let shards = last - first + 1;
    let clusters = input.clusters.min(shards);
    let mut plans = Vec::with_capacity(clusters as usize);
    let mut next = first;
    for id in 0..clusters {
        let left = last - next + 1;
        let size = left.div_ceil(clusters - id);
        plans.push(ClusterPlan {
            id,
            first_shard: next,
            last_shard: next + size - 1,
        });
        next += size;
    }
    Ok(ShardPlan {
        shard_total: total,
        max_concurrency: input.max_concurrency.max(1),
        clusters: plans,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_whole_bot_plan_from_another_process_is_bounded() {
        let plan = whole(96, 6, 16).unwrap();
        assert_eq!((plan.shard_total, plan.clusters.len()), (96, 6));
        assert!(matches!(
            whole(u32::MAX, u32::MAX, 1),
            Err(PlanError::TooLarge { .. })
        ));
        assert!(whole(65_536, 1025, 1).is_err());
    }

    #[test]
    fn a_hosts_slice_scales_with_the_total_and_hosts_still_tile_the_bot() {
        assert_eq!(scale_slice(2, 3, 4, 8), Some((4, 7)));
        assert_eq!(
            scale_slice(0, 3, 4, 6),
            Some((0, 5)),
            "the whole bot stays whole"
        );
        // Three hosts over 10 shards, resharded to 16, 7 and 5: no gap, no overlap.
        let hosts = [(0, 2), (3, 6), (7, 9)];
        for to in [16, 7, 5] {
            let scaled: Vec<_> = hosts
                .iter()
                .map(|&(f, l)| scale_slice(f, l, 10, to).unwrap())
                .collect();
            assert_eq!(scaled[0].0, 0);
            assert_eq!(scaled[2].1, to - 1);
            for pair in scaled.windows(2) {
                assert_eq!(pair[0].1 + 1, pair[1].0, "{to}: {scaled:?}");
            }
        }
        assert_eq!(
            scale_slice(0, 0, 4, 2),
            None,
            "a quarter of 2 shards is empty"
        );
        assert_eq!(scale_slice(1, 1, 4, 2), Some((0, 0)));
    }

    fn input(
        count: ShardCount,
        recommended: u32,
        max_concurrency: u32,
        clusters: u32,
    ) -> PlanInput {
        PlanInput {
            count,
            recommended,
            max_concurrency,
            clusters,
            first_shard: None,
            last_shard: None,
        }
    }

    fn ranges(plan: &ShardPlan) -> Vec<(u32, u32)> {
        plan.clusters
            .iter()
            .map(|c| (c.first_shard, c.last_shard))
            .collect()
    }

    #[test]
    fn totals_follow_the_policy_and_round_to_max_concurrency() {
        assert_eq!(shard_total(ShardCount::Auto, 9, 1), Ok(9));
        assert_eq!(shard_total(ShardCount::Auto, 9, 16), Ok(16));
        assert_eq!(shard_total(ShardCount::Auto, 33, 16), Ok(48));
        assert_eq!(shard_total(ShardCount::Exact(7), 9, 1), Ok(7));
        assert_eq!(shard_total(ShardCount::Exact(32), 9, 16), Ok(32));
        assert_eq!(
            shard_total(ShardCount::Exact(7), 9, 16),
            Err(PlanError::NotAMultiple {
                total: 7,
                max_concurrency: 16
            })
        );
        assert_eq!(shard_total(ShardCount::GuildsPerShard(500), 4, 1), Ok(8));
        assert_eq!(shard_total(ShardCount::GuildsPerShard(1500), 4, 1), Ok(3));
        assert_eq!(
            shard_total(ShardCount::GuildsPerShard(0), 4, 1),
            Err(PlanError::NoGuildsPerShard)
        );
        assert_eq!(
            shard_total(ShardCount::Exact(0), 4, 1),
            Err(PlanError::NoShards)
        );
    }

    #[test]
    fn ranges_are_contiguous_and_front_loaded() {
        let p = plan(input(ShardCount::Exact(16), 1, 1, 4)).unwrap();
        assert_eq!(ranges(&p), [(0, 3), (4, 7), (8, 11), (12, 15)]);
        let p = plan(input(ShardCount::Exact(10), 1, 1, 4)).unwrap();
        assert_eq!(ranges(&p), [(0, 2), (3, 5), (6, 7), (8, 9)]);
        assert_eq!(p.shard_count(), 10);
        assert_eq!(p.cluster_of_shard(6), Some(2));
        assert_eq!(p.cluster_of_shard(10), None);
    }

    #[test]
    fn more_clusters_than_shards_makes_fewer_clusters() {
        let p = plan(input(ShardCount::Exact(3), 1, 1, 8)).unwrap();
        assert_eq!(ranges(&p), [(0, 0), (1, 1), (2, 2)]);
    }

    #[test]
    fn a_host_can_run_a_slice_of_the_bot() {
        let p = plan(PlanInput {
            first_shard: Some(8),
            last_shard: Some(15),
            ..input(ShardCount::Exact(32), 1, 1, 2)
        })
        .unwrap();
        assert_eq!(p.shard_total, 32);
        assert_eq!(ranges(&p), [(8, 11), (12, 15)]);
    }

    #[test]
    fn impossible_plans_say_why() {
        let bad = |first, last| {
            plan(PlanInput {
                first_shard: Some(first),
                last_shard: Some(last),
                ..input(ShardCount::Exact(8), 1, 1, 2)
            })
        };
        assert_eq!(
            bad(5, 2),
            Err(PlanError::FirstAfterLast { first: 5, last: 2 })
        );
        assert_eq!(
            bad(0, 8),
            Err(PlanError::LastBeyondTotal { last: 8, total: 8 })
        );
        assert_eq!(
            plan(input(ShardCount::Exact(8), 1, 1, 0)),
            Err(PlanError::NoClusters)
        );
        assert_eq!(
            PlanError::FirstAfterLast { first: 5, last: 2 }.to_string(),
            "first shard 5 is after last shard 2"
        );
    }
}
