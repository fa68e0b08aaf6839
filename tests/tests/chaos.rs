//! The chaos run, bounded for CI: about half a minute of SIGKILLs, gateway faults, events and
//! commands against a real fleet (see `fleet_tests::chaos`; `cargo xtask chaos` runs it longer).

use std::time::Duration;

use fleet_tests::chaos::{ChaosConfig, run};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fleet_survives_half_a_minute_of_chaos() {
    let config = ChaosConfig::new(Duration::from_secs(30), env!("CARGO_BIN_EXE_testbot"));
    let report = run(config).await;
    eprintln!("{report}");
    // The chaos happened.
    assert!(report.kills >= 5, "{report}");
    assert!(report.faults.values().sum::<u64>() >= 15, "{report}");
    assert!(report.commands.answered > 0, "{report}");
    // And nothing broke.
    assert_eq!(report.violations, 0, "{report}");
    assert!(report.recovered, "{report}");
    assert_eq!(report.commands.hung, 0, "{report}");
    assert_eq!(report.commands.other_errors, 0, "{report}");
    assert_eq!(report.unexplained_losses(), 0, "{report}");
    // Every killed cluster was live, so it had checkpointed every session: its replacement
    // resumed them all.
    assert_eq!(report.identifies_after_launch, 0, "{report}");
    assert_eq!(report.events.lost_abandoned, 0, "{report}");
}
