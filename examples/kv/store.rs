//! The key-value store and its commands. Plain data, no I/O: the server actor owns one
//! `Store` and hands it each parsed command.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use super::resp;

/// Expired keys removed per sweep at most, so that a mass expiry cannot stall the server.
const SWEEP_BATCH: usize = 10_000;

/// Settings `CONFIG GET` reports. redis-benchmark asks for `save` and `appendonly`.
const CONFIG: &[(&str, &str)] = &[
    ("save", ""),
    ("appendonly", "no"),
    ("databases", "1"),
    ("maxmemory", "0"),
];

/// What the connection should do after a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum After {
    /// Read the next command.
    KeepOpen,
    /// Close once the replies are written (`QUIT`).
    Close,
}

/// Binary-safe keys and values, each value with an optional expiry time.
#[derive(Debug, Default)]
pub struct Store {
    map: HashMap<Vec<u8>, Value>,
    /// Every key that has an expiry time, soonest first. Invariant: `(at, key)` is here
    /// exactly when `map[key].expires_at == Some(at)`.
    expiries: BTreeSet<(Instant, Vec<u8>)>,
}

#[derive(Debug)]
struct Value {
    data: Vec<u8>,
    expires_at: Option<Instant>,
}

impl Value {
    fn is_expired(&self) -> bool {
        self.expires_at.is_some_and(|at| at <= Instant::now())
    }
}

impl Store {
    /// An empty store.
    pub fn new() -> Store {
        Store::default()
    }

    /// Runs one command (`args[0]` is its name, in any case) and appends its reply to `out`.
    ///
    /// Unknown commands and wrong arguments get an error reply; the connection stays usable.
    pub fn execute(&mut self, args: &[Vec<u8>], out: &mut Vec<u8>) -> After {
        let Some(first) = args.first() else {
            // Redis ignores an empty command.
            return After::KeepOpen;
        };
        let name = first.to_ascii_lowercase();
        let Some(arity) = arity(&name) else {
            unknown_command(out, first);
            return After::KeepOpen;
        };
        // Redis's convention: a positive arity is exact, a negative one is a minimum.
        let arity_ok = if arity > 0 {
            args.len() == arity as usize
        } else {
            args.len() >= arity.unsigned_abs() as usize
        };
        if !arity_ok {
            wrong_arity(out, &name);
            return After::KeepOpen;
        }
        let args = &args[1..];
        match name.as_slice() {
            b"ping" => match args {
                [] => resp::simple(out, "PONG"),
                [message] => resp::bulk(out, Some(message)),
                _ => wrong_arity(out, &name),
            },
            b"echo" => resp::bulk(out, Some(&args[0])),
            b"set" => self.set_command(args, out),
            b"get" => resp::bulk(out, self.get(&args[0]).map(|v| v.data.as_slice())),
            b"del" => {
                let removed = args.iter().filter(|key| self.remove(key)).count();
                resp::integer(out, removed as i64);
            }
            b"exists" => {
                let found = args.iter().filter(|key| self.get(key).is_some()).count();
                resp::integer(out, found as i64);
            }
            b"incr" => self.incr(&args[0], out),
            b"mget" => {
                resp::array(out, args.len());
                for key in args {
                    resp::bulk(out, self.get(key).map(|v| v.data.as_slice()));
                }
            }
            b"mset" => {
                if args.len() % 2 != 0 {
                    wrong_arity(out, &name);
                } else {
                    for pair in args.chunks_exact(2) {
                        self.insert(pair[0].clone(), pair[1].clone(), None);
                    }
                    resp::simple(out, "OK");
                }
            }
            b"dbsize" => {
                // Count only live keys: drop whatever has expired first.
                while !self.sweep(Instant::now()) {}
                resp::integer(out, self.map.len() as i64);
            }
            b"flushall" | b"flushdb" => match args {
                [] => self.flush(out),
                [mode] if mode.eq_ignore_ascii_case(b"sync") => self.flush(out),
                [mode] if mode.eq_ignore_ascii_case(b"async") => self.flush(out),
                _ => resp::error_reply(out, "ERR syntax error"),
            },
            b"config" => config(args, out),
            // redis-cli asks for the command table (`COMMAND DOCS`) to show hints; an
            // empty table is a valid answer.
            b"command" => resp::array(out, 0),
            b"quit" => {
                resp::simple(out, "OK");
                return After::Close;
            }
            // Only reached if `arity` knows a command this match does not.
            _ => unknown_command(out, first),
        }
        After::KeepOpen
    }

    /// Removes expired keys whose time has come, up to a batch; returns whether none are
    /// left due.
    pub fn sweep(&mut self, now: Instant) -> bool {
        for _ in 0..SWEEP_BATCH {
            match self.expiries.first() {
                Some((at, _)) if *at <= now => {}
                _ => return true,
            }
            if let Some((_, key)) = self.expiries.pop_first() {
                self.map.remove(&key);
            }
        }
        false
    }

    /// `SET key value [EX seconds | PX milliseconds] [NX | XX]`.
    fn set_command(&mut self, args: &[Vec<u8>], out: &mut Vec<u8>) {
        let (key, value) = (&args[0], &args[1]);
        let mut ttl = None;
        let (mut nx, mut xx) = (false, false);
        let mut options = args[2..].iter();
        while let Some(option) = options.next() {
            let option = option.to_ascii_uppercase();
            match option.as_slice() {
                b"NX" => nx = true,
                b"XX" => xx = true,
                b"EX" | b"PX" if ttl.is_none() => {
                    let Some(amount) = options.next() else {
                        return resp::error_reply(out, "ERR syntax error");
                    };
                    let Some(amount) = resp::parse_i64(amount) else {
                        return resp::error_reply(
                            out,
                            "ERR value is not an integer or out of range",
                        );
                    };
                    let amount = u64::try_from(amount).ok().filter(|&n| n > 0);
                    let Some(amount) = amount else {
                        return resp::error_reply(out, "ERR invalid expire time in 'set' command");
                    };
                    ttl = Some(if option == b"EX" {
                        Duration::from_secs(amount)
                    } else {
                        Duration::from_millis(amount)
                    });
                }
                _ => return resp::error_reply(out, "ERR syntax error"),
            }
        }
        if nx && xx {
            return resp::error_reply(out, "ERR syntax error");
        }
        let expires_at = match ttl {
            Some(ttl) => match Instant::now().checked_add(ttl) {
                Some(at) => Some(at),
                None => return resp::error_reply(out, "ERR invalid expire time in 'set' command"),
            },
            None => None,
        };
        let exists = self.get(key).is_some();
        if (nx && exists) || (xx && !exists) {
            // The condition failed: nothing is set, and the reply is nil.
            return resp::bulk(out, None);
        }
        self.insert(key.clone(), value.clone(), expires_at);
        resp::simple(out, "OK");
    }

    /// `INCR key`: adds one to an integer value (a missing key counts as 0), keeping its
    /// expiry time as Redis does.
    fn incr(&mut self, key: &[u8], out: &mut Vec<u8>) {
        let (current, expires_at) = match self.get(key) {
            Some(value) => match resp::parse_i64(&value.data) {
                Some(n) => (n, value.expires_at),
                None => {
                    return resp::error_reply(out, "ERR value is not an integer or out of range");
                }
            },
            None => (0, None),
        };
        let Some(next) = current.checked_add(1) else {
            return resp::error_reply(out, "ERR increment or decrement would overflow");
        };
        self.insert(key.to_vec(), next.to_string().into_bytes(), expires_at);
        resp::integer(out, next);
    }

    fn flush(&mut self, out: &mut Vec<u8>) {
        self.map.clear();
        self.expiries.clear();
        resp::simple(out, "OK");
    }

    /// The live value of `key`; an expired one is removed on the way (lazy expiry).
    fn get(&mut self, key: &[u8]) -> Option<&Value> {
        if self.map.get(key)?.is_expired() {
            self.remove(key);
            return None;
        }
        self.map.get(key)
    }

    /// Sets `key`, replacing its value and its expiry time.
    fn insert(&mut self, key: Vec<u8>, data: Vec<u8>, expires_at: Option<Instant>) {
        let old_at = self.map.get(&key).and_then(|value| value.expires_at);
        if old_at != expires_at {
            if let Some(at) = old_at {
                self.expiries.remove(&(at, key.clone()));
            }
            if let Some(at) = expires_at {
                self.expiries.insert((at, key.clone()));
            }
        }
        self.map.insert(key, Value { data, expires_at });
    }

    /// Removes `key`; returns whether it was there (expired or not).
    fn remove(&mut self, key: &[u8]) -> bool {
        match self.map.remove_entry(key) {
            Some((key, value)) => {
                if let Some(at) = value.expires_at {
                    self.expiries.remove(&(at, key));
                }
                true
            }
            None => false,
        }
    }
}

/// The arity of each command, in Redis's convention (the name counts); `None` for an
/// unknown command.
fn arity(name: &[u8]) -> Option<i32> {
    Some(match name {
        b"ping" | b"flushall" | b"flushdb" | b"command" | b"quit" => -1,
        b"echo" | b"get" | b"incr" => 2,
        b"del" | b"exists" | b"mget" | b"config" => -2,
        b"set" | b"mset" => -3,
        b"dbsize" => 1,
        _ => return None,
    })
}

fn unknown_command(out: &mut Vec<u8>, name: &[u8]) {
    let message = format!("ERR unknown command '{}'", resp::printable(name));
    resp::error_reply(out, &message);
}

fn wrong_arity(out: &mut Vec<u8>, name: &[u8]) {
    let message = format!(
        "ERR wrong number of arguments for '{}' command",
        resp::printable(name)
    );
    resp::error_reply(out, &message);
}

/// `CONFIG GET parameter…`: each known parameter that matches (by name, or `*` for all)
/// as a name and a value, the shape Redis 7 replies with.
fn config(args: &[Vec<u8>], out: &mut Vec<u8>) {
    let subcommand = args[0].to_ascii_lowercase();
    match (subcommand.as_slice(), &args[1..]) {
        (b"get", patterns) if !patterns.is_empty() => {
            let matches: Vec<&(&str, &str)> = CONFIG
                .iter()
                .filter(|(name, _)| {
                    patterns
                        .iter()
                        .any(|p| p.as_slice() == b"*" || p.eq_ignore_ascii_case(name.as_bytes()))
                })
                .collect();
            resp::array(out, matches.len() * 2);
            for (name, value) in matches {
                resp::bulk(out, Some(name.as_bytes()));
                resp::bulk(out, Some(value.as_bytes()));
            }
        }
        (b"get", _) => wrong_arity(out, b"config|get"),
        _ => {
            let message = format!(
                "ERR unknown subcommand '{}'; only CONFIG GET is supported",
                resp::printable(&args[0])
            );
            resp::error_reply(out, &message);
        }
    }
}
