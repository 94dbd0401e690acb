//! Datagrams in batches: `recvmmsg` and `sendmmsg`, one system call for up to `BATCH`
//! datagrams, on Linux (and Android). Elsewhere, and with `--cfg iotask_no_recvmmsg` or
//! `--cfg iotask_no_sendmmsg` (kept to measure them against), the same two functions make
//! one call per datagram. BENCHMARKS.md, U1, has the measurement that chose them.

use std::io;
use std::net::SocketAddr;

use socket2::Socket;

/// Datagrams per system call at most.
pub(crate) const BATCH: usize = 32;

/// The receive buffer a batch may span: slots of the socket's largest datagram, as many as
/// fit (at least one). Untouched pages of it cost no memory.
const BATCH_BYTES: usize = 2 << 20;

/// One datagram received in a batch.
#[derive(Debug)]
pub(crate) struct Incoming {
    pub(crate) data: Vec<u8>,
    pub(crate) truncated: bool,
    pub(crate) from: Option<SocketAddr>,
}

/// How many datagrams of at most `slot` bytes one receive takes at once.
pub(crate) fn slots(slot: usize) -> usize {
    if cfg!(all(
        any(target_os = "linux", target_os = "android"),
        not(iotask_no_recvmmsg)
    )) {
        (BATCH_BYTES / slot.max(1)).clamp(1, BATCH)
    } else {
        1
    }
}

/// Receives up to `max` datagrams (at most `slots(slot)`) of at most `slot` bytes each,
/// appending them to `out`; `scratch` is the receive buffer, kept between calls. Returns
/// how many came; an error only when none did.
#[cfg(all(
    any(target_os = "linux", target_os = "android"),
    not(iotask_no_recvmmsg)
))]
pub(crate) fn recv_datagrams(
    socket: &Socket,
    scratch: &mut Vec<u8>,
    slot: usize,
    max: usize,
    out: &mut Vec<Incoming>,
) -> io::Result<usize> {
    use std::mem::MaybeUninit;
    use std::os::fd::AsRawFd;

    let count = max.min(slots(slot)).max(1);
    scratch.clear();
    scratch.reserve(count * slot);
    let base = scratch.as_mut_ptr();
    let mut addrs = [const { MaybeUninit::<libc::sockaddr_storage>::uninit() }; BATCH];
    let mut iovecs: [libc::iovec; BATCH] = std::array::from_fn(|i| libc::iovec {
        // `wrapping_add` stays inside the allocation for `i < count`; later slots are
        // never handed to the kernel.
        iov_base: base.wrapping_add(i * slot).cast(),
        iov_len: slot,
    });
    // SAFETY: `mmsghdr` is plain data (integers and raw pointers), for which all zeroes is a
    // valid value.
    let mut msgs: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
    for (i, msg) in msgs.iter_mut().enumerate().take(count) {
        msg.msg_hdr.msg_name = addrs[i].as_mut_ptr().cast();
        msg.msg_hdr.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        msg.msg_hdr.msg_iov = &mut iovecs[i];
        msg.msg_hdr.msg_iovlen = 1;
    }
    // SAFETY: the first `count` headers point at `count` address buffers of the size they
    // state and at one iovec each, which covers `slot` bytes of `scratch`'s capacity
    // (`count * slot` was reserved); all outlive the call, which writes only inside them.
    let n = unsafe {
        libc::recvmmsg(
            socket.as_raw_fd(),
            msgs.as_mut_ptr(),
            count as libc::c_uint,
            libc::MSG_DONTWAIT,
            std::ptr::null_mut(),
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let n = n as usize;
    for (i, msg) in msgs.iter().enumerate().take(n) {
        let len = (msg.msg_len as usize).min(slot);
        // SAFETY: the kernel wrote `msg_len` bytes (at most the slot's length) at the start
        // of slot `i`, inside the reserved capacity.
        let data = unsafe { std::slice::from_raw_parts(base.add(i * slot), len) }.to_vec();
        // SAFETY: the kernel wrote the sender's address into `addrs[i]`, `msg_namelen`
        // bytes of it; `socket_addr` reads only what that length and the family cover.
        let from = unsafe { socket_addr(addrs[i].as_ptr(), msg.msg_hdr.msg_namelen) };
        out.push(Incoming {
            data,
            truncated: msg.msg_hdr.msg_flags & libc::MSG_TRUNC != 0,
            from,
        });
    }
    Ok(n)
}

/// Reads an IP address the kernel wrote.
///
/// # Safety
///
/// `storage` must point at an address of `len` bytes the kernel wrote.
#[cfg(all(
    any(target_os = "linux", target_os = "android"),
    not(iotask_no_recvmmsg)
))]
unsafe fn socket_addr(
    storage: *const libc::sockaddr_storage,
    len: libc::socklen_t,
) -> Option<SocketAddr> {
    use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV4, SocketAddrV6};
    let len = len as usize;
    // SAFETY: the family field comes first in every address, and the kernel wrote it.
    match i32::from(unsafe { (*storage).ss_family }) {
        libc::AF_INET if len >= size_of::<libc::sockaddr_in>() => {
            // SAFETY: an `AF_INET` address of that length is a `sockaddr_in`;
            // `sockaddr_storage` is aligned for it.
            let a = unsafe { &*storage.cast::<libc::sockaddr_in>() };
            Some(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)),
                u16::from_be(a.sin_port),
            )))
        }
        libc::AF_INET6 if len >= size_of::<libc::sockaddr_in6>() => {
            // SAFETY: as above, for `AF_INET6` and `sockaddr_in6`.
            let a = unsafe { &*storage.cast::<libc::sockaddr_in6>() };
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(a.sin6_addr.s6_addr),
                u16::from_be(a.sin6_port),
                a.sin6_flowinfo,
                a.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

#[cfg(not(all(
    any(target_os = "linux", target_os = "android"),
    not(iotask_no_recvmmsg)
)))]
pub(crate) fn recv_datagrams(
    socket: &Socket,
    scratch: &mut Vec<u8>,
    slot: usize,
    _max: usize,
    out: &mut Vec<Incoming>,
) -> io::Result<usize> {
    scratch.clear();
    scratch.reserve(slot);
    let mut buf = std::mem::take(scratch);
    let result = super::recv_datagram(socket, &mut buf, slot);
    if let Ok((truncated, from)) = result {
        out.push(Incoming {
            data: buf.clone(),
            truncated,
            from,
        });
    }
    buf.clear();
    *scratch = buf;
    result.map(|_| 1)
}

/// Sends the datagrams `msgs` yields, in order, with as few system calls as the platform
/// allows; stops at the first the kernel does not take. Returns how many it took, or the
/// error of the first datagram when it took none (`WouldBlock` when its buffer is full).
#[cfg(all(
    any(target_os = "linux", target_os = "android"),
    not(iotask_no_sendmmsg)
))]
pub(crate) fn send_datagrams<'a>(
    socket: &Socket,
    msgs: impl Iterator<Item = (&'a [u8], Option<SocketAddr>)>,
) -> io::Result<usize> {
    use std::os::fd::AsRawFd;

    let mut addrs: [Option<socket2::SockAddr>; BATCH] = std::array::from_fn(|_| None);
    let mut iovecs: [libc::iovec; BATCH] = std::array::from_fn(|_| libc::iovec {
        iov_base: std::ptr::null_mut(),
        iov_len: 0,
    });
    let mut count = 0;
    for (i, (data, to)) in msgs.take(BATCH).enumerate() {
        iovecs[i] = libc::iovec {
            // The kernel only reads through it (`sendmmsg` takes `msghdr` for both ways).
            iov_base: data.as_ptr().cast_mut().cast(),
            iov_len: data.len(),
        };
        addrs[i] = to.map(socket2::SockAddr::from);
        count = i + 1;
    }
    if count == 0 {
        return Ok(0);
    }
    // SAFETY: as in `recv_datagrams`.
    let mut headers: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
    for (i, header) in headers.iter_mut().enumerate().take(count) {
        if let Some(addr) = &addrs[i] {
            header.msg_hdr.msg_name = addr.as_ptr().cast_mut().cast();
            header.msg_hdr.msg_namelen = addr.len();
        }
        header.msg_hdr.msg_iov = &mut iovecs[i];
        header.msg_hdr.msg_iovlen = 1;
    }
    loop {
        // SAFETY: the first `count` headers point at live addresses of the lengths they
        // state (or none, for a connected socket) and at one iovec each over a live buffer;
        // the kernel only reads them, and writes the `msg_len` fields.
        let n = unsafe {
            libc::sendmmsg(
                socket.as_raw_fd(),
                headers.as_mut_ptr(),
                count as libc::c_uint,
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            )
        };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

#[cfg(not(all(
    any(target_os = "linux", target_os = "android"),
    not(iotask_no_sendmmsg)
)))]
pub(crate) fn send_datagrams<'a>(
    socket: &Socket,
    mut msgs: impl Iterator<Item = (&'a [u8], Option<SocketAddr>)>,
) -> io::Result<usize> {
    let Some((data, to)) = msgs.next() else {
        return Ok(0);
    };
    loop {
        let sent = match to {
            Some(to) => socket.send_to(data, &socket2::SockAddr::from(to)),
            None => socket.send(data),
        };
        match sent {
            Ok(_) => return Ok(1),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}
