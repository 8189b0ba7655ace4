import pytest
import torch

from diffusekit.data import InfiniteSampler


def _stream(sampler, batches):
    return torch.cat([sampler.next_indices(b) for b in batches])


def test_each_epoch_is_a_permutation_and_epochs_differ():
    s = InfiniteSampler(10, seed=3)
    stream = _stream(s, [7, 7, 6])  # 20 = two epochs, batches straddle the boundary
    assert sorted(stream[:10].tolist()) == list(range(10)) and sorted(stream[10:].tolist()) == list(range(10))
    assert stream[:10].tolist() != stream[10:].tolist()


def test_stream_is_independent_of_batch_size_and_resumes_exactly():
    a = _stream(InfiniteSampler(13, seed=1), [8] * 5)
    b = InfiniteSampler(13, seed=1)
    first = _stream(b, [5, 11])
    resumed = InfiniteSampler(13, seed=1)
    resumed.load_state_dict(b.state_dict())
    assert torch.equal(a, torch.cat([first, _stream(resumed, [3, 21])]))


def test_ranks_share_the_global_stream():
    full = _stream(InfiniteSampler(9, seed=2), [6] * 4)
    ranks = [InfiniteSampler(9, seed=2, rank=r, world_size=2) for r in range(2)]
    parts = [_stream(r, [6] * 4) for r in ranks]
    merged = torch.stack(parts, 1).reshape(-1)  # rank r takes positions r, r + 2, ...
    assert torch.equal(merged, full)


def test_bad_input():
    with pytest.raises(ValueError, match="empty"):
        InfiniteSampler(0)
    with pytest.raises(ValueError, match="not divisible by world size"):
        InfiniteSampler(5, world_size=2).next_indices(3)
    with pytest.raises(ValueError, match="sampler state is for a dataset of 5"):
        InfiniteSampler(6).load_state_dict(InfiniteSampler(5).state_dict())
