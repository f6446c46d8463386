//! Loading datasets from disk, on small files written by the test.

use std::io::Write;

use veil::data::{ImageShape, encode_mnist_idx};
use veil_cli::datasets::{Format, load};

const SHAPE: ImageShape = ImageShape::new(1, 8, 8);

#[test]
fn mnist_folder_plain_and_gzip() {
    let dir = tempfile::tempdir().unwrap();
    let pixels: Vec<u8> = (0..2 * 28 * 28).map(|i| (i % 256) as u8).collect();
    let (img, lab) = encode_mnist_idx(&pixels, &[4, 2], 28, 28);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&img).unwrap();
    std::fs::write(
        dir.path().join("t10k-images-idx3-ubyte.gz"),
        gz.finish().unwrap(),
    )
    .unwrap();
    std::fs::write(dir.path().join("t10k-labels-idx1-ubyte"), lab).unwrap();
    let d = load(dir.path(), Format::Auto, SHAPE).unwrap();
    assert_eq!(d.labels, vec![4, 2]);
    assert_eq!(d.shape, ImageShape::new(1, 28, 28));
}

#[test]
fn cifar_folder_and_a_truncated_batch() {
    let dir = tempfile::tempdir().unwrap();
    let mut batch = Vec::new();
    for label in [6u8, 9] {
        batch.push(label);
        batch.extend(std::iter::repeat_n(128u8, 3072));
    }
    std::fs::write(dir.path().join("data_batch_1.bin"), &batch).unwrap();
    std::fs::write(dir.path().join("batches.meta.txt"), "airplane\n").unwrap();
    let d = load(dir.path(), Format::Auto, SHAPE).unwrap();
    assert_eq!(d.labels, vec![6, 9]);
    assert_eq!(d.class_names[6], "frog");
    std::fs::write(dir.path().join("test_batch.bin"), &batch[..100]).unwrap();
    let err = load(dir.path(), Format::Auto, SHAPE).unwrap_err();
    assert!(format!("{err:#}").contains("test_batch.bin"), "{err:#}");
}

#[test]
fn image_folder_with_a_corrupt_file_names_it() {
    let dir = tempfile::tempdir().unwrap();
    for (class, value) in [("cats", 200u8), ("dogs", 20)] {
        std::fs::create_dir(dir.path().join(class)).unwrap();
        image::GrayImage::from_pixel(16, 16, image::Luma([value]))
            .save(dir.path().join(class).join("a.png"))
            .unwrap();
    }
    let d = load(dir.path(), Format::Auto, SHAPE).unwrap();
    assert_eq!(d.class_names, vec!["cats", "dogs"]);
    assert!((d.image(0)[0] - 200.0 / 255.0).abs() < 0.01);
    std::fs::write(
        dir.path().join("dogs").join("b.png"),
        b"\x89PNG\r\n\x1a\nnot really",
    )
    .unwrap();
    let err = load(dir.path(), Format::Auto, SHAPE).unwrap_err();
    assert!(format!("{err:#}").contains("dogs/b.png"), "{err:#}");
}

#[test]
fn digits_csv_and_unknown_paths() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("digits.csv.gz");
    std::fs::write(&path, veil::data::DIGITS_CSV_GZ).unwrap();
    assert_eq!(load(&path, Format::Auto, SHAPE).unwrap().len(), 1797);
    let err = load(&dir.path().join("missing"), Format::Auto, SHAPE).unwrap_err();
    assert!(err.to_string().contains("does not exist"), "{err}");
    let other = dir.path().join("notes.txt");
    std::fs::write(&other, "hi").unwrap();
    assert!(load(&other, Format::Auto, SHAPE).is_err());
}
