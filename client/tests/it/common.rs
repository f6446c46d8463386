//! Helpers shared by the client's native tests.

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

/// Runs a future whose every step is ready (the CPU device never makes a read wait).
pub fn block_on<F: Future>(f: F) -> F::Output {
    let mut f = pin!(f);
    let mut cx = Context::from_waker(Waker::noop());
    loop {
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
    }
}

/// A CPU session with `key` imported.
pub fn session(key: &veil::crypto::keys::MasterKey) -> veil_client::Session {
    let s = block_on(veil_client::Session::start(false)).unwrap();
    s.import_key(
        &veil::crypto::keyfile::KeyFile::plain(key, "test").to_json(),
        None,
    )
    .unwrap();
    s
}
