//! The admiral's private IPC directory under the run directory: made for this admiral only,
//! named by its pid file, removed when it ends; directories of admirals that died are removed
//! at the next start.
//!
//! A fleet whose workers outlive their admiral (`FleetOptions::admiral_grace`) has a stable
//! directory instead, `fleet-<fleet id>`, which the next admiral of the same fleet takes over:
//! the same socket path, the secret in a file only this user can read (`secret`, mode 0600),
//! the admiral's pid file, and `workers`, the pids of the worker processes it runs, for the next
//! admiral to wait for. It is removed when the fleet stops, and at another admiral's start once
//! its admiral and every worker it names are dead.

use std::path::PathBuf;

use super::AdmiralError;

/// Removes the private IPC directory when the admiral's task ends, however it ends.
pub(super) struct DirGuard(pub(super) PathBuf);

impl Drop for DirGuard {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The socket's name in the private directory.
pub(super) const SOCKET_FILE: &str = "admiral.sock";

/// The file in the private directory naming the admiral that owns it: `PID START_TIME`, the
/// start time in clock ticks since boot as `/proc/PID/stat` gives it (so a reused pid is not
/// taken for the admiral).
const PID_FILE: &str = "admiral.pid";

/// The fleet's secret, in a stable directory.
const SECRET_FILE: &str = "secret";

/// The worker processes of a stable directory's admiral: `PID START_TIME` a line.
const WORKERS_FILE: &str = "workers";

/// The REST proxy's port, in a stable directory: the next admiral's proxy listens there again,
/// since the workers it adopts send their requests there.
pub(crate) const PROXY_PORT_FILE: &str = "rest-proxy.port";

/// A process's start time, in clock ticks since boot (`/proc/PID/stat`, field 22).
fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces; the fields after it do not.
    let after_name = stat.rsplit_once(')')?.1;
    after_name.split_whitespace().nth(19)?.parse().ok()
}

/// The pid and start time a line of a pid file names.
fn parse_owner(line: &str) -> Option<(u32, u64)> {
    let mut parts = line.split_whitespace();
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

/// Whether the admiral named by a pid file's text still runs.
fn owner_alive(pid_file: &str) -> bool {
    parse_owner(pid_file).is_some_and(|(pid, started)| alive(pid, started))
}

/// Whether process `pid`, started at `started`, still runs (a zombie does not).
pub(crate) fn alive(pid: u32, started: u64) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let Some(after_name) = stat.rsplit_once(')').map(|(_, rest)| rest) else {
        return false;
    };
    let mut fields = after_name.split_whitespace();
    let state = fields.next();
    let since = fields.nth(18).and_then(|s| s.parse::<u64>().ok());
    state != Some("Z") && state != Some("X") && since == Some(started)
}

/// `pid`'s start time, to tell it from a later process given the same pid.
pub(crate) fn started_at(pid: u32) -> Option<u64> {
    start_time(pid)
}

/// The worker pids a stable directory names that still run.
pub(super) fn live_workers(dir: &std::path::Path) -> Vec<u32> {
    std::fs::read_to_string(dir.join(WORKERS_FILE))
        .unwrap_or_default()
        .lines()
        .filter_map(parse_owner)
        .filter(|&(pid, started)| alive(pid, started))
        .map(|(pid, _)| pid)
        .collect()
}

/// Removes the `fleet-*` directories in `base` whose admiral is dead, and returns how many. A
/// directory counts as dead when its pid file names a process that no longer runs, or, without
/// a pid file, when nothing listens on its socket any more. Anything else is left alone.
pub(super) fn remove_stale_dirs(base: &std::path::Path) -> usize {
    use std::os::unix::fs::MetadataExt as _;
    let Ok(entries) = std::fs::read_dir(base) else {
        return 0;
    };
    let me = std::fs::metadata("/proc/self").map(|m| m.uid()).ok();
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(suffix) = name.to_str().and_then(|n| n.strip_prefix("fleet-")) else {
            continue;
        };
        if suffix.len() != 16 || !suffix.bytes().all(|b| b.is_ascii_hexdigit()) {
            continue;
        }
        let path = entry.path();
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if !meta.is_dir() || Some(meta.uid()) != me {
            continue;
        }
        let stable = path.join(SECRET_FILE).exists();
        let dead = if let Ok(owner) = std::fs::read_to_string(path.join(PID_FILE)) {
            // A stable directory is kept while workers may come back to it.
            let waited_for = stable && !live_workers(&path).is_empty();
            !owner_alive(&owner) && !waited_for
        } else if stable {
            live_workers(&path).is_empty()
        } else {
            let socket = path.join(SOCKET_FILE);
            socket.exists() && std::os::unix::net::UnixStream::connect(&socket).is_err()
        };
        if dead && std::fs::remove_dir_all(&path).is_ok() {
            removed += 1;
        }
    }
    removed
}

/// A new directory only this user can enter, for the IPC socket, with the admiral's pid file.
pub(super) fn private_dir(base: &std::path::Path) -> Result<PathBuf, AdmiralError> {
    use std::os::unix::fs::DirBuilderExt as _;
    let pid = std::process::id();
    let owner = format!("{pid} {}\n", start_time(pid).unwrap_or(0));
    for _ in 0..16 {
        let path = base.join(format!("fleet-{:016x}", fastrand::u64(..)));
        match std::fs::DirBuilder::new().mode(0o700).create(&path) {
            Ok(()) => {
                std::fs::write(path.join(PID_FILE), &owner).map_err(|source| {
                    AdmiralError::Ipc {
                        path: path.clone(),
                        source,
                    }
                })?;
                return Ok(path);
            }
            Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(source) => return Err(AdmiralError::Ipc { path, source }),
        }
    }
    Err(AdmiralError::Ipc {
        path: base.to_owned(),
        source: std::io::Error::other("no free directory name"),
    })
}

/// A fleet's stable directory, taken over by this admiral.
#[derive(Debug)]
pub(super) struct Stable {
    /// The directory.
    pub dir: PathBuf,
    /// The fleet's secret: the one the directory held, or a new one.
    pub secret: crate::Secret,
    /// Pids of the last admiral's workers that still run: the ones to wait for.
    pub waiting: Vec<u32>,
}

/// Whether `id` may name a fleet's stable directory: 1 to 64 ASCII letters, digits, `-` or `_`.
pub(crate) fn check_fleet_id(id: &str) -> Result<(), String> {
    let fits = (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'));
    if fits {
        Ok(())
    } else {
        Err(format!(
            "{id:?} is not a fleet id (1 to 64 ASCII letters, digits, '-' or '_')"
        ))
    }
}

/// The stable directory of fleet `id` in `base`.
pub(crate) fn stable_path(base: &std::path::Path, id: &str) -> PathBuf {
    base.join(format!("fleet-{id}"))
}

/// Takes over (or makes) fleet `id`'s stable directory: refused while another live admiral
/// owns it. A directory that is not this user's, or that anyone else may enter, is refused too:
/// the secret in it would not be private.
pub(super) fn stable_dir(base: &std::path::Path, id: &str) -> Result<Stable, AdmiralError> {
    use std::io::Write as _;
    use std::os::unix::fs::{DirBuilderExt as _, MetadataExt as _, OpenOptionsExt as _};
    let path = stable_path(base, id);
    let fail = |path: &std::path::Path, why: String| AdmiralError::Ipc {
        path: path.to_owned(),
        source: std::io::Error::other(why),
    };
    match std::fs::DirBuilder::new().mode(0o700).create(&path) {
        Ok(()) => {}
        Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(source) => return Err(AdmiralError::Ipc { path, source }),
    }
    let meta = std::fs::symlink_metadata(&path).map_err(|source| AdmiralError::Ipc {
        path: path.clone(),
        source,
    })?;
    let me = std::fs::metadata("/proc/self").map(|m| m.uid()).ok();
    if !meta.is_dir() || Some(meta.uid()) != me || meta.mode() & 0o077 != 0 {
        return Err(fail(
            &path,
            "not a directory private to this user (mode 0700, owned by it)".into(),
        ));
    }
    let pid = std::process::id();
    if let Ok(owner) = std::fs::read_to_string(path.join(PID_FILE))
        && let Some((owner_pid, started)) = parse_owner(&owner)
        && owner_pid != pid
        && alive(owner_pid, started)
    {
        return Err(fail(
            &path,
            format!("another admiral (pid {owner_pid}) runs this fleet"),
        ));
    }
    let secret_path = path.join(SECRET_FILE);
    let secret = match std::fs::read_to_string(&secret_path) {
        Ok(text)
            if text.trim().len() == 64 && text.trim().bytes().all(|b| b.is_ascii_hexdigit()) =>
        {
            crate::Secret::new(text.trim())
        }
        Ok(_) => return Err(fail(&secret_path, "not a fleet secret".into())),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            let secret = crate::Secret::random();
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&secret_path)
                .map_err(|source| AdmiralError::Ipc {
                    path: secret_path.clone(),
                    source,
                })?;
            file.write_all(secret.expose().as_bytes())
                .map_err(|source| AdmiralError::Ipc {
                    path: secret_path.clone(),
                    source,
                })?;
            secret
        }
        Err(source) => {
            return Err(AdmiralError::Ipc {
                path: secret_path,
                source,
            });
        }
    };
    let waiting = live_workers(&path);
    // Nobody listens on a socket left by a dead admiral; binding needs the name free.
    let _ = std::fs::remove_file(path.join(SOCKET_FILE));
    let owner = format!("{pid} {}\n", start_time(pid).unwrap_or(0));
    std::fs::write(path.join(PID_FILE), owner).map_err(|source| AdmiralError::Ipc {
        path: path.clone(),
        source,
    })?;
    Ok(Stable {
        dir: path,
        secret,
        waiting,
    })
}

/// Writes the pids of the workers running now into a stable directory, for the next admiral.
pub(super) fn record_workers(dir: &std::path::Path, pids: impl Iterator<Item = u32>) {
    let mut text = String::new();
    for pid in pids {
        if let Some(started) = start_time(pid) {
            text.push_str(&pid.to_string());
            text.push(' ');
            text.push_str(&started.to_string());
            text.push('\n');
        }
    }
    let temporary = dir.join(format!("{WORKERS_FILE}.new"));
    let written = std::fs::write(&temporary, text)
        .and_then(|()| std::fs::rename(&temporary, dir.join(WORKERS_FILE)));
    if let Err(error) = written {
        tracing::warn!(target: "fleet::admiral", %error, "cannot record the workers for the next admiral");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dead_admirals_directories_are_removed_and_live_ones_kept() {
        let base = std::env::temp_dir().join(format!("fleet-stale-test-{:x}", fastrand::u64(..)));
        std::fs::create_dir(&base).unwrap();
        let dir = |name: &str| {
            let path = base.join(name);
            std::fs::create_dir(&path).unwrap();
            path
        };
        // A dead admiral's pid file.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead_pid = child.id();
        child.wait().unwrap();
        let dead = dir("fleet-00000000000000a1");
        std::fs::write(dead.join(PID_FILE), format!("{dead_pid} 12345\n")).unwrap();
        // A live one: this process.
        let live = private_dir(&base).unwrap();
        // An older directory without a pid file, whose socket nobody listens on.
        let orphan = dir("fleet-00000000000000b2");
        drop(std::os::unix::net::UnixListener::bind(orphan.join(SOCKET_FILE)).unwrap());
        // Not ours to judge: another name, and a directory with neither file.
        let other = dir("fleet-not-an-admiral");
        let empty = dir("fleet-00000000000000c3");

        assert_eq!(remove_stale_dirs(&base), 2);
        assert!(!dead.exists() && !orphan.exists());
        assert!(live.exists() && other.exists() && empty.exists());
        std::fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn a_stable_directory_keeps_its_secret_and_waits_while_its_workers_run() {
        use std::os::unix::fs::PermissionsExt as _;
        let base = std::env::temp_dir().join(format!("fleet-stable-test-{:x}", fastrand::u64(..)));
        std::fs::create_dir(&base).unwrap();
        let id = "00000000000000d4";
        let first = stable_dir(&base, id).unwrap();
        assert!(first.waiting.is_empty());
        let mode = |p: PathBuf| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(first.dir.clone()), 0o700);
        assert_eq!(mode(first.dir.join(SECRET_FILE)), 0o600);
        // The same admiral again (as after it re-executed itself): the same secret.
        assert_eq!(stable_dir(&base, id).unwrap().secret, first.secret);

        // Another admiral that runs owns it.
        let mut other = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let owner = format!("{} {}\n", other.id(), start_time(other.id()).unwrap());
        std::fs::write(first.dir.join(PID_FILE), owner).unwrap();
        let refused = stable_dir(&base, id).unwrap_err().to_string();
        assert!(refused.contains("another admiral"), "{refused}");

        // It died, and one of its workers (this process) runs on: the directory is kept, and the
        // next admiral waits for that worker, with the fleet's secret.
        other.kill().unwrap();
        other.wait().unwrap();
        record_workers(&first.dir, [std::process::id()].into_iter());
        assert_eq!(remove_stale_dirs(&base), 0);
        let next = stable_dir(&base, id).unwrap();
        assert_eq!(next.waiting, [std::process::id()]);
        assert_eq!(next.secret, first.secret);

        // Its admiral and every worker dead: another admiral's start removes it.
        let owner = format!("{} 1\n", other.id());
        std::fs::write(first.dir.join(PID_FILE), owner).unwrap();
        record_workers(&first.dir, std::iter::empty());
        assert_eq!(remove_stale_dirs(&base), 1);
        assert!(!first.dir.exists());
        std::fs::remove_dir_all(&base).unwrap();
    }
}
