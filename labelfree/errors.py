"""Exceptions a user may see. Each message says what to do next."""


class LabelFreeError(ValueError):
    """Base class of every error caused by input, a model file or the environment."""


class InputError(LabelFreeError):
    """The image, volume or argument cannot be processed as given."""


class ModelFileError(LabelFreeError):
    """A model file is missing, corrupted, foreign, or of the wrong kind."""


class OutputError(LabelFreeError):
    """A result could not be written in full (no permission, full disk, a path that is a file)."""


class Cancelled(Exception):  # noqa: N818 -- reads as an event, not a failure
    """Long work stopped at the caller's request; nothing was written."""
