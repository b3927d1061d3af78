//! CPU time and memory of processes, read from `/proc` (Linux only). Clock ticks are taken as
//! 100 per second, as on every common Linux build.

use std::collections::{BTreeMap, HashMap};

const TICKS_PER_SECOND: f64 = 100.0;

/// (utime + stime) in seconds of one process.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&stat).map(|(_, secs)| secs)
}

/// `(comm, utime + stime in seconds)` from the text of `/proc/<pid>/stat`.
fn parse_stat(stat: &str) -> Option<(String, f64)> {
    let (head, after_name) = stat.rsplit_once(')')?;
    let comm = head.split_once('(')?.1.to_owned();
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // Fields 14 and 15 of stat (utime, stime) are at 11 and 12 after the name.
    let ticks = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some((comm, ticks / TICKS_PER_SECOND))
}

/// `VmHWM` (peak) and `VmRSS` (now) of a process, in MiB.
pub fn memory_mib(pid: u32) -> Option<(f64, f64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<f64> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<f64>().ok())
            .map(|kib| kib / 1024.0)
    };
    Some((field("VmHWM:")?, field("VmRSS:")?))
}

/// CPU seconds of every process, and of the whole machine, at one moment.
pub struct CpuSnapshot {
    /// pid: (comm, command line, CPU seconds).
    processes: HashMap<u32, (String, String, f64)>,
    /// Busy (everything but idle and iowait) CPU seconds of the machine since boot.
    machine_busy: f64,
}

impl CpuSnapshot {
    pub fn take() -> Self {
        let mut processes = HashMap::new();
        if let Ok(dir) = std::fs::read_dir("/proc") {
            for entry in dir.flatten() {
                let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
                    continue;
                };
                if let Some((comm, secs)) = std::fs::read_to_string(format!("/proc/{pid}/stat"))
                    .ok()
                    .and_then(|s| parse_stat(&s))
                {
                    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline"))
                        .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
                        .unwrap_or_default();
                    processes.insert(pid, (comm, cmdline, secs));
                }
            }
        }
        let machine_busy = std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|s| {
                let line = s.lines().next()?.strip_prefix("cpu ")?.to_owned();
                let v: Vec<f64> = line
                    .split_whitespace()
                    .filter_map(|x| x.parse::<f64>().ok())
                    .collect();
                // user nice system idle iowait irq softirq steal ...
                let total: f64 = v.iter().take(8).sum();
                Some((total - v.get(3)? - v.get(4)?) / TICKS_PER_SECOND)
            })
            .unwrap_or(f64::NAN);
        Self {
            processes,
            machine_busy,
        }
    }

    /// CPU seconds used between `self` and `later`, grouped by `stack`, plus `"machine"` for the
    /// whole machine. Processes that started in between count from zero; processes that ended in
    /// between are missing (their time is only in `"machine"`).
    pub fn used_until(&self, later: &CpuSnapshot, stack: &Stack) -> BTreeMap<String, f64> {
        let mut out: BTreeMap<String, f64> = BTreeMap::new();
        for (pid, (comm, cmdline, secs)) in &later.processes {
            let before = match self.processes.get(pid) {
                Some((c, _, s)) if c == comm => *s,
                _ => 0.0,
            };
            *out.entry(stack.group(*pid, comm, cmdline).to_owned())
                .or_default() += (secs - before).max(0.0);
        }
        out.insert("machine".into(), later.machine_busy - self.machine_busy);
        out
    }
}

/// Which processes belong to the system under test, to split CPU time by component. Everything
/// else on the machine (other builds, tests, brokers, databases) is `"other"`.
#[derive(Debug, Clone, Default)]
pub struct Stack {
    pub service_pid: Option<u32>,
    /// The group name of `service_pid` (`"gift_certificates"` when absent).
    pub service_name: Option<&'static str>,
    /// PostgreSQL backends connected to these databases are `"postgresql_backends"`.
    pub databases: Vec<String>,
    /// `host:port` of the broker the service uses (a tansu process listening there).
    pub broker: Option<String>,
}

impl Stack {
    pub fn group(&self, pid: u32, comm: &str, cmdline: &str) -> &'static str {
        if Some(pid) == self.service_pid {
            return self.service_name.unwrap_or("gift_certificates");
        }
        if pid == std::process::id() {
            return "bench_client";
        }
        match comm {
            c if c.starts_with("postgres") => {
                if self.databases.iter().any(|d| cmdline.contains(&format!(" {d} "))) {
                    "postgresql_backends"
                } else if cmdline.contains("127.0.0.1(")
                    || cmdline.contains("[local]")
                    || cmdline.contains("::1(")
                {
                    // Someone else's connection.
                    "other"
                } else {
                    // The postmaster, WAL writer, checkpointer, background writer, launchers.
                    "postgresql_background"
                }
            }
            c if c.starts_with("tansu") => match &self.broker {
                Some(b) if cmdline.contains(&format!("tcp://{b} ")) => "broker",
                _ => "other",
            },
            c if c.starts_with("redis") => "redis",
            c if c.starts_with("batch-loader") => "batch_loader",
            c if c.starts_with("pgbench") => "pgbench",
            _ => "other",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_with_spaces_in_the_name_parse() {
        let line = "42 (gift certific) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 9 0 100 0 0";
        assert_eq!(parse_stat(line), Some(("gift certific".to_owned(), 3.0)));
    }
}
