//! An HTTP/1.1 server with keep-alive and pipelining, served by one actor thread.
//!
//! ```sh
//! cargo run --release --example http -- 127.0.0.1:8080
//! curl http://127.0.0.1:8080/hello
//! curl --data-binary @Cargo.toml http://127.0.0.1:8080/echo
//! wrk -t1 -c50 -d3s http://127.0.0.1:8080/hello
//!
//! cargo run --release --example http -- unix:/tmp/http.sock
//! curl --unix-socket /tmp/http.sock http://localhost/hello
//! ```
//!
//! The first argument is the address to listen on: `HOST:PORT` (default `127.0.0.1:8080`;
//! give `127.0.0.1:0` for any free port) or `unix:PATH` for a Unix-domain socket. The
//! server prints the address it bound (`listening on 127.0.0.1:8080`,
//! `listening on unix:/tmp/http.sock`) and serves until killed.
//!
//! Routes: `GET /hello` answers `hello`; `POST /echo` answers with the request body.
//! `HEAD` works wherever `GET` does. Other paths get `404`, other methods on these paths
//! `405` with an `Allow` field.
//!
//! # Protocol
//!
//! - Connections stay open in HTTP/1.1 unless the client sends `Connection: close`; in
//!   HTTP/1.0 they close after the response unless it sends `Connection: keep-alive`.
//! - Pipelined requests (several in one read) are answered in order, in one write.
//! - Request bodies need a `Content-Length`. `Transfer-Encoding: chunked` gets
//!   `411 Length Required` (send the length instead); any other transfer coding gets
//!   `501 Not Implemented`. `Expect: 100-continue` gets a `100 Continue` when the body is
//!   still to come.
//! - A malformed request gets `400 Bad Request`, a request line over 8 KiB `414 URI Too
//!   Long`, a head over 16 KiB `431 Request Header Fields Too Large` (both as soon as that
//!   many bytes have come without the end), a body over 8 MiB `413 Content Too Large`, a
//!   version other than 1.x `505`; each is followed by a close, because where the next
//!   request would start is unknown.
//! - A connection must send a complete request head within 10 s
//!   (`--header-timeout SECONDS`) of opening, or of the previous response: otherwise it
//!   gets `408 Request Timeout` and is closed. So clients that trickle their headers
//!   (slowloris) or sit idle do not hold connections for ever. They cannot delay the
//!   others meanwhile: the actor only ever handles bytes that have arrived, and a sweep of
//!   the deadlines, a few times per timeout, is all the time costs it.
//!
//! # Design
//!
//! One actor thread owns every connection through a [`Mailbox`], as in the `kv` example
//! (and, as there, written once for every socket family), rather than a thread per
//! connection, because it is faster under `wrk -t1 -c50`: the
//! I/O task hands the actor every request read in one poll cycle as a single batch, so one
//! wake-up serves many connections, and the responses it queues go out in the I/O task's
//! next cycle without waking anything else. With a thread per connection every request
//! costs a wake-up of its own thread, and 50 threads compete for the cores. Measured on a
//! two-core machine (release build, three interleaved rounds each): 86 000 to 97 000 requests per
//! second with the actor, 55 000 to 60 000 with a thread per connection.
//!
//! Limits: a connection's input is bounded by one request head and body (reading a head
//! resumes where it stopped, so trickled bytes are scanned once); its output by the
//! listener's write window (1 MiB by default): a client that pipelines requests but never
//! reads the responses stops being read until it does.

#[path = "support/actor_server.rs"]
mod actor_server;
#[path = "support/listen_addr.rs"]
mod listen_addr;
#[path = "http/request.rs"]
pub mod request;

use std::collections::HashMap;
use std::error::Error;
use std::io::{self, Write};
use std::time::{Duration, Instant};

use iotask::server::Listener;
use iotask::stream::{Family, Stream};
use iotask::{Event, Mailbox, SocketId};

pub use actor_server::{Message, Server, listen_options};

use listen_addr::{Bound, ListenAddr};

use request::{Head, Reader, Rejection, Version};

/// How the server treats its clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    /// How long a connection may take to send a complete request head, counted from when
    /// it opened or from the previous response; then it gets `408` and is closed.
    pub header_timeout: Duration,
}

impl Default for Config {
    /// A header timeout of 10 s.
    fn default() -> Config {
        Config {
            header_timeout: Duration::from_secs(10),
        }
    }
}

fn main() -> Result<(), Box<dyn Error>> {
    let mut args = std::env::args().skip(1);
    let mut addr: ListenAddr = "127.0.0.1:8080".parse()?;
    let mut config = Config::default();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--header-timeout" => {
                let value = args.next().ok_or("--header-timeout needs a value")?;
                let seconds: f64 = value.parse()?;
                config.header_timeout = Duration::try_from_secs_f64(seconds)?;
            }
            _ if arg.starts_with("--") => return Err(format!("unknown option {arg}").into()),
            _ => addr = arg.parse()?,
        }
    }
    let listener = addr
        .bind(&listen_options(), &iotask::global())
        .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    println!("listening on {listener}");
    io::stdout().flush()?;
    match listener {
        Bound::Tcp(listener) => start_with(listener, config)?.wait()?,
        Bound::Unix(listener) => start_with(listener, config)?.wait()?,
    }
    Ok(())
}

/// Starts an HTTP server on `listener` (bound with [`listen_options`], of either family).
///
/// # Errors
///
/// `SHUTDOWN` when the listener's I/O task stopped, or a failure to spawn a thread.
pub fn start<F: Family>(listener: Listener<F>) -> io::Result<Server<F>> {
    start_with(listener, Config::default())
}

/// [`start`] with a [`Config`].
///
/// # Errors
///
/// As [`start`].
pub fn start_with<F: Family>(listener: Listener<F>, config: Config) -> io::Result<Server<F>> {
    actor_server::start(listener, "http-actor", Mailbox::new(), move |mailbox| {
        http_actor::<F>(mailbox, config)
    })
}

/// Whether a connection stays open after the bytes just served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum After {
    KeepOpen,
    Close,
}

/// One client: its socket, its input framed into requests, and the time by which its next
/// request head must be complete.
struct Connection<F: Family> {
    sock: Stream<F>,
    reader: Reader,
    /// Whether `100 Continue` was sent for the request whose body is arriving.
    continued: bool,
    /// `None` while a request body is arriving; the body has no deadline.
    head_deadline: Option<Instant>,
}

/// The actor: serves every connection of family `F`, until told to stop.
fn http_actor<F: Family>(mut mailbox: Mailbox<Message>, config: Config) {
    let mut clients: HashMap<SocketId, Connection<F>> = HashMap::new();
    // A deadline is noticed at most a quarter of the timeout late.
    let sweep_interval =
        (config.header_timeout / 4).clamp(Duration::from_millis(10), Duration::from_secs(1));
    let mut next_sweep = Instant::now() + sweep_interval;
    loop {
        let until_sweep = next_sweep.saturating_duration_since(Instant::now());
        // `into_accepted` takes a new connection of the actor's family out of the event.
        let event = mailbox.recv_timeout(until_sweep);
        match event.map(Event::into_accepted::<F>) {
            Some(Ok(sock)) => welcome(&mut clients, sock, &config),
            Some(Err(Event::Data { socket, data })) => {
                if let Some(client) = clients.get_mut(&socket) {
                    if client.serve(data, &config) == After::Close {
                        // Dropping the socket writes the last responses, then closes it.
                        clients.remove(&socket);
                    }
                }
            }
            Some(Err(Event::Closed { socket, .. })) => {
                clients.remove(&socket);
            }
            Some(Err(Event::Message(Message::Stop))) => return,
            Some(Err(_)) | None => {}
        }
        let now = Instant::now();
        if now >= next_sweep {
            clients.retain(|_, client| !client.timed_out(now));
            next_sweep = now + sweep_interval;
        }
    }
}

/// Starts serving a new client, whose reads already come to the actor's mailbox.
fn welcome<F: Family>(
    clients: &mut HashMap<SocketId, Connection<F>>,
    sock: Stream<F>,
    config: &Config,
) {
    let client = Connection {
        sock,
        reader: Reader::new(),
        continued: false,
        head_deadline: Some(Instant::now() + config.header_timeout),
    };
    clients.insert(client.sock.id(), client);
}

impl<F: Family> Connection<F> {
    /// Answers every complete request buffered after `data` arrived, in one write.
    fn serve(&mut self, data: Vec<u8>, config: &Config) -> After {
        self.reader.push(data);
        let mut out = Vec::new();
        let mut served = false;
        let after = loop {
            match self.reader.next_request() {
                Ok(Some((head, body))) => {
                    served = true;
                    self.continued = false;
                    respond(&mut out, &head, body);
                    if !head.keep_alive {
                        // Requests pipelined after this one are not answered.
                        break After::Close;
                    }
                }
                Ok(None) => break After::KeepOpen,
                Err(rejection) => {
                    reject(&mut out, rejection);
                    break After::Close;
                }
            }
        };
        let waiting = self.reader.waiting_body();
        if let Some(head) = waiting {
            if head.expect_continue && !self.continued && after == After::KeepOpen {
                out.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
                self.continued = true;
            }
        }
        self.head_deadline = match (waiting, self.head_deadline) {
            (Some(_), _) => None,
            // A new head is awaited from now on.
            (None, None) => Some(Instant::now() + config.header_timeout),
            (None, Some(_)) if served => Some(Instant::now() + config.header_timeout),
            (None, Some(deadline)) => Some(deadline),
        };
        if !out.is_empty() {
            // The write happens in order with this client's earlier ones; the actor does not
            // wait for it, so a slow client delays nobody else.
            drop(self.sock.write_future(out));
        }
        after
    }

    /// Whether the connection's head deadline has passed; if so, it has been sent `408`
    /// and is to be dropped, which closes it once that is written.
    fn timed_out(&mut self, now: Instant) -> bool {
        if self.head_deadline.is_none_or(|deadline| now < deadline) {
            return false;
        }
        let mut out = Vec::new();
        reject(
            &mut out,
            request::reject(408, "request head not received in time"),
        );
        drop(self.sock.write_future(out));
        true
    }
}

/// Routes a complete request and appends the response.
fn respond(out: &mut Vec<u8>, head: &Head, body: &[u8]) {
    let (status, content_type, allow, body): (u16, &str, Option<&str>, &[u8]) =
        match (head.path(), head.method.as_str()) {
            ("/hello", "GET" | "HEAD") => (200, "text/plain", None, b"hello\n"),
            ("/hello", _) => (
                405,
                "text/plain",
                Some("GET, HEAD"),
                b"method not allowed\n",
            ),
            ("/echo", "POST") => (200, "application/octet-stream", None, body),
            ("/echo", _) => (405, "text/plain", Some("POST"), b"method not allowed\n"),
            _ => (404, "text/plain", None, b"not found\n"),
        };
    // Writing into a Vec cannot fail.
    let _ = write!(
        out,
        "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n",
        reason(status),
        body.len()
    );
    if let Some(allow) = allow {
        let _ = write!(out, "Allow: {allow}\r\n");
    }
    match (head.version, head.keep_alive) {
        (Version::Http11, false) => out.extend_from_slice(b"Connection: close\r\n"),
        (Version::Http10, true) => out.extend_from_slice(b"Connection: keep-alive\r\n"),
        _ => {}
    }
    out.extend_from_slice(b"\r\n");
    // A response to HEAD has the fields of the GET response, without its body.
    if head.method != "HEAD" {
        out.extend_from_slice(body);
    }
}

/// Appends the response to a request that cannot be served; the connection closes after it.
fn reject(out: &mut Vec<u8>, rejection: Rejection) {
    let Rejection { status, why } = rejection;
    // Writing into a Vec cannot fail.
    let _ = write!(
        out,
        "HTTP/1.1 {status} {}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{why}\n",
        reason(status),
        why.len() + 1
    );
}

fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        411 => "Length Required",
        413 => "Content Too Large",
        414 => "URI Too Long",
        431 => "Request Header Fields Too Large",
        501 => "Not Implemented",
        505 => "HTTP Version Not Supported",
        _ => "",
    }
}
