//! The address a server example is told to listen on: `HOST:PORT` for TCP, `unix:PATH` for
//! a Unix-domain socket (and, on Linux, `unix:@NAME` for an abstract name).
//!
//! ```text
//! 127.0.0.1:7000        TCP on the loopback interface, port 7000
//! *:7000, 7000          TCP on every interface
//! unix:/tmp/chat.sock   a Unix-domain socket file
//! unix:@chat            a Linux abstract name (no file)
//! ```
//!
//! [`ListenAddr::bind`] gives a [`Bound`] listener of either family. It displays as the
//! address it bound (a requested port 0 resolved), in the form it was given, so a server
//! prints `listening on 127.0.0.1:7000` or `listening on unix:/tmp/chat.sock`.

use std::fmt;
use std::io;
use std::str::FromStr;

use iotask::server::ListenOptions;
use iotask::tcp::{self, ListenError};
use iotask::{IoTask, unix};

/// An address to listen on, as given on the command line.
#[derive(Debug, Clone)]
pub enum ListenAddr {
    /// Anything that is not `unix:…`: an internet address, resolved when bound.
    Tcp(String),
    /// `unix:PATH`, or on Linux `unix:@NAME`.
    Unix(unix::SocketAddr),
}

/// A bound listener of either family, not yet serving; it displays as its address.
#[derive(Debug)]
pub enum Bound {
    /// Bound from [`ListenAddr::Tcp`].
    Tcp(tcp::Listener),
    /// Bound from [`ListenAddr::Unix`].
    Unix(unix::Listener),
}

impl ListenAddr {
    /// Binds the address on `iotask` with `options`.
    ///
    /// # Errors
    ///
    /// As `tcp::bind` and `unix::bind`: `AddressInUse`, `AccessDenied`, or `Generic`.
    pub fn bind(&self, options: &ListenOptions, iotask: &IoTask) -> Result<Bound, ListenError> {
        Ok(match self {
            ListenAddr::Tcp(addr) => Bound::Tcp(tcp::bind(addr.as_str(), options, iotask)?),
            ListenAddr::Unix(addr) => Bound::Unix(unix::bind(addr, options, iotask)?),
        })
    }
}

impl FromStr for ListenAddr {
    type Err = io::Error;

    /// Parses `unix:PATH`, `unix:@NAME` (Linux), or anything else as a TCP address.
    ///
    /// # Errors
    ///
    /// `InvalidInput` for a path too long for a socket address (about 100 bytes), an empty
    /// one, or an abstract name where there are none.
    fn from_str(arg: &str) -> io::Result<ListenAddr> {
        let Some(path) = arg.strip_prefix("unix:") else {
            return Ok(ListenAddr::Tcp(arg.to_owned()));
        };
        if path.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "unix: needs a path",
            ));
        }
        if let Some(name) = path.strip_prefix('@') {
            return abstract_name(name).map(ListenAddr::Unix);
        }
        unix::SocketAddr::from_pathname(path).map(ListenAddr::Unix)
    }
}

#[cfg(any(target_os = "linux", target_os = "android"))]
fn abstract_name(name: &str) -> io::Result<unix::SocketAddr> {
    use std::os::linux::net::SocketAddrExt;
    unix::SocketAddr::from_abstract_name(name)
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn abstract_name(_name: &str) -> io::Result<unix::SocketAddr> {
    Err(io::Error::new(
        io::ErrorKind::InvalidInput,
        "abstract Unix-domain names (unix:@NAME) exist on Linux only",
    ))
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenAddr::Tcp(addr) => f.write_str(addr),
            ListenAddr::Unix(addr) => write!(f, "{}", UnixAddr(addr)),
        }
    }
}

impl fmt::Display for Bound {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Bound::Tcp(listener) => write!(f, "{}", listener.local_addr()),
            Bound::Unix(listener) => write!(f, "{}", UnixAddr(&listener.local_addr())),
        }
    }
}

/// A Unix-domain address as [`ListenAddr`] parses it: `unix:PATH` or `unix:@NAME`.
#[derive(Debug, Clone, Copy)]
pub struct UnixAddr<'a>(pub &'a unix::SocketAddr);

impl fmt::Display for UnixAddr<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(path) = self.0.as_pathname() {
            return write!(f, "unix:{}", path.display());
        }
        #[cfg(any(target_os = "linux", target_os = "android"))]
        {
            use std::os::linux::net::SocketAddrExt;
            if let Some(name) = self.0.as_abstract_name() {
                return write!(f, "unix:@{}", String::from_utf8_lossy(name));
            }
        }
        f.write_str("unix:(unnamed)")
    }
}
