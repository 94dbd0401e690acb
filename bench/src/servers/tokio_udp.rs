//! tokio's UDP echo server as tokio's documentation writes one: on a current-thread runtime,
//! `recv_from` into a buffer, then `send_to` the sender, in a loop.

use std::io;

use tokio::net::UdpSocket;

pub(super) fn serve(addr: &str) -> io::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()?;
    runtime.block_on(async {
        let socket = UdpSocket::bind(addr).await?;
        super::announce_udp(socket.local_addr()?);
        // As large as any datagram, as iotask's default `max_datagram`.
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let (n, from) = match socket.recv_from(&mut buf).await {
                Ok(received) => received,
                Err(e) => {
                    eprintln!("tokio: recv_from: {e}");
                    continue;
                }
            };
            if let Err(e) = socket.send_to(&buf[..n], from).await {
                eprintln!("tokio: send_to {from}: {e}");
            }
        }
    })
}
