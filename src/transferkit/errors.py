"""Exceptions that carry a message meant for the person at the keyboard."""


class TransferkitError(Exception):
    """A problem with the user's input or environment; the message says what to do."""


class DataError(TransferkitError, ValueError):
    """The image folder cannot be used as given."""


class ConfigError(TransferkitError, ValueError):
    """A setting is outside what transferkit (or the chosen backbone) accepts."""


class WeightsError(TransferkitError, FileNotFoundError):
    """Pretrained weights were asked for but cannot be found or downloaded."""


class RunDirError(TransferkitError, FileNotFoundError):
    """A path given as a run directory is not a usable transferkit run."""


class DownloadError(DataError):
    """A dataset archive could not be fetched (no network, refused, 404): a local copy is the fix.

    `reason` is what failed, without the generic fix, for callers that know a better one.
    """

    def __init__(self, message: str, reason: str = ""):
        super().__init__(message)
        self.reason = reason or message
