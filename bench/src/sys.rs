//! Linux specifics: CPU affinity, the descriptor limit, and per-process figures from /proc.

use std::io;
use std::time::Duration;

/// Pins the calling thread to `cpu`, or lets it run on every CPU when `cpu` is `None`.
///
/// Threads created afterwards inherit the mask, so a server pins itself before it starts
/// its runtime and every thread it spawns stays on the same CPU.
pub fn pin_current_thread(cpu: Option<usize>) -> io::Result<()> {
    // SAFETY: `cpu_set_t` is a plain bit set for which all-zero is a valid (empty) value.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    let cpus: Vec<usize> = match cpu {
        Some(cpu) => vec![cpu],
        None => (0..cpu_count()).collect(),
    };
    for c in cpus {
        // SAFETY: `set` is a valid `cpu_set_t` and `c` is below `CPU_SETSIZE` (checked by
        // `cpu_count`, which never exceeds it).
        unsafe { libc::CPU_SET(c, &mut set) };
    }
    // SAFETY: `set` lives for the call and the size passed is its own; pid 0 means the
    // calling thread.
    let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The number of CPUs the system has online (at least 1, at most `CPU_SETSIZE`).
pub fn cpu_count() -> usize {
    // SAFETY: `sysconf` only reads a system parameter.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    (n.max(1) as usize).min(libc::CPU_SETSIZE as usize)
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit and returns the new soft limit.
pub fn raise_nofile_limit() -> io::Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid, writable `rlimit`.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if lim.rlim_cur < lim.rlim_max {
        lim.rlim_cur = lim.rlim_max;
        // SAFETY: `lim` is a valid `rlimit` whose soft value does not exceed its hard one.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    // `rlim_t` is not 64 bits wide on every target.
    #[allow(clippy::unnecessary_cast)]
    Ok(lim.rlim_cur as u64)
}

/// CPU time (user plus system) the calling thread has used so far.
pub fn thread_cpu_time() -> Duration {
    // SAFETY: `rusage` is plain data for which all-zero is valid, and `getrusage` only
    // writes into it.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `usage` is a valid, writable `rusage`.
    if unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut usage) } != 0 {
        return Duration::ZERO;
    }
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// What the kernel counts for one process at one moment.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcSample {
    /// User plus system CPU time of every thread, live and exited.
    pub cpu: Duration,
    /// Voluntary plus involuntary context switches, summed over the live threads.
    pub ctx_switches: u64,
    /// Resident memory in KiB (`VmRSS`).
    pub rss_kib: u64,
    /// Live threads.
    pub threads: u64,
}

impl ProcSample {
    /// Reads the figures of process `pid`.
    pub fn read(pid: u32) -> io::Result<ProcSample> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
        let cpu = cpu_from_stat(&stat)
            .ok_or_else(|| io::Error::other(format!("cannot parse /proc/{pid}/stat")))?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let rss_kib = status_field(&status, "VmRSS:").unwrap_or(0);
        let threads = status_field(&status, "Threads:").unwrap_or(0);
        let mut ctx_switches = 0;
        for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
            let Ok(task) = task else { continue };
            // A thread may exit between the listing and the read; it is then skipped.
            let Ok(status) = std::fs::read_to_string(task.path().join("status")) else {
                continue;
            };
            ctx_switches += status_field(&status, "voluntary_ctxt_switches:").unwrap_or(0);
            ctx_switches += status_field(&status, "nonvoluntary_ctxt_switches:").unwrap_or(0);
        }
        Ok(ProcSample {
            cpu,
            ctx_switches,
            rss_kib,
            threads,
        })
    }

    /// Reads only the resident memory of process `pid`, in KiB.
    pub fn rss_kib(pid: u32) -> io::Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        status_field(&status, "VmRSS:").ok_or_else(|| io::Error::other("no VmRSS"))
    }
}

/// Parses utime + stime (fields 14 and 15) out of a `/proc/<pid>/stat` line.
fn cpu_from_stat(stat: &str) -> Option<Duration> {
    // The command name (field 2) is in parentheses and may hold spaces; skip past it.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state), so field n is at index n - 3.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    // SAFETY: `sysconf` only reads a system parameter.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Some(Duration::from_nanos(
        (utime + stime) * 1_000_000_000 / ticks,
    ))
}

/// The first number after `key` in a /proc status file.
fn status_field(status: &str, key: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|line| line.strip_prefix(key))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_process() {
        let s = ProcSample::read(std::process::id()).expect("own /proc entry");
        assert!(s.rss_kib > 0);
        assert!(s.threads >= 1);
        assert!(s.ctx_switches > 0);
    }

    #[test]
    fn parses_stat_with_spaces_in_name() {
        let line = "42 (a b) S 1 2 3 4 5 6 7 8 9 10 100 50 0 0";
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
        assert_eq!(
            cpu_from_stat(line),
            Some(Duration::from_nanos(150 * 1_000_000_000 / ticks))
        );
    }
}
