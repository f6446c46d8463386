//! The demo model on handwriting it never saw: digits drawn by a script at several sizes, margins
//! and polarities (a third at 28×28), read the way the home page reads a dropped image.

use veil::burn::tensor::Device;
use veil::nn::model::{HandwritingScore, demo};

#[test]
fn the_demo_model_reads_90_percent_of_scripted_handwriting_as_its_card_says() {
    let _rng = crate::device_rng();
    let device = Device::flex();
    let card = demo::card();
    let model = card.config.load(demo::WEIGHTS, &device).unwrap();
    let score = HandwritingScore::measure(&model, &device);
    let on_card = card.handwriting.as_ref().expect("the card has the figure");
    assert!(
        (score.accuracy - on_card.accuracy).abs() < 1e-6,
        "{score:?} vs {on_card:?}"
    );
    assert!(
        score.accuracy >= 0.90,
        "the demo model read {:.3} of the scripted digits",
        score.accuracy
    );
    // The plain area average the home page used before reads far fewer.
    assert!(
        score.area_averaged_accuracy < score.accuracy - 0.3,
        "{score:?}"
    );
    assert_eq!(score.per_class_accuracy.len(), 10);
}
