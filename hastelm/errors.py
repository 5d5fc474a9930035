"""User-facing errors: each carries a one-line message the CLI and server print as is."""


class HastelmError(Exception):
    """Base class for errors caused by user input (bad file, bad parameter), not by a bug."""


class ModelLoadError(HastelmError):
    """The model file or folder is missing, corrupt, or of a kind hastelm cannot run."""


class UnsupportedError(ModelLoadError):
    """A valid file that uses an architecture or tensor type hastelm does not implement."""


class InvalidParameterError(HastelmError, ValueError):
    """A sampling or request parameter outside its valid range."""


class ContextOverflowError(HastelmError):
    """The prompt (plus requested tokens) does not fit the model's context window."""
