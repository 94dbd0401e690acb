//! The chat example, run in-process and talked to by `std` clients and by `socat`.

#[path = "../../examples/chat.rs"]
#[allow(dead_code)]
mod chat;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use iotask::unix::Unix;

use crate::examples_support::{Server, Socat, SocketDir, client, have_tool, unix_client};

fn start_chat() -> Server {
    Server::start(chat::serve)
}

/// A chat client that reads whole lines, each within the test timeout.
struct Member {
    /// How the room names this client: its address as the server sees it.
    name: String,
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Member {
    fn join(addr: SocketAddr) -> Member {
        let writer = client(addr);
        let name = writer.local_addr().expect("local addr").to_string();
        let reader = BufReader::new(writer.try_clone().expect("clone"));
        Member {
            name,
            reader,
            writer,
        }
    }

    fn say(&mut self, text: &str) {
        self.writer.write_all(text.as_bytes()).expect("write");
    }

    fn next_line(&mut self) -> String {
        let mut line = String::new();
        let n = self.reader.read_line(&mut line).expect("a line in time");
        assert!(n > 0, "the room closed the connection of {}", self.name);
        line
    }

    fn expect_line(&mut self, expected: &str) {
        assert_eq!(self.next_line(), expected, "as read by {}", self.name);
    }
}

/// Three members: `a` joined first, then `b`, then `c`, and every announcement was read.
fn three_members(addr: SocketAddr) -> (Member, Member, Member) {
    let mut a = Member::join(addr);
    let mut b = Member::join(addr);
    a.expect_line(&format!("* {} joined\n", b.name));
    let c = Member::join(addr);
    a.expect_line(&format!("* {} joined\n", c.name));
    b.expect_line(&format!("* {} joined\n", c.name));
    (a, b, c)
}

#[test]
fn lines_reach_everyone_but_their_sender() {
    let server = start_chat();
    let (mut a, mut b, mut c) = three_members(server.addr);

    a.say("hello from a\n");
    b.expect_line(&format!("{}: hello from a\n", a.name));
    c.expect_line(&format!("{}: hello from a\n", a.name));

    // The room handles lines in order, so had `a` been sent its own line, `a` would read it
    // before `b`'s.
    b.say("hello from b\n");
    a.expect_line(&format!("{}: hello from b\n", b.name));
    c.expect_line(&format!("{}: hello from b\n", b.name));

    server.stop().expect("serve returns Ok when killed");
}

#[test]
fn partial_lines_wait_for_their_newline() {
    let server = start_chat();
    let (mut a, mut b, mut c) = three_members(server.addr);

    // The pauses make the pieces arrive as separate reads, which is what this test is about;
    // a correct room passes whatever the timing.
    for piece in ["par", "tial li", "ne\nsecond\nthi", "rd\n"] {
        a.say(piece);
        std::thread::sleep(Duration::from_millis(30));
    }
    for member in [&mut b, &mut c] {
        member.expect_line(&format!("{}: partial line\n", a.name));
        member.expect_line(&format!("{}: second\n", a.name));
        member.expect_line(&format!("{}: third\n", a.name));
    }

    // A carriage return before the newline is dropped.
    a.say("crlf\r\n");
    b.expect_line(&format!("{}: crlf\n", a.name));
}

#[test]
fn an_overlong_line_is_passed_on_without_its_newline() {
    let server = start_chat();
    let mut a = Member::join(server.addr);
    let mut b = Member::join(server.addr);
    a.expect_line(&format!("* {} joined\n", b.name));

    // More than the room holds of one line, and no newline yet.
    a.say(&"x".repeat(chat::MAX_LINE + 1000));
    let prefix = format!("{}: ", a.name);
    let first = b.next_line();
    let first = first.strip_prefix(&prefix).expect("a line from a");
    let held = first.trim_end().len();
    assert!(held >= chat::MAX_LINE, "passed on {held} bytes");

    a.say("\n");
    if held < chat::MAX_LINE + 1000 {
        let rest = b.next_line();
        let rest = rest.strip_prefix(&prefix).expect("a line from a");
        assert_eq!(held + rest.trim_end().len(), chat::MAX_LINE + 1000);
    }
}

#[test]
fn leaving_is_announced_to_the_others() {
    let server = start_chat();
    let (a, mut b, mut c) = three_members(server.addr);
    let name = a.name.clone();
    drop(a);
    b.expect_line(&format!("* {name} left\n"));
    c.expect_line(&format!("* {name} left\n"));

    // The room goes on without `a`.
    b.say("still here\n");
    c.expect_line(&format!("{}: still here\n", b.name));
}

#[test]
fn socat_can_chat() {
    if !have_tool("socat", "socat") {
        return;
    }
    let server = start_chat();
    let mut b = Member::join(server.addr);
    let mut socat = Socat::connect(&format!("TCP:{}", server.addr));

    let joined = b.next_line();
    let name = joined
        .strip_prefix("* ")
        .and_then(|rest| rest.strip_suffix(" joined\n"))
        .unwrap_or_else(|| panic!("a join announcement, got {joined:?}"))
        .to_owned();
    assert!(name.starts_with("127.0.0.1:"), "{name}");

    socat.say("hello from socat");
    b.expect_line(&format!("{name}: hello from socat\n"));

    b.say("hello socat\n");
    assert_eq!(socat.next_line(), format!("{}: hello socat", b.name));

    // Closing socat's input makes it close the connection and exit.
    socat.close();
    b.expect_line(&format!("* {name} left\n"));
}

#[test]
fn stopping_the_room_closes_every_connection() {
    let server = start_chat();
    let (mut a, mut b, mut c) = three_members(server.addr);
    server.stop().expect("serve returns Ok when killed");
    for member in [&mut a, &mut b, &mut c] {
        let mut rest = String::new();
        let n = member
            .reader
            .read_line(&mut rest)
            .expect("EOF, not a timeout");
        assert_eq!(n, 0, "{} read {rest:?} instead of EOF", member.name);
    }
}

#[test]
fn a_member_that_never_reads_is_dropped_instead_of_queued_for() {
    let server = start_chat();
    let (mut a, mut b, mut c) = three_members(server.addr);
    let line = format!("{}\n", "x".repeat(999));
    let lines = 80_000; // 80 MB: far more than the room may queue for one member.
    let expected = format!("{}: {line}", a.name);
    let reader = std::thread::spawn(move || {
        for _ in 0..lines {
            c.expect_line(&expected);
        }
        c
    });
    for _ in 0..lines {
        a.say(&line);
    }
    let _c = reader.join().expect("the reading member got every line");

    // The member that read nothing was dropped: it finds what was queued for it, then the
    // end of the connection, well short of everything that was said.
    let mut received = 0;
    loop {
        let mut text = String::new();
        match b.reader.read_line(&mut text) {
            Ok(0) => break,
            Ok(n) => received += n,
            Err(e) => panic!("expected the room to close the connection, got {e}"),
        }
    }
    assert!(
        received < lines * line.len() / 2,
        "the slow member got {received} bytes"
    );
}

// ---- Over Unix-domain sockets ----------------------------------------------------------------

/// The name in a join announcement, `* NAME joined`.
fn joined_name(line: &str) -> String {
    line.strip_prefix("* ")
        .and_then(|rest| rest.strip_suffix(" joined"))
        .unwrap_or_else(|| panic!("a join announcement, got {line:?}"))
        .to_owned()
}

#[test]
fn two_socat_members_chat_over_a_unix_socket() {
    if !have_tool("socat", "socat") {
        return;
    }
    let dir = SocketDir::new("chat-socat");
    let path = dir.path("chat.sock");
    let server = Server::start_unix(&path, chat::serve::<Unix>);
    let address = format!("UNIX-CONNECT:{}", path.display());

    let mut a = Socat::connect(&address);
    // Once the listener accepted `a`, `b` joins after it (the room takes connections in
    // the order they were accepted), so `a` hears of `b`.
    server.wait_for_connections(1);
    let mut b = Socat::connect(&address);
    let b_name = joined_name(&a.next_line());
    // A Unix-domain peer is named by its socket and its process.
    assert!(
        b_name.starts_with("socket#") && b_name.ends_with(&format!(" (pid {})", b.pid())),
        "{b_name}"
    );

    b.say("hello from b");
    assert_eq!(a.next_line(), format!("{b_name}: hello from b"));
    a.say("hello from a");
    let line = b.next_line();
    let (a_name, text) = line.split_once(": ").expect("name: text");
    assert_eq!(text, "hello from a");
    assert!(a_name.ends_with(&format!(" (pid {})", a.pid())), "{a_name}");
    assert_ne!(a_name, b_name);

    b.close();
    assert_eq!(a.next_line(), format!("* {b_name} left"));
    a.close();
    server.stop().expect("serve returns Ok when killed");
    assert!(!path.exists(), "the socket file outlived the server");
}

#[test]
fn members_of_one_process_get_names_of_their_own_over_a_unix_socket() {
    let dir = SocketDir::new("chat-unix");
    let path = dir.path("chat.sock");
    let server = Server::start_unix(&path, chat::serve::<Unix>);

    let a = unix_client(&path);
    let mut a_lines = BufReader::new(a.try_clone().expect("clone"));
    let mut b = unix_client(&path);
    let mut b_lines = BufReader::new(b.try_clone().expect("clone"));
    let mut line = String::new();
    a_lines.read_line(&mut line).expect("a line in time");
    let b_name = joined_name(line.trim_end());
    let pid = format!(" (pid {})", std::process::id());
    assert!(b_name.ends_with(&pid), "{b_name}");

    b.write_all(b"hi\n").expect("write");
    line.clear();
    a_lines.read_line(&mut line).expect("a line in time");
    assert_eq!(line, format!("{b_name}: hi\n"));

    drop(a);
    drop(a_lines);
    line.clear();
    b_lines.read_line(&mut line).expect("a line in time");
    let left = line
        .strip_prefix("* ")
        .and_then(|rest| rest.strip_suffix(" left\n"))
        .unwrap_or_else(|| panic!("a leave announcement, got {line:?}"));
    assert!(left.ends_with(&pid), "{left}");
    assert_ne!(left, b_name, "two members of one process share a name");
    server.stop().expect("serve returns Ok when killed");
}
