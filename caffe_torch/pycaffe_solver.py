"""The rest of pycaffe's Solver surface, as a mixin of `caffe_torch.solver.Solver` (which provides `net`,
`test_nets`, `iter`, `step`, `solve`, `apply_update`, `snapshot`, `restore`).

`add_callback(on_start, on_gradients)`: as Caffe's Solver callbacks, `on_start()` runs at the start of each
iteration (after the periodic test, before the forward/backward passes) and `on_gradients()` once the
iteration's diffs are ready (after the loss is displayed, before the update), each in the order added.
"""

from collections.abc import Callable


class PycaffeSolverMixin:
    def add_callback(self, on_start: Callable[[], object], on_gradients: Callable[[], object]) -> None:
        if not callable(on_start) or not callable(on_gradients):
            raise TypeError("add_callback(on_start, on_gradients) takes two callables")
        self._callbacks().append((on_start, on_gradients))

    def _callbacks(self) -> list:
        if "_pycaffe_callbacks" not in self.__dict__:
            self._pycaffe_callbacks: list[tuple[Callable, Callable]] = []
        return self._pycaffe_callbacks

    def _run_on_start(self) -> None:
        for on_start, _ in self._callbacks():
            on_start()

    def _run_on_gradients(self) -> None:
        for _, on_gradients in self._callbacks():
            on_gradients()
