//! Memory and CPU of the fleet's processes, read by the admiral from the operating system
//! (sysinfo), so workers spend nothing on it. CPU is the process's CPU time over the wall time
//! since the previous reading (since the process started, on the first).

use std::collections::HashMap;
use std::time::Instant;

use sysinfo::{Pid, ProcessRefreshKind, ProcessesToUpdate, System};

use super::ProcessUsage;

/// Reads processes' usage; keeps each one's previous CPU time for the next reading.
#[derive(Debug, Default)]
pub(crate) struct Meter {
    system: Option<System>,
    /// CPU milliseconds and when they were read, by pid.
    previous: HashMap<u32, (u64, Instant)>,
}

impl Meter {
    /// The usage of each of `pids` that still runs. Blocking: it reads `/proc`.
    pub fn measure(&mut self, pids: &[u32]) -> HashMap<u32, ProcessUsage> {
        if self.system.is_none() {
            self.system = System::new().ok();
        }
        let Some(system) = self.system.as_mut() else {
            return HashMap::new();
        };
        let wanted: Vec<Pid> = pids.iter().map(|&p| Pid::from_u32(p)).collect();
        system.refresh_processes_specifics(
            ProcessesToUpdate::Some(&wanted),
            true,
            ProcessRefreshKind::nothing().with_memory().with_cpu(),
        );
        let now = Instant::now();
        let mut usage = HashMap::with_capacity(pids.len());
        let mut previous = HashMap::with_capacity(pids.len());
        for &pid in pids {
            let Some(process) = system.process(Pid::from_u32(pid)) else {
                continue;
            };
            let cpu_ms = process.accumulated_cpu_time();
            let cpu_percent = match self.previous.get(&pid) {
                Some(&(before, at)) if now > at => {
                    let wall_ms = now.duration_since(at).as_secs_f64() * 1000.0;
                    (cpu_ms.saturating_sub(before) as f64 / wall_ms * 100.0) as f32
                }
                _ => {
                    let run_ms = process.run_time().max(1) * 1000;
                    (cpu_ms as f64 / run_ms as f64 * 100.0) as f32
                }
            };
            previous.insert(pid, (cpu_ms, now));
            usage.insert(
                pid,
                ProcessUsage {
                    pid: Some(pid),
                    ram_bytes: process.memory(),
                    cpu_percent,
                },
            );
        }
        // Processes gone since are forgotten.
        self.previous = previous;
        usage
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn measures_this_process_and_skips_the_dead() {
        let mut meter = Meter::default();
        let me = std::process::id();
        // A pid that cannot exist on Linux (beyond pid_max).
        let dead = 4_194_304 + 17;
        let first = meter.measure(&[me, dead]);
        let usage = first.get(&me).expect("this process is measured");
        assert!(usage.ram_bytes > 1 << 20, "{usage:?}");
        assert!(!first.contains_key(&dead));
        // Burn some CPU, then read again: the second reading covers only the time between.
        let started = Instant::now();
        let mut x = 0u64;
        while started.elapsed() < std::time::Duration::from_millis(150) {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
        }
        let second = meter.measure(&[me]);
        assert!(second[&me].cpu_percent > 0.0, "{:?}", second[&me]);
    }
}
