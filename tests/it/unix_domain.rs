//! Unix-domain stream sockets: binding (stale files, live servers, modes, removal on
//! close), serving in every way TCP serves, connecting, credentials, abstract names.

use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use iotask::server::ListenOptions;
use iotask::tcp::{ConnectError, ListenError};
use iotask::{Event, IoTask, Mailbox, unix};

use crate::util::*;

/// A fresh folder for one test's socket files, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("iotask-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    fn path(&self, file: &str) -> PathBuf {
        self.0.join(file)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn is_socket(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket())
}

/// An echo server on `path`, served on a thread of its own.
fn echo_server(path: &Path, iotask: &IoTask) -> unix::Server {
    unix::bind(path, &ListenOptions::new(), iotask)
        .unwrap()
        .spawn(|conn, _| {
            let sock = unix::accept(conn).unwrap();
            std::thread::spawn(move || {
                let Ok(port) = sock.read_start() else { return };
                while let Ok(chunk) = port.recv() {
                    drop(sock.write_future(chunk));
                }
            });
        })
        .unwrap()
}

#[test]
fn a_unix_server_echoes_and_removes_its_file_when_stopped() {
    let dir = TempDir::new("echo");
    let path = dir.path("echo.sock");
    let iotask = IoTask::spawn().unwrap();
    let server = echo_server(&path, &iotask);
    assert!(is_socket(&path));
    assert_eq!(server.local_addr().as_pathname(), Some(path.as_path()));

    let client = unix::connect(&path, &iotask).unwrap();
    assert_eq!(
        client.peer_addr().unwrap().as_pathname(),
        Some(path.as_path())
    );
    assert!(client.local_addr().unwrap().is_unnamed());
    let data = pattern(0, 300 * 1024);
    client.write(data.clone()).unwrap();
    let port = client.read_start().unwrap();
    assert_bytes_eq(&recv_exact(&port, data.len()), &data);

    // A std client works as well.
    let mut std_client = UnixStream::connect(&path).unwrap();
    std_client.set_read_timeout(Some(TIMEOUT)).unwrap();
    std_client.write_all(b"std").unwrap();
    let mut got = [0; 3];
    std_client.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"std");

    server.stop().unwrap();
    assert!(!path.exists(), "the listener removes its socket file");
    assert!(matches!(
        unix::connect(&path, &iotask),
        Err(ConnectError::Generic { ref name, .. }) if name == "ENOENT"
    ));
}

#[test]
fn a_stale_socket_file_is_taken_over() {
    let dir = TempDir::new("stale");
    let path = dir.path("stale.sock");
    // A server that died leaves its file behind.
    drop(UnixListener::bind(&path).unwrap());
    assert!(is_socket(&path));
    let iotask = IoTask::spawn().unwrap();
    assert_eq!(
        unix::connect(&path, &iotask).unwrap_err(),
        ConnectError::ConnectionRefused,
        "nothing listens on a stale file"
    );
    let server = echo_server(&path, &iotask);
    let client = unix::connect(&path, &iotask).unwrap();
    client.write(b"alive".to_vec()).unwrap();
    assert_eq!(client.read(TIMEOUT).unwrap(), b"alive");
    server.stop().unwrap();
}

#[test]
fn a_live_server_keeps_its_path() {
    let dir = TempDir::new("live");
    let path = dir.path("live.sock");
    let live = UnixListener::bind(&path).unwrap();
    let iotask = IoTask::spawn().unwrap();
    assert_eq!(
        unix::bind(&path, &ListenOptions::new(), &iotask).unwrap_err(),
        ListenError::AddressInUse
    );
    // The live server still has its file and accepts.
    let _client = UnixStream::connect(&path).unwrap();
    live.set_nonblocking(false).unwrap();
    assert!(live.accept().is_ok());

    // An iotask server is refused just the same, and keeps serving.
    let dir2 = TempDir::new("live2");
    let path2 = dir2.path("live.sock");
    let server = echo_server(&path2, &iotask);
    assert_eq!(
        unix::bind(&path2, &ListenOptions::new(), &iotask).unwrap_err(),
        ListenError::AddressInUse
    );
    let client = unix::connect(&path2, &iotask).unwrap();
    client.write(b"still here".to_vec()).unwrap();
    assert_eq!(client.read(TIMEOUT).unwrap(), b"still here");
    server.stop().unwrap();
}

#[test]
fn a_file_that_is_not_a_socket_is_never_removed() {
    let dir = TempDir::new("regular");
    let path = dir.path("data.txt");
    std::fs::write(&path, b"precious").unwrap();
    let iotask = IoTask::spawn().unwrap();
    assert_eq!(
        unix::bind(&path, &ListenOptions::new(), &iotask).unwrap_err(),
        ListenError::AddressInUse
    );
    assert_eq!(std::fs::read(&path).unwrap(), b"precious");
}

#[test]
fn the_file_mode_is_set_before_clients_come() {
    let dir = TempDir::new("mode");
    let path = dir.path("mode.sock");
    let iotask = IoTask::spawn().unwrap();
    let listener = unix::bind(&path, &ListenOptions::new().unix_mode(0o600), &iotask).unwrap();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    // An unserved listener removes its file when dropped.
    drop(listener);
    assert!(!path.exists());
}

#[test]
fn a_bad_path_gives_a_typed_error() {
    let iotask = IoTask::spawn().unwrap();
    let missing = std::env::temp_dir().join("iotask-no-such-folder/x.sock");
    assert!(matches!(
        unix::bind(&missing, &ListenOptions::new(), &iotask),
        Err(ListenError::Generic { ref name, .. }) if name == "ENOENT"
    ));
    let long = "x".repeat(200);
    assert!(matches!(
        unix::bind(long.as_str(), &ListenOptions::new(), &iotask),
        Err(ListenError::Generic { ref name, .. }) if name == "InvalidInput"
    ));
}

#[test]
fn peer_credentials_name_this_process() {
    let dir = TempDir::new("cred");
    let path = dir.path("cred.sock");
    let iotask = IoTask::spawn().unwrap();
    let mut mailbox: Mailbox = Mailbox::new();
    let server = unix::bind(&path, &ListenOptions::new(), &iotask)
        .unwrap()
        .into_mailbox(&mailbox)
        .unwrap();
    let client = unix::connect(&path, &iotask).unwrap();
    let accepted = match mailbox.recv_timeout(TIMEOUT) {
        Some(Event::AcceptedUnix(sock)) => sock,
        other => panic!("expected a Unix-domain connection, got {other:?}"),
    };
    let uid = current_uid();
    for cred in [accepted.peer_cred().unwrap(), client.peer_cred().unwrap()] {
        assert_eq!(cred.uid, uid);
        assert_eq!(cred.pid, Some(std::process::id() as i32));
    }
    client.write(b"via mailbox".to_vec()).unwrap();
    match mailbox.recv_timeout(TIMEOUT) {
        Some(Event::Data { socket, data }) => {
            assert_eq!(socket, accepted.id());
            assert_eq!(data, b"via mailbox");
        }
        other => panic!("expected data, got {other:?}"),
    }
    server.stop().unwrap();
    assert!(!path.exists());
}

/// The user id of this process, read from `/proc` (no `unsafe` needed in the tests).
fn current_uid() -> u32 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    line.split_whitespace().nth(2).unwrap().parse().unwrap()
}

#[test]
fn abstract_names_need_no_file() {
    use std::os::linux::net::SocketAddrExt;
    let name = format!("iotask-test-{}", std::process::id());
    let addr = unix::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
    let iotask = IoTask::spawn().unwrap();
    let server = unix::bind(&addr, &ListenOptions::new(), &iotask)
        .unwrap()
        .spawn(|conn, _| {
            let sock = unix::accept(conn).unwrap();
            drop(sock.write_future(b"abstract".to_vec()));
        })
        .unwrap();
    assert_eq!(
        server.local_addr().as_abstract_name(),
        Some(name.as_bytes())
    );
    let client = unix::connect(&addr, &iotask).unwrap();
    assert_eq!(client.read(TIMEOUT).unwrap(), b"abstract");
    assert_eq!(
        unix::bind(&addr, &ListenOptions::new(), &iotask).unwrap_err(),
        ListenError::AddressInUse
    );
    server.stop().unwrap();
}

#[test]
fn the_seed_shaped_listen_serves_a_path() {
    let dir = TempDir::new("seed");
    let path = dir.path("seed.sock");
    let iotask = IoTask::spawn().unwrap();
    let server = std::thread::spawn({
        let iotask = iotask.clone();
        let path = path.clone();
        move || {
            unix::listen(
                &path,
                16,
                &iotask,
                |kill| {
                    let path = kill.local_addr().as_pathname().unwrap().to_owned();
                    std::thread::spawn(move || {
                        let mut client = UnixStream::connect(path)?;
                        client.set_read_timeout(Some(TIMEOUT))?;
                        client.read_to_end(&mut Vec::new())
                    });
                },
                |conn, kill| {
                    let sock = unix::accept(conn).unwrap();
                    sock.write(b"bye".to_vec()).unwrap();
                    kill.send(None).unwrap();
                },
            )
        }
    });
    assert_eq!(join_within(server, TIMEOUT), Ok(()));
    assert!(!path.exists());
}

#[test]
fn a_buffered_unix_socket_reads_lines() {
    use std::io::BufRead;
    let dir = TempDir::new("buf");
    let path = dir.path("buf.sock");
    let iotask = IoTask::spawn().unwrap();
    let server = echo_server(&path, &iotask);
    let mut buf = unix::socket_buf(unix::connect(&path, &iotask).unwrap());
    buf.set_read_timeout(Some(TIMEOUT));
    writeln!(buf, "one line").unwrap();
    buf.flush().unwrap();
    let mut line = String::new();
    buf.read_line(&mut line).unwrap();
    assert_eq!(line, "one line\n");
    buf.shutdown_write().unwrap();
    server.stop().unwrap();
}

#[test]
fn a_connect_to_a_full_backlog_waits_and_ends_with_its_timeout_or_shutdown() {
    let dir = TempDir::new("backlog");
    let path = dir.path("full.sock");
    // Backlog 0 and never accepted: the kernel refuses further connects with EAGAIN.
    let listener =
        socket2::Socket::new(socket2::Domain::UNIX, socket2::Type::STREAM, None).unwrap();
    listener
        .bind(&socket2::SockAddr::unix(&path).unwrap())
        .unwrap();
    listener.listen(0).unwrap();
    let mut fillers = Vec::new();
    for _ in 0..4 {
        let s = socket2::Socket::new(socket2::Domain::UNIX, socket2::Type::STREAM, None).unwrap();
        s.set_nonblocking(true).unwrap();
        if s.connect(&socket2::SockAddr::unix(&path).unwrap()).is_ok() {
            fillers.push(s);
        }
    }
    let iotask = IoTask::spawn().unwrap();
    let start = Instant::now();
    match unix::connect_timeout(&path, Duration::from_millis(200), &iotask) {
        Err(ConnectError::Generic { name, .. }) => assert_eq!(name, "ETIMEDOUT"),
        other => panic!("expected ETIMEDOUT, got {other:?}"),
    }
    assert!(start.elapsed() >= Duration::from_millis(150));

    let pending = unix::connect_future(&path, &iotask);
    iotask.shutdown();
    match pending.get() {
        Err(ConnectError::Generic { name, .. }) => assert_eq!(name, "SHUTDOWN"),
        other => panic!("expected SHUTDOWN, got {other:?}"),
    }

    // Once the backlog has room, a waiting connect goes through.
    let iotask = IoTask::spawn().unwrap();
    let pending = unix::connect_future(&path, &iotask);
    let (accepted, _) = listener.accept().unwrap();
    drop(accepted);
    let sock = pending.get().expect("connected once the backlog had room");
    drop(sock);
    drop(fillers);
}

#[test]
fn a_pool_shares_one_unix_listener() {
    let dir = TempDir::new("pool");
    let path = dir.path("pool.sock");
    let pool = iotask::IoPool::spawn(2).unwrap();
    let mailboxes: Vec<Mailbox> = (0..2).map(|_| Mailbox::new()).collect();
    let server = unix::bind_pool(&path, &ListenOptions::new(), &pool)
        .unwrap()
        .into_mailboxes(&mailboxes)
        .unwrap();
    let clients: Vec<UnixStream> = (0..20)
        .map(|_| UnixStream::connect(&path).unwrap())
        .collect();
    assert!(wait_until(TIMEOUT, || server.kill_chan().num_connections() == 20));
    drop(clients);
    server.stop().unwrap();
    assert!(!path.exists());
    pool.shutdown();
}

#[test]
fn a_read_on_a_closed_peer_ends_with_eof() {
    let dir = TempDir::new("eof");
    let path = dir.path("eof.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let iotask = IoTask::spawn().unwrap();
    let sock = unix::connect(&path, &iotask).unwrap();
    let (mut peer, _) = listener.accept().unwrap();
    peer.write_all(b"last").unwrap();
    drop(peer);
    let port = sock.read_start().unwrap();
    let (got, end) = recv_to_end(&port);
    assert_eq!(got, b"last");
    assert!(end.is_eof());
    let e = sock.write(vec![0; 1 << 20]).unwrap_err();
    assert!(
        matches!(e.name(), "EPIPE" | "ECONNRESET"),
        "a write to a closed peer fails: {e:?}"
    );
    assert_ne!(e.kind(), ErrorKind::Other);
}
