"""Speaker recognition on top of the pycaffe API: training loop, evaluation, metrics, plots."""
