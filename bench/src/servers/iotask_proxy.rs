//! iotask's proxy: the `proxy` example itself (one actor owns both sides of every
//! connection, `connect_into` per client, watermarks for flow control), in front of the
//! upstream echo server.

#[path = "../../../examples/proxy.rs"]
#[allow(dead_code)]
mod proxy;

use std::io;
use std::net::SocketAddr;

use iotask::tcp::{self, Tcp};

pub(super) fn serve(addr: &str, upstream: SocketAddr) -> io::Result<()> {
    let iotask = iotask::global();
    let listener = tcp::bind(addr, &proxy::listen_options(), &iotask).map_err(io::Error::other)?;
    super::announce(listener.local_addr());
    let config = proxy::Config::default();
    proxy::start::<_, Tcp>(listener, vec![upstream], config, &iotask)?.wait()
}
