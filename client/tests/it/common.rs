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

/// The adversarial setup the client's tests use: the digits' shape and classes, ε 1.5 and 10 PGD
/// steps (the page's ε, fewer steps), with the combined `method` or the basic correspondence.
pub fn digits_adversarial_setup(
    method: Option<veil::schemes::adversarial::CombineMethod>,
) -> veil_client::adversarial::AdversarialSetup {
    veil_client::adversarial::AdversarialSetup {
        shape: veil::data::ImageShape::new(1, 8, 8),
        classes: (0..10).map(|c| c.to_string()).collect(),
        epsilon: 1.5,
        iterations: 10,
        method,
    }
}
