"""The errors the scripts turn into one line on stderr (and in the log): a user's mistake, never a traceback."""


class TrainingError(RuntimeError):
    """A problem with the inputs of a run (files, lists, prototxt vs data, weights vs net)."""


class InputError(TrainingError):
    """A bad argument, list, cohort or solver field found by the up-front checks (speaker/checks.py), before
    any long work; the message names the argument or file and the fix."""
