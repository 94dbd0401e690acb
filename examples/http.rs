//! An HTTP/1.1 server with keep-alive and pipelining, served by one actor thread.
//!
//! ```sh
//! cargo run --release --example http -- 127.0.0.1:8080
//! curl http://127.0.0.1:8080/hello
//! curl --data-binary @Cargo.toml http://127.0.0.1:8080/echo
//! wrk -t1 -c50 -d3s http://127.0.0.1:8080/hello
//! ```
//!
//! The first argument is the address to listen on (default `127.0.0.1:8080`; give
//! `127.0.0.1:0` for any free port). The server prints the address it bound
//! (`listening on 127.0.0.1:8080`) and serves until killed.
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
//! - A malformed request gets `400 Bad Request`, a head over 16 KiB
//!   `431 Request Header Fields Too Large`, a body over 8 MiB `413 Content Too Large`, a
//!   version other than 1.x `505`; each is followed by a close, because where the next
//!   request would start is unknown.
//!
//! # Design
//!
//! One actor thread owns every connection through a [`Mailbox`], as in the `kv` example,
//! rather than a thread per connection, because it is faster under `wrk -t1 -c50`: the
//! I/O task hands the actor every request read in one poll cycle as a single batch, so one
//! wake-up serves many connections, and the responses it queues go out in the I/O task's
//! next cycle without waking anything else. With a thread per connection every request
//! costs a wake-up of its own thread, and 50 threads compete for the cores. Measured on a
//! two-core machine (release build, three interleaved rounds each): 86 000 to 97 000 requests per
//! second with the actor, 55 000 to 60 000 with a thread per connection.
//!
//! Limits: a connection's input is bounded by one request head and body; its output by the
//! listener's write window (1 MiB by default): a client that pipelines requests but never
//! reads the responses stops being read until it does.

#[path = "support/actor_server.rs"]
mod actor_server;
#[path = "http/request.rs"]
pub mod request;

use std::collections::HashMap;
use std::error::Error;
use std::io::{self, Write};

use iotask::tcp::TcpSocket;
use iotask::{Event, IoTask, Mailbox, SocketId};

pub use actor_server::{Message, Server};

use request::{Head, Rejection, Version};

/// Input buffer capacity kept between requests.
const BUFFER_KEEP: usize = 64 * 1024;

fn main() -> Result<(), Box<dyn Error>> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8080".to_owned());
    let server = start(&addr, &iotask::global())?;
    println!("listening on {}", server.local_addr());
    io::stdout().flush()?;
    server.wait()?;
    Ok(())
}

/// Starts an HTTP server on `addr`, served by `iotask`; returns once the port is bound.
///
/// # Errors
///
/// The bind or listen error (`AddrInUse`, …), or a failure to spawn a thread.
pub fn start(addr: &str, iotask: &IoTask) -> io::Result<Server> {
    actor_server::start(addr, iotask, "http-actor", Mailbox::new(), http_actor)
}

/// Whether a connection stays open after the bytes just served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum After {
    KeepOpen,
    Close,
}

/// One client: its socket, the bytes of a request not complete yet, and the head of a
/// request whose body is still arriving.
struct Connection {
    sock: TcpSocket,
    input: Vec<u8>,
    waiting: Option<Head>,
    /// Whether `100 Continue` was sent for the request in `waiting`.
    continued: bool,
}

/// The actor: serves every connection, until told to stop.
fn http_actor(mut mailbox: Mailbox<Message>) {
    let mut clients: HashMap<SocketId, Connection> = HashMap::new();
    loop {
        match mailbox.recv() {
            Event::Accepted(sock) => welcome(&mut clients, sock),
            Event::Data { socket, data } => {
                if let Some(client) = clients.get_mut(&socket) {
                    if client.serve(data) == After::Close {
                        // Dropping the socket writes the last responses, then closes it.
                        clients.remove(&socket);
                    }
                }
            }
            Event::Closed { socket, .. } => {
                clients.remove(&socket);
            }
            Event::Message(Message::Stop) => return,
        }
    }
}

/// Starts serving a new client, whose reads already come to the actor's mailbox.
fn welcome(clients: &mut HashMap<SocketId, Connection>, sock: TcpSocket) {
    let client = Connection {
        sock,
        input: Vec::new(),
        waiting: None,
        continued: false,
    };
    clients.insert(client.sock.id(), client);
}

impl Connection {
    /// Answers every complete request buffered after `data` arrived, in one write.
    fn serve(&mut self, data: Vec<u8>) -> After {
        if self.input.is_empty() {
            self.input = data;
        } else {
            self.input.extend_from_slice(&data);
        }
        let mut out = Vec::new();
        let mut used = 0;
        let after = loop {
            let head = match self.waiting.take() {
                Some(head) => head,
                None => {
                    // Empty lines between requests are ignored (RFC 9112, section 2.2).
                    while matches!(self.input.get(used), Some(b'\r' | b'\n')) {
                        used += 1;
                    }
                    match request::parse_head(&self.input[used..]) {
                        Ok(Some(head)) => {
                            used += head.len;
                            head
                        }
                        Ok(None) => break After::KeepOpen,
                        Err(rejection) => {
                            reject(&mut out, rejection);
                            break After::Close;
                        }
                    }
                }
            };
            let body_end = used + head.content_length;
            if self.input.len() < body_end {
                if head.expect_continue && !self.continued {
                    out.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
                    self.continued = true;
                }
                self.waiting = Some(head);
                break After::KeepOpen;
            }
            self.continued = false;
            respond(&mut out, &head, &self.input[used..body_end]);
            used = body_end;
            if !head.keep_alive {
                // Requests pipelined after this one are not answered.
                break After::Close;
            }
        };
        self.input.drain(..used);
        if self.input.capacity() > 4 * BUFFER_KEEP && self.input.len() < BUFFER_KEEP {
            // One large body does not pin its memory for the rest of the connection.
            self.input.shrink_to(BUFFER_KEEP);
        }
        if !out.is_empty() {
            // The write happens in order with this client's earlier ones; the actor does not
            // wait for it, so a slow client delays nobody else.
            drop(self.sock.write_future(out));
        }
        after
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
        411 => "Length Required",
        413 => "Content Too Large",
        431 => "Request Header Fields Too Large",
        501 => "Not Implemented",
        505 => "HTTP Version Not Supported",
        _ => "",
    }
}
