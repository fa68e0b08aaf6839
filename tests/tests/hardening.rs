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

/// The value of `name` in a process's environment.
fn environ_var(pid: u32, name: &str) -> Option<String> {
    let environ = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    environ.split(|b| *b == 0).find_map(|entry| {
        let entry = std::str::from_utf8(entry).ok()?;
        entry
            .strip_prefix(name)?
            .strip_prefix('=')
            .map(str::to_owned)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_debug_output_shows_the_token_or_the_ipc_secret() {
    const TOKEN: &str = "hardening-token-7f3a9c";
    let mut config = mock_config(4, 1, 1);
    config.token = TOKEN.into();
    let mock = MockDiscord::start(config).await.unwrap();
    let mut options = options(&mock, 1);
    options.token = TOKEN.into();
    let options_debug = format!("{options:?}");
    let fleet = fleet_tests::fleet(options);
    let fleet_debug = format!("{fleet:?}");
    let (admiral, _events) = launch(fleet).await;
    admiral.wait_ready(WAIT).await.unwrap();

    let workers = admiral.workers().await.unwrap();
    let pid = workers
        .iter()
        .find_map(|w| w.pid.filter(|_| w.id == carrier::WorkerId::Cluster(0)))
        .unwrap();
    let secret = environ_var(pid, carrier::ipc::link::ENV_SECRET).expect("a worker has the secret");

    let proxy =
        carrier::proxy::RestProxy::start(carrier::proxy::ProxyConfig::new(mock.http_url(), TOKEN))
            .await
            .unwrap();
    let hello = carrier::ipc::proto::Up::Hello {
        secret: carrier::Secret::new(secret.clone()),
        process: 1,
    };
    let env = carrier::ipc::link::WorkerEnv {
        socket: "/tmp/x".into(),
        secret: carrier::Secret::new(secret.clone()),
        process: 1,
        max_frame: 1024,
        timeout: Duration::from_secs(1),
    };
    // The cluster prints its own context: its IPC handle, HTTP client, senders and cache.
    let cluster_context = admiral
        .ipc()
        .cluster_command(0, Payload::from("debug"))
        .await
        .unwrap();
    let printed = [
        ("FleetOptions", options_debug),
        ("Fleet", fleet_debug),
        ("AdmiralHandle", format!("{admiral:?}")),
        ("RestProxy", format!("{proxy:?}")),
        ("ProxyStatsHandle", format!("{:?}", proxy.stats_handle())),
        ("Up::Hello", format!("{hello:?}")),
        ("WorkerEnv", format!("{env:?}")),
        (
            "twilight ClusterContext",
            String::from_utf8(cluster_context.as_bytes().to_vec()).unwrap(),
        ),
    ];
    for (name, text) in &printed {
        assert!(!text.is_empty(), "{name} prints something");
        assert!(!text.contains(TOKEN), "{name} shows the token: {text}");
        assert!(
            !text.contains(&secret),
            "{name} shows the IPC secret: {text}"
        );
    }
    admiral.shutdown().await;
}
