//! iotask the way the README teaches it: a thread per connection, reads from a port,
//! writes through futures that are dropped (the write still happens).

use std::io;

use iotask::tcp;

pub(super) fn serve(addr: &str) -> io::Result<()> {
    let iotask = iotask::global();
    tcp::listen(
        addr,
        1024,
        &iotask,
        |kill| super::announce(kill.local_addr()),
        |new_conn, _kill| {
            std::thread::spawn(move || {
                let Ok(sock) = tcp::accept(new_conn) else {
                    return;
                };
                let Ok(port) = sock.read_start() else { return };
                while let Ok(chunk) = port.recv() {
                    drop(sock.write_future(chunk));
                }
            });
        },
    )
    .map_err(|e| io::Error::other(e.to_string()))
}
