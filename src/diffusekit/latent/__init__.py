"""Latent diffusion: a frozen autoencoder (ours or a diffusers ``AutoencoderKL``) and the dataset encoded by it.

- :mod:`~diffusekit.latent.codec`: :func:`load_autoencoder` -> :class:`LatentAutoencoder` (encode, decode, the
  latent scaling, a digest of the weights);
- :mod:`~diffusekit.latent.cache`: :func:`encode_dataset` -> :class:`LatentArrays`, encoded once and cached as
  safetensors shards keyed by the autoencoder and the data.
"""

from .cache import LatentArrays, encode_dataset
from .codec import LatentAutoencoder, NotAnAutoencoder, is_diffusers_autoencoder, load_autoencoder

__all__ = ["LatentAutoencoder", "LatentArrays", "NotAnAutoencoder", "encode_dataset", "is_diffusers_autoencoder",
           "load_autoencoder"]
