"""Live curves: TensorBoard event files written beside a run's metrics.jsonl (`tensorboard --logdir runs/`).

One writer per run folder, on the process that writes the folder (rank 0). Tags:

    train/loss          inner (meta-train) or batch (joint-train) loss, per iteration
    train/epsilon       meta-train's meta step size; joint-train's learning rate is train/lr
    train/step_seconds  wall time of the iteration, validation and checkpoint included
    val/miou            mean IoU of U(theta) on held-out validation tasks, when validated
    uho/objective, uho/lr, uho/steps, ...   per tune trial (x axis: trial number)

A resumed run purges events past its checkpoint, so the curves never hold an iteration twice. metrics.jsonl stays
the record that reports read; the event files are for watching a run.
"""

from __future__ import annotations

from pathlib import Path


class Curves:
    def __init__(self, folder: str | Path, *, enabled: bool = True, resume_from: int | None = None) -> None:
        self.writer = None
        if enabled:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(folder), purge_step=resume_from)

    def scalars(self, step: int, values: dict[str, float | int | None]) -> None:
        if self.writer is None:
            return
        for tag, value in values.items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                self.writer.add_scalar(tag, value, step)

    def flush(self) -> None:
        if self.writer is not None:
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
