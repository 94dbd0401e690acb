//! Signals delivered to every thread while data streams: every system call of the I/O
//! threads (`epoll_wait`, `recv`, `send`, `accept`) and of the user threads may fail with
//! `EINTR`, and not one byte may be lost, repeated or reordered.
//!
//! A binary of its own: the `SIGUSR1` handler and the signals are process-wide.

#[path = "it/util.rs"]
mod util;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use iotask::tcp::{self, ListenOptions};
use iotask::{Event, IoTask, Mailbox};
use util::*;

/// Bytes sent through each stream, in each direction.
const BYTES: usize = 20 << 20;
const CHUNK: usize = 64 * 1024;

static HANDLED: AtomicU64 = AtomicU64::new(0);

extern "C" fn on_sigusr1(_: libc::c_int) {
    HANDLED.fetch_add(1, Ordering::Relaxed);
}

/// Installs a `SIGUSR1` handler that does nothing but count, without `SA_RESTART`, so that
/// an interrupted system call fails with `EINTR` instead of being restarted by the kernel.
fn install_handler() {
    // SAFETY: a zeroed sigaction is a valid starting point; the handler only touches an
    // atomic, which is async-signal-safe.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_sigusr1 as *const () as usize;
        action.sa_flags = 0;
        libc::sigemptyset(&mut action.sa_mask);
        assert_eq!(
            libc::sigaction(libc::SIGUSR1, &action, std::ptr::null_mut()),
            0
        );
    }
}

/// Sends `SIGUSR1` to every thread of the process (`tgkill`), and to the process itself
/// (`kill`, which the kernel gives to any thread), until `stop`; returns how many it sent.
fn spray(stop: Arc<AtomicBool>) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        // SAFETY: getpid has no preconditions.
        let pid = unsafe { libc::getpid() };
        let mut sent = 0;
        while !stop.load(Ordering::SeqCst) {
            let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
                continue;
            };
            for task in tasks.filter_map(Result::ok) {
                let Some(tid) = task
                    .file_name()
                    .to_str()
                    .and_then(|t| t.parse::<i32>().ok())
                else {
                    continue;
                };
                // SAFETY: tgkill only sends a signal; a thread that already ended gives ESRCH.
                if unsafe { libc::syscall(libc::SYS_tgkill, pid, tid, libc::SIGUSR1) } == 0 {
                    sent += 1;
                }
            }
            // SAFETY: as above, for the whole process.
            if unsafe { libc::kill(pid, libc::SIGUSR1) } == 0 {
                sent += 1;
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        sent
    })
}

/// FNV-1a, over a stream in pieces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Checksum(u64, usize);

impl Checksum {
    fn new() -> Checksum {
        Checksum(0xcbf2_9ce4_8422_2325, 0)
    }

    fn add(&mut self, data: &[u8]) {
        for &b in data {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
        }
        self.1 += data.len();
    }
}

/// What the sender sends: the test pattern, and its checksum.
fn expected() -> Checksum {
    let mut sum = Checksum::new();
    sum.add(&pattern(0, BYTES));
    sum
}

/// An actor echoing every connection of its mailbox, until told to stop.
fn echo_actor(mut mailbox: Mailbox) {
    let mut sockets = HashMap::new();
    while let Some(event) = mailbox.recv_timeout(TIMEOUT * 6) {
        match event {
            Event::Accepted(sock) => {
                sockets.insert(sock.id(), sock);
            }
            Event::Data { socket, data } => {
                if let Some(sock) = sockets.get(&socket) {
                    drop(sock.write_future(data));
                }
            }
            Event::Closed { socket, .. } => drop(sockets.remove(&socket)),
            Event::Message(()) => return,
            _ => {}
        }
    }
}

#[test]
fn transfers_are_exact_while_signals_hit_every_thread() {
    install_handler();
    let server_task = IoTask::spawn().unwrap();
    let client_task = IoTask::spawn().unwrap();
    let mailbox: Mailbox = Mailbox::new();
    let server = tcp::bind("127.0.0.1:0", &ListenOptions::new(), &server_task)
        .and_then(|l| l.into_mailbox(&mailbox))
        .unwrap();
    let addr = server.local_addr();
    let stop_actor = mailbox.sender();
    let actor = std::thread::spawn(move || echo_actor(mailbox));

    let stop = Arc::new(AtomicBool::new(false));
    let sprayer = spray(stop.clone());
    let started = Instant::now();

    // An iotask client through the iotask echo server: writes from one thread, reads on
    // a port in another.
    let sock = Arc::new(tcp::connect(addr, &client_task).unwrap());
    let port = sock.read_start().unwrap();
    let writer = std::thread::spawn({
        let sock = sock.clone();
        move || {
            let data = pattern(0, BYTES);
            for chunk in data.chunks(CHUNK) {
                sock.write(chunk.to_vec()).expect("iotask write");
            }
        }
    });
    let reader = std::thread::spawn(move || {
        let mut sum = Checksum::new();
        while sum.1 < BYTES {
            sum.add(&port.recv_timeout(TIMEOUT).expect("iotask read"));
        }
        sum
    });
    // A std client through the same server, its calls restarted by std on EINTR.
    let mut std_client = TcpStream::connect(addr).unwrap();
    std_client.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut std_writer = std_client.try_clone().unwrap();
    let std_writing = std::thread::spawn(move || {
        std_writer.write_all(&pattern(0, BYTES)).expect("std write");
    });
    let std_reader = std::thread::spawn(move || {
        let mut sum = Checksum::new();
        let mut buf = vec![0u8; CHUNK];
        while sum.1 < BYTES {
            let n = match std_client.read(&mut buf) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => panic!("std read after {} bytes: {e}", sum.1),
            };
            assert!(n > 0, "EOF after {} bytes", sum.1);
            sum.add(&buf[..n]);
        }
        sum
    });

    let limit = Duration::from_secs(60);
    join_within(writer, limit);
    join_within(std_writing, limit);
    let through_iotask = join_within(reader, limit);
    let through_std = join_within(std_reader, limit);
    let elapsed = started.elapsed();
    stop.store(true, Ordering::SeqCst);
    let sent = join_within(sprayer, TIMEOUT);
    let handled = HANDLED.load(Ordering::Relaxed);
    eprintln!(
        "2 x {BYTES} bytes echoed in {elapsed:?} while {sent} signals were sent, {handled} handled"
    );
    let want = expected();
    assert_eq!(through_iotask, want, "the iotask client's stream differs");
    assert_eq!(through_std, want, "the std client's stream differs");
    assert!(handled >= 100, "only {handled} signals arrived");
    assert!(server_task.is_running() && client_task.is_running());

    stop_actor.send(()).unwrap();
    join_within(actor, TIMEOUT);
    drop(sock);
    server.stop().unwrap();
}
