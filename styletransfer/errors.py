"""The one exception type a user sees: its message is printed as a one-line error."""


class StyleTransferError(Exception):
    """A problem with the user's input (file, checkpoint, option) rather than a bug."""


class TrainingInterrupted(StyleTransferError):
    """Ctrl-C during training: the checkpoint was saved; the exit code is 130."""


class TrainingDiverged(StyleTransferError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""
