//! `cargo xtask chaos [--minutes N] [--seed S]`: the chaos run of [`fleet_tests::chaos`] for as
//! long as asked, printing its figures (the admiral's memory over time among them). This binary
//! is the admiral and, started by it, each of its workers. Exits 1 if an invariant broke.

use std::process::ExitCode;
use std::time::Duration;

use carrier::FleetOptions;
use clap::Parser;

/// A chaos run against discord-mock.
#[derive(Debug, Parser)]
struct Args {
    /// Minutes of chaos.
    #[arg(long, default_value_t = 5.0)]
    minutes: f64,
    /// The schedule's seed (default: random, printed).
    #[arg(long)]
    seed: Option<u64>,
}

#[tokio::main]
async fn main() -> ExitCode {
    carrier::logging::init(carrier::logging::LogFormat::Text, "error");
    if carrier::is_worker() {
        return match fleet_tests::fleet_from_env(FleetOptions::new(""))
            .run()
            .await
        {
            Ok(_) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("worker failed: {error}");
                ExitCode::FAILURE
            }
        };
    }
    let args = Args::parse();
    let exe = std::env::current_exe().expect("own path");
    let mut config = fleet_tests::chaos::ChaosConfig::new(
        Duration::from_secs_f64(args.minutes.max(0.0) * 60.0),
        exe,
    );
    // Sample the admiral's memory about 60 times over the run (at least every second).
    config.sample_every = config.duration.div_f64(60.0).max(Duration::from_secs(1));
    if let Some(seed) = args.seed {
        config.seed = seed;
    }
    println!(
        "chaos: {:.1} minutes, seed {}, {} clusters, {} shards",
        args.minutes, config.seed, config.clusters, config.shards
    );
    let report = fleet_tests::chaos::run(config).await;
    println!("{report}");
    let broken = report.violations > 0
        || !report.recovered
        || report.commands.hung > 0
        || report.unexplained_losses() > 0;
    if broken {
        println!("an invariant broke");
        ExitCode::FAILURE
    } else {
        println!("every invariant held");
        ExitCode::SUCCESS
    }
}
