//! `veil`'s integration tests, one binary (a module per area).

mod container_corpus;
mod demo_model;
mod encoder;
mod flow_training;
mod handwriting;

/// The flex device's RNG is global, and initialising or loading a network draws from it: every
/// test that touches a device holds this lock, so a seeded test sees only its own draws (CI saw a
/// resumed flow differ from the uninterrupted one while another test initialised a network).
pub(crate) fn device_rng() -> std::sync::MutexGuard<'static, ()> {
    static DEVICE_RNG: std::sync::Mutex<()> = std::sync::Mutex::new(());
    DEVICE_RNG.lock().unwrap_or_else(|e| e.into_inner())
}
