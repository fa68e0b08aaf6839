//! Adopting the workers a lost admiral left (`FleetOptions::admiral_grace`): a returning worker
//! challenges the admiral to prove it knows the fleet's secret, then rejoins; the router checks
//! it against its own plan and takes its process over. The launch waits until every worker the
//! last admiral recorded has rejoined or died (at most [`ADOPTION_WINDOW`]), then spawns only the
//! workers nobody adopted.

use std::path::PathBuf;
use std::time::Duration;

use tokio::sync::oneshot;

use super::{Router, Timer};
use crate::admiral::FleetEvent;
use crate::admiral::lifecycle::{Input, WorkerId};
use crate::admiral::{process, run_dir};
use crate::ipc::proto::{Down, PROTOCOL_VERSION, Rejoin, Target, Topics, admiral_proof};

/// The longest the launch waits for the last admiral's workers to come back.
pub(crate) const ADOPTION_WINDOW: Duration = Duration::from_secs(10);

/// How often the router looks whether the workers it waits for still run.
const ADOPTION_CHECK: Duration = Duration::from_millis(100);

/// How often the central store is written to the stable directory, when it changed.
pub(super) const STORE_EVERY: Duration = Duration::from_secs(1);

/// The central store's file in the stable directory.
const STORE_FILE: &str = "store";

/// Writes store snapshots to a stable directory on a thread of its own, the newest first: the
/// router never waits for the disk.
#[derive(Debug)]
pub(crate) struct StoreWriter(std::sync::mpsc::Sender<(Vec<u8>, Option<oneshot::Sender<()>>)>);

impl StoreWriter {
    fn start(dir: PathBuf) -> Option<Self> {
        let (tx, rx) = std::sync::mpsc::channel::<(Vec<u8>, Option<oneshot::Sender<()>>)>();
        std::thread::Builder::new()
            .name("fleet-store".into())
            .spawn(move || {
                while let Ok(mut next) = rx.recv() {
                    let mut done = Vec::new();
                    // Only the newest snapshot matters; every waiter hears once it is written.
                    loop {
                        done.extend(next.1.take());
                        match rx.try_recv() {
                            Ok(newer) => next = newer,
                            Err(_) => break,
                        }
                    }
                    write_store(&dir, &next.0);
                    for waiter in done {
                        let _ = waiter.send(());
                    }
                }
            })
            .ok()?;
        Some(Self(tx))
    }
}

/// Writes a snapshot as the directory's store file (only this user may read it), atomically.
fn write_store(dir: &std::path::Path, snapshot: &[u8]) {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let temporary = dir.join(format!("{STORE_FILE}.new"));
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&temporary)
        .and_then(|mut file| file.write_all(snapshot))
        .and_then(|()| std::fs::rename(&temporary, dir.join(STORE_FILE)));
    if let Err(error) = written {
        tracing::warn!(target: "fleet::admiral", %error, "cannot write the central store for the next admiral");
    }
}

/// A stable directory's admiral: where it records its workers, and whom it still waits for.
#[derive(Debug)]
pub(crate) struct Adoption {
    /// The stable directory.
    pub dir: PathBuf,
    /// Writes the central store there.
    pub store: Option<StoreWriter>,
    /// Pids of the last admiral's workers that neither rejoined nor died yet; `None` once the
    /// fleet has launched.
    pub waiting: Option<Vec<u32>>,
    /// When the launch goes ahead whoever is missing.
    pub until: tokio::time::Instant,
}

impl Adoption {
    /// Waits for `waiting` from now.
    pub fn new(dir: PathBuf, waiting: Vec<u32>) -> Self {
        Self {
            store: StoreWriter::start(dir.clone()),
            dir,
            waiting: Some(waiting),
            until: tokio::time::Instant::now() + ADOPTION_WINDOW,
        }
    }
}

impl Router {
    /// Takes the central store the last admiral left back, if its workers run on (otherwise
    /// the fleet starts afresh, and so does the store).
    pub(super) fn restore_store(&mut self) {
        let Some(adoption) = &self.adoption else {
            return;
        };
        let path = adoption.dir.join(STORE_FILE);
        let adopting = adoption.waiting.as_ref().is_some_and(|w| !w.is_empty());
        match std::fs::read(&path) {
            Ok(snapshot) if adopting => match self.store.restore(&snapshot) {
                Ok(keys) => {
                    tracing::info!(target: "fleet::admiral", keys, "took the central store back from the last admiral");
                }
                Err(error) => {
                    tracing::warn!(target: "fleet::admiral", %error, "the last admiral's store does not decode; starting empty");
                }
            },
            Ok(_) => {
                let _ = std::fs::remove_file(&path);
            }
            Err(_) => {}
        }
    }

    /// Hands the store to the writer if it changed (or `always`); `done` hears once it is on
    /// disk (at once, when there is nothing to write or nowhere to write it).
    pub(super) fn save_store(&mut self, always: bool, done: Option<oneshot::Sender<()>>) {
        let writer = self.adoption.as_ref().and_then(|a| a.store.as_ref());
        let snapshot = writer.and_then(|_| self.store.snapshot(always));
        match (writer, snapshot) {
            (Some(writer), Some(snapshot)) => {
                if let Err(std::sync::mpsc::SendError((_, Some(done)))) =
                    writer.0.send((snapshot, done))
                {
                    let _ = done.send(());
                }
            }
            _ => {
                if let Some(done) = done {
                    let _ = done.send(());
                }
            }
        }
    }

    /// Launches now, or once the last admiral's workers are back.
    pub(super) fn launch_or_adopt(&mut self) {
        match self.adoption.as_ref().and_then(|a| a.waiting.as_ref()) {
            Some(waiting) if !waiting.is_empty() => {
                tracing::info!(target: "fleet::admiral", workers = waiting.len(), "waiting for the last admiral's workers to rejoin");
                self.arm(Timer::Adoption, ADOPTION_CHECK);
            }
            _ => self.launch(),
        }
    }

    fn launch(&mut self) {
        if let Some(adoption) = &mut self.adoption {
            adoption.waiting = None;
        }
        self.lifecycle_input(Input::Launch);
    }

    /// The adoption timer: drops the pids that died, and launches once nobody is left to wait
    /// for, or the window is over.
    pub(super) fn check_adoption(&mut self) {
        let Some(adoption) = &mut self.adoption else {
            return;
        };
        let Some(waiting) = &mut adoption.waiting else {
            return;
        };
        waiting.retain(|pid| run_dir::started_at(*pid).is_some());
        if waiting.is_empty() {
            tracing::info!(target: "fleet::admiral", "every worker of the last admiral is back or gone; launching the rest");
            self.launch();
        } else if tokio::time::Instant::now() >= adoption.until {
            tracing::warn!(target: "fleet::admiral", missing = waiting.len(), "workers of the last admiral did not rejoin in time; launching without them");
            self.launch();
        } else {
            self.arm(Timer::Adoption, ADOPTION_CHECK);
        }
    }

    /// A returning worker's challenge: the proof, if this admiral adopts workers at all.
    pub(super) fn on_challenge(&mut self, conn: u64, nonce: &[u8]) {
        if self.adoption.is_some() {
            let mac = admiral_proof(&self.secret, nonce);
            self.links.send(conn, &Down::Proof { mac });
        } else {
            self.links.remove(conn);
        }
    }

    /// Adopts a returning worker, or refuses it; says which.
    pub(super) fn on_rejoin(&mut self, conn: u64, rejoin: &Rejoin, peer: Option<u32>) -> bool {
        let proven = self.secret.matches(rejoin.secret.expose());
        let worker = match &rejoin.target {
            Target::Cluster(id) => Some(WorkerId::Cluster(*id)),
            Target::Service(name) => Some(WorkerId::Service(name.clone())),
            Target::Admiral => None,
        };
        let admitted = if !proven {
            Err("wrong secret".to_owned())
        } else if rejoin.protocol != PROTOCOL_VERSION {
            Err(format!(
                "the worker (build {:?}) speaks IPC protocol {}, this admiral (build {:?}) speaks {PROTOCOL_VERSION}",
                rejoin.build, rejoin.protocol, self.config.build
            ))
        } else if self.adoption.as_ref().is_none_or(|a| a.waiting.is_none()) {
            Err("this admiral has launched the fleet already".to_owned())
        } else if peer != Some(rejoin.pid) {
            // The admiral signals this pid: it must be the process on the socket.
            Err(format!(
                "it says it is pid {}, the connection's process is {peer:?}",
                rejoin.pid
            ))
        } else if self.links.conn_of(rejoin.process).is_some() {
            Err("process already connected".to_owned())
        } else {
            match &worker {
                None => Err(format!("{} is not a worker", rejoin.target)),
                Some(worker) => self.fits_plan(worker, rejoin).and_then(|()| {
                    self.lifecycle
                        .can_adopt(worker, rejoin.process)
                        .map_err(str::to_owned)
                }),
            }
        };
        let worker = match (admitted, worker) {
            (Ok(()), Some(worker)) => worker,
            (Err(problem), _) => {
                self.refuse(conn, rejoin.process, proven, &problem);
                return false;
            }
            (Ok(()), None) => return false,
        };
        self.lifecycle_input(Input::Adopt {
            worker: worker.clone(),
            process: rejoin.process,
            ready: rejoin.ready,
        });
        let process = rejoin.process;
        self.links.attach(conn, process, worker.target());
        if let Some(c) = self.links.get_mut(conn) {
            c.topics = Topics::of(&rejoin.topics);
        }
        let info = self.links.processes.entry(process).or_default();
        info.build.clone_from(&rejoin.build);
        info.pid = Some(rejoin.pid);
        info.started = Some(tokio::time::Instant::now());
        if let (Some(proxy), Some(key)) = (&self.config.rest_proxy, &rejoin.rest_key) {
            proxy.admit_key(&worker.to_string(), key);
            info.rest_key = Some(key.clone());
        }
        let output = process::AdoptedOutput {
            path: self
                .adoption
                .as_ref()
                .map(|a| a.dir.join(format!("{worker}.log")))
                .unwrap_or_default(),
            worker: worker.clone(),
            echo: self.config.echo_output.then_some(self.config.log_format),
            events: self.events.clone(),
        };
        process::watch_adopted(process, rejoin.pid, self.inbox.clone(), output);
        if let Some(waiting) = self.adoption.as_mut().and_then(|a| a.waiting.as_mut()) {
            waiting.retain(|pid| *pid != rejoin.pid);
        }
        self.links.send(conn, &Down::Adopted);
        tracing::info!(target: "fleet::admiral", %worker, process, pid = rejoin.pid, ready = rejoin.ready, "adopted a worker the last admiral left");
        self.check_adoption();
        true
    }

    /// Whether a returning worker runs what this admiral's plan has for it.
    fn fits_plan(&self, worker: &WorkerId, rejoin: &Rejoin) -> Result<(), String> {
        let WorkerId::Cluster(id) = worker else {
            return Ok(());
        };
        let planned = self
            .plan
            .clusters
            .iter()
            .find(|c| c.id == *id)
            .map(|c| (c.first_shard, c.last_shard, self.plan.shard_total));
        if planned == rejoin.shards {
            Ok(())
        } else {
            Err(format!(
                "it runs shards {:?} (first, last, total), this admiral's plan gives cluster {id} {planned:?}",
                rejoin.shards
            ))
        }
    }

    /// Refuses a connection before admission: one of the fleet's own is told why.
    pub(super) fn refuse(&mut self, conn: u64, process: u64, proven: bool, problem: &str) {
        if proven {
            let refused = Down::Refused {
                reason: problem.to_owned(),
            };
            self.links.send(conn, &refused);
        }
        tracing::error!(target: "fleet::ipc", conn, process, problem, "refusing an IPC connection");
        let _ = self.events.send(FleetEvent::ProtocolError {
            worker: None,
            error: format!("refused a connection claiming process {process}: {problem}"),
        });
        self.links.remove(conn);
    }

    /// Writes the worker pids running now into the stable directory.
    pub(super) fn record_workers(&self) {
        if let Some(adoption) = &self.adoption {
            let pids = self.links.processes.values().filter_map(|info| {
                info.pid
                    .filter(|_| info.exited.is_none() && info.kill.is_some())
            });
            run_dir::record_workers(&adoption.dir, pids);
        }
    }
}
