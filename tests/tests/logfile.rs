//! The admiral's log file: its own lines and its workers' echoed lines, in a daily file. A test
//! binary of its own, since it installs the process's one global subscriber.

mod common;

use carrier::logging::{LogFile, LogFormat};
use carrier::{FleetEvent, Payload};
use common::{WAIT, launch, mock_config, options, until};
use discord_mock::MockDiscord;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_file_holds_the_admirals_lines_and_its_workers() {
    let dir = std::env::temp_dir().join(format!("fleet-logs-{}", fastrand::u64(..)));
    let file = LogFile {
        dir: dir.clone(),
        prefix: "fleet".into(),
        keep: 3,
    };
    carrier::logging::init_with_file(LogFormat::Text, "info", Some(&file)).unwrap();
    let mock = MockDiscord::start(mock_config(2, 1, 1)).await.unwrap();
    let mut options = options(&mock, 1);
    options.echo_output = true;
    let (admiral, mut events) = launch(fleet_tests::fleet(options)).await;
    admiral.wait_ready(WAIT).await.unwrap();
    admiral
        .ipc()
        .service_command("echo", Payload::from("trace-warn:into the file"))
        .await
        .unwrap();
    until(
        &mut events,
        |e| matches!(e, FleetEvent::Output { line, .. } if line.contains("into the file")),
    )
    .await;
    let files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|f| f.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    let name = files[0].file_name().unwrap().to_string_lossy().into_owned();
    let extension = files[0].extension().and_then(|e| e.to_str());
    assert!(
        name.starts_with("fleet.") && extension == Some("log"),
        "{name}"
    );
    let text = std::fs::read_to_string(&files[0]).unwrap();
    // The admiral's own steps, by category, with no colour codes.
    assert!(text.contains("fleet::launch"), "{text}");
    assert!(text.contains("every worker launched"), "{text}");
    assert!(!text.contains('\u{1b}'), "no colour codes in a file");
    // A worker's line, tagged with its worker.
    let echoed = text
        .lines()
        .find(|l| l.contains("into the file"))
        .expect("the worker's line is in the file");
    assert!(echoed.starts_with("[service-echo] "), "{echoed}");
    admiral.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}
