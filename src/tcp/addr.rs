//! `ToListenAddrs`: the address forms every TCP server call takes.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6, ToSocketAddrs};

/// Addresses a listener can be given: anything [`ToSocketAddrs`] takes, plus the forms
/// servers are usually configured with.
///
/// | form | meaning |
/// |---|---|
/// | `"127.0.0.1:8080"`, `"[::1]:8080"`, `"localhost:8080"` | `INTF:PORT`, resolved like `ToSocketAddrs` |
/// | `"*:8080"`, `":8080"`, `"8080"`, `8080u16` | every interface: `[::]:8080` accepting IPv4 too, or `0.0.0.0:8080` where IPv6 is unavailable |
/// | `SocketAddr`, `(IpAddr, u16)`, `("host", u16)`, `&[SocketAddr]` | as `ToSocketAddrs` |
pub trait ToListenAddrs {
    /// The addresses to try, in order.
    ///
    /// # Errors
    ///
    /// `InvalidInput` for a malformed string; a resolver error for an unknown host.
    fn to_listen_addrs(&self) -> io::Result<Vec<SocketAddr>>;
}

/// The every-interface addresses for a port: dual-stack IPv6 first, then IPv4.
fn any_interface(port: u16) -> Vec<SocketAddr> {
    vec![
        SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), port),
        SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port),
    ]
}

/// What a listen address string says, before any host name is resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Parsed<'a> {
    /// A bare port (`"8080"`, `":8080"`, `"*:8080"`): every interface.
    AnyInterface(u16),
    /// An IP address and port, written out.
    Literal(SocketAddr),
    /// `HOST:PORT` with a name to resolve.
    Host(&'a str),
}

/// Reads a listen address string without resolving anything (the fuzz target `listen_addr`
/// checks it).
pub(crate) fn parse(text: &str) -> io::Result<Parsed<'_>> {
    let s = text.trim();
    let bare = s
        .strip_prefix("*:")
        .or_else(|| s.strip_prefix(':'))
        .unwrap_or(s);
    if let Ok(port) = bare.parse::<u16>() {
        return Ok(Parsed::AnyInterface(port));
    }
    if bare != s {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("invalid port in {s:?}"),
        ));
    }
    if let Ok(addr) = s.parse::<SocketAddr>() {
        return Ok(Parsed::Literal(addr));
    }
    match s.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {
            Ok(Parsed::Host(s))
        }
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("not an address of the form HOST:PORT, INTF:PORT or PORT: {s:?}"),
        )),
    }
}

impl ToListenAddrs for str {
    fn to_listen_addrs(&self) -> io::Result<Vec<SocketAddr>> {
        Ok(match parse(self)? {
            Parsed::AnyInterface(port) => any_interface(port),
            Parsed::Literal(addr) => vec![addr],
            Parsed::Host(host) => host.to_socket_addrs()?.collect(),
        })
    }
}

impl ToListenAddrs for String {
    fn to_listen_addrs(&self) -> io::Result<Vec<SocketAddr>> {
        self.as_str().to_listen_addrs()
    }
}

impl ToListenAddrs for u16 {
    fn to_listen_addrs(&self) -> io::Result<Vec<SocketAddr>> {
        Ok(any_interface(*self))
    }
}

impl<T: ToListenAddrs + ?Sized> ToListenAddrs for &T {
    fn to_listen_addrs(&self) -> io::Result<Vec<SocketAddr>> {
        (**self).to_listen_addrs()
    }
}

macro_rules! via_to_socket_addrs {
    ($($t:ty),*) => {$(
        impl ToListenAddrs for $t {
            fn to_listen_addrs(&self) -> io::Result<Vec<SocketAddr>> {
                Ok(self.to_socket_addrs()?.collect())
            }
        }
    )*};
}

via_to_socket_addrs!(
    SocketAddr,
    SocketAddrV4,
    SocketAddrV6,
    (IpAddr, u16),
    (Ipv4Addr, u16),
    (Ipv6Addr, u16),
    (&str, u16),
    (String, u16),
    [SocketAddr]
);

impl ToListenAddrs for Vec<SocketAddr> {
    fn to_listen_addrs(&self) -> io::Result<Vec<SocketAddr>> {
        Ok(self.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_forms() {
        let any = any_interface(8080);
        assert_eq!("8080".to_listen_addrs().unwrap(), any);
        assert_eq!("*:8080".to_listen_addrs().unwrap(), any);
        assert_eq!(":8080".to_listen_addrs().unwrap(), any);
        assert_eq!(8080u16.to_listen_addrs().unwrap(), any);
        assert_eq!(
            "127.0.0.1:9".to_listen_addrs().unwrap(),
            vec!["127.0.0.1:9".parse::<SocketAddr>().unwrap()]
        );
        assert_eq!(
            "[::1]:9".to_listen_addrs().unwrap(),
            vec!["[::1]:9".parse::<SocketAddr>().unwrap()]
        );
        assert!("*:http".to_listen_addrs().is_err());
        assert!("not an address".to_listen_addrs().is_err());
    }
}
