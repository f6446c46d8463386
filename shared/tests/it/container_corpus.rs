//! Replays the fuzz corpus of the dataset container decoder (`fuzz/corpus/dataset_container`,
//! grown by `cargo xtask fuzz`) on stable: every input must decode or give an error, never
//! panic, and the seeds named `valid-*` must decode.

use std::path::Path;

#[test]
fn every_corpus_input_decodes_or_errors_without_panicking() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/dataset_container");
    let mut count = 0;
    let mut valid = 0;
    for entry in std::fs::read_dir(&dir).expect("the corpus folder exists") {
        let path = entry.unwrap().path();
        let bytes = std::fs::read(&path).unwrap();
        let result = veil::data::container::decode(&bytes);
        let _ = veil::data::container::decode_images(&bytes);
        let name = path.file_name().unwrap().to_string_lossy();
        if name.starts_with("valid-") {
            let c = result.unwrap_or_else(|e| panic!("{name}: {e}"));
            let again = veil::data::container::encode(&c.dataset, &c.meta, c.pixels).unwrap();
            assert_eq!(
                veil::data::container::decode(&again).unwrap().dataset,
                c.dataset
            );
            valid += 1;
        } else if name.starts_with("bad-") || name == "nan" || name == "truncated" {
            assert!(result.is_err(), "{name} should be refused");
        }
        count += 1;
    }
    assert!(count >= 10, "only {count} corpus inputs");
    assert!(valid >= 2);
}
