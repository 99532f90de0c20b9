"""The errors `retrain` raises for bad input: one line each, saying what to do. No TensorFlow."""


class RetrainError(Exception):
    """A problem with the user's input or environment, reported as one line by the CLI.

    The message reads `<what was wrong> (received: <value>); <what to do>`.
    """

    def __init__(self, what: str, received: object = None, todo: str = ""):
        self.what, self.received, self.todo = what, received, todo
        message = what
        if received is not None:
            message += f" (received: {received})"
        if todo:
            message += f"; {todo}"
        super().__init__(message)


class ConfigError(RetrainError):
    """A flag value or combination of flags that cannot work."""


class DownloadError(RetrainError):
    """A download that failed, was cut off for good, or did not match its checksum."""


class DatasetError(RetrainError):
    """An archive or an image folder that is not what it should be."""


class BackboneError(RetrainError):
    """A backbone name, weights file, freeze point or image size the backbone cannot take."""


class CheckpointError(RetrainError):
    """A run folder that cannot be resumed or initialised from."""


class DistributeError(RetrainError):
    """A cluster set-up (TF_CONFIG) that distributed training cannot run with."""


class CacheError(RetrainError):
    """A cache folder that cannot be made or written, or a cache command's bad target."""


class DiskFullError(RetrainError):
    """A disk with no room left for what a command writes (ENOSPC, a quota): free space and rerun."""


class NotFoundError(RetrainError):
    """A job, dataset, model or version that does not exist (HTTP 404 in `retrain serve`)."""


class ConflictError(RetrainError):
    """An action the target's state does not allow, e.g. cancelling a finished job (HTTP 409)."""
