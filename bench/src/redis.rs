//! `iotask-bench redis`: a RESP server (the kv example) against `redis-server`, both driven
//! by `redis-benchmark`, interleaved in one run.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use crate::child::ServerChild;
use crate::report::num;
use crate::stats::median;
use crate::syscalls::available;

/// Settings of the Redis comparison.
#[derive(Debug, Clone)]
pub struct RedisSettings {
    /// The RESP server under test; it takes `127.0.0.1:PORT` as its first argument.
    pub kv_bin: PathBuf,
    /// Requests per `redis-benchmark` test (`-n`) without pipelining; pipelined tests
    /// send [`PIPELINED_REQUESTS`] times as many, so that they too last about a second.
    pub requests: u64,
    /// Client connections (`-c`).
    pub clients: u32,
    /// Rounds (each runs both servers, with and without pipelining).
    pub rounds: usize,
}

/// How many times more requests a `-P 16` test sends: pipelined, both servers answer about
/// ten times faster, and a test of a fraction of a second measures mostly noise.
pub const PIPELINED_REQUESTS: u64 = 8;

/// `-n` for a test with `pipeline` commands per round trip.
fn requests(s: &RedisSettings, pipeline: u32) -> u64 {
    if pipeline > 1 {
        s.requests * PIPELINED_REQUESTS
    } else {
        s.requests
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Target {
    Redis,
    Kv,
}

impl Target {
    fn name(self) -> &'static str {
        match self {
            Target::Redis => "redis-server",
            Target::Kv => "kv (iotask)",
        }
    }
}

/// Runs the comparison and returns a markdown table.
pub fn run(s: &RedisSettings) -> io::Result<String> {
    for tool in ["redis-server", "redis-benchmark"] {
        if !available(tool) {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("{tool} is not installed (apt-get install redis-server redis-tools)"),
            ));
        }
    }
    if !s.kv_bin.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!(
                "{}: no such file (build the kv example first)",
                s.kv_bin.display()
            ),
        ));
    }
    // (target, pipeline, test) -> requests/s of each round.
    let mut results: BTreeMap<(Target, u32, String), Vec<f64>> = BTreeMap::new();
    // (pipeline, test) in the order redis-benchmark runs them.
    let mut tests: Vec<(u32, String)> = Vec::new();
    for round in 0..s.rounds {
        for pipeline in [1u32, 16] {
            let mut order = [Target::Redis, Target::Kv];
            if round % 2 == 1 {
                order.reverse();
            }
            for target in order {
                let server = start(target, s)?;
                let rows = bench(&server, s, pipeline)?;
                for (test, rps) in rows {
                    eprintln!(
                        "[redis round {}/{}] {} -P {pipeline} {test}: {} req/s",
                        round + 1,
                        s.rounds,
                        target.name(),
                        num(rps)
                    );
                    if !tests.contains(&(pipeline, test.clone())) {
                        tests.push((pipeline, test.clone()));
                    }
                    results
                        .entry((target, pipeline, test))
                        .or_default()
                        .push(rps);
                }
            }
        }
    }

    let mut md = String::new();
    let _ = writeln!(
        md,
        "### Redis protocol: kv example (iotask) against redis-server\n\n\
         `redis-benchmark -t ping,set,get -c {} -n {}` (and with `-P 16 -n {}`), each server a \
         fresh child process (`redis-server --port P --save '' --appendonly no`; `{} 127.0.0.1:P`), \
         {} rounds interleaved, medians in requests/s.\n",
        s.clients,
        s.requests,
        s.requests * PIPELINED_REQUESTS,
        s.kv_bin.display(),
        s.rounds
    );
    let _ = writeln!(
        md,
        "| test | pipeline | redis-server | kv (iotask) | kv / redis |\n|---|---:|---:|---:|---:|"
    );
    for (pipeline, test) in tests {
        let get = |target| {
            median(
                results
                    .get(&(target, pipeline, test.clone()))
                    .into_iter()
                    .flatten()
                    .map(|v| Some(*v)),
            )
        };
        let (redis, kv) = (get(Target::Redis), get(Target::Kv));
        let ratio = match (redis, kv) {
            (Some(r), Some(k)) if r > 0.0 => format!("{:.2}×", k / r),
            _ => "–".into(),
        };
        let _ = writeln!(
            md,
            "| {test} | {pipeline} | {} | {} | {ratio} |",
            redis.map(num).unwrap_or_else(|| "–".into()),
            kv.map(num).unwrap_or_else(|| "–".into()),
        );
    }
    Ok(md)
}

fn start(target: Target, s: &RedisSettings) -> io::Result<ServerChild> {
    match target {
        Target::Redis => ServerChild::external(
            |port| {
                let mut c = Command::new("redis-server");
                c.args(["--port", &port.to_string()]).args([
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                ]);
                c
            },
            "redis-server",
        ),
        Target::Kv => {
            let bin = s.kv_bin.clone();
            ServerChild::external(
                move |port| {
                    let mut c = Command::new(bin);
                    c.arg(format!("127.0.0.1:{port}"));
                    c
                },
                "kv server",
            )
        }
    }
}

/// Runs `redis-benchmark` against `server` and returns (test, requests/s) rows.
fn bench(server: &ServerChild, s: &RedisSettings, pipeline: u32) -> io::Result<Vec<(String, f64)>> {
    let port = server.target.tcp()?.port();
    let out = Command::new("redis-benchmark")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(["-t", "ping,set,get", "--csv"])
        .args(["-c", &s.clients.to_string()])
        .args(["-n", &requests(s, pipeline).to_string()])
        .args(["-P", &pipeline.to_string()])
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .output()?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "redis-benchmark failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    let rows = parse_csv(&String::from_utf8_lossy(&out.stdout));
    if rows.is_empty() {
        return Err(io::Error::other(format!(
            "redis-benchmark printed no result: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(rows)
}

/// Reads `redis-benchmark --csv` lines: `"TEST","requests/s",…`, after a header line.
fn parse_csv(text: &str) -> Vec<(String, f64)> {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split(',').map(|f| f.trim().trim_matches('"'));
            let test = fields.next()?;
            let rps: f64 = fields.next()?.parse().ok()?;
            Some((test.to_owned(), rps))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_csv() {
        let text = "\"test\",\"rps\",\"avg_latency_ms\"\n\
                    \"PING_INLINE\",\"98039.22\",\"0.271\"\n\
                    \"SET\",\"1234.50\",\"0.3\"\n";
        assert_eq!(
            parse_csv(text),
            vec![
                ("PING_INLINE".to_owned(), 98039.22),
                ("SET".to_owned(), 1234.5)
            ]
        );
    }
}
