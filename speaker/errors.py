"""The errors the scripts turn into one line on stderr and in the log (exit status 1)."""


class TrainingError(RuntimeError):
    """A problem with the inputs of a run (files, lists, prototxt vs data, weights vs net)."""
