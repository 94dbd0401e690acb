//! The integration tests, as one test binary: each module was a test file, and so a test
//! binary, of its own. A change to the library now rebuilds one test crate instead of
//! eighteen; the price is that a change to any test rebuilds this whole crate.
//!
//! Tests run as threads of this one process, so none here may depend on process-wide state.
//! Those that do have binaries of their own next to this directory: `core_fd_leaks.rs` and
//! `core_generation.rs` count the process's descriptors, `accept_emfile.rs` lowers
//! `RLIMIT_NOFILE` in a child process that re-runs its own binary, `lossy_link.rs` moves
//! threads into network namespaces it creates, and `sequence_fuzz.rs` counts descriptors
//! around its sequences. The reliability cases that count, raise or lower descriptors, read
//! resident memory or send signals are in `reliability_load.rs` and
//! `reliability_signals.rs`; `reliability_faults` here holds the rest.

// Two examples each include `examples/echo_actor.rs` (`async_interop`, `demo`) and two include
// `examples/support/actor_server.rs` (`http`, `kv`), by `#[path]` from the example files
// themselves; their tests, now modules of one crate, compile those files twice, once under
// each example, as the separate binaries did.
#![allow(clippy::duplicate_mod)]

mod util;

mod examples_support;

mod core_backpressure;
mod core_ipv6;
mod core_listen;
mod core_mailbox;
mod core_read;
mod core_shutdown;
mod core_socket_buf;
mod core_write;
mod defects;
mod examples_async;
mod examples_chat;
mod examples_echo;
mod examples_http;
mod examples_kv;
mod examples_proxy;
mod examples_udp_echo;
mod listen_into;
mod reliability_faults;
mod server_control;
mod socket_controls;
mod udp;
mod unix_domain;
mod write_window;
