"""The errors a user causes and can fix: a bad flag, config or file, something not installed, a damaged checkpoint.

Each is raised where the input is checked, with a message that names the problem and what to do. The
``diffusekit`` command prints a :class:`UserError` as one line and exits with its :attr:`~UserError.exit_status`;
any other exception escaping a command is a bug in diffusekit and keeps its traceback. The subclasses that
stand for a bad value also subclass :class:`ValueError` (a missing file :class:`FileNotFoundError`, the rest
:class:`RuntimeError`), so library code that catches those keeps working.
"""

from __future__ import annotations

__all__ = ["UserError", "UsageError", "ConfigError", "MissingFileError", "BadFileError", "NotInstalledError",
           "DatasetNotInstalled", "TextEncoderNotInstalled", "FeatureExtractorNotInstalled", "CheckpointError",
           "DistributedError", "NonFiniteError", "UnsupportedAutoencoder"]


class UserError(Exception):
    """A problem in what the user asked for or gave, not in diffusekit: reported as one line, no traceback."""

    exit_status = 2


class UsageError(UserError, ValueError):
    """A flag, argument or option value that cannot be used (unknown name, out of range, impossible together)."""


class ConfigError(UserError, ValueError):
    """A bad config key, type or value; the message names the key and what is allowed."""


class MissingFileError(UserError, FileNotFoundError):
    """A file or folder the user named does not exist."""


class BadFileError(UserError, ValueError):
    """A file or folder the user gave is not what it should be: corrupt, truncated, of another kind, or empty."""


class UnsupportedAutoencoder(BadFileError):
    """A diffusers autoencoder whose config or weights ask for something diffusekit's autoencoder does not
    build (another class, block type or activation, an unknown weight); the message names the key and value."""


class NotInstalledError(UserError, RuntimeError):
    """Files or packages a feature needs are not installed; the message says how to install them."""


class DatasetNotInstalled(NotInstalledError):
    """A built-in dataset whose files are not installed."""


class TextEncoderNotInstalled(NotInstalledError):
    """The text encoder's weights or vocabulary are not installed."""


class FeatureExtractorNotInstalled(NotInstalledError):
    """The Inception-v3 weights of the FID feature extractor are not installed."""


class InverseProblemError(UserError, ValueError):
    """An inverse problem that cannot be posed: a mask or measurement that does not fit the model's samples, a
    factor that does not divide the resolution, an empty mask, or a method the model cannot run."""


class CheckpointError(UserError, RuntimeError):
    """A checkpoint that is missing, truncated, altered, or does not fit the config stored with it."""


class DistributedError(UserError, RuntimeError):
    """Several processes could not be set up, or one of them ended: the newest checkpoint stays intact."""

    exit_status = 1


class NonFiniteError(UserError, RuntimeError):
    """Too many consecutive optimizer steps with a non-finite loss or gradient (``optim.nonfinite_limit``): the
    recipe diverged; the message names the last good checkpoint."""

    exit_status = 1
