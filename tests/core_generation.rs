//! Slab slots are reused; a command made for a closed socket must never reach the socket
//! that took its slot. (One test in this file: it counts the process's descriptors.)

use std::io::Write;
use std::net::TcpListener;
use std::time::{Duration, Instant};

use iotask::IoTask;
use iotask::tcp;

const WAIT: Duration = Duration::from_secs(10);

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

#[test]
fn a_port_of_a_closed_socket_never_reaches_the_socket_that_took_its_slot() {
    let iotask = IoTask::spawn().unwrap();
    let server = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = server.local_addr().unwrap();
    let baseline = open_fds();

    let a = tcp::connect(addr, &iotask).unwrap();
    let (peer_a, _) = server.accept().unwrap();
    let port_a = a.read_start().unwrap();
    drop(a);
    assert_eq!(port_a.recv_timeout(WAIT).unwrap_err().name(), "CLOSED");
    // The peer closes too, so the socket leaves its slot (and closes its descriptor) at once.
    drop(peer_a);
    let deadline = Instant::now() + WAIT;
    while open_fds() > baseline {
        assert!(
            Instant::now() < deadline,
            "the closed socket kept its descriptor"
        );
        std::thread::sleep(Duration::from_millis(2));
    }

    // The next socket takes the freed slot; the old port's key names the same slot.
    let b = tcp::connect(addr, &iotask).unwrap();
    let (mut peer_b, _) = server.accept().unwrap();
    let port_b = b.read_start().unwrap();
    let err = b.read_stop(port_a).unwrap_err();
    assert_eq!(err.name(), "EINVAL");

    // The stale port changed nothing: b still delivers to its own port.
    peer_b.write_all(b"still b's").unwrap();
    assert_eq!(port_b.recv_timeout(WAIT).unwrap(), b"still b's");
    b.read_stop(port_b).unwrap();
}
