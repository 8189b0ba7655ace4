"""The condition mapping: None is empty, anything but a mapping of tensors is refused, and slicing /
concatenation act on every entry alike."""

import pytest
import torch

from diffusekit.conditions import as_conditions, concat, select, to_device

LABELS = torch.tensor([0, 1, 2, 3])
IMAGE = torch.arange(4 * 2, dtype=torch.float32).reshape(4, 2)


def test_none_is_the_empty_mapping_and_a_mapping_is_copied():
    assert as_conditions(None) == {}
    given = {"labels": LABELS}
    out = as_conditions(given)
    assert out == given and out is not given and out["labels"] is LABELS


@pytest.mark.parametrize("cond, message", [
    (LABELS, r"bare tensor: pass class labels as \{'labels': labels\}"),
    ([LABELS], "mapping of named conditions .* got list"),
    ({"labels": [0, 1]}, "condition 'labels' must be a tensor, got list"),
    ({0: LABELS}, "condition names must be strings, got 0"),
])
def test_anything_else_is_refused_naming_the_problem(cond, message):
    with pytest.raises(TypeError, match=message):
        as_conditions(cond)


def test_select_takes_the_same_rows_of_every_entry():
    cond = {"labels": LABELS, "image": IMAGE}
    part = select(cond, slice(1, 3))
    assert torch.equal(part["labels"], torch.tensor([1, 2]))
    assert torch.equal(part["image"], torch.tensor([[2.0, 3.0], [4.0, 5.0]]))
    rows = select(cond, torch.tensor([3, 0]))
    assert torch.equal(rows["labels"], torch.tensor([3, 0])) and torch.equal(rows["image"][0], IMAGE[3])
    assert select({}, slice(0, 2)) == {}


def test_concat_stacks_rows_and_needs_the_same_names():
    both = concat({"labels": LABELS[:2], "image": IMAGE[:2]}, {"image": IMAGE[2:], "labels": LABELS[2:]})
    assert torch.equal(both["labels"], LABELS) and torch.equal(both["image"], IMAGE)
    assert concat({}, {}) == {}
    with pytest.raises(ValueError, match="different names: text_null in only one"):
        concat({"labels": LABELS}, {"labels": LABELS, "text_null": torch.ones(4, dtype=torch.bool)})


def test_to_device_moves_every_entry():
    moved = to_device({"labels": LABELS, "image": IMAGE}, "meta")
    assert all(v.is_meta for v in moved.values()) and moved["image"].shape == IMAGE.shape
