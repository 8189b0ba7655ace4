import pytest
import torch

from . import assets

torch.set_num_threads(1)  # tiny tensors: one thread avoids the OpenMP stalls seen on 2-core machines


@pytest.fixture
def float64():
    """float64 as torch's default dtype for one test, for comparisons tighter than float32 can meet (production
    trains in float32, the default everywhere else); the previous default is restored afterwards."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


# -- assets (tests/assets.py): skipped locally when missing, a failure under CI=true ----------------------------------
@pytest.fixture
def mnist_installed():
    assets.require_mnist()


@pytest.fixture
def text_encoder_installed():
    assets.require_text_encoder()


@pytest.fixture
def inception_weights_installed():
    assets.require_inception_weights()
