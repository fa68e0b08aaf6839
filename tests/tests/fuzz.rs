//! The fuzzers, bounded for CI: every decoder of another process's input gets a few thousand
//! mutated seeds, the REST proxy a few hundred requests (see `fleet_tests::fuzz`; `cargo xtask
//! fuzz` runs millions).

use fleet_tests::fuzz::{FuzzPlan, run};

#[test]
fn every_decoder_of_hostile_input_survives_mutated_seeds() {
    let plan = FuzzPlan {
        decoder_inputs: 10_000,
        proxy_inputs: 300,
        seed: fastrand::u64(..),
    };
    let reports = run(plan);
    for report in &reports {
        eprintln!("{report}");
    }
    assert_eq!(reports.len(), 6);
    for report in &reports {
        assert!(report.failure.is_none(), "seed {}: {report}", plan.seed);
        assert!(report.inputs >= u64::from(plan.proxy_inputs), "{report}");
    }
}
