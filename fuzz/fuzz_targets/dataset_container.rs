//! The dataset container decoder must turn any bytes into a dataset or an error, never a panic;
//! a container it accepts must re-encode to one that decodes to the same dataset.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    let _ = veil::data::container::decode_images(bytes);
    if let Ok(c) = veil::data::container::decode(bytes) {
        let again = veil::data::container::encode(&c.dataset, &c.meta, c.pixels)
            .expect("a decoded container re-encodes");
        let back = veil::data::container::decode(&again).expect("a re-encoded container decodes");
        assert_eq!(back.dataset, c.dataset);
    }
});
