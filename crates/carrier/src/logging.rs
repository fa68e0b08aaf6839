//! Operator logging: one ready `tracing` setup for the admiral and every worker.
//!
//! [`init`] installs a subscriber that writes to standard error. The text format uses colour
//! only on a terminal. The JSON format writes one object per line. Filters use `RUST_LOG` syntax
//! (`info,fleet::shard=debug`). The admiral hands its format and filter to the workers it spawns
//! ([`ENV_LOG_FORMAT`], [`ENV_LOG`]), so a worker that calls `init` logs the same way.
//!
//! Workers' standard error comes back to the admiral, which echoes each line with the worker it
//! came from. A text line is prefixed with `[cluster-0]`. A JSON line gets a `"worker"` field,
//! and a worker line that is not JSON is wrapped as `{"worker": .., "line": ..}`. Each line keeps
//! the timestamp its worker gave it.
//!
//! eris-fleet's `whatToLog` categories map to these targets, so one filter directive turns a
//! category on or off:
//!
//! | eris-fleet category | target |
//! |---|---|
//! | `gateway_shards`, `shards_spread`, `admiral_start`, `all_clusters_launched`, `all_services_launched`, `cluster_launch`, `service_launch` | `fleet::launch` |
//! | `cluster_start`, `service_start`, `cluster_ready`, `service_ready`, `code_loaded` | `fleet::lifecycle` |
//! | `cluster_restart`, `service_restart` | `fleet::restart` |
//! | `cluster_shutdown`, `service_shutdown`, `total_shutdown` | `fleet::shutdown` |
//! | `resharding_transition`, `resharding_transition_complete`, `resharding_worker_killed` | `fleet::reshard` |
//! | `shard_connect`, `shard_ready`, `shard_disconnect`, `shard_resume` | `fleet::shard` |
//! | `concurrency_group_starting` | `fleet::identify` |
//! | `stats_update` | `fleet::stats` |
//!
//! Other targets: `fleet::admiral` (the admiral's own steps), `fleet::ipc` (the IPC link and
//! protocol errors), `fleet::worker` (records workers send with `Ipc::log`, worker-side failures
//! and panics), `fleet::proxy` (the REST proxy), `fleet::http` (the HTTP endpoint). Steps are
//! logged at `info`, failures at `warn` or `error`; identify grants at `debug`.

use std::io::{IsTerminal as _, Write as _};
use std::path::PathBuf;
use std::sync::OnceLock;

use tracing_appender::rolling::RollingFileAppender;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter as _;

/// The admiral's log file, once [`init_with_file`] opened one.
static FILE: OnceLock<RollingFileAppender> = OnceLock::new();

/// A log file beside standard error, for the admiral: a new file every day, the oldest removed
/// beyond `keep`. Workers' lines reach it through the admiral's echo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogFile {
    /// The directory the files go in (made if missing).
    pub dir: PathBuf,
    /// File names start with this and end with the day and `.log` (`fleet.2026-12-01.log`).
    pub prefix: String,
    /// Files kept, the current one included.
    pub keep: usize,
}

/// The filter the admiral hands its workers (`RUST_LOG` syntax).
pub const ENV_LOG: &str = "FLEET_LOG";
/// The format the admiral hands its workers: `text` or `json`.
pub const ENV_LOG_FORMAT: &str = "FLEET_LOG_FORMAT";

/// How log lines look.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum LogFormat {
    /// Human-readable text, coloured on a terminal.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

impl LogFormat {
    /// The name workers are handed.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Text => "text",
            Self::Json => "json",
        }
    }

    /// Parses `text` or `json`.
    #[must_use]
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "text" => Some(Self::Text),
            "json" => Some(Self::Json),
            _ => None,
        }
    }
}

/// The filter in effect: the one the admiral handed this worker, else `RUST_LOG`, else
/// `default`.
fn directives(default: &str) -> String {
    std::env::var(ENV_LOG)
        .ok()
        .or_else(|| std::env::var("RUST_LOG").ok())
        .unwrap_or_else(|| default.to_owned())
}

/// Installs the subscriber, for the admiral and its workers alike (call it first thing in
/// `main`). `format`: how lines look (a worker uses the admiral's); the filter is the one the
/// admiral handed a worker (`FleetOptions::log_filter`), else `RUST_LOG`, else `default_filter`
/// (`RUST_LOG` syntax, such as `info` or `warn,fleet=info`). Does nothing if a subscriber is
/// already installed.
pub fn init(format: LogFormat, default_filter: &str) {
    let _ = init_with_file(format, default_filter, None);
}

/// [`init`], also writing every line (the workers' echoed lines included) to a daily rotated
/// file. Workers never open the file: their lines reach it through the admiral.
///
/// # Errors
/// When the log file's directory cannot be made or written.
pub fn init_with_file(
    format: LogFormat,
    default_filter: &str,
    file: Option<&LogFile>,
) -> std::io::Result<()> {
    let file = match file {
        Some(file) if !crate::is_worker() => {
            let appender = RollingFileAppender::builder()
                .rotation(tracing_appender::rolling::Rotation::DAILY)
                .filename_prefix(file.prefix.clone())
                .filename_suffix("log")
                .max_log_files(file.keep.max(1))
                .build(&file.dir)
                .map_err(std::io::Error::other)?;
            Some(FILE.get_or_init(|| appender))
        }
        _ => None,
    };
    let format = std::env::var(ENV_LOG_FORMAT)
        .ok()
        .and_then(|f| LogFormat::parse(&f))
        .unwrap_or(format);
    let directives = directives(default_filter);
    let filter = EnvFilter::try_new(&directives).unwrap_or_else(|error| {
        eprintln!("fleet: bad log filter {directives:?} ({error}); logging at info");
        EnvFilter::new("info")
    });
    // Colour only where a person reads it: a terminal, and no file beside it.
    let ansi = std::io::stderr().is_terminal() && file.is_none();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .log_internal_errors(false)
        .with_writer(|| Both);
    let _ = match format {
        LogFormat::Text => builder.with_ansi(ansi).try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
    };
    Ok(())
}

/// Writes to standard error and to the log file, if one is open.
struct Both;

impl std::io::Write for Both {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        // A standard error nobody reads any more (a worker whose admiral died, before it moves
        // its output to a file) loses the line, never fails the caller: the formatter would
        // report the failure on standard error again, and that panics.
        let _ = std::io::stderr().write_all(buf);
        if let Some(file) = FILE.get() {
            // A full disk must not stop the fleet's logging to standard error.
            let _ = file.make_writer().write_all(buf);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let _ = std::io::stderr().flush();
        Ok(())
    }
}

/// Writes one echoed worker line to standard error and to the log file, if one is open.
pub(crate) fn write_echo(line: &str) {
    let _ = writeln!(Both, "{line}");
}

/// The environment the admiral gives its workers so they log as it does.
pub(crate) fn worker_env(format: LogFormat, filter: Option<&str>) -> Vec<(&'static str, String)> {
    let mut env = vec![(ENV_LOG_FORMAT, format.as_str().to_owned())];
    if let Some(filter) = filter {
        env.push((ENV_LOG, filter.to_owned()));
    }
    env
}

/// One line of a worker's output as the admiral echoes it.
pub(crate) fn echo_line(format: LogFormat, worker: &str, line: &str) -> String {
    match format {
        LogFormat::Text => format!("[{worker}] {line}"),
        LogFormat::Json => {
            let mut object =
                if let Ok(serde_json::Value::Object(object)) = serde_json::from_str(line) {
                    object
                } else {
                    let mut object = serde_json::Map::new();
                    object.insert("line".to_owned(), line.into());
                    object
                };
            object.insert("worker".to_owned(), worker.into());
            serde_json::Value::Object(object).to_string()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_echo_tags_a_workers_lines_and_keeps_their_timestamps() {
        let line = r#"{"timestamp":"2026-12-01T10:00:00.000001Z","level":"INFO","target":"fleet::shard","message":"ready"}"#;
        let echoed: serde_json::Value =
            serde_json::from_str(&echo_line(LogFormat::Json, "cluster-2", line)).unwrap();
        assert_eq!(echoed["worker"], "cluster-2");
        assert_eq!(echoed["timestamp"], "2026-12-01T10:00:00.000001Z");
        assert_eq!(echoed["message"], "ready");
        // A line that is not JSON (a panic message) is wrapped, not lost.
        let echoed: serde_json::Value = serde_json::from_str(&echo_line(
            LogFormat::Json,
            "service-echo",
            "thread 'main' panicked at src/main.rs:1:1",
        ))
        .unwrap();
        assert_eq!(echoed["worker"], "service-echo");
        assert!(echoed["line"].as_str().unwrap().contains("panicked"));
        assert_eq!(
            echo_line(LogFormat::Text, "cluster-0", "hello"),
            "[cluster-0] hello"
        );
    }

    #[test]
    fn formats_round_trip_through_their_names() {
        for format in [LogFormat::Text, LogFormat::Json] {
            assert_eq!(LogFormat::parse(format.as_str()), Some(format));
        }
        assert_eq!(LogFormat::parse("xml"), None);
        let env = worker_env(LogFormat::Json, Some("debug"));
        assert_eq!(
            env,
            [
                (ENV_LOG_FORMAT, "json".to_owned()),
                (ENV_LOG, "debug".to_owned())
            ]
        );
    }
}
