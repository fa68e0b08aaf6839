//! `cargo xtask fuzz [--inputs N] [--seed S]`: the fuzzers of [`fleet_tests::fuzz`] with many
//! inputs, printing inputs per second for each target and any failing input, minimised. Exits 1
//! if a target failed.

use std::process::ExitCode;

use clap::Parser;

/// A long fuzzing run.
#[derive(Debug, Parser)]
struct Args {
    /// Inputs in all, spread over the decoders (the REST proxy, over real HTTP, gets a
    /// thousandth of them).
    #[arg(long, default_value_t = 10_000_000)]
    inputs: u64,
    /// The inputs' seed (default: random, printed).
    #[arg(long)]
    seed: Option<u64>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let seed = args.seed.unwrap_or_else(|| fastrand::u64(..));
    let per_decoder = u32::try_from(args.inputs / 5).unwrap_or(u32::MAX).max(1);
    let plan = fleet_tests::fuzz::FuzzPlan {
        decoder_inputs: per_decoder,
        proxy_inputs: (per_decoder / 200).max(100),
        seed,
    };
    println!(
        "fuzz: seed {seed}, {} inputs for each of 5 decoders, {} HTTP requests to the REST proxy",
        plan.decoder_inputs, plan.proxy_inputs
    );
    let reports = fleet_tests::fuzz::run(plan);
    let mut failed = false;
    for report in &reports {
        println!("{report}");
        failed |= report.failure.is_some();
    }
    let total: u64 = reports.iter().map(|r| r.inputs).sum();
    println!(
        "{total} inputs in all; {}",
        if failed {
            "a target failed"
        } else {
            "no failure"
        }
    );
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
