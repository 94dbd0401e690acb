//! Network namespaces the test makes and removes, threads that enter them, and the TUN
//! device that gives each namespace its end of the link.
//!
//! Everything here runs as root through `ip` (iproute2) and `/dev/net/tun`. A namespace is a
//! [`Netns`] guard: `ip netns del` runs when it drops, also while a failing test unwinds.
//!
//! Shared with `tests/udp_multicast.rs` (through `#[path]`), whose namespaces have a prefix
//! of their own and are joined by a veth pair instead of TUN devices.

use std::ffi::CString;
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::process::{Command, Stdio};

/// A named network namespace (`/var/run/netns/<name>`), deleted when dropped.
#[derive(Debug)]
pub struct Netns {
    name: String,
    /// The namespace's inode in nsfs: what `/proc/<tid>/ns/net` of a thread inside it names.
    inode: u64,
}

impl Netns {
    /// Creates the namespace `name` with `ip netns add`.
    pub fn add(name: &str) -> Result<Netns, String> {
        ip(&["netns", "add", name])?;
        // From here on the guard owns it, so a failure below still removes it.
        let mut ns = Netns {
            name: name.to_owned(),
            inode: 0,
        };
        ns.inode = std::fs::metadata(ns.path())
            .map_err(|e| format!("stat {}: {e}", ns.path()))?
            .ino();
        Ok(ns)
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn path(&self) -> String {
        format!("/var/run/netns/{}", self.name)
    }

    /// Runs `ip -n <name> args…`.
    pub fn ip(&self, args: &[&str]) -> Result<(), String> {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        ip(&all)
    }

    /// Runs `f` on a new thread that has entered this namespace, and returns its result.
    ///
    /// `setns(2)` moves only the calling thread, which is why `f` gets a thread of its own;
    /// threads that `f` spawns start in the namespace too. Panics, before `f` runs, when the
    /// thread could not enter it: nothing meant for the namespace may run outside it.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    self.enter()
                        .unwrap_or_else(|e| panic!("entering namespace {}: {e}", self.name));
                    f()
                })
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }

    /// Moves the calling thread into this namespace and checks that it arrived.
    fn enter(&self) -> Result<(), String> {
        let file = File::open(self.path()).map_err(|e| format!("open {}: {e}", self.path()))?;
        // SAFETY: `file` is an open descriptor of a network namespace for the whole call.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        if rc != 0 {
            return Err(format!("setns: {}", std::io::Error::last_os_error()));
        }
        match thread_netns("thread-self") {
            Some(inode) if inode == self.inode => Ok(()),
            other => Err(format!(
                "after setns the thread is in namespace {other:?}, not {}",
                self.inode
            )),
        }
    }

    /// Checks that every thread of this process named `comm` is inside this namespace;
    /// returns how many there are. (A new thread names itself once it runs, so right after
    /// a spawn there may be none yet.)
    pub fn check_threads_named(&self, comm: &str) -> Result<usize, String> {
        let mut found = 0;
        for task in std::fs::read_dir("/proc/self/task").map_err(|e| e.to_string())? {
            let tid = task.map_err(|e| e.to_string())?.file_name();
            let tid = tid.to_string_lossy();
            let Ok(name) = std::fs::read_to_string(format!("/proc/self/task/{tid}/comm")) else {
                continue; // The thread ended meanwhile.
            };
            if name.trim_end() != comm {
                continue;
            }
            match thread_netns(&format!("self/task/{tid}")) {
                Some(inode) if inode == self.inode => found += 1,
                Some(inode) => {
                    return Err(format!(
                        "thread {tid} ({comm}) is in namespace {inode}, not {} ({})",
                        self.inode, self.name
                    ));
                }
                None => {}
            }
        }
        Ok(found)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // The namespace itself goes once nothing uses it any more; this removes its name.
        if let Err(e) = ip(&["netns", "del", &self.name]) {
            eprintln!("could not remove network namespace {}: {e}", self.name);
        }
    }
}

/// The nsfs inode of the network namespace of `/proc/<which>`.
fn thread_netns(which: &str) -> Option<u64> {
    std::fs::metadata(format!("/proc/{which}/ns/net"))
        .ok()
        .map(|m| m.ino())
}

/// The inode of this process's network namespace; `None` when `/proc` does not show
/// namespaces, and so the test could not check where its threads are.
pub fn initial_netns() -> Option<u64> {
    thread_netns("self")
}

/// A name for a new namespace of this process: `<prefix><pid>-<n>-<side>`. Each test binary
/// has a prefix of its own (`iotask-lossy-`, `iotask-mc-`), which
/// [`remove_stale`] is given too.
pub fn unique_name(prefix: &str, n: usize, side: &str) -> String {
    format!("{prefix}{}-{n}-{side}", std::process::id())
}

/// Removes namespaces named with `prefix` left behind by earlier runs of this test that
/// were killed before their guards ran (their process is gone).
pub fn remove_stale(prefix: &str) {
    let Ok(entries) = std::fs::read_dir("/var/run/netns") else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(prefix) else {
            continue;
        };
        let Some(pid) = rest.split('-').next() else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            eprintln!("removing stale network namespace {name}");
            let _ = ip(&["netns", "del", &name]);
        }
    }
}

/// Runs `ip args…`, returning its error output when it fails.
pub fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run ip (iproute2): {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {} {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Opens `/dev/net/tun` and attaches a new TUN device `name` (layer 3, no packet-info
/// header) in the calling thread's network namespace: call it through [`Netns::run`]. The
/// device exists while the returned descriptor is open. The descriptor is non-blocking.
pub fn open_tun(name: &str) -> Result<OwnedFd, String> {
    let path = CString::new("/dev/net/tun").unwrap();
    // SAFETY: a valid NUL-terminated path; the result is checked before use.
    let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(format!(
            "open /dev/net/tun: {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: `fd` was just opened and is owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };

    // SAFETY: `ifreq` is plain old data, for which all zeroes is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    if name.len() >= req.ifr_name.len() {
        return Err(format!("interface name {name} is too long"));
    }
    for (dst, &src) in req.ifr_name.iter_mut().zip(name.as_bytes()) {
        *dst = src as libc::c_char;
    }
    req.ifr_ifru.ifru_flags = (libc::IFF_TUN | libc::IFF_NO_PI) as libc::c_short;
    // SAFETY: TUNSETIFF reads and writes one `ifreq`, which `req` is, for the whole call.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETIFF, &mut req) };
    if rc < 0 {
        return Err(format!("TUNSETIFF: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: F_GETFL/F_SETFL on a descriptor we own.
    let rc = unsafe {
        let flags = libc::fcntl(fd.as_raw_fd(), libc::F_GETFL);
        libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK)
    };
    if rc < 0 {
        return Err(format!("O_NONBLOCK: {}", std::io::Error::last_os_error()));
    }
    Ok(fd)
}
