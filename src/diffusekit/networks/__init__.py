"""Networks: ``forward(x, noise_cond, cond=None) -> F``. They know nothing about diffusion.

``cond`` is always a mapping of named conditions, ``Mapping[str, Tensor]`` (:mod:`diffusekit.conditions`):
class ``labels``, augmentation labels ``augment``, a cascade's ``image`` and ``aug_level``, the ``text``
entries; the full list, and what each does, is in :mod:`diffusekit.networks.conditioning`. An empty mapping
means no conditions, and ``None`` is accepted as shorthand for it; a bare tensor is not (class labels are
``{"labels": labels}``). An unknown name, a condition the network was not built for, or a required one that
is missing (``image`` with ``cond_channels``, ``aug_level`` with ``noise_aug``) is an error naming it.

Image networks (:class:`~diffusekit.networks.unet.UNet`, :class:`~diffusekit.networks.dit.DiT`) take
``x`` ``[B, C, H, W]``; the video network :class:`~diffusekit.networks.video.VideoUNet` (``is_video = True``,
``frames``) takes clips ``[B, C, F, H, W]`` and the video conditions ``independent``, ``context`` and
``context_mask``, which image networks reject.
"""
