//! Flow rotation through the client session, natively (flex): the page's code path against
//! `veil::flow_rotation` used directly.
#![cfg(not(target_arch = "wasm32"))]

use std::future::Future;
use std::path::PathBuf;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use veil::burn::tensor::Device;
use veil::data::digits;
use veil::flow_rotation::FlowSet;
use veil::keys::MasterKey;
use veil_client::{FlowRoute, Session};

/// Runs a future whose every step is ready (the CPU device never makes a read wait).
fn block_on<F: Future>(f: F) -> F::Output {
    let mut f = pin!(f);
    let mut cx = Context::from_waker(Waker::noop());
    loop {
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
    }
}

fn shipped_flows() -> (String, Vec<(String, Vec<u8>)>) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../assets/flows/digits");
    let manifest = std::fs::read_to_string(dir.join("flows.json")).unwrap();
    let mut files = Vec::new();
    for e in std::fs::read_dir(&dir).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().to_string_lossy().into_owned();
        if name.ends_with(".bpk") {
            files.push((name, std::fs::read(e.path()).unwrap()));
        }
    }
    (manifest, files)
}

fn session_with_key(key: &MasterKey) -> Session {
    let session = block_on(Session::start(false)).unwrap();
    let file = veil::keyfile::KeyFile::plain(key, "test").to_json();
    session.import_key(&file, None).unwrap();
    let (manifest, files) = shipped_flows();
    let info = session.load_flows("digits", &manifest, &files).unwrap();
    assert_eq!(info.classes.len(), 10);
    assert_eq!((info.shape.height, info.levels), (8, 17));
    assert!(info.agnostic);
    session
}

#[test]
fn the_page_path_encrypts_like_the_library_and_round_trips() {
    let key = MasterKey::from_bytes([21; 32]);
    let session = session_with_key(&key);
    let data = digits().subset(&(0..40).collect::<Vec<_>>());
    // Route (a), images of mixed classes in one call.
    let c = block_on(session.flow_apply(
        &data.images,
        &FlowRoute::TrueClass(data.labels.clone()),
        false,
    ))
    .unwrap();
    let device = Device::flex();
    let (manifest, files) = shipped_flows();
    let set = FlowSet::load(
        &manifest,
        |n| {
            files
                .iter()
                .find(|(f, _)| f == n)
                .map(|(_, b)| b.as_slice())
        },
        &device,
    )
    .unwrap();
    let len = data.shape.len();
    for i in [0, 7, 39] {
        let enc = set.class_encryptor(&key, data.labels[i] as usize, &device);
        let expected: Vec<f32> = enc
            .encrypt(data.images_tensor(i..i + 1, &device))
            .into_data()
            .iter::<f32>()
            .collect();
        let worst = expected
            .iter()
            .zip(&c[i * len..(i + 1) * len])
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(worst < 1e-5, "image {i}: {worst}");
    }
    // The ciphertext is not the image, and decryption gives the image back exactly.
    let moved = c
        .iter()
        .zip(&data.images)
        .map(|(a, b)| (a - b).abs())
        .sum::<f32>()
        / c.len() as f32;
    assert!(moved > 0.1, "mean |c - x| = {moved}");
    let back =
        block_on(session.flow_apply(&c, &FlowRoute::TrueClass(data.labels.clone()), true)).unwrap();
    let worst = back
        .iter()
        .zip(&data.images)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(worst < 1e-6, "round trip error {worst}");
    // Route (b) differs from route (a) and also round-trips.
    let b = block_on(session.flow_apply(&data.images, &FlowRoute::Agnostic, false)).unwrap();
    assert!(b.iter().zip(&c).any(|(x, y)| (x - y).abs() > 1e-2));
    let back = block_on(session.flow_apply(&b, &FlowRoute::Agnostic, true)).unwrap();
    assert_eq!(back, data.images);
}

#[test]
fn containers_carry_ciphertexts_and_the_fingerprint_never_the_key() {
    let key = MasterKey::from_bytes([22; 32]);
    let session = session_with_key(&key);
    let data = digits().subset(&(0..12).collect::<Vec<_>>());
    let c = block_on(session.flow_apply(
        &data.images,
        &FlowRoute::TrueClass(data.labels.clone()),
        false,
    ))
    .unwrap();
    let bytes = session
        .flow_container(c.clone(), data.labels.clone(), false)
        .unwrap();
    let (summary, pixels, labels) = session.read_container(&bytes).unwrap();
    assert_eq!(summary.scheme, "flow-rotation");
    assert_eq!(summary.count, 12);
    assert_eq!(
        summary.key_fingerprint.as_deref(),
        Some(key.fingerprint().to_string().as_str())
    );
    assert_eq!(pixels, c);
    assert_eq!(labels, data.labels);
    let hex = veil::keys::to_hex(key.as_bytes());
    assert!(!bytes.windows(32).any(|w| w == key.as_bytes()));
    assert!(!String::from_utf8_lossy(&bytes).contains(&hex));
}

#[test]
fn bad_input_is_refused_with_a_reason() {
    let key = MasterKey::from_bytes([23; 32]);
    let session = session_with_key(&key);
    let px = vec![0.5f32; 64 * 2];
    let err = block_on(session.flow_apply(&px, &FlowRoute::TrueClass(vec![1]), false)).unwrap_err();
    assert!(err.to_string().contains("2 images but 1 labels"), "{err}");
    let err =
        block_on(session.flow_apply(&px, &FlowRoute::TrueClass(vec![1, 10]), false)).unwrap_err();
    assert!(err.to_string().contains("label 10"), "{err}");
    let err = block_on(session.flow_apply(&px[..100], &FlowRoute::Agnostic, false)).unwrap_err();
    assert!(err.to_string().contains("whole number"), "{err}");
    let err = session
        .decode_images(&[("cat.png".into(), b"not an image".to_vec())])
        .unwrap_err();
    assert!(err.to_string().contains("cat.png"), "{err}");
    session.forget_key();
    let err = block_on(session.flow_apply(&px, &FlowRoute::Agnostic, false)).unwrap_err();
    assert!(err.to_string().contains("no key"), "{err}");
    let err = session
        .load_flows("digits", "{}", &[])
        .unwrap_err()
        .to_string();
    assert!(err.contains("manifest"), "{err}");
}

#[test]
fn decoded_files_give_the_dataset_pixels() {
    let key = MasterKey::from_bytes([24; 32]);
    let session = session_with_key(&key);
    let data = digits();
    let mut files = Vec::new();
    for i in 0..5 {
        let px: Vec<u8> = data
            .image(i)
            .iter()
            .map(|v| (v * 255.0).round() as u8)
            .collect();
        let img = image::GrayImage::from_raw(8, 8, px).unwrap();
        let mut png = std::io::Cursor::new(Vec::new());
        img.write_to(&mut png, image::ImageFormat::Png).unwrap();
        files.push((format!("{i}.png"), png.into_inner()));
    }
    let decoded = session.decode_images(&files).unwrap();
    assert_eq!(decoded, data.images[..5 * 64]);
}
