"""User-facing errors.

Every mistake a user can make (a typo in a config, an unknown name, an input of the
wrong shape, a dataset that is not prepared) raises a subclass of :class:`VggjaxError`
whose message is ONE line saying what is wrong and what to do. The CLI entry points
catch these and print ``error: <message>`` without a traceback; library users get a
normal exception (a ``ValueError`` subclass, so ``except ValueError`` keeps working).
"""


class VggjaxError(ValueError):
    """Base class of the one-line user errors raised by vggjax."""


class ConfigError(VggjaxError):
    """A configuration value is missing, misspelled, of the wrong type or out of range."""


class ShapeError(VggjaxError):
    """An input or parameter has a shape the network cannot take."""


class DataError(VggjaxError):
    """A dataset is unknown, not prepared, or cannot be read."""


class WorkdirError(VggjaxError):
    """The run directory cannot be created or written, or its disk is full."""


class CheckpointError(VggjaxError):
    """A checkpoint is missing, corrupt, or belongs to another model."""


def one_of(kind: str, name: object, valid) -> VggjaxError:
    """Return the error for an unknown ``name`` of a ``kind``, listing the ``valid`` ones."""
    return ConfigError(f"unknown {kind} {name!r}; valid: {', '.join(sorted(map(str, valid)))}")


def check_rate(name: str, value: float) -> None:
    """ConfigError unless ``value`` is a drop rate, in [0, 1) (1 would drop everything)."""
    if not 0 <= value < 1:
        raise ConfigError(f"{name} must be in [0, 1), got {value!r}")


def check_count(name: str, value: int) -> None:
    """ConfigError unless ``value`` (a number of layers or blocks) is >= 0."""
    if value < 0:
        raise ConfigError(f"{name} must be >= 0, got {value!r}")
