"""Caption templates: per class, train and held-out paraphrases disjoint, clear errors."""

import pytest

from diffusekit.data.captions import CAPTIONED_DATASETS, captions_for


@pytest.mark.parametrize("dataset", CAPTIONED_DATASETS)
def test_train_and_heldout_are_disjoint_per_class(dataset):
    train, heldout = captions_for(dataset), captions_for(dataset, "heldout")
    assert len(train) == len(heldout) == 10
    all_train = {c for captions in train for c in captions}
    for per_train, per_heldout in zip(train, heldout, strict=True):
        assert 4 <= len(per_train) <= 6 and len(per_heldout) >= 3
        assert len(set(per_train)) == len(per_train) and len(set(per_heldout)) == len(per_heldout)
        assert not all_train & set(per_heldout)
    assert len(all_train) == sum(map(len, train))  # no caption shared between classes


def test_mnist_captions_name_the_digit():
    train = captions_for("mnist")
    assert "a handwritten seven" in train[7] and "the digit 7" in train[7]
    assert "an ankle boot" in captions_for("fashion-mnist")[9]


def test_errors():
    with pytest.raises(ValueError, match="has no captions.*mnist"):
        captions_for("tiles")
    with pytest.raises(ValueError, match="caption split"):
        captions_for("mnist", "test")


def test_moving_mnist_captions_describe_a_moving_digit():
    train = captions_for("moving-mnist")
    assert "a handwritten three moving" in train[3] and "the digit 3 bouncing around" in train[3]
