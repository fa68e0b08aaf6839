//! The admiral's status page in a real headless browser (Chromium, driven over the `DevTools`
//! protocol): the grid fills with every shard ready, follows a cluster's death live without a
//! reload, and the "find my shard" box names a guild's shard and cluster. A screenshot is saved
//! for a person to look at.

mod common;

use std::time::Duration;

use base64::Engine as _;
use carrier::WorkerId;
use common::{WAIT, launch, mock_config, options};
use discord_mock::MockDiscord;
use futures::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use tokio::io::AsyncBufReadExt as _;
use tokio_tungstenite::tungstenite::Message;

/// The browser: `FLEET_CHROMIUM`, or the first of the usual names on `PATH`.
fn chromium() -> String {
    if let Ok(path) = std::env::var("FLEET_CHROMIUM") {
        return path;
    }
    for name in ["chromium", "chromium-browser", "google-chrome"] {
        let found = std::process::Command::new("sh")
            .args(["-c", &format!("command -v {name}")])
            .output()
            .is_ok_and(|o| o.status.success());
        if found {
            return name.to_owned();
        }
    }
    panic!("no Chromium found: install Debian's chromium (.ci/run does) or set FLEET_CHROMIUM");
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A page in a headless browser, driven over the `DevTools` protocol.
struct Browser {
    _child: tokio::process::Child,
    _profile: TempDir,
    socket: Socket,
    session: String,
    next_id: u64,
}

/// A directory removed when dropped.
struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Browser {
    async fn open(url: &str) -> Self {
        let profile = std::env::temp_dir().join(format!("fleet-chromium-{}", fastrand::u64(..)));
        std::fs::create_dir_all(&profile).unwrap();
        let mut child = tokio::process::Command::new(chromium())
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
                "--window-size=1200,1100",
                "about:blank",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .stderr(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("chromium starts");
        let stderr = child.stderr.take().unwrap();
        let mut lines = tokio::io::BufReader::new(stderr).lines();
        let endpoint = tokio::time::timeout(WAIT, async {
            while let Some(line) = lines.next_line().await.unwrap() {
                if let Some(at) = line.find("ws://") {
                    return line[at..].trim().to_owned();
                }
            }
            panic!("chromium ended without a DevTools endpoint");
        })
        .await
        .expect("chromium says where DevTools listens");
        // Keep reading its stderr so it never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let (socket, _) = tokio_tungstenite::connect_async(endpoint.as_str())
            .await
            .unwrap();
        let mut browser = Self {
            _child: child,
            _profile: TempDir(profile),
            socket,
            session: String::new(),
            next_id: 0,
        };
        let target = browser
            .call("Target.createTarget", json!({ "url": "about:blank" }))
            .await;
        let target = target["targetId"].as_str().unwrap().to_owned();
        let attached = browser
            .call(
                "Target.attachToTarget",
                json!({ "targetId": target, "flatten": true }),
            )
            .await;
        browser.session = attached["sessionId"].as_str().unwrap().to_owned();
        // Once the navigation commits, evaluations run in the new page; wait for its load.
        browser.call("Page.navigate", json!({ "url": url })).await;
        browser.until("document.readyState === 'complete'").await;
        browser
    }

    /// One `DevTools` command (on the page once attached); its result.
    async fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut command = json!({ "id": id, "method": method, "params": params });
        if !self.session.is_empty() {
            command["sessionId"] = json!(self.session);
        }
        self.socket
            .send(Message::text(command.to_string()))
            .await
            .unwrap();
        loop {
            let frame = tokio::time::timeout(WAIT, self.socket.next())
                .await
                .expect("DevTools answers")
                .expect("DevTools stays connected")
                .unwrap();
            let Message::Text(text) = frame else { continue };
            let message: Value = serde_json::from_str(&text).unwrap();
            if message["id"] == json!(id) {
                assert!(message.get("error").is_none(), "{method}: {message}");
                return message["result"].clone();
            }
        }
    }

    /// Evaluates `expression` in the page; its value.
    async fn eval(&mut self, expression: &str) -> Value {
        let params = json!({ "expression": expression, "returnByValue": true });
        let result = self.call("Runtime.evaluate", params).await;
        result["result"]["value"].clone()
    }

    /// Waits until `expression` is true in the page: it is checked again on every change of
    /// the page's document (a `MutationObserver`), failing after [`WAIT`].
    async fn until(&mut self, expression: &str) {
        let watch = format!(
            "new Promise((resolve) => {{
                const check = () => {{
                    let ok = false;
                    try {{ ok = ({expression}) === true; }} catch (e) {{}}
                    if (ok) {{ observer.disconnect(); resolve(true); }}
                    return ok;
                }};
                const observer = new MutationObserver(check);
                observer.observe(document, {{ subtree: true, childList: true, characterData: true, attributes: true }});
                document.addEventListener('readystatechange', check);
                check();
            }})"
        );
        let params = json!({ "expression": watch, "returnByValue": true, "awaitPromise": true });
        let waited = tokio::time::timeout(WAIT, self.call("Runtime.evaluate", params)).await;
        if waited.is_err() {
            let text = self
                .eval("document.body ? document.body.innerText : ''")
                .await;
            panic!("the page never showed {expression}: {text}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_shows_a_twilight_fleet_live_and_finds_a_guilds_shard() {
    status_page_of(fleet_tests::fleet, "twilight").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_shows_a_serenity_fleet_live_and_finds_a_guilds_shard() {
    status_page_of(fleet_tests::serenity_fleet, "serenity").await;
}

async fn status_page_of(fleet: fn(carrier::FleetOptions) -> carrier::Fleet, lib: &str) {
    let mock = MockDiscord::start(mock_config(16, 4, 2)).await.unwrap();
    let mut options = options(&mock, 2);
    options.stats_interval = Duration::from_millis(200);
    let (admiral, _events) = launch(fleet(options)).await;
    admiral.wait_ready(WAIT).await.unwrap();
    let guild = mock.guild_ids()[5];
    let shard = (guild >> 22) % 4;
    let cluster = admiral
        .plan()
        .clusters
        .iter()
        .find(|c| (c.first_shard..=c.last_shard).contains(&(shard as u32)))
        .unwrap()
        .id;
    let url = format!("{}/?guild={guild}", admiral.http_url().unwrap());
    let mut page = Browser::open(&url).await;

    // Every shard ready, the clusters and services listed.
    page.until("document.querySelectorAll('.shard.ready').length === 4")
        .await;
    page.until("document.getElementById('live').textContent === 'live'")
        .await;
    assert_eq!(
        page.eval("document.getElementById('guilds').textContent")
            .await,
        json!("16")
    );
    assert_eq!(
        page.eval("document.querySelectorAll('#clusters tr').length")
            .await,
        json!(2)
    );
    let services = page
        .eval("document.getElementById('services').innerText")
        .await;
    assert!(services.as_str().unwrap().contains("echo"), "{services}");

    // The guild given in the address: its shard and cluster, its tile marked.
    let expected = format!("shard {shard} in cluster {cluster}: ready");
    page.until(&format!(
        "document.getElementById('lookup-result').textContent === {expected:?}"
    ))
    .await;
    assert_eq!(
        page.eval("document.querySelector('.shard.found').dataset.shard")
            .await,
        json!(shard.to_string())
    );
    // Typed into the box: another guild, and a bad id.
    let other = mock.guild_ids()[0];
    let other_shard = (other >> 22) % 4;
    page.eval(&format!(
        "(() => {{ const i = document.getElementById('guild'); i.value = '{other}'; i.dispatchEvent(new Event('input')); }})()"
    ))
    .await;
    let result = page
        .eval("document.getElementById('lookup-result').textContent")
        .await;
    assert!(
        result
            .as_str()
            .unwrap()
            .starts_with(&format!("shard {other_shard} in cluster")),
        "{result}"
    );
    let screenshot = page
        .call("Page.captureScreenshot", json!({ "format": "png" }))
        .await;
    let png = base64::engine::general_purpose::STANDARD
        .decode(screenshot["data"].as_str().unwrap())
        .unwrap();
    assert!(png.starts_with(b"\x89PNG"));
    let path =
        std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("status-page-{lib}.png"));
    std::fs::write(&path, &png).unwrap();
    println!("status page screenshot: {}", path.display());

    page.eval("(() => { const i = document.getElementById('guild'); i.value = 'abc'; i.dispatchEvent(new Event('input')); })()").await;
    assert_eq!(
        page.eval("document.getElementById('lookup-result').textContent")
            .await,
        json!("not a guild id")
    );

    // A cluster dies (no restarts here): the page follows without a reload.
    common::kill(&admiral, &WorkerId::Cluster(1)).await;
    page.until("document.querySelectorAll('.shard.ready').length === 2")
        .await;
    page.until("document.querySelectorAll('.shard.disconnected').length === 2")
        .await;
    page.until(
        "document.querySelector('#clusters tr[data-cluster=\"1\"]').innerText.includes('failed')",
    )
    .await;
    page.until("document.getElementById('events').innerText.includes('cluster-1')")
        .await;
    // What happened before the page opened is listed too.
    let events = page
        .eval("document.getElementById('events').innerText")
        .await;
    assert!(events.as_str().unwrap().contains("fleet ready"), "{events}");
    admiral.shutdown().await;
}
