//! `veil experiment black-box` on the digits (shipped flows): membership inference beats a coin
//! on an overfitted plain model, extraction agreement rises with the queries, and a model trained
//! on Veil-setting ciphertexts gives its cover permutation away to an attacker with labelled
//! plain images of its own.

use veil_cli::experiments::black_box::BlackBoxResults;

#[test]
fn black_box_attacks_on_the_digits() {
    let (_dir, json) = super::run(&[
        "experiment",
        "black-box",
        "--data",
        "digits",
        "--quick",
        "--members",
        "100",
        "--epochs",
        "40",
    ]);
    let r: BlackBoxResults = serde_json::from_value(json).unwrap();
    assert_eq!((r.members, r.non_members), (100, 100));
    assert_eq!(r.shape, "1×8×8");
    // Overfitted: better on its training set than off it, and the loss threshold sees it.
    assert!(r.plain.train_accuracy > r.plain.test_accuracy);
    assert!(r.plain.membership.auc > 0.5, "{}", r.plain.membership.auc);
    assert!(r.plain.membership.advantage > 0.0);
    for v in [&r.plain, &r.flow_rotation] {
        let first = v.extraction.first().unwrap();
        let last = v.extraction.last().unwrap();
        assert!(first.queries < last.queries);
        assert!(
            last.agreement > first.agreement + 0.2,
            "{} -> {}",
            first.agreement,
            last.agreement
        );
        assert!(last.agreement > 0.8, "{}", last.agreement);
    }
    // The copy of the model on ciphertexts is useless on plain images as it stands, and useful
    // once its answers are relabelled: the relabelling is the key's cover permutation.
    let last = r.flow_rotation.extraction.last().unwrap();
    assert!(
        last.copy_accuracy_plain < 0.2,
        "{}",
        last.copy_accuracy_plain
    );
    assert!(
        last.copy_accuracy_plain_relabelled > 0.5,
        "{}",
        last.copy_accuracy_plain_relabelled
    );
    assert!(
        r.relabelling_matches_cover >= 8,
        "{}",
        r.relabelling_matches_cover
    );
    assert_eq!(r.plain.relabelling, (0..10).collect::<Vec<u32>>());
}
