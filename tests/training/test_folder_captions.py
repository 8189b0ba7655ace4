"""An image folder's per-image captions: encoded once in chunks, padded to the longest, cached on disk."""

import torch

from diffusekit.text import TextEncoding
from diffusekit.training.captions import folder_caption_table


class _WordCounter:
    """A stand-in encoder: token j of a caption has state [len(word j), j], pooled = [number of words, 0]."""

    def __init__(self):
        self.calls = 0

    def encode(self, texts):
        self.calls += 1
        length = max(len(t.split()) for t in texts)
        states, mask = torch.zeros(len(texts), length, 2), torch.zeros(len(texts), length, dtype=torch.bool)
        for i, text in enumerate(texts):
            for j, word in enumerate(text.split()):
                states[i, j], mask[i, j] = torch.tensor([len(word), j]), True
        pooled = torch.stack([torch.tensor([float(len(t.split())), 0.0]) for t in texts])
        return TextEncoding(states=states, mask=mask, pooled=pooled, ids=mask.long())


def test_captions_are_encoded_in_chunks_padded_and_cached(tmp_path):
    encoder = _WordCounter()
    captions = ("a fox", "an owl in a tree", "moss")
    table = folder_caption_table(captions, encoder, tmp_path, chunk=2)
    assert encoder.calls == 2 and table.states.shape == (3, 5, 2)
    assert table.states[2, :, 0].tolist() == [4, 0, 0, 0, 0] and table.mask[0].tolist() == [True, True] + [False] * 3
    assert table.pick(torch.tensor([1, 2]), None).tolist() == [1, 2]  # one caption per "class"
    again = folder_caption_table(list(captions), encoder, tmp_path)
    assert encoder.calls == 2 and torch.equal(again.states, table.states)  # read from the cache
    assert again.condition(torch.tensor([1]))["text_pooled"].tolist() == [[5.0, 0.0]]
