//! Startup progress for operators: how many shards are ready out of the total, and when the
//! identify queue expects to let the last one go.
//!
//! On a terminal, [`show`] draws a progress bar (indicatif) that updates every few hundred
//! milliseconds. Anywhere else (a log file, a container's output) it writes a summary line
//! every few seconds instead. Both end with one summary line once every worker has started or
//! failed. The figures come from the admiral's own stats rounds, which cost the workers almost
//! nothing.

use std::io::{IsTerminal as _, Write};
use std::time::{Duration, Instant};

use crate::admiral::{AdmiralHandle, Launched};
use crate::stats::FleetStats;

/// How often the bar is redrawn on a terminal.
const TERMINAL_EVERY: Duration = Duration::from_millis(250);
/// How often a summary line is written elsewhere.
const LINE_EVERY: Duration = Duration::from_secs(5);
/// How long workers have to report for one progress reading.
const READING_DEADLINE: Duration = Duration::from_millis(500);

/// One progress line: `12/16 shards ready · identify queue: 4 waiting, about 5 s · 3.1 s`.
fn line(stats: &FleetStats, elapsed: Duration) -> String {
    let queue = if stats.identify.waiting == 0 {
        "identify queue idle".to_owned()
    } else {
        format!(
            "identify queue: {} waiting, about {}",
            stats.identify.waiting,
            seconds(Duration::from_millis(stats.identify.eta_ms))
        )
    };
    format!(
        "{}/{} shards ready · {queue} · {}",
        stats.shards_ready,
        stats.shard_count,
        seconds(elapsed)
    )
}

fn seconds(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

/// The line once the launch is over.
fn summary(launched: Launched, stats: Option<&FleetStats>, elapsed: Duration) -> String {
    let shards = stats.map_or_else(String::new, |s| {
        format!(", {}/{} shards ready", s.shards_ready, s.shard_count)
    });
    format!(
        "fleet launched in {}: {} workers live, {} failed{shards}",
        seconds(elapsed),
        launched.live,
        launched.failed
    )
}

/// Shows the launch's progress on standard error until every worker has started or failed;
/// returns how it ended. Call it right after `Fleet::run` returned the admiral.
///
/// # Errors
/// When the admiral stops before the launch ends.
pub async fn show(admiral: &AdmiralHandle) -> Result<Launched, crate::admiral::AdmiralError> {
    let terminal = std::io::stderr().is_terminal();
    show_to(admiral, std::io::stderr(), terminal).await
}

/// [`show`], writing to `out`: a progress bar if `terminal` (drawn on standard error), else
/// summary lines.
///
/// # Errors
/// As [`show`].
pub async fn show_to(
    admiral: &AdmiralHandle,
    mut out: impl Write,
    terminal: bool,
) -> Result<Launched, crate::admiral::AdmiralError> {
    let started = Instant::now();
    // However long the launch takes: the lifecycle's own timeouts end it.
    let mut launch = std::pin::pin!(admiral.wait_ready(Duration::from_hours(24)));
    let bar = terminal.then(|| {
        let bar = indicatif::ProgressBar::new(u64::from(admiral.plan().shard_count()));
        let style = indicatif::ProgressStyle::with_template("{bar:30} {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
        bar.set_style(style);
        bar
    });
    let every = if terminal { TERMINAL_EVERY } else { LINE_EVERY };
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last = None;
    let launched = loop {
        tokio::select! {
            launched = &mut launch => break launched?,
            _ = tick.tick() => {
                // The first tick is at once; a line elsewhere only once there is news.
                let Ok(stats) = admiral.ipc().stats_within(READING_DEADLINE).await else {
                    continue;
                };
                let text = line(&stats, started.elapsed());
                match &bar {
                    Some(bar) => {
                        bar.set_length(u64::from(stats.shard_count));
                        bar.set_position(u64::from(stats.shards_ready));
                        bar.set_message(text);
                    }
                    None => {
                        let _ = writeln!(out, "fleet: {text}");
                    }
                }
                last = Some(stats);
            }
        }
    };
    let stats = admiral.ipc().stats_within(READING_DEADLINE).await.ok();
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    let _ = writeln!(
        out,
        "{}",
        summary(
            launched,
            stats.as_ref().or(last.as_ref()),
            started.elapsed()
        )
    );
    Ok(launched)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::IdentifyStats;

    #[test]
    fn lines_say_what_is_ready_and_what_the_queue_expects() {
        let stats = FleetStats {
            shards_ready: 12,
            shard_count: 16,
            identify: IdentifyStats {
                waiting: 4,
                eta_ms: 5_000,
                ..IdentifyStats::default()
            },
            ..FleetStats::default()
        };
        assert_eq!(
            line(&stats, Duration::from_millis(3_100)),
            "12/16 shards ready · identify queue: 4 waiting, about 5.0 s · 3.1 s"
        );
        let launched = Launched { live: 5, failed: 1 };
        assert_eq!(
            summary(launched, Some(&stats), Duration::from_secs(9)),
            "fleet launched in 9.0 s: 5 workers live, 1 failed, 12/16 shards ready"
        );
    }
}
