"""`--max-minutes` with a fake clock: validations and checkpoints included, the run ends within 5 % of the budget."""

from __future__ import annotations

import pytest

from fewshotseg.training.budget import Budget


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def simulate(minutes: float, step_s: float, every: int, validation_s: float, checkpoint_s: float,
             startup_s: float = 4.0, limit: int = 100_000) -> tuple[float, int]:
    """A training loop shaped like meta-train's: iterations, a validation and checkpoint every `every`
    iterations and after the last one, then the export; returns (seconds taken, iterations run)."""
    clock = FakeClock()
    budget = Budget(minutes, clock=clock)
    clock.now += startup_s  # loading data and building the model count too
    total, it = limit, 0
    while it < total:
        clock.now += step_s
        it += 1
        if it % every == 0 or it == total:
            before = clock.now
            clock.now += validation_s + checkpoint_s
            budget.record_final_cost(clock.now - before)
        total = budget.fit(it, total, limit)
    clock.now += 1.0  # export
    return clock.now - 100.0, it


@pytest.mark.parametrize("step_s,every,validation_s", [(1.0, 20, 5.0), (0.3, 100, 20.0), (2.0, 50, 30.0)])
def test_budget_is_kept_within_five_percent_including_validation(step_s, every, validation_s):
    seconds, iterations = simulate(4, step_s, every, validation_s, checkpoint_s=1.0)
    assert 0.95 * 240 <= seconds <= 1.05 * 240, (seconds, iterations)


def test_budget_never_exceeds_the_configured_count():
    seconds, iterations = simulate(4, 0.01, 20, 0.1, 0.1, limit=300)
    assert iterations == 300 and seconds < 240


def test_count_is_unchanged_between_refits():
    clock = FakeClock()
    budget = Budget(1, clock=clock, warmup=2, refit_every=5)
    seen, current = [], 1000
    for done in range(1, 20):
        clock.now += 1.0
        current = budget.fit(done, current, 1000)
        seen.append(current)
    assert seen[:6] == [1000] * 6  # before the warm-up mark and the first re-fit
    assert seen[6] == 60  # fitted at iteration 7 = mark (2) + 5: 1 s an iteration, 60 s in all
    assert len(set(seen[6:11])) == 1  # held until the next re-fit


def test_budget_counts_from_the_commands_start():
    """The CLI passes its own start time, so importing torch before the run counts against the budget."""
    def count_after_two_iterations(imports_s: float, pass_start: bool) -> tuple[float, int]:
        clock = FakeClock()
        started = clock.now
        clock.now += imports_s  # before the training function is called
        budget = Budget(1, clock=clock, warmup=1, refit_every=1, started=started if pass_start else None)
        elapsed = budget.elapsed()
        count = 0
        for done in (1, 2):
            clock.now += 1.0  # 1 s an iteration
            count = budget.fit(done, 1000, 1000)
        return elapsed, count

    assert count_after_two_iterations(30.0, pass_start=True) == (30.0, 2 + 28)  # 32 s used of 60
    assert count_after_two_iterations(30.0, pass_start=False) == (0.0, 2 + 58)  # the imports not counted
