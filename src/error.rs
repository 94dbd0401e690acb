//! The crate's error types: [`Error`] for every socket operation, [`ConnectError`] and
//! [`ListenError`] where a caller must tell a refusal or a busy address apart. Names follow
//! the kernel's (`ECONNRESET`) or are plain words (`EOF`, `SHUTDOWN`).

use std::borrow::Cow;
use std::fmt;
use std::io;

/// Why a read, a write or a socket operation failed.
///
/// The error carries a short [`name`](Error::name) that matches the kernel's name for the
/// error (`"ECONNRESET"`, `"EPIPE"`, `"ETIMEDOUT"`, …) or is a plain word for the conditions
/// iotask itself defines:
///
/// | name         | kind                 | meaning                                                  |
/// |--------------|----------------------|----------------------------------------------------------|
/// | `"EOF"`      | `UnexpectedEof`      | the peer closed its sending side; no more bytes will come |
/// | `"ETIMEDOUT"`| `TimedOut`           | a read with a timeout got nothing in time                 |
/// | `"CLOSED"`   | `NotConnected`       | the socket was closed on this side (dropped)              |
/// | `"SHUTDOWN"` | `ConnectionAborted`  | the I/O task was shut down                               |
/// | `"BUSY"`     | `ResourceBusy`       | reads are already being delivered somewhere else          |
/// | `"ABORTED"`  | `ConnectionAborted`  | the socket was reset on this side (`abort`)               |
/// | `"STALLED"`  | `TimedOut`           | queued bytes waited longer than the write age limit       |
///
/// `Error` is cheap to clone and converts to and from [`std::io::Error`]; the round trip
/// keeps its name (an `Error` turned into an `io::Error` and back is the same `Error`).
/// It is also known as `tcp::TcpError`, its name before Unix-domain sockets came.
///
/// # Examples
///
/// ```
/// use iotask::Error;
///
/// let e = Error::from(std::io::Error::from_raw_os_error(libc::ECONNRESET));
/// assert_eq!(e.name(), "ECONNRESET");
/// assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset);
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct Error {
    name: Cow<'static, str>,
    message: Cow<'static, str>,
    kind: io::ErrorKind,
    os: Option<i32>,
    /// For a write that failed part way: how many of its bytes reached the kernel.
    written: Option<usize>,
}

impl Error {
    /// The short name of the error: the kernel's (`"ECONNRESET"`) or a plain word (`"EOF"`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A human-readable description, lowercase, without a full stop.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The [`std::io::ErrorKind`] this error corresponds to.
    pub fn kind(&self) -> io::ErrorKind {
        self.kind
    }

    /// The operating system's error code, when the error came from a system call.
    pub fn raw_os_error(&self) -> Option<i32> {
        self.os
    }

    /// For a write that failed part way (its socket's deadline passed while it was queued):
    /// how many of its bytes reached the kernel before it failed; `None` for every other
    /// error.
    pub fn bytes_written(&self) -> Option<usize> {
        self.written
    }

    /// A write's deadline passed after `written` of its bytes went out.
    pub(crate) fn write_timeout(written: usize) -> Error {
        Error {
            written: Some(written),
            message: Cow::Owned(format!(
                "the socket's deadline passed with a write queued ({written} of its bytes sent)"
            )),
            ..Error::timeout()
        }
    }

    /// Whether this is the end of the stream: the peer will send nothing more.
    pub fn is_eof(&self) -> bool {
        self.name == "EOF"
    }

    /// Whether this is a timeout: a read with a deadline got nothing in time.
    pub fn is_timeout(&self) -> bool {
        self.kind == io::ErrorKind::TimedOut
    }

    pub(crate) fn eof() -> Error {
        Error::new("EOF", "end of stream", io::ErrorKind::UnexpectedEof)
    }

    pub(crate) fn timeout() -> Error {
        Error::new("ETIMEDOUT", "timed out", io::ErrorKind::TimedOut)
    }

    pub(crate) fn closed() -> Error {
        Error::new("CLOSED", "socket closed", io::ErrorKind::NotConnected)
    }

    pub(crate) fn shutdown() -> Error {
        Error::new(
            "SHUTDOWN",
            "the i/o task was shut down",
            io::ErrorKind::ConnectionAborted,
        )
    }

    pub(crate) fn aborted() -> Error {
        Error::new(
            "ABORTED",
            "the connection was reset on this side",
            io::ErrorKind::ConnectionAborted,
        )
    }

    pub(crate) fn stalled() -> Error {
        Error::new(
            "STALLED",
            "queued bytes waited longer than the write age limit",
            io::ErrorKind::TimedOut,
        )
    }

    pub(crate) fn busy() -> Error {
        Error::new(
            "BUSY",
            "reads are already being delivered to a port, a future or a mailbox",
            io::ErrorKind::ResourceBusy,
        )
    }

    pub(crate) fn new(name: &'static str, message: &'static str, kind: io::ErrorKind) -> Error {
        Error {
            name: Cow::Borrowed(name),
            message: Cow::Borrowed(message),
            kind,
            os: None,
            written: None,
        }
    }

    /// An error with a caller-chosen name and message, for example to stop a listener through
    /// its kill channel with a reason of your own.
    pub fn other(name: impl Into<String>, message: impl Into<String>) -> Error {
        Error {
            name: Cow::Owned(name.into()),
            message: Cow::Owned(message.into()),
            kind: io::ErrorKind::Other,
            os: None,
            written: None,
        }
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Error")
            .field("name", &self.name)
            .field("message", &self.message)
            .finish()
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.name, self.message)
    }
}

impl std::error::Error for Error {}

impl From<io::Error> for Error {
    fn from(e: io::Error) -> Error {
        // An `Error` that went through `io::Error` comes back as it was.
        if let Some(inner) = e.get_ref().and_then(|i| i.downcast_ref::<Error>()) {
            return inner.clone();
        }
        let os = e.raw_os_error();
        let name = match os {
            Some(code) => {
                errno_name(code).map_or_else(|| Cow::Owned(format!("E{code}")), Cow::Borrowed)
            }
            None if e.kind() == io::ErrorKind::UnexpectedEof => Cow::Borrowed("EOF"),
            None if e.kind() == io::ErrorKind::TimedOut => Cow::Borrowed("ETIMEDOUT"),
            None => Cow::Owned(format!("{:?}", e.kind())),
        };
        let message = match os {
            // The OS text is "Connection reset by peer (os error 104)"; keep the words only.
            Some(_) => {
                let text = e.to_string();
                let text = text.split(" (os error").next().unwrap_or(&text).to_owned();
                Cow::Owned(lowercase_first(text))
            }
            None => Cow::Owned(e.to_string()),
        };
        Error {
            name,
            message,
            kind: e.kind(),
            os,
            written: None,
        }
    }
}

impl From<Error> for io::Error {
    fn from(e: Error) -> io::Error {
        match e.os {
            Some(code) => io::Error::from_raw_os_error(code),
            None => io::Error::new(e.kind, e),
        }
    }
}

/// Why [`connect`](crate::tcp::connect) failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectError {
    /// Nobody listens at the address (`ECONNREFUSED`).
    ConnectionRefused,
    /// Any other failure: resolving the address, an unreachable network, a timeout, a shut
    /// down I/O task.
    Generic {
        /// The kernel's name for the error (`"ENETUNREACH"`) or a plain word.
        name: String,
        /// A description of the error.
        message: String,
    },
}

impl fmt::Display for ConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConnectError::ConnectionRefused => f.write_str("ECONNREFUSED: connection refused"),
            ConnectError::Generic { name, message } => write!(f, "{name}: {message}"),
        }
    }
}

impl std::error::Error for ConnectError {}

impl From<io::Error> for ConnectError {
    fn from(e: io::Error) -> ConnectError {
        if e.kind() == io::ErrorKind::ConnectionRefused {
            return ConnectError::ConnectionRefused;
        }
        Error::from(e).into()
    }
}

impl From<Error> for ConnectError {
    fn from(e: Error) -> ConnectError {
        if e.kind() == io::ErrorKind::ConnectionRefused {
            return ConnectError::ConnectionRefused;
        }
        ConnectError::Generic {
            name: e.name().to_owned(),
            message: e.message().to_owned(),
        }
    }
}

impl From<ConnectError> for io::Error {
    fn from(e: ConnectError) -> io::Error {
        match e {
            ConnectError::ConnectionRefused => io::ErrorKind::ConnectionRefused.into(),
            other => io::Error::other(other),
        }
    }
}

/// Why [`listen`](crate::tcp::listen) failed or stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenError {
    /// Another socket already listens on the address (`EADDRINUSE`).
    AddressInUse,
    /// The process may not bind the address, for example a port below 1024 (`EACCES`).
    AccessDenied,
    /// Any other failure, and a listener stopped with `kill.send(Some(error))`: `name` and
    /// `message` are that error's.
    Generic {
        /// The kernel's name for the error, or the name of the error sent to the kill channel.
        name: String,
        /// A description of the error.
        message: String,
    },
}

impl fmt::Display for ListenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenError::AddressInUse => f.write_str("EADDRINUSE: address already in use"),
            ListenError::AccessDenied => f.write_str("EACCES: permission denied"),
            ListenError::Generic { name, message } => write!(f, "{name}: {message}"),
        }
    }
}

impl std::error::Error for ListenError {}

impl From<io::Error> for ListenError {
    fn from(e: io::Error) -> ListenError {
        match e.kind() {
            io::ErrorKind::AddrInUse => ListenError::AddressInUse,
            io::ErrorKind::PermissionDenied => ListenError::AccessDenied,
            _ => Error::from(e).into(),
        }
    }
}

impl From<Error> for ListenError {
    fn from(e: Error) -> ListenError {
        ListenError::Generic {
            name: e.name().to_owned(),
            message: e.message().to_owned(),
        }
    }
}

impl From<ListenError> for io::Error {
    fn from(e: ListenError) -> io::Error {
        match e {
            ListenError::AddressInUse => io::ErrorKind::AddrInUse.into(),
            ListenError::AccessDenied => io::ErrorKind::PermissionDenied.into(),
            other => io::Error::other(other),
        }
    }
}

fn lowercase_first(mut s: String) -> String {
    if let Some(first) = s.get(0..1) {
        let lower = first.to_ascii_lowercase();
        s.replace_range(0..1, &lower);
    }
    s
}

/// The kernel's name for the errors a socket can meet.
fn errno_name(code: i32) -> Option<&'static str> {
    Some(match code {
        libc::ECONNRESET => "ECONNRESET",
        libc::ECONNREFUSED => "ECONNREFUSED",
        libc::ECONNABORTED => "ECONNABORTED",
        libc::EPIPE => "EPIPE",
        libc::ETIMEDOUT => "ETIMEDOUT",
        libc::EADDRINUSE => "EADDRINUSE",
        libc::EADDRNOTAVAIL => "EADDRNOTAVAIL",
        libc::EACCES => "EACCES",
        libc::EPERM => "EPERM",
        libc::ENOTCONN => "ENOTCONN",
        libc::EHOSTUNREACH => "EHOSTUNREACH",
        libc::ENETUNREACH => "ENETUNREACH",
        libc::ENETDOWN => "ENETDOWN",
        libc::EMFILE => "EMFILE",
        libc::ENFILE => "ENFILE",
        libc::ENOBUFS => "ENOBUFS",
        libc::ENOMEM => "ENOMEM",
        libc::EINVAL => "EINVAL",
        libc::EBADF => "EBADF",
        libc::EAGAIN => "EAGAIN",
        libc::EINTR => "EINTR",
        libc::EINPROGRESS => "EINPROGRESS",
        libc::EAFNOSUPPORT => "EAFNOSUPPORT",
        libc::ESHUTDOWN => "ESHUTDOWN",
        libc::ENOENT => "ENOENT",
        libc::ENOTDIR => "ENOTDIR",
        libc::ENAMETOOLONG => "ENAMETOOLONG",
        libc::EROFS => "EROFS",
        libc::ELOOP => "ELOOP",
        libc::ENOTSOCK => "ENOTSOCK",
        libc::EISCONN => "EISCONN",
        libc::EALREADY => "EALREADY",
        libc::EMSGSIZE => "EMSGSIZE",
        libc::EDESTADDRREQ => "EDESTADDRREQ",
        libc::EPROTOTYPE => "EPROTOTYPE",
        libc::EHOSTDOWN => "EHOSTDOWN",
        libc::ENETRESET => "ENETRESET",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn os_errors_keep_their_kernel_name_and_kind() {
        let e = Error::from(io::Error::from_raw_os_error(libc::EPIPE));
        assert_eq!(e.name(), "EPIPE");
        assert_eq!(e.kind(), io::ErrorKind::BrokenPipe);
        assert!(!e.message().ends_with('.'));
        assert!(e.message().starts_with(|c: char| c.is_lowercase()));
        let back: io::Error = e.into();
        assert_eq!(back.raw_os_error(), Some(libc::EPIPE));
    }

    #[test]
    fn listen_and_connect_errors_sort_by_kind() {
        let e = ListenError::from(io::Error::from_raw_os_error(libc::EADDRINUSE));
        assert_eq!(e, ListenError::AddressInUse);
        let e = ConnectError::from(io::Error::from_raw_os_error(libc::ECONNREFUSED));
        assert_eq!(e, ConnectError::ConnectionRefused);
        let e = ConnectError::from(io::Error::from_raw_os_error(libc::ENETUNREACH));
        assert!(matches!(e, ConnectError::Generic { ref name, .. } if name == "ENETUNREACH"));
    }

    #[test]
    fn a_round_trip_through_io_error_keeps_the_name() {
        for e in [
            Error::shutdown(),
            Error::closed(),
            Error::busy(),
            Error::other("X", "y"),
        ] {
            let back = Error::from(io::Error::from(e.clone()));
            assert_eq!(back, e);
            assert_eq!(back.name(), e.name());
        }
        let reset = Error::from(io::Error::from_raw_os_error(libc::ECONNRESET));
        assert_eq!(Error::from(io::Error::from(reset.clone())), reset);
    }

    #[test]
    fn eof_and_timeout_are_recognised() {
        assert!(Error::eof().is_eof());
        assert!(Error::timeout().is_timeout());
        assert!(!Error::closed().is_eof());
    }
}
