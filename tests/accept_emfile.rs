//! Out of descriptors: the listener backs off instead of spinning, existing connections are
//! still served, and accepting recovers by itself once descriptors free up.
//!
//! The descriptor limit is lowered in a child process (this test binary, re-run with
//! `IOTASK_EMFILE_CHILD=1`), so that nothing else in the test run is affected. The clients
//! live in the parent, so they need no descriptors of the child's.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use iotask::IoTask;
use iotask::tcp::{self, ListenOptions};

const WAIT: Duration = Duration::from_secs(10);
const CLIENTS: usize = 5;

#[test]
fn accept_backs_off_when_out_of_descriptors_and_recovers() {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "emfile_child", "--nocapture", "--test-threads=1"])
        .env("IOTASK_EMFILE_CHILD", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut to_child = child.stdin.take().unwrap();
    let (line_tx, lines) = mpsc::channel::<String>();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            eprintln!("child: {line}");
            if line_tx.send(line).is_err() {
                break;
            }
        }
    });
    let expect = |prefix: &str| -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = lines
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("child never said {prefix}"));
            // The test harness may print its own text before ours on the same line.
            if let Some(at) = line.find(prefix) {
                return line[at + prefix.len()..].trim().to_owned();
            }
            assert!(!line.starts_with("FAIL"), "child failed: {line}");
        }
    };

    let port: u16 = expect("PORT").parse().unwrap();
    // One connection is accepted and served before the descriptors run out.
    let mut served = TcpStream::connect(("127.0.0.1", port)).unwrap();
    served.set_read_timeout(Some(WAIT)).unwrap();
    expect("SERVING");
    expect("FULL");

    let waiting: Vec<TcpStream> = (0..CLIENTS)
        .map(|_| TcpStream::connect(("127.0.0.1", port)).unwrap())
        .collect();
    writeln!(to_child, "CONNECTED").unwrap();

    // While the child cannot accept, the existing connection is still served.
    served.write_all(b"ping").unwrap();
    let mut buf = [0u8; 4];
    served.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"ping");

    let ticks: u64 = expect("CPU_TICKS").parse().unwrap();
    assert!(
        ticks < 30,
        "the I/O thread used {ticks} ticks of 100 in a second while out of descriptors"
    );
    let recovered: usize = expect("RECOVERED").parse().unwrap();
    assert_eq!(recovered, CLIENTS);
    drop(waiting);
    drop(to_child);

    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "child exited with {status}");
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("child did not exit");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The child's half; does nothing unless run by the test above.
#[test]
fn emfile_child() {
    if std::env::var_os("IOTASK_EMFILE_CHILD").is_none() {
        return;
    }
    let iotask = IoTask::spawn().unwrap();
    let (kill_tx, kill_rx) = mpsc::channel();
    let (conn_tx, conns) = mpsc::channel();
    std::thread::spawn({
        let iotask = iotask.clone();
        move || {
            tcp::bind("127.0.0.1:0", &ListenOptions::new(), &iotask).and_then(|l| {
                l.serve(
                    |kill| kill_tx.send(kill).unwrap(),
                    move |conn, _| conn_tx.send(conn).unwrap(),
                )
            })
        }
    });
    let kill: tcp::KillChan = kill_rx.recv_timeout(WAIT).unwrap();
    println!("PORT {}", kill.local_addr().port());

    // Echo on the first connection, from its own thread.
    let first = tcp::accept(conns.recv_timeout(WAIT).unwrap()).unwrap();
    std::thread::spawn(move || {
        let port = first.read_start().unwrap();
        while let Ok(chunk) = port.recv() {
            drop(first.write_future(chunk));
        }
    });
    println!("SERVING");

    // Opened now: reading /proc needs a descriptor, and soon there will be none.
    let stat = io_thread_stat();
    // Use up every descriptor under a low limit.
    let open = std::fs::read_dir("/proc/self/fd").unwrap().count() as u64;
    let limit = libc::rlimit {
        rlim_cur: open + 16,
        rlim_max: open + 4096,
    };
    // SAFETY: setrlimit only reads the struct passed by reference.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) }, 0);
    let mut hog = Vec::new();
    loop {
        match std::fs::File::open("/dev/null") {
            Ok(f) => hog.push(f),
            Err(e) if e.raw_os_error() == Some(libc::EMFILE) => break,
            Err(e) => panic!("unexpected error {e}"),
        }
    }
    println!("FULL");
    let mut line = String::new();
    std::io::stdin().read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "CONNECTED");

    // The pending connections make the listener readable; accept fails with EMFILE. Measure
    // how much CPU the I/O thread burns meanwhile.
    let before = ticks(&stat);
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(1) {
        assert!(conns.try_recv().is_err(), "accepted without descriptors");
        std::thread::sleep(Duration::from_millis(20));
    }
    println!("CPU_TICKS {}", ticks(&stat) - before);

    drop(hog);
    let mut recovered = Vec::new();
    while recovered.len() < CLIENTS {
        match conns.recv_timeout(WAIT) {
            Ok(conn) => recovered.push(conn),
            Err(_) => break,
        }
    }
    println!("RECOVERED {}", recovered.len());
}

/// The `stat` file of the thread named "iotask".
fn io_thread_stat() -> std::fs::File {
    for task in std::fs::read_dir("/proc/self/task").unwrap() {
        let dir = task.unwrap().path();
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        if comm.trim() == "iotask" {
            return std::fs::File::open(dir.join("stat")).unwrap();
        }
    }
    panic!("no thread named iotask");
}

/// User plus system clock ticks, read afresh from an open `stat` file.
fn ticks(stat: &std::fs::File) -> u64 {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; 4096];
    let n = stat.read_at(&mut buf, 0).unwrap();
    let stat = String::from_utf8_lossy(&buf[..n]);
    // Fields after the parenthesised name: state is field 3, utime 14, stime 15.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields[11].parse().unwrap();
    let stime: u64 = fields[12].parse().unwrap();
    utime + stime
}
