import numpy as np
import torch

from diffusekit.data import ImageArrays, InfiniteSampler
from diffusekit.training.batches import BatchStream


def _data(n=37):
    rng = np.random.default_rng(1)
    return ImageArrays(rng.integers(0, 256, (n, 4, 4, 1), dtype=np.uint8), np.arange(n, dtype=np.int64) % 3, 3,
                       ("a", "b", "c"))


def _take(stream, k):
    return [next(stream) for _ in range(k)]


def test_stream_follows_the_sampler_order_across_epochs():
    data = _data()
    sampler = InfiniteSampler(len(data), seed=5)
    stream = BatchStream(data, seed=5, micro_batch=8)
    for images, labels in _take(stream, 12):  # 96 examples: crosses two epoch boundaries
        expected_images, expected_labels = data.tensors(sampler.next_indices(8))
        assert torch.equal(images, expected_images) and torch.equal(labels, expected_labels)
    assert stream.position == 96


def test_workers_give_the_same_batches_and_resume_from_the_consumed_position():
    data = _data()
    reference = _take(BatchStream(data, seed=3, micro_batch=6), 9)
    with_workers = BatchStream(data, seed=3, micro_batch=6, workers=2)
    first = _take(with_workers, 4)
    assert with_workers.position == 24  # what was consumed, not what the workers prefetched
    resumed = _take(BatchStream(data, seed=3, micro_batch=6, position=with_workers.position, workers=2), 5)
    for (a, la), (b, lb) in zip(reference, first + resumed, strict=True):
        assert torch.equal(a, b) and torch.equal(la, lb)


def test_ranks_split_each_global_batch():
    data = _data()
    whole = next(BatchStream(data, seed=0, micro_batch=8))[1]
    parts = [next(BatchStream(data, seed=0, micro_batch=4, rank=r, world_size=2))[1] for r in range(2)]
    assert sorted(torch.cat(parts).tolist()) == sorted(whole.tolist())
