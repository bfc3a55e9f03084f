"""Timing shared by the benchmarks: several candidates measured in interleaved rounds, so that a change in
machine load during the run falls on all of them alike (report the median round); and the throughput of
one candidate over a time budget (`rate`)."""

import time
from collections.abc import Callable


def interleaved_times(steps: dict[str, Callable[[], object]], rounds: int, *, warmup: int = 0, per_round: int = 1,
                      sync: Callable[[], object] = lambda: None, alternate: bool = False) -> dict[str, list[float]]:
    """Seconds of each of `rounds` rounds per candidate; a round is `per_round` calls of the candidate's step,
    then `sync()` (torch.cuda.synchronize on a GPU). The candidates take turns within each round, in the
    dict's order (reversed every other round with `alternate`, A B B A ..., so neither always goes first).
    `warmup` untimed calls of each candidate come first."""
    for step in steps.values():
        for _ in range(warmup):
            step()
    sync()
    times: dict[str, list[float]] = {name: [] for name in steps}
    order = list(steps)
    for r in range(rounds):
        for name in (order[::-1] if alternate and r % 2 else order):
            t0 = time.perf_counter()
            for _ in range(per_round):
                steps[name]()
            sync()
            times[name].append(time.perf_counter() - t0)
    return times


def rate(fn: Callable[[], object], n_per_call: int, seconds: float, sync: Callable[[], object] | None = None) -> float:
    """Items/s of `fn` (each call handles `n_per_call` items), called repeatedly for about `seconds` after one
    untimed warm-up call; `sync()` after each call (torch.cuda.synchronize on a GPU)."""
    sync = sync or (lambda: None)
    fn()
    sync()
    calls, t0 = 0, time.perf_counter()
    while True:
        fn()
        calls += 1
        sync()
        dt = time.perf_counter() - t0
        if dt >= seconds:
            return calls * n_per_call / dt
