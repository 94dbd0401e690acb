//! iotask's UDP echo server: the `udp_echo` example itself (one actor thread owns a `Mailbox`
//! the socket is attached to, and echoes every `Event::Datagram` with `send_to`).

#[path = "../../../examples/udp_echo.rs"]
#[allow(dead_code)]
mod udp_echo;

use std::io;

use iotask::udp::UdpSocket;

pub(super) fn serve(addr: &str) -> io::Result<()> {
    let socket = UdpSocket::bind(addr, &iotask::global()).map_err(io::Error::other)?;
    super::announce_udp(socket.local_addr().map_err(io::Error::other)?);
    let actor = std::thread::Builder::new()
        .name("echo-actor".into())
        .spawn(move || udp_echo::serve(socket))?;
    match actor.join() {
        Ok(result) => result.map(drop).map_err(io::Error::other),
        Err(_) => Err(io::Error::other("the echo actor panicked")),
    }
}
