//! `iotask-bench`: echo servers on iotask, tokio, mio and std threads, measured side by side
//! in one run, interleaved; and the kv example against `redis-server`.
//!
//! ```text
//! iotask-bench [--quick] [--scenarios S1,S2,S2U,U1] [--peers iotask-actor,tokio-ct]
//!              [--layout pinned|unpinned|both] [--rounds N] [--duration SECS]
//!              [--no-syscalls] [--out-md FILE] [--out-svg FILE]
//! iotask-bench redis --kv-bin PATH [--quick] [--rounds N] [--requests N] [--out-md FILE]
//! iotask-bench serve PEER ADDR [--upstream IP:PORT] [--cpu N]
//! ```

#![warn(rust_2018_idioms)]

mod child;
mod load;
mod redis;
mod report;
mod scenario;
mod servers;
mod stats;
mod sys;
mod syscalls;

use std::io;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use report::{Record, Run};
use scenario::{Layout, Scenario, Settings};
use servers::Peer;

const USAGE: &str = "\
usage:
  iotask-bench [--quick] [--scenarios S1,S2,...] [--peers NAME,...] [--layout pinned|unpinned|both]
               [--rounds N] [--duration SECS] [--no-syscalls] [--out-md FILE] [--out-svg FILE]
      Runs every scenario against every peer, interleaved, and writes a markdown report
      (stdout unless --out-md) and an SVG chart (default: bench/chart.svg).
      Scenarios: S1 … S7 over TCP, S2U (S2 over a Unix-domain socket, served by
      iotask-actor and tokio-ct only; other peers are skipped there), S2P (S2 through
      a proxy in front of tokio-ct's echo server: the proxies iotask-proxy and tokio-proxy
      only, which sit out every other scenario), and U1 and U1x50 (UDP echo of 64 B
      datagrams from 1 and from 50 client sockets: iotask-actor and tokio-ct only).
      Peers: iotask-ports, iotask-actor, iotask-actor-listen, iotask-actor-spin, iotask-pool,
      iotask-pool-shared, iotask-pool-rr, tokio-ct, tokio-mt, mio, std-threads,
      iotask-proxy, tokio-proxy.
  iotask-bench redis --kv-bin PATH [--quick] [--rounds N] [--requests N] [--out-md FILE]
      Runs redis-benchmark against redis-server and against the RESP server at PATH
      (started as `PATH 127.0.0.1:PORT`), interleaved; prints a markdown table.
  iotask-bench serve PEER ADDR [--upstream IP:PORT] [--cpu N]
      Runs one echo server on ADDR (IP:PORT, unix:PATH or udp:IP:PORT), or a proxy peer's proxy to
      the upstream (used by the harness itself).";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("serve") => serve(&args[1..]),
        Some("redis") => redis(&args[1..]),
        Some("-h" | "--help" | "help") => {
            println!("{USAGE}");
            Ok(())
        }
        Some("run") => bench(&args[1..]),
        _ => bench(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("iotask-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `serve PEER ADDR [--upstream IP:PORT] [--cpu N]`.
fn serve(args: &[String]) -> io::Result<()> {
    let [peer, addr, rest @ ..] = args else {
        return Err(usage("serve needs PEER and ADDR"));
    };
    let peer: Peer = peer.parse().map_err(usage)?;
    let mut cpu = None;
    let mut upstream = None;
    let mut rest = rest.iter();
    while let Some(arg) = rest.next() {
        match arg.as_str() {
            "--cpu" => cpu = Some(number(rest.next(), "--cpu")?),
            "--upstream" => {
                let addr = value(rest.next(), "--upstream")?;
                let addr = addr
                    .parse()
                    .map_err(|_| usage("--upstream needs IP:PORT"))?;
                upstream = Some(addr);
            }
            other => return Err(usage(format!("serve: unknown argument {other:?}"))),
        }
    }
    // Pin before any thread starts, so that every server thread inherits the mask.
    if let Some(cpu) = cpu {
        sys::pin_current_thread(Some(cpu))?;
    }
    sys::raise_nofile_limit()?;
    servers::serve(peer, addr, upstream)
}

/// `redis --kv-bin PATH ...`.
fn redis(args: &[String]) -> io::Result<()> {
    let mut s = redis::RedisSettings {
        kv_bin: PathBuf::new(),
        requests: 200_000,
        clients: 50,
        rounds: 3,
    };
    let mut out_md = None;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--kv-bin" => s.kv_bin = PathBuf::from(value(it.next(), "--kv-bin")?),
            "--quick" => {
                s.requests = 50_000;
                s.rounds = 1;
            }
            "--rounds" => s.rounds = number(it.next(), "--rounds")?,
            "--requests" => s.requests = number(it.next(), "--requests")?,
            "--out-md" => out_md = Some(PathBuf::from(value(it.next(), "--out-md")?)),
            other => return Err(usage(format!("redis: unknown argument {other:?}"))),
        }
    }
    if s.kv_bin.as_os_str().is_empty() {
        return Err(usage("redis needs --kv-bin PATH"));
    }
    sys::raise_nofile_limit()?;
    let md = redis::run(&s)?;
    write_out(out_md, &md)
}

/// The benchmark run.
fn bench(args: &[String]) -> io::Result<()> {
    let command = std::iter::once("iotask-bench".to_owned())
        .chain(args.iter().cloned())
        .collect::<Vec<_>>()
        .join(" ");
    let mut quick = false;
    let mut scenarios = Scenario::ALL.to_vec();
    let mut peers = Peer::ALL.to_vec();
    let mut layouts = vec![Layout::Pinned, Layout::Unpinned];
    let mut rounds: Option<usize> = None;
    let mut duration = None;
    let mut syscall_counts = true;
    let mut out_md = None;
    let mut out_svg = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/chart.svg"));
    // As the report links the chart: relative to the repository root by default.
    let mut chart_link = "bench/chart.svg".to_owned();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--quick" => quick = true,
            "--scenarios" => scenarios = list(value(it.next(), "--scenarios")?)?,
            "--peers" => peers = list(value(it.next(), "--peers")?)?,
            "--layout" => {
                layouts = match value(it.next(), "--layout")? {
                    "pinned" => vec![Layout::Pinned],
                    "unpinned" => vec![Layout::Unpinned],
                    "both" => vec![Layout::Pinned, Layout::Unpinned],
                    other => return Err(usage(format!("unknown layout {other:?}"))),
                }
            }
            "--rounds" => rounds = Some(number(it.next(), "--rounds")?),
            "--duration" => {
                let secs: f64 = number(it.next(), "--duration")?;
                duration = Some(Duration::from_secs_f64(secs));
            }
            "--no-syscalls" => syscall_counts = false,
            "--out-md" => out_md = Some(PathBuf::from(value(it.next(), "--out-md")?)),
            "--out-svg" => {
                chart_link = value(it.next(), "--out-svg")?.to_owned();
                out_svg = PathBuf::from(&chart_link);
            }
            other => return Err(usage(format!("unknown argument {other:?}"))),
        }
    }
    scenarios.sort();
    scenarios.dedup();
    peers.sort();
    peers.dedup();
    let mut settings = if quick {
        Settings::quick()
    } else {
        Settings::full()
    };
    if let Some(r) = rounds {
        settings.rounds = r.max(1);
    }
    if let Some(d) = duration {
        settings.duration = d;
    }

    let mut notes = Vec::new();
    if settings.quick {
        notes.push(format!(
            "Quick run: short windows, S4 streams {} MiB instead of 1 GiB and S6 opens {} \
             connections instead of 10,000. Use the full run for published figures.",
            settings.s4_bytes >> 20,
            settings.s6_conns
        ));
    }
    if layouts.contains(&Layout::Pinned) && sys::cpu_count() < 2 {
        layouts.retain(|l| *l != Layout::Pinned);
        notes.push("Only one CPU: the pinned layout was skipped.".into());
    }
    // Each idle connection takes a descriptor in the harness and one in the server.
    let limit = sys::raise_nofile_limit()?;
    let spare = 256;
    for (name, n) in [
        ("S6", &mut settings.s6_conns),
        ("S7", &mut settings.s7_conns),
    ] {
        if (*n as u64) + spare > limit {
            let fit = limit.saturating_sub(spare) as usize;
            let note = format!(
                "RLIMIT_NOFILE's hard limit is {limit}, too low for {n} connections: {name} used \
                 {fit}. Raise it (ulimit -Hn, or nofile in /etc/security/limits.conf) for the \
                 full scenario."
            );
            eprintln!("iotask-bench: warning: {note}");
            notes.push(note);
            *n = fit;
        }
    }

    // Peers without a server for a scenario's transport (S2U: Unix-domain; U1: UDP) sit it out.
    let serving = |scenario: Scenario| -> Vec<Peer> {
        peers
            .iter()
            .copied()
            .filter(|p| p.serves(scenario.transport()))
            .collect()
    };
    for &scenario in &scenarios {
        let skipped: Vec<&str> = peers
            .iter()
            .filter(|p| !p.serves(scenario.transport()))
            .map(|p| p.name())
            .collect();
        if !skipped.is_empty() {
            notes.push(format!(
                "{scenario}: no server of {} for this transport; skipped.",
                skipped.join(", ")
            ));
        }
    }

    let started = Instant::now();
    let mut records = Vec::new();
    let mut syscall_reports = Vec::new();
    let per_layout: usize = scenarios.iter().map(|&s| serving(s).len()).sum();
    let total = layouts.len() * settings.rounds * per_layout;
    let mut done = 0;
    for &layout in &layouts {
        for &scenario in &scenarios {
            let scenario_peers = serving(scenario);
            for round in 0..settings.rounds {
                let mut order = scenario_peers.clone();
                if round % 2 == 1 {
                    order.reverse();
                }
                for &peer in &order {
                    done += 1;
                    let tag = format!(
                        "[{done}/{total} {:.0}s] {} {scenario} round {}/{} {peer}",
                        started.elapsed().as_secs_f64(),
                        layout.name(),
                        round + 1,
                        settings.rounds
                    );
                    match scenario::measure(peer, scenario, layout, &settings) {
                        Ok(metrics) => {
                            let h = scenario.headline();
                            eprintln!(
                                "{tag}: {} {}",
                                h.value(&metrics).map(report::num).unwrap_or_default(),
                                h.label()
                            );
                            records.push(Record {
                                peer,
                                scenario,
                                layout,
                                metrics,
                            });
                        }
                        Err(e) => {
                            eprintln!("{tag}: FAILED: {e}");
                            notes.push(format!(
                                "{peer} failed in {scenario} ({}), round {}: {e}",
                                layout.name(),
                                round + 1
                            ));
                        }
                    }
                }
            }
            if scenario.counts_syscalls() && syscall_counts {
                let counted = [
                    Peer::IotaskPorts,
                    Peer::IotaskActor,
                    Peer::IotaskActorSpin,
                    Peer::Mio,
                    Peer::TokioCt,
                ];
                for &peer in scenario_peers.iter().filter(|p| counted.contains(p)) {
                    let tag = format!("[{} {scenario} syscalls] {peer}", layout.name());
                    match scenario::count_syscalls(peer, scenario, layout, &settings) {
                        Ok(r) => {
                            eprintln!(
                                "{tag}: {}",
                                r.best()
                                    .map(|(tool, c)| format!("{:.2} per msg ({tool})", c.per_msg))
                                    .unwrap_or_default(),
                            );
                            syscall_reports.push((peer, scenario, layout, r));
                        }
                        Err(e) => {
                            eprintln!("{tag}: FAILED: {e}");
                            notes.push(format!(
                                "Counting {peer}'s system calls in {scenario} ({}) failed: {e}",
                                layout.name()
                            ));
                        }
                    }
                }
            }
        }
    }

    let mut run = Run {
        settings,
        peers,
        scenarios,
        layouts,
        records,
        syscalls: syscall_reports,
        notes,
        elapsed: started.elapsed(),
        command,
        chart_link: None,
    };
    match run.chart(&out_svg) {
        Ok(true) => {
            eprintln!("iotask-bench: chart written to {}", out_svg.display());
            run.chart_link = Some(chart_link);
        }
        Ok(false) => eprintln!("iotask-bench: no S1, S2, S2U or S7 figures, so no chart"),
        Err(e) => eprintln!("iotask-bench: cannot draw {}: {e}", out_svg.display()),
    }
    eprintln!(
        "iotask-bench: {} measurements in {:.0} s",
        run.records.len(),
        run.elapsed.as_secs_f64()
    );
    write_out(out_md, &run.markdown())
}

fn write_out(path: Option<PathBuf>, text: &str) -> io::Result<()> {
    match path {
        Some(path) => {
            std::fs::write(&path, text)?;
            eprintln!("iotask-bench: report written to {}", path.display());
            Ok(())
        }
        None => {
            print!("{text}");
            Ok(())
        }
    }
}

fn usage(msg: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, format!("{msg}\n{USAGE}"))
}

fn value<'a>(v: Option<&'a String>, flag: &str) -> io::Result<&'a str> {
    v.map(String::as_str)
        .ok_or_else(|| usage(format!("{flag} needs a value")))
}

fn number<T: std::str::FromStr>(v: Option<&String>, flag: &str) -> io::Result<T> {
    value(v, flag)?
        .parse()
        .map_err(|_| usage(format!("{flag} needs a number")))
}

fn list<T: std::str::FromStr<Err = String>>(v: &str) -> io::Result<Vec<T>> {
    v.split(',')
        .filter(|s| !s.is_empty())
        .map(|s| s.trim().parse().map_err(usage))
        .collect()
}
