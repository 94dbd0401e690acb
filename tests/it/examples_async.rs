//! The async interop example, run as a test: on a current-thread runtime as its `main` makes
//! one, and on tokio's test runtime.

#[path = "../../examples/async_interop.rs"]
#[allow(dead_code)]
mod async_interop;

use std::time::Duration;

#[test]
fn async_interop_runs_to_completion_like_its_main() {
    // What `#[tokio::main(flavor = "current_thread")]` does, on a thread so that a hang fails
    // the test instead of blocking it.
    let (done_tx, done) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        let result = runtime
            .block_on(async_interop::run())
            .map_err(|e| e.to_string());
        let _ = done_tx.send(result);
    });
    let result = done
        .recv_timeout(Duration::from_secs(30))
        .expect("the example finished in time");
    assert_eq!(result, Ok(()));
}

#[tokio::test(flavor = "current_thread")]
async fn async_interop_runs_on_a_test_runtime() {
    let result = tokio::time::timeout(Duration::from_secs(30), async_interop::run())
        .await
        .expect("the example finished in time");
    assert!(result.is_ok(), "{result:?}");
}
