"""From a config or a checkpoint to objects: the network, the denoiser, its conditioning, the loss, the weights.

One place, below sampling, evaluation, training and the CLI, so each of them rebuilds a model the same way:

- :mod:`~diffusekit.models.build`: a :class:`~diffusekit.config.Config` -> network, denoiser, loss, and the
  conditioning settings (augmentation labels, cascade inputs, text width) the data side implies;
- :mod:`~diffusekit.models.checkpoint`: the checkpoint files (safetensors weights, a weights-only training
  state, checksums), written atomically and verified when read;
- :mod:`~diffusekit.models.load`: a checkpoint or run directory -> a :class:`LoadedModel`;
- :mod:`~diffusekit.models.transfer`: one run's weights as the start of a run of another config (fine-tuning);
- :mod:`~diffusekit.models.execution`: how a network runs (precision, memory format, compilation).
"""

from .build import (
    TEXT_DIM,
    augment_settings,
    build_denoiser,
    build_loss,
    build_network,
    build_schedule,
    cascade_settings,
    network_conditioning,
)
from .checkpoint import (
    CheckpointError,
    latest_valid,
    load_checkpoint,
    prune,
    remove_partial_writes,
    save_checkpoint,
    verify_checkpoint,
)
from .execution import PRECISIONS, ExecutedNetwork, Execution, native_bf16, resolve_precision
from .load import LoadedModel, load_guide, load_model, resolve_checkpoint, select_weights
from .transfer import TransferReport, TransferSource, read_source, source_optimizer_state, transfer_weights

__all__ = ["TEXT_DIM", "augment_settings", "build_denoiser", "build_loss", "build_network", "build_schedule",
           "cascade_settings", "network_conditioning", "CheckpointError", "latest_valid", "load_checkpoint", "prune",
           "remove_partial_writes", "save_checkpoint", "verify_checkpoint", "LoadedModel", "load_guide", "load_model",
           "resolve_checkpoint", "select_weights", "PRECISIONS", "Execution", "ExecutedNetwork", "native_bf16",
           "resolve_precision", "TransferReport", "TransferSource", "read_source", "source_optimizer_state",
           "transfer_weights"]
