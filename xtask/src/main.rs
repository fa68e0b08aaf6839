//! Project tasks, run as `cargo xtask <task>`:
//!
//! - `example [ARGS]`: build and run the fleet example (on an embedded discord-mock unless
//!   `DISCORD_TOKEN` is set); arguments after `example` go to the example (`--once`, `--lib`).
//! - `bench [SECTION...]`: build the benchmark harness in release mode and print its figures; with
//!   sections (`startup`, `ipc`, `memory`, `events`, `restart`, `rest`, `stats`, and `scale`, which
//!   runs only when named), only those.
//! - `mock [ARGS]`: run the `discord-mock` binary.
//! - `chaos [--minutes N] [--seed S]`: a long chaos run (clusters killed with `SIGKILL`, gateway faults,
//!   events and commands) in release mode; prints its invariants and the admiral's memory over
//!   time.
//! - `fuzz [--inputs N] [--seed S]`: feed every decoder of input from another process (IPC
//!   frames, the REST proxy, discord-mock's gateway and REST) generated and mutated inputs in
//!   release mode; prints inputs per second and any failing input, minimised.

use std::process::{Command, ExitCode};

use anyhow::{Context as _, Result, bail};

fn main() -> ExitCode {
    match run() {
        Ok(code) => code,
        Err(error) => {
            eprintln!("xtask: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<ExitCode> {
    let mut args = std::env::args().skip(1);
    let Some(task) = args.next() else {
        bail!("usage: cargo xtask <example|bench|mock|chaos|fuzz> [args...]");
    };
    let rest: Vec<String> = args.collect();
    let (package, binary, release) = match task.as_str() {
        "example" => ("fleet-examples", "fleet-example", false),
        "bench" => ("fleet-examples", "fleet-bench", true),
        "mock" => ("discord-mock", "discord-mock", false),
        "chaos" => ("fleet-tests", "fleet-chaos", true),
        "fuzz" => ("fleet-tests", "fleet-fuzz", true),
        other => bail!("unknown task {other:?}; expected example, bench, mock, chaos or fuzz"),
    };
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let mut command = Command::new(cargo);
    command.args(["run", "--quiet", "--package", package, "--bin", binary]);
    if release {
        command.arg("--release");
    }
    command.arg("--").args(&rest);
    let status = command
        .status()
        .with_context(|| format!("running cargo for {task}"))?;
    Ok(status
        .code()
        .and_then(|c| u8::try_from(c).ok())
        .map_or(ExitCode::FAILURE, ExitCode::from))
}
