//! Stops a build for a target iotask does not support with one error that says what is
//! missing, before the compiler reports every place that needs it.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    if std::env::var_os("CARGO_CFG_UNIX").is_none() {
        let target = std::env::var("TARGET").unwrap_or_default();
        eprintln!(
            "error: iotask builds on Unix only (Linux with epoll; macOS, the BSDs and other \
             Unix with the `polling` crate), not on {target}. Windows needs what \
             src/io_task/sys does not have yet: registration by SOCKET rather than file \
             descriptor, WSA error names instead of errno names, a non-blocking accept, and a \
             replacement for SO_REUSEPORT for a pool's listeners."
        );
        std::process::exit(1);
    }
}
