//! The admiral's private IPC directory under the run directory: made for this admiral only,
//! named by its pid file, removed when it ends; directories of admirals that died are removed
//! at the next start.

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

/// A process's start time, in clock ticks since boot (`/proc/PID/stat`, field 22).
fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces; the fields after it do not.
    let after_name = stat.rsplit_once(')')?.1;
    after_name.split_whitespace().nth(19)?.parse().ok()
}

/// Whether the admiral named by a pid file's text still runs.
fn owner_alive(pid_file: &str) -> bool {
    let mut parts = pid_file.split_whitespace();
    let (Some(pid), Some(started)) = (
        parts.next().and_then(|p| p.parse::<u32>().ok()),
        parts.next().and_then(|s| s.parse::<u64>().ok()),
    ) else {
        return false;
    };
    start_time(pid) == Some(started)
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
        let dead = if let Ok(owner) = std::fs::read_to_string(path.join(PID_FILE)) {
            !owner_alive(&owner)
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
}
