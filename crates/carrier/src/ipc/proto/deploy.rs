//! What a deploy asks for and what it did: rolling every worker onto a new build.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{RestartMode, Target};

/// A new build to roll every worker onto ([`Request::Deploy`](super::Request::Deploy)): the
/// command that starts it, and how carefully.
///
/// The admiral restarts the first cluster (the canary) onto the new build, watches it for
/// `canary_bake_ms` (a crash, a missed heartbeat or a panic there fails the deploy), then moves
/// the other clusters `at_once` at a time and the services last. If any step fails, every worker
/// already moved is restarted back onto the build it ran before, and the report says why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeployPlan {
    /// The new build's executable (an absolute path to an executable file).
    pub program: std::path::PathBuf,
    /// Its arguments.
    pub args: Vec<String>,
    /// Environment added to the new processes' (besides the fleet's own variables).
    pub env: Vec<(String, String)>,
    /// How each cluster moves: [`RestartMode::Handover`] (the default: no identify, no event
    /// lost) or [`RestartMode::Overlap`] (fresh sessions). Services always overlap.
    pub mode: RestartMode,
    /// How long the canary must serve without crashing, hanging or panicking before the rest
    /// follow, in milliseconds. Default 30 s.
    pub canary_bake_ms: u64,
    /// Clusters moved at the same time after the canary (at least 1). Default 1.
    pub at_once: u32,
    /// The most of the session budget left that the deploy may plan to spend, in percent:
    /// a plan that needs more identifies is refused. Default 10.
    pub max_budget_percent: u32,
    /// Only say what the deploy would do and cost; move nothing.
    pub dry_run: bool,
    /// Once every worker moved, the admiral re-executes itself in place (its own program as it
    /// is on disk now) and adopts them all again: the whole fleet, admiral included, on the new
    /// build. Needs `FleetOptions::admiral_grace`.
    #[serde(default)]
    pub restart_admiral: bool,
}

impl DeployPlan {
    /// A deploy of `program` with the defaults: handovers, a 30 s canary, one cluster at a time,
    /// at most a tenth of the session budget left.
    #[must_use]
    pub fn new(program: impl Into<std::path::PathBuf>) -> Self {
        Self {
            program: program.into(),
            args: Vec::new(),
            env: Vec::new(),
            mode: RestartMode::Handover,
            canary_bake_ms: 30_000,
            at_once: 1,
            max_budget_percent: 10,
            dry_run: false,
            restart_admiral: false,
        }
    }

    /// Has the admiral re-execute itself once every worker moved (see
    /// [`restart_admiral`](Self::restart_admiral)).
    #[must_use]
    pub fn restart_admiral(mut self) -> Self {
        self.restart_admiral = true;
        self
    }

    /// Adds an argument.
    #[must_use]
    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// Adds an environment variable.
    #[must_use]
    pub fn env(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((name.into(), value.into()));
        self
    }

    /// Sets how clusters move.
    #[must_use]
    pub fn mode(mut self, mode: RestartMode) -> Self {
        self.mode = mode;
        self
    }

    /// Sets how long the canary must serve before the rest follow.
    #[must_use]
    pub fn canary_bake(mut self, bake: Duration) -> Self {
        self.canary_bake_ms = u64::try_from(bake.as_millis()).unwrap_or(u64::MAX);
        self
    }

    /// Sets how many clusters move at the same time after the canary.
    #[must_use]
    pub fn at_once(mut self, at_once: u32) -> Self {
        self.at_once = at_once;
        self
    }

    /// Sets the share of the session budget left the deploy may plan to spend, in percent.
    #[must_use]
    pub fn max_budget_percent(mut self, percent: u32) -> Self {
        self.max_budget_percent = percent;
        self
    }

    /// Makes it a dry run: the report says what would happen.
    #[must_use]
    pub fn dry_run(mut self) -> Self {
        self.dry_run = true;
        self
    }
}

/// What a deploy did, or (a dry run) would do.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeployReport {
    /// A dry run: nothing moved.
    pub dry_run: bool,
    /// The workers in the order they move: the canary first, services last.
    pub order: Vec<Target>,
    /// Those that serve on the new build now.
    pub moved: Vec<Target>,
    /// Those that had moved and were restarted back onto the old build after a failure.
    pub rolled_back: Vec<Target>,
    /// Identifies the plan spends: 0 when every cluster hands its sessions over, every shard's
    /// otherwise.
    pub identifies_planned: u64,
    /// Identifies the fleet was granted while the deploy ran.
    pub identifies_spent: u64,
    /// The session budget left when the deploy started, and the budget per period, as the
    /// identify queue knows them.
    pub budget_remaining: Option<u32>,
    /// See [`budget_remaining`](Self::budget_remaining).
    pub budget_total: Option<u32>,
    /// The session budget left after the plan, if it spends as planned.
    pub budget_after: Option<u32>,
    /// How long it should take, in milliseconds: each step's restart and soft-kill notice, and
    /// the canary's bake.
    pub estimate_ms: u64,
    /// How long it took, in milliseconds.
    pub took_ms: u64,
    /// Why it failed (after rolling back), if it did.
    pub failure: Option<String>,
}

impl DeployReport {
    /// Whether every worker moved.
    #[must_use]
    pub fn succeeded(&self) -> bool {
        self.failure.is_none() && !self.dry_run && self.moved.len() == self.order.len()
    }
}

impl std::fmt::Display for DeployReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let budget = match (self.budget_remaining, self.budget_after) {
            (Some(left), Some(after)) => format!("{left} identifies left, {after} after"),
            _ => "session budget unknown".to_owned(),
        };
        write!(
            f,
            "{}{} workers, {} identifies planned ({budget}), about {:.1?}",
            if self.dry_run { "dry run: " } else { "" },
            self.order.len(),
            self.identifies_planned,
            Duration::from_millis(self.estimate_ms)
        )?;
        if !self.dry_run {
            write!(
                f,
                "; {} moved, {} rolled back, {} identifies spent, took {:.1?}",
                self.moved.len(),
                self.rolled_back.len(),
                self.identifies_spent,
                Duration::from_millis(self.took_ms)
            )?;
        }
        if let Some(failure) = &self.failure {
            write!(f, "; failed: {failure}")?;
        }
        Ok(())
    }
}
