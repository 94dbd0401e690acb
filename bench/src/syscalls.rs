//! Counting a server's system calls over a window of a running load: with `perf stat` on
//! the syscall tracepoints (cheap, and the server keeps its pace), or else with
//! `strace -c -f` (it slows the server down, which then batches differently, so its figures
//! are indicative).

use std::collections::BTreeMap;
use std::io::{self, BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// System calls the server made per message echoed.
#[derive(Debug, Clone, Default)]
pub struct SyscallCount {
    /// Total system calls per message.
    pub per_msg: f64,
    /// Context switches per message, when the tool counts them.
    pub ctx_per_msg: Option<f64>,
    /// The most frequent calls and their count per message, most frequent first.
    pub top: Vec<(String, f64)>,
}

/// System calls counted one by one (when the kernel has their tracepoints), so that the
/// report can say where the calls go.
const TRACED: [&str; 18] = [
    "recvfrom",
    "sendto",
    "sendmsg",
    "recvmsg",
    "read",
    "write",
    "writev",
    "readv",
    "epoll_wait",
    "epoll_pwait",
    "epoll_pwait2",
    "epoll_ctl",
    "futex",
    "sched_yield",
    "accept4",
    "close",
    "poll",
    "ppoll",
];

/// Counts with `perf stat -I 100 -e raw_syscalls:sys_enter,context-switches,… -p PID` for
/// about `window`.
///
/// Tracepoint counters barely slow the server. perf prints its counts every 100 ms; the
/// messages echoed are read off `progress` as each interval's lines arrive, so counts and
/// messages cover the same intervals (the first interval, while perf settles, is left out).
pub fn perf(pid: u32, window: Duration, progress: &Arc<AtomicU64>) -> io::Result<SyscallCount> {
    const INTERVAL_MS: u64 = 100;
    const TOTAL: &str = "raw_syscalls:sys_enter";
    const CTX: &str = "context-switches";
    let intervals = (window.as_millis() as u64).div_ceil(INTERVAL_MS).max(1) as usize;
    let mut events = vec![TOTAL.to_owned(), CTX.to_owned()];
    events.extend(
        TRACED
            .iter()
            .map(|name| format!("syscalls:sys_enter_{name}"))
            .filter(|e| {
                let dir = e.replace(':', "/");
                [
                    "/sys/kernel/tracing/events",
                    "/sys/kernel/debug/tracing/events",
                ]
                .iter()
                .any(|root| Path::new(root).join(&dir).is_dir())
            }),
    );
    let mut child = Command::new("perf")
        .args(["stat", "-I", &INTERVAL_MS.to_string(), "-x", ","])
        .args(["-e", &events.join(",")])
        .args(["-p", &pid.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let stderr = child.stderr.take().expect("stderr is piped");
    let (tx, rx) = mpsc::channel();
    let counter = progress.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let msgs = counter.load(Ordering::Relaxed);
            if tx.send((line, msgs)).is_err() {
                return;
            }
        }
    });
    // One row per interval: its time stamp as perf prints it, the messages echoed when its
    // first line arrived, and its count of each event.
    let mut rows: Vec<(String, u64, BTreeMap<String, f64>)> = Vec::new();
    let mut other = String::new();
    let complete = |rows: &Vec<(String, u64, BTreeMap<String, f64>)>| {
        rows.len() > intervals && rows[intervals].2.len() == events.len()
    };
    let deadline = Instant::now() + window + Duration::from_secs(10);
    while !complete(&rows) && Instant::now() < deadline {
        let Ok((line, msgs)) = rx.recv_timeout(Duration::from_secs(2)) else {
            break;
        };
        let f: Vec<&str> = line.trim().split(',').collect();
        let (Some(time), Some(count), Some(event)) = (f.first(), f.get(1), f.get(3)) else {
            other.push_str(&line);
            continue;
        };
        if !events.iter().any(|e| e == event) {
            other.push_str(&line);
            continue;
        }
        if rows.last().is_none_or(|r| r.0 != *time) {
            rows.push((time.to_string(), msgs, BTreeMap::new()));
        }
        let count = count.parse().unwrap_or(f64::NAN);
        if let Some(row) = rows.last_mut() {
            row.2.insert(event.to_string(), count);
        }
    }
    // SAFETY: `kill` only sends a signal to the perf process this function started.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
    let _ = child.wait();
    if !complete(&rows) {
        return Err(io::Error::other(format!(
            "perf stat gave too few counts: {}",
            other.trim()
        )));
    }
    let counted = &rows[1..=intervals];
    let msgs = (counted[counted.len() - 1].1 - rows[0].1) as f64;
    if msgs <= 0.0 {
        return Err(io::Error::other("no message echoed during the perf window"));
    }
    let sum = |event: &str| -> f64 {
        counted
            .iter()
            .map(|r| r.2.get(event).copied().unwrap_or(f64::NAN))
            .sum()
    };
    let calls = sum(TOTAL);
    if !calls.is_finite() {
        return Err(io::Error::other(format!(
            "perf stat could not count syscalls: {}",
            other.trim()
        )));
    }
    let ctx = sum(CTX);
    let mut top: Vec<(String, f64)> = events[2..]
        .iter()
        .map(|e| {
            let name = e.trim_start_matches("syscalls:sys_enter_").to_owned();
            (name, sum(e) / msgs)
        })
        .filter(|(_, n)| n.is_finite() && *n >= 0.005)
        .collect();
    top.sort_by(|a, b| b.1.total_cmp(&a.1));
    top.truncate(6);
    Ok(SyscallCount {
        per_msg: calls / msgs,
        ctx_per_msg: ctx.is_finite().then(|| ctx / msgs),
        top,
    })
}

/// Counts with `strace -c -f -p PID` for about `window`.
pub fn strace(pid: u32, window: Duration, progress: &AtomicU64) -> io::Result<SyscallCount> {
    let summary = std::env::temp_dir().join(format!("iotask-bench-strace-{pid}.txt"));
    let mut child = Command::new("strace")
        .args(["-c", "-f", "-p", &pid.to_string(), "-o"])
        .arg(&summary)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let stderr = child.stderr.take().expect("stderr is piped");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    // strace prints one "attached" line per thread once it traces it.
    let attached = loop {
        match rx.recv_timeout(Duration::from_secs(10)) {
            Ok(line) if line.contains("attached") => break true,
            Ok(_) => {}
            Err(_) => break false,
        }
    };
    if !attached {
        let _ = child.kill();
        let _ = child.wait();
        return Err(io::Error::other("strace did not attach"));
    }
    let c0 = progress.load(Ordering::Relaxed);
    std::thread::sleep(window);
    // SAFETY: `kill` only sends a signal to the strace process this function started.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
    child.wait()?;
    let c1 = progress.load(Ordering::Relaxed);
    let text = std::fs::read_to_string(&summary)?;
    let _ = std::fs::remove_file(&summary);
    let msgs = (c1 - c0) as f64;
    if msgs <= 0.0 {
        return Err(io::Error::other(
            "no message echoed during the strace window",
        ));
    }
    let (total, mut calls) = parse_strace_summary(&text)
        .ok_or_else(|| io::Error::other(format!("cannot read the strace summary: {text}")))?;
    calls.sort_by_key(|(_, n)| std::cmp::Reverse(*n));
    Ok(SyscallCount {
        per_msg: total as f64 / msgs,
        ctx_per_msg: None,
        top: calls
            .into_iter()
            .take(5)
            .map(|(name, n)| (name, n as f64 / msgs))
            .collect(),
    })
}

/// Reads `strace -c` output: the total number of calls, and the calls per system call.
fn parse_strace_summary(text: &str) -> Option<(u64, Vec<(String, u64)>)> {
    let mut total = None;
    let mut calls = Vec::new();
    for line in text.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        // Rows: % time, seconds, usecs/call, calls, [errors,] syscall.
        if fields.len() < 5 || fields[0].parse::<f64>().is_err() {
            continue;
        }
        let Ok(n) = fields[3].parse::<u64>() else {
            continue;
        };
        let name = fields[fields.len() - 1];
        if name == "total" {
            total = Some(n);
        } else {
            calls.push((name.to_owned(), n));
        }
    }
    Some((total?, calls))
}

/// Whether `tool` can be run.
pub fn available(tool: &str) -> bool {
    Command::new(tool)
        .arg("--version")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_strace_c() {
        let text = "\
% time     seconds  usecs/call     calls    errors syscall
------ ----------- ----------- --------- --------- ----------------
 60.00    0.006000           3      2000           write
 40.00    0.004000           2      2000       100 read
  0.00    0.000000           0         5           epoll_wait
------ ----------- ----------- --------- --------- ----------------
100.00    0.010000           2      4005       100 total
";
        let (total, calls) = parse_strace_summary(text).unwrap();
        assert_eq!(total, 4005);
        assert_eq!(calls.len(), 3);
        assert_eq!(calls[1], ("read".to_owned(), 2000));
    }
}
