"""`--max-minutes`: fit the number of iterations to a wall-clock budget, validation and checkpoints included.

The iteration count fixes the learning-rate (or meta-step) schedule, and every rank must agree on it, so a run is
not simply cut off at the deadline: the count is re-fitted every `refit_every` iterations from the measured cost
of an iteration *including* the validations and checkpoints done so far (amortised), leaving room for the work
after the last iteration (its validation, checkpoint and export, measured when first seen). The first
`warmup` iterations are excluded from the speed (allocator and thread-pool warm-up). Earlier versions measured
iterations 5-25 only, without validation or checkpoints, and a 4-minute budget took 310 s.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable


class Budget:
    def __init__(self, minutes: float, *, warmup: int = 5, refit_every: int = 10,
                 clock: Callable[[], float] = time.monotonic, started: float | None = None) -> None:
        """`started`: when the budget began on `clock` (the command's start, so that importing torch counts
        too); now when not given."""
        self.seconds = minutes * 60
        self.warmup, self.refit_every = warmup, refit_every
        self.clock = clock
        self.started = clock() if started is None else started
        self.mark: tuple[int, float] | None = None  # (iteration, elapsed) after warm-up
        self.final_cost = 0.0  # seconds of the work done once after the last iteration

    def elapsed(self) -> float:
        return self.clock() - self.started

    def record_final_cost(self, seconds: float) -> None:
        """The cost of what follows the last iteration (a validation, a checkpoint): the largest seen."""
        self.final_cost = max(self.final_cost, seconds)

    def fit(self, done: int, current: int, limit: int, start: int = 0) -> int:
        """The iteration count to run, after `done` iterations (of which `start` came before this process):
        `current` between re-fits, else what fits the budget, at most `limit` (the configured count)."""
        elapsed = self.elapsed()
        if done - start == self.warmup:
            self.mark = (done, elapsed)
        if self.mark is None or done == self.mark[0] or (done - self.mark[0]) % self.refit_every:
            return current
        per_iteration = (elapsed - self.mark[1]) / (done - self.mark[0])
        if per_iteration <= 0:
            return current
        left = self.seconds - elapsed - self.final_cost
        return min(limit, max(done + 1, done + math.floor(left / per_iteration)))
