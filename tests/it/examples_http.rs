//! The `http` example: an HTTP/1.1 server, driven by std clients, `curl` and `wrk`.

#[path = "../../examples/http.rs"]
#[allow(dead_code)]
mod http;

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use iotask::ListenError;

use crate::examples_support;

/// A response, as a client reads it.
#[derive(Debug)]
struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Response {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A blocking HTTP client on a std `TcpStream`, every read and write bounded by `TIMEOUT`.
struct Client {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Client {
    fn connect(addr: SocketAddr) -> Client {
        let stream = examples_support::client(addr);
        Client {
            reader: BufReader::new(stream.try_clone().unwrap()),
            writer: stream,
        }
    }

    fn send(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).expect("write to the server");
    }

    /// Reads one response; `head_only` for the response to a HEAD request.
    fn read_response(&mut self, head_only: bool) -> Response {
        let mut line = String::new();
        self.reader.read_line(&mut line).expect("a status line");
        let mut parts = line.trim_end().splitn(3, ' ');
        assert_eq!(parts.next(), Some("HTTP/1.1"), "status line {line:?}");
        let status = parts.next().and_then(|s| s.parse().ok()).expect("a status");
        let mut headers = Vec::new();
        loop {
            let mut line = String::new();
            self.reader.read_line(&mut line).expect("a header line");
            assert!(line.ends_with("\r\n"), "header line {line:?}");
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            let (name, value) = line.split_once(':').expect("a header field");
            headers.push((name.to_owned(), value.trim().to_owned()));
        }
        let mut response = Response {
            status,
            headers,
            body: Vec::new(),
        };
        let len: usize = response
            .header("content-length")
            .expect("every response has a content-length")
            .parse()
            .expect("a length");
        if !head_only {
            response.body = vec![0; len];
            self.reader
                .read_exact(&mut response.body)
                .expect("the body");
        }
        response
    }

    fn get(&mut self, path: &str) -> Response {
        self.send(format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").as_bytes());
        self.read_response(false)
    }

    /// Asserts that the server closes the connection (after any responses already read).
    fn expect_closed(&mut self) {
        let mut rest = Vec::new();
        match self.reader.read_to_end(&mut rest) {
            Ok(_) => assert!(
                rest.is_empty(),
                "unexpected bytes before the close: {:?}",
                String::from_utf8_lossy(&rest)
            ),
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {}
            Err(e) => panic!("the server did not close the connection: {e}"),
        }
    }

    /// Asserts that nothing arrives for a short while (the server waits for more input).
    fn expect_silence(&mut self) {
        examples_support::expect_silence(
            &mut self.reader,
            &self.writer,
            "the server answered early or closed",
        );
    }
}

fn post(path: &str, body: &[u8]) -> Vec<u8> {
    let mut request = format!(
        "POST {path} HTTP/1.1\r\nHost: test\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(body);
    request
}

/// Binds `addr` as the example's `main` does.
fn bind(addr: &str, iotask: &iotask::IoTask) -> Result<iotask::tcp::Listener, ListenError> {
    iotask::tcp::bind(addr, &http::listen_options(), iotask)
}

/// Starts a server on a port of its own, with an I/O task of its own.
fn start() -> (http::Server, iotask::IoTask) {
    let iotask = iotask::IoTask::spawn().expect("an I/O task");
    let listener = bind("127.0.0.1:0", &iotask).expect("the port binds");
    let server = http::start(listener).expect("the server starts");
    (server, iotask)
}

fn binary_body(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| match i % 7 {
            0 => b'\r',
            1 => b'\n',
            2 => 0,
            _ => (i * 31 % 256) as u8,
        })
        .collect()
}

#[test]
fn keep_alive_serves_several_requests_on_one_connection() {
    let (server, _iotask) = start();
    let mut c = Client::connect(server.local_addr());
    for i in 0..5 {
        let hello = c.get("/hello");
        assert_eq!(hello.status, 200);
        assert_eq!(hello.header("content-type"), Some("text/plain"));
        assert_eq!(hello.body, b"hello\n");
        assert_eq!(hello.header("connection"), None);

        let body = format!("request {i}");
        c.send(&post("/echo", body.as_bytes()));
        let echo = c.read_response(false);
        assert_eq!(echo.status, 200);
        assert_eq!(echo.body, body.as_bytes());
    }
    // A query string does not change the route.
    assert_eq!(c.get("/hello?name=x").body, b"hello\n");
    server.stop().unwrap();
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let (server, _iotask) = start();
    let mut c = Client::connect(server.local_addr());
    let mut batch = Vec::new();
    for i in 0..50 {
        batch.extend_from_slice(b"GET /hello HTTP/1.1\r\nHost: test\r\n\r\n");
        batch.extend(post("/echo", format!("body {i}").as_bytes()));
        batch.extend_from_slice(b"GET /missing HTTP/1.1\r\nHost: test\r\n\r\n");
    }
    // The last request closes the connection; one pipelined after it is not answered.
    batch.extend_from_slice(b"GET /hello HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
    batch.extend_from_slice(b"GET /hello HTTP/1.1\r\nHost: test\r\n\r\n");
    c.send(&batch);
    for i in 0..50 {
        assert_eq!(c.read_response(false).body, b"hello\n");
        assert_eq!(c.read_response(false).body, format!("body {i}").as_bytes());
        assert_eq!(c.read_response(false).status, 404);
    }
    let last = c.read_response(false);
    assert_eq!(last.status, 200);
    assert_eq!(last.header("connection"), Some("close"));
    c.expect_closed();
    server.stop().unwrap();
}

#[test]
fn requests_split_byte_by_byte_are_reassembled() {
    let (server, _iotask) = start();
    let mut c = Client::connect(server.local_addr());
    let body = binary_body(100);
    let mut stream = post("/echo", &body);
    stream.extend_from_slice(b"GET /hello HTTP/1.1\r\nHost: test\r\n\r\n");
    let (last, most) = stream.split_last().unwrap();
    for byte in most {
        c.send(std::slice::from_ref(byte));
    }
    let echo = c.read_response(false);
    assert_eq!(echo.body, body);
    // The second request lacks its last byte: no answer yet.
    c.expect_silence();
    c.send(std::slice::from_ref(last));
    assert_eq!(c.read_response(false).body, b"hello\n");
    server.stop().unwrap();
}

#[test]
fn post_echo_returns_the_body_byte_for_byte() {
    let (server, _iotask) = start();
    let mut c = Client::connect(server.local_addr());
    for len in [0, 1, 1000, 300_000] {
        let body = binary_body(len);
        c.send(&post("/echo", &body));
        let echo = c.read_response(false);
        assert_eq!(echo.status, 200);
        assert_eq!(
            echo.header("content-length"),
            Some(len.to_string().as_str())
        );
        assert_eq!(echo.body, body, "a body of {len} bytes");
    }
    server.stop().unwrap();
}

#[test]
fn expect_100_continue_is_answered_before_the_body() {
    let (server, _iotask) = start();
    let mut c = Client::connect(server.local_addr());
    c.send(
        b"POST /echo HTTP/1.1\r\nHost: test\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n",
    );
    let mut interim = [0u8; 25];
    c.reader.read_exact(&mut interim).unwrap();
    assert_eq!(&interim, b"HTTP/1.1 100 Continue\r\n\r\n");
    c.send(b"12345");
    assert_eq!(c.read_response(false).body, b"12345");
    server.stop().unwrap();
}

#[test]
fn unknown_paths_get_404_and_wrong_methods_405() {
    let (server, _iotask) = start();
    let mut c = Client::connect(server.local_addr());
    let missing = c.get("/nope");
    assert_eq!(missing.status, 404);
    assert_eq!(missing.header("connection"), None);

    c.send(&post("/hello", b"x"));
    let wrong = c.read_response(false);
    assert_eq!(wrong.status, 405);
    assert_eq!(wrong.header("allow"), Some("GET, HEAD"));
    let wrong = c.get("/echo");
    assert_eq!(wrong.status, 405);
    assert_eq!(wrong.header("allow"), Some("POST"));
    c.send(b"DELETE /echo HTTP/1.1\r\nHost: test\r\n\r\n");
    assert_eq!(c.read_response(false).status, 405);

    // HEAD: the fields of GET, no body; the next response proves none was sent.
    c.send(b"HEAD /hello HTTP/1.1\r\nHost: test\r\n\r\n");
    let head = c.read_response(true);
    assert_eq!(head.status, 200);
    assert_eq!(head.header("content-length"), Some("6"));
    assert_eq!(c.get("/hello").body, b"hello\n");
    // An absolute target routes by its path.
    c.send(b"GET http://test/hello HTTP/1.1\r\nHost: test\r\n\r\n");
    assert_eq!(c.read_response(false).body, b"hello\n");
    server.stop().unwrap();
}

#[test]
fn http_1_0_closes_unless_keep_alive_is_asked() {
    let (server, _iotask) = start();
    let mut c = Client::connect(server.local_addr());
    c.send(b"GET /hello HTTP/1.0\r\n\r\n");
    let response = c.read_response(false);
    assert_eq!(response.status, 200);
    assert_eq!(response.body, b"hello\n");
    c.expect_closed();

    let mut c = Client::connect(server.local_addr());
    for _ in 0..3 {
        c.send(b"GET /hello HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n");
        let response = c.read_response(false);
        assert_eq!(response.header("connection"), Some("keep-alive"));
        assert_eq!(response.body, b"hello\n");
    }
    c.send(b"GET /hello HTTP/1.0\r\n\r\n");
    assert_eq!(c.read_response(false).header("connection"), None);
    c.expect_closed();
    server.stop().unwrap();
}

#[test]
fn connection_close_is_honoured() {
    let (server, _iotask) = start();
    let mut c = Client::connect(server.local_addr());
    c.send(b"GET /hello HTTP/1.1\r\nHost: test\r\nConnection: keep-alive, close\r\n\r\n");
    let response = c.read_response(false);
    assert_eq!(response.body, b"hello\n");
    assert_eq!(response.header("connection"), Some("close"));
    c.expect_closed();
    server.stop().unwrap();
}

/// Sends `request` on a fresh connection; expects `status`, `Connection: close`, and a close.
fn expect_rejection(addr: SocketAddr, request: &[u8], status: u16) {
    let mut c = Client::connect(addr);
    c.send(request);
    let response = c.read_response(false);
    let shown = String::from_utf8_lossy(request);
    assert_eq!(response.status, status, "for {shown:?}");
    assert_eq!(
        response.header("connection"),
        Some("close"),
        "for {shown:?}"
    );
    c.expect_closed();
}

#[test]
fn malformed_requests_get_400_and_a_close_and_spare_other_clients() {
    let (server, _iotask) = start();
    let addr = server.local_addr();
    let mut bystander = Client::connect(addr);
    assert_eq!(bystander.get("/hello").status, 200);

    let bad: &[&[u8]] = &[
        b"garbage\r\n\r\n",
        b"\x00\x01\x02\r\n\r\n",
        b"GET /hello\r\n\r\n",
        b"GET  /hello HTTP/1.1\r\nHost: test\r\n\r\n",
        b"GET /hello HTTP/1.1 extra\r\nHost: test\r\n\r\n",
        b"GET hello HTTP/1.1\r\nHost: test\r\n\r\n",
        b"G(T /hello HTTP/1.1\r\nHost: test\r\n\r\n",
        b"GET /hello HTTP/one\r\nHost: test\r\n\r\n",
        b"GET /hello HTTP/1.1\r\n\r\n",
        b"GET /hello HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        b"GET /hello HTTP/1.1\r\nHost: test\r\nno colon here\r\n\r\n",
        b"GET /hello HTTP/1.1\r\nHost: test\r\nBad Name: x\r\n\r\n",
        b"GET /hello HTTP/1.1\r\nHost : test\r\n\r\n",
        b"GET /hello HTTP/1.1\r\nHost: test\r\nX-A: 1\r\n folded\r\n\r\n",
        b"GET /hello HTTP/1.1\r\nHost: test\r\n: empty name\r\n\r\n",
        b"GET /hello HTTP/1.1\r\nHost: test\r\nX-A: a\rb\r\n\r\n",
        b"POST /echo HTTP/1.1\r\nHost: test\r\nContent-Length: abc\r\n\r\n",
        b"POST /echo HTTP/1.1\r\nHost: test\r\nContent-Length: -1\r\n\r\n",
        b"POST /echo HTTP/1.1\r\nHost: test\r\nContent-Length: +1\r\n\r\nx",
        b"POST /echo HTTP/1.1\r\nHost: test\r\nContent-Length: 99999999999999999999999\r\n\r\n",
        b"POST /echo HTTP/1.1\r\nHost: test\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nxy",
    ];
    for request in bad {
        expect_rejection(addr, request, 400);
    }
    // A good request before a bad one is still answered, in order.
    let mut c = Client::connect(addr);
    c.send(b"GET /hello HTTP/1.1\r\nHost: test\r\n\r\ngarbage\r\n\r\n");
    assert_eq!(c.read_response(false).status, 200);
    assert_eq!(c.read_response(false).status, 400);
    c.expect_closed();

    assert_eq!(bystander.get("/hello").body, b"hello\n");
    server.stop().unwrap();
}

#[test]
fn unsupported_bodies_versions_and_sizes_are_refused() {
    let (server, _iotask) = start();
    let addr = server.local_addr();
    // This server needs Content-Length: a chunked body gets 411 Length Required, any
    // other transfer coding 501 Not Implemented.
    let chunked = b"POST /echo HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n\
                    5\r\nhello\r\n0\r\n\r\n";
    expect_rejection(addr, chunked, 411);
    let gzip = b"POST /echo HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: gzip\r\n\r\n";
    expect_rejection(addr, gzip, 501);
    expect_rejection(addr, b"GET /hello HTTP/2.0\r\nHost: test\r\n\r\n", 505);

    // A head over 16 KiB: 431, whether its end has arrived or not.
    let mut huge = b"GET /hello HTTP/1.1\r\nHost: test\r\nX-Big: ".to_vec();
    huge.extend(std::iter::repeat_n(b'a', 17 * 1024));
    expect_rejection(addr, &huge, 431);
    huge.extend_from_slice(b"\r\n\r\n");
    expect_rejection(addr, &huge, 431);
    // A head just under the limit is fine.
    let mut big = b"GET /hello HTTP/1.1\r\nHost: test\r\nX-Big: ".to_vec();
    big.extend(std::iter::repeat_n(b'a', 15 * 1024));
    big.extend_from_slice(b"\r\n\r\n");
    let mut c = Client::connect(addr);
    c.send(&big);
    assert_eq!(c.read_response(false).status, 200);

    let too_long = b"POST /echo HTTP/1.1\r\nHost: test\r\nContent-Length: 9000000\r\n\r\n";
    expect_rejection(addr, too_long, 413);
    server.stop().unwrap();
}

#[test]
fn stopping_closes_every_connection() {
    let (server, _iotask) = start();
    let mut c = Client::connect(server.local_addr());
    assert_eq!(c.get("/hello").status, 200);
    server.stop().unwrap();
    c.expect_closed();
}

#[test]
fn a_port_in_use_is_reported() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let iotask = iotask::IoTask::spawn().unwrap();
    let err = bind(&taken.local_addr().unwrap().to_string(), &iotask).unwrap_err();
    assert_eq!(err, ListenError::AddressInUse);
}

// ---- Real clients ---------------------------------------------------------------------------

fn curl(args: &[&str]) -> Output {
    let output = examples_support::run(
        Command::new("curl")
            .args(["--silent", "--show-error", "--max-time", "30"])
            .args(args),
        Stdio::null(),
        Duration::from_secs(60),
    );
    assert!(output.status.success(), "curl {args:?}: {output:?}");
    output
}

#[test]
fn curl_gets_posts_and_reuses_the_connection() {
    if !examples_support::have_tool("curl", "curl") {
        return;
    }
    let (server, _iotask) = start();
    let base = format!("http://{}", server.local_addr());

    assert_eq!(curl(&[&format!("{base}/hello")]).stdout, b"hello\n");

    // A binary body from a file, echoed byte for byte. At 2 MB, curl also sends
    // `Expect: 100-continue` first.
    let dir = std::env::temp_dir().join(format!("iotask-http-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for len in [3_000, 2_000_000] {
        let path = dir.join(format!("body-{len}.bin"));
        let body = binary_body(len);
        std::fs::write(&path, &body).unwrap();
        let data = format!("@{}", path.display());
        let output = curl(&["--data-binary", &data, &format!("{base}/echo")]);
        assert!(output.stdout == body, "the echo of {len} bytes differs");
    }
    std::fs::remove_dir_all(&dir).unwrap();

    // Two URLs in one invocation: the second request goes over the first connection.
    let output = curl(&["-v", &format!("{base}/hello"), &format!("{base}/nope")]);
    assert_eq!(output.stdout, b"hello\nnot found\n");
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(log.contains("Re-using existing connection"), "{log}");

    let output = curl(&["-i", &format!("{base}/missing")]);
    assert!(String::from_utf8_lossy(&output.stdout).starts_with("HTTP/1.1 404 Not Found\r\n"));
    server.stop().unwrap();
}

#[test]
fn curl_gets_and_posts_over_a_unix_socket() {
    if !examples_support::have_tool("curl", "curl") {
        return;
    }
    let dir = examples_support::SocketDir::new("http-curl");
    let path = dir.path("http.sock");
    let iotask = iotask::IoTask::spawn().expect("an I/O task");
    let listener = examples_support::bind_unix(&path, &http::listen_options(), &iotask)
        .expect("the path binds");
    let server = http::start(listener).expect("the server starts");
    let socket = path.display().to_string();
    // The host in the URL only fills the `Host` field; the socket is where curl connects.
    let base = "http://localhost";

    let output = curl(&["--unix-socket", &socket, &format!("{base}/hello")]);
    assert_eq!(output.stdout, b"hello\n");

    let body = binary_body(100_000);
    let body_path = dir.path("body.bin");
    std::fs::write(&body_path, &body).unwrap();
    let data = format!("@{}", body_path.display());
    let output = curl(&[
        "--unix-socket",
        &socket,
        "--data-binary",
        &data,
        &format!("{base}/echo"),
    ]);
    assert!(output.stdout == body, "the echo of the body differs");

    // Two URLs in one invocation: the second request goes over the first connection.
    let output = curl(&[
        "-v",
        "--unix-socket",
        &socket,
        &format!("{base}/hello"),
        &format!("{base}/nope"),
    ]);
    assert_eq!(output.stdout, b"hello\nnot found\n");
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(log.contains("Re-using existing connection"), "{log}");

    server.stop().unwrap();
    assert!(!path.exists(), "the socket file outlived the server");
}

#[test]
fn wrk_runs_without_errors() {
    if !examples_support::have_tool("wrk", "wrk") {
        return;
    }
    let (server, _iotask) = start();
    let url = format!("http://{}/hello", server.local_addr());
    examples_support::wrk(&url, 3);
    server.stop().unwrap();
}

#[test]
fn a_request_line_over_8_kib_gets_414_and_a_body_over_8_mib_413() {
    let (server, _iotask) = start();
    let addr = server.local_addr();
    let mut long = b"GET /".to_vec();
    long.extend(std::iter::repeat_n(b'a', 9 * 1024));
    // Whether the end of the line has arrived or not.
    expect_rejection(addr, &long, 414);
    long.extend_from_slice(b" HTTP/1.1\r\nHost: test\r\n\r\n");
    expect_rejection(addr, &long, 414);
    // A line just under the limit is fine (and not found).
    let mut c = Client::connect(addr);
    let path = format!("/{}", "a".repeat(8 * 1024 - 20));
    assert_eq!(c.get(&path).status, 404);
    let huge_body = b"POST /echo HTTP/1.1\r\nHost: test\r\nContent-Length: 8388609\r\n\r\n";
    expect_rejection(addr, huge_body, 413);
    server.stop().unwrap();
}

#[test]
fn slowloris_connections_delay_nobody_and_are_closed_at_the_header_deadline() {
    const SLOW: usize = 200;
    let timeout = Duration::from_secs(2);
    let iotask = iotask::IoTask::spawn().expect("an I/O task");
    let config = http::Config {
        header_timeout: timeout,
    };
    let listener = bind("127.0.0.1:0", &iotask).expect("the port binds");
    let server = http::start_with(listener, config).expect("the server starts");
    let addr = server.local_addr();

    // Each slow client sends its head one byte per second; it would take a minute.
    let opened = std::time::Instant::now();
    let mut slow: Vec<TcpStream> = (0..SLOW).map(|_| examples_support::client(addr)).collect();
    let head =
        b"GET /hello HTTP/1.1\r\nHost: test\r\nX-Padding: aaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
    let (stop_tx, stop) = std::sync::mpsc::channel::<()>();
    let trickler = std::thread::spawn(move || {
        for byte in head {
            for stream in &mut slow {
                // The server closes them after the deadline; later writes may fail.
                let _ = stream.write_all(std::slice::from_ref(byte));
            }
            if stop.recv_timeout(Duration::from_secs(1)).is_ok() {
                break;
            }
        }
        slow
    });

    // Meanwhile another client is served at once, request after request, for a second.
    let mut c = Client::connect(addr);
    let mut worst = Duration::ZERO;
    for _ in 0..50 {
        let sent = std::time::Instant::now();
        assert_eq!(c.get("/hello").body, b"hello\n");
        worst = worst.max(sent.elapsed());
        // Pacing, not synchronisation: the requests spread over the slow clients' bytes.
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!("{SLOW} slowloris connections open: the slowest of 50 requests took {worst:?}");
    assert!(
        worst < Duration::from_millis(200),
        "a request took {worst:?}"
    );

    // Past the deadline, every slow connection gets 408 and a close; none before it.
    let _ = stop_tx.send(());
    let slow = examples_support::join_within(trickler, examples_support::TIMEOUT);
    let mut last_close = Duration::ZERO;
    for stream in slow {
        let mut reader = BufReader::new(stream);
        let mut status = String::new();
        reader
            .read_line(&mut status)
            .expect("a response before the close");
        let closed_after = opened.elapsed();
        assert!(status.starts_with("HTTP/1.1 408 "), "{status:?}");
        assert!(closed_after >= timeout, "closed after {closed_after:?}");
        let mut rest = Vec::new();
        reader.read_to_end(&mut rest).expect("a close");
        last_close = last_close.max(opened.elapsed());
    }
    eprintln!("the last of them was closed {last_close:?} after they opened");
    assert!(last_close < timeout * 3, "closed only after {last_close:?}");
    // The server is as available as ever.
    assert_eq!(Client::connect(addr).get("/hello").status, 200);
    server.stop().unwrap();
}
