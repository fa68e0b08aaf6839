//! The fleet under attack: hostile input from workers, strangers on the IPC socket and local
//! users on the REST proxy's port, and panics in user code. Each test fails without its fix.

mod common;

use std::time::Duration;

use carrier::{Payload, Target};
use common::{WAIT, launch, mock_config, options};
use discord_mock::MockDiscord;

const THREE_YEARS: Duration = Duration::from_hours(3 * 365 * 24);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timeout_of_years_is_clamped_and_the_admiral_lives() {
    let mock = MockDiscord::start(mock_config(4, 1, 1)).await.unwrap();
    let (admiral, _events) = launch(fleet_tests::fleet(options(&mock, 1))).await;
    admiral.wait_ready(WAIT).await.unwrap();
    let ipc = admiral.ipc();

    // From the admiral's own handle.
    let answer = ipc
        .command_within(
            Target::Service("echo".into()),
            Payload::from("slow"),
            THREE_YEARS,
        )
        .await
        .unwrap();
    assert_eq!(answer, Payload::from("slow done"));

    // From a worker: the cluster asks the service with the same timeout, through the router.
    let answer = ipc
        .cluster_command(0, Payload::from("far:slow"))
        .await
        .unwrap();
    assert_eq!(answer, Payload::from("slow done"));

    // The router still routes.
    assert_eq!(
        ipc.service_command("echo", Payload::from("alive"))
            .await
            .unwrap(),
        Payload::from("alive")
    );
    admiral.shutdown().await;
}
