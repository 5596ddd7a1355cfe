"""One FOMAML* meta-iteration: the package's loop vs bare training steps, and vs a reference-style loop.

Per configuration (encoder, image size), three ways of doing the same number of forward+backward+SGD steps on
the same batch sizes are timed, interleaved round after round in one process with the same torch thread count:

* package:   one real meta-iteration, composed as `training/meta_train.py` composes it: sample `meta_batch` classes;
             per task `TaskTensors.from_dataset`, then `MetaLearner.meta_step` (per task the fomaml-star
             difference: in-place copy of theta, augmented inner batches, the last step on D^val; deltas and BN
             statistics flattened into slots, reduced; theta.grad = -mean delta, outer step, BN statistics update).
* bare:      the same steps (per task: steps-1 batches of `inner_batch`, one of `val_shots`) on batches of real
             images prepared beforehand: zero_grad, forward, segmentation_loss, backward, SGD step. Nothing else.
* reference: the reference TF code's structure on the same tasks: per task a `copy.deepcopy` of the model and a
             new optimizer; every batch decoded sample by sample from the JPEG/PNG files (PIL open + resize +
             numpy) and augmented sample by sample in numpy (flip, wrap-around shift, noise); weights exported to
             numpy around the last step and the meta-update done in numpy, then the same forward/backward/SGD steps.

Printed per configuration: package/bare (goal <= 1.05: what the meta-learning machinery costs on top of the
steps themselves) and reference/package (goal >= 3x), each the median of the per-round ratios with its range;
reference/bare, the most any loop running these steps could gain over the reference; and the package's time
outside `Learner.step` within its own iterations (task tensors, augmentation, weight copies, deltas, the outer
step), which does not depend on comparing runs that other jobs on the machine slow down differently.

The dataset is the built-in synthetic benchmark written at 224 px (FSS-1000's image size) in a temporary folder;
the package reads it through the decode-once cache at the configuration's size, the reference loop decodes and
resizes the 224 px files every time, as the reference did.

    python bench/meta_iteration.py [--configs a b] [--repeats N] [--threads 1] [--classes 10] [--device cpu]

`--device cuda` runs all three loops on the GPU (configuration c, tf_efficientnet_b0 at 224 px, is the one to time
there); each timed call ends with `torch.cuda.synchronize`, so the times hold the kernels, not only their launch.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from fewshotseg.data.cache import load_dataset
from fewshotseg.data.dataset import SegmentationDataset
from fewshotseg.data.synthetic import SyntheticSpec, make_synthetic
from fewshotseg.data.tasks import TaskTensors, episode_rng, fomaml_split, inner_batches, sample_classes
from fewshotseg.meta_learning.meta_learner import MetaLearner
from fewshotseg.meta_learning.update_routine import Learner, UpdateParams
from fewshotseg.models.efficientlab import EfficientLab, ModelConfig, build_model
from fewshotseg.models.losses import l2_parameters, segmentation_loss

CONFIGS = {"a": ("tinynet_e", 64), "b": ("tf_efficientnet_b0", 128), "c": ("tf_efficientnet_b0", 224)}
ALGORITHM = "fomaml-star"
TRAIN_SHOTS, VAL_SHOTS = 10, 5  # meta-train's FOMAML defaults: a pool of 10, |D^val| = 5
DEFAULT_REPEATS = {"a": 6, "b": 3, "c": 3}  # b's rounds take ~40 s each on one core
NATIVE_SIZE = 224  # FSS-1000's image size: what the reference decoded from disk


class Setup:
    """What all three loops share: dataset, update parameters, the initialization's architecture and weights."""

    def __init__(self, dataset: SegmentationDataset, config: ModelConfig, args: argparse.Namespace):
        self.dataset = dataset
        self.config = config
        self.params = UpdateParams()  # the paper's Table 3: lr 0.005, 5 steps, batch 8, dropout 0.2, aug 0.5
        self.meta_batch = args.meta_batch
        self.meta_step = args.meta_step
        self.meta_optimizer = args.meta_optimizer
        self.seed = args.seed
        self.device = torch.device(args.device)
        torch.manual_seed(args.seed)
        self.weights = build_model(config).state_dict()

    def model(self) -> EfficientLab:
        model = build_model(self.config)
        model.load_state_dict(self.weights)
        return model.to(self.device)

    def sync(self) -> None:
        """Wait for the device's queued kernels (a no-op on the CPU), so that a time holds them."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def names(self, it: int) -> list[str]:
        return sample_classes(episode_rng(self.seed, 0, it), self.dataset.names, self.meta_batch)


# ---------------------------------------------------------------------------------------------------- package
class TimedLearner(Learner):
    """A Learner that adds up the wall time spent inside `step` (forward, loss, backward, optimizer step)."""

    step_seconds = 0.0
    setup: Setup

    def step(self, images: torch.Tensor, masks: torch.Tensor, lr: float) -> float:
        self.setup.sync()
        start = time.perf_counter()
        loss = super().step(images, masks, lr)
        self.setup.sync()
        self.step_seconds += time.perf_counter() - start
        return loss


class PackageLoop:
    """`training/meta_train.py`'s meta-iteration (`MetaLearner.meta_step`), one process, without logging,
    validation and checkpoints."""

    def __init__(self, s: Setup):
        self.s = s
        self.model = s.model()
        self.meta = MetaLearner(self.model, ALGORITHM, s.params, meta_optimizer=s.meta_optimizer,
                                meta_step=s.meta_step, train_shots=TRAIN_SHOTS, val_shots=VAL_SHOTS,
                                bn_momentum=s.config.bn_momentum, device=s.device)
        self.learner = self.meta.learner = TimedLearner(copy.deepcopy(self.model), s.device)
        self.learner.setup = s
        self.outside_steps: list[float] = []  # per call: seconds not spent inside Learner.step

    def __call__(self, it: int, tasks: int) -> None:
        s = self.s
        start = time.perf_counter()
        self.learner.step_seconds = 0.0
        names = s.names(it)[:tasks]
        self.meta.meta_step([TaskTensors.from_dataset(s.dataset, name) for name in names],
                            [episode_rng(s.seed, 1, it, k) for k in range(len(names))])
        s.sync()
        self.outside_steps.append(time.perf_counter() - start - self.learner.step_seconds)


# ------------------------------------------------------------------------------------------------------- bare
class BareLoop:
    """The same number of steps on the same batch sizes; batches of real images prepared once, no task logic."""

    def __init__(self, s: Setup):
        self.s = s
        self.model = s.model().train()
        self.model.set_dropout(s.params.dropout)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=s.params.lr, weight_decay=2 * s.params.l2)
        task = TaskTensors.from_dataset(s.dataset, s.dataset.names[0])
        rng = np.random.default_rng(s.seed)
        sizes = [s.params.batch_size] * (s.params.steps - 1) + [VAL_SHOTS]
        picked = [task.take(rng.integers(0, len(task), size=b)) for b in sizes]  # one task's worth
        self.batches = [TaskTensors(b.images.to(s.device), b.masks.to(s.device)) for b in picked]

    def __call__(self, it: int, tasks: int) -> None:
        for _ in range(tasks):
            for batch in self.batches:
                self.optimizer.zero_grad(set_to_none=True)
                segmentation_loss(self.model(batch.images), batch.masks).backward()
                self.optimizer.step()


# -------------------------------------------------------------------------------------------------- reference
def decode_pair(path: Path, size: int) -> tuple[np.ndarray, np.ndarray]:
    """The reference's per-sample input path: open the JPEG and PNG, resize, to float / binary numpy arrays."""
    with Image.open(path) as img:
        image = np.asarray(img.convert("RGB").resize((size, size), Image.Resampling.BILINEAR), np.float32) / 255
    with Image.open(path.with_suffix(".png")) as m:
        mask = np.asarray(m.convert("L").resize((size, size), Image.Resampling.NEAREST)) > 127
    return image, mask.astype(np.int64)


def augment_sample(image: np.ndarray, mask: np.ndarray, rate: float, rng: np.random.Generator):
    """Per-sample numpy augmentation: with probability `rate`, a random flip, wrap-around shift and noise."""
    if rng.random() >= rate:
        return image, mask
    if rng.random() < 0.5:
        image, mask = image[:, ::-1], mask[:, ::-1]
    shift = int(round(23 / 224 * image.shape[0]))
    dy, dx = (int(v) for v in rng.integers(-shift, shift + 1, size=2))
    image, mask = np.roll(image, (dy, dx), axis=(0, 1)), np.roll(mask, (dy, dx), axis=(0, 1))
    image = np.clip(image + rng.normal(0, 5.1 / 255, image.shape).astype(np.float32), 0, 1)
    return image, mask


def reference_batch(files: list[Path], size: int, rate: float, rng: np.random.Generator, memory_format):
    images, masks = [], []
    for path in files:
        image, mask = augment_sample(*decode_pair(path, size), rate, rng)
        images.append(image)
        masks.append(mask)
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous(memory_format=memory_format)
    return x, torch.from_numpy(np.stack(masks))


class ReferenceLoop:
    """The reference's structure: deepcopy + new optimizer per task, decode + augment per sample, numpy meta-update."""

    def __init__(self, s: Setup):
        self.s = s
        self.model = s.model()
        self.memory_format = torch.channels_last if s.config.channels_last else torch.contiguous_format

    def __call__(self, it: int, tasks: int) -> None:
        s, p = self.s, self.s.params
        names = s.names(it)[:tasks]
        old = [t.detach().cpu().numpy().copy() for t in self.model.parameters()]  # export_variables
        total = [np.zeros_like(v) for v in old]
        for k, name in enumerate(names):
            rng = episode_rng(s.seed, 1, it, k)
            start = s.dataset.offsets[name][0]
            files = [s.dataset.root / s.dataset.files[start + i] for i in range(s.dataset.count(name))]
            pool = rng.permutation(len(files))[:TRAIN_SHOTS]
            tr, val = fomaml_split(rng, len(pool), len(pool) - VAL_SHOTS, VAL_SHOTS, replacement=True)
            net = copy.deepcopy(self.model).train()  # a fresh copy of the weights and a new optimizer per task
            net.set_dropout(p.dropout)
            decay = l2_parameters(net)
            decay_ids = {id(t) for t in decay}
            rest = [t for t in net.parameters() if id(t) not in decay_ids]
            opt = torch.optim.SGD([{"params": decay, "weight_decay": 2 * p.l2}, {"params": rest}], lr=p.lr)
            for batch in inner_batches(rng, pool[tr], p.batch_size, p.steps - 1):
                self._step(net, opt, [files[i] for i in batch], p.aug_rate, rng)
            before = [t.detach().cpu().numpy().copy() for t in net.parameters()]
            self._step(net, opt, [files[i] for i in pool[val]], 0.0, rng)
            for acc, after, b in zip(total, net.parameters(), before, strict=True):
                acc += after.detach().cpu().numpy() - b
        with torch.no_grad():  # import_variables: theta + epsilon * mean delta
            for t, o, acc in zip(self.model.parameters(), old, total, strict=True):
                t.copy_(torch.from_numpy(o + s.meta_step * acc / len(names)).to(t.device))

    def _step(self, net, opt, files: list[Path], rate: float, rng: np.random.Generator) -> None:
        x, y = reference_batch(files, self.s.dataset.size, rate, rng, self.memory_format)
        x, y = x.to(self.s.device), y.to(self.s.device)
        opt.zero_grad(set_to_none=True)
        segmentation_loss(net(x), y).backward()
        opt.step()


# ------------------------------------------------------------------------------------------------------ timing
def paired(a: list[float], b: list[float]) -> tuple[float, float, float]:
    ratios = [x / y for x, y in zip(a, b, strict=True)]
    return statistics.median(ratios), min(ratios), max(ratios)


def run_config(key: str, root: Path, args: argparse.Namespace) -> None:
    encoder, size = CONFIGS[key]
    dataset = load_dataset(root, size, progress=False)
    setup = Setup(dataset, ModelConfig(encoder=encoder, channels_last=not args.nchw), args)
    package = PackageLoop(setup)
    loops: dict[str, Callable[[int, int], None]] = {
        "package": package, "bare": BareLoop(setup), "reference": ReferenceLoop(setup),
    }
    for loop in loops.values():  # warm-up: one task each
        loop(10_000, 1)
    times: dict[str, list[float]] = {name: [] for name in loops}
    repeats = args.repeats or DEFAULT_REPEATS[key]
    for r in range(repeats):
        order = list(loops) if r % 2 == 0 else list(reversed(loops))
        for name in order:
            setup.sync()
            start = time.perf_counter()
            loops[name](r, setup.meta_batch)  # the same meta-iteration number: package and reference get the same tasks
            setup.sync()
            times[name].append(time.perf_counter() - start)

    steps = setup.meta_batch * setup.params.steps
    print(f"({key}) EfficientLab-3 / {encoder} at {size} px, {ALGORITHM}: {setup.meta_batch} tasks x "
          f"{setup.params.steps} steps (batch {setup.params.batch_size}, last step on {VAL_SHOTS}), "
          f"{'NCHW' if args.nchw else 'channels-last'}, {setup.device}; {repeats} interleaved rounds")
    for name in loops:
        ms = 1000 * statistics.median(times[name])
        print(f"    {name:<10} {ms:9.0f} ms / meta-iteration  ({ms / steps:6.1f} ms / step)")
    overhead, o_lo, o_hi = paired(times["package"], times["bare"])
    speedup, s_lo, s_hi = paired(times["reference"], times["package"])
    bound = paired(times["reference"], times["bare"])[0]
    extra = 1000 * (statistics.median(times["package"]) - statistics.median(times["bare"]))
    print(f"    package / bare      = {overhead:5.3f}  (range {o_lo:.3f}-{o_hi:.3f}; goal <= 1.05; "
          f"{extra:+.0f} ms per meta-iteration)")
    outside = statistics.median(package.outside_steps[-repeats:])
    print(f"    package outside Learner.step: {1000 * outside:.0f} ms per meta-iteration "
          f"({outside / statistics.median(times['package']):.1%}; measured inside the same iterations, so immune "
          "to the other jobs' noise)")
    print(f"    reference / package = {speedup:5.2f}x (range {s_lo:.2f}-{s_hi:.2f}; goal >= 3x)")
    print(f"    reference / bare    = {bound:5.2f}x (the most any loop that runs these steps could gain)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", choices=sorted(CONFIGS), default=["a", "b"],
                        help="a: tinynet_e at 64 px; b: tf_efficientnet_b0 at 128 px; c: tf_efficientnet_b0 at 224 px")
    parser.add_argument("--repeats", type=int, default=0,
                        help="interleaved rounds, medians reported (default: 6 for a, 3 for b)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads, the same for all three loops")
    parser.add_argument("--classes", type=int, default=10, help="classes in the generated dataset")
    parser.add_argument("--meta-batch", type=int, default=5)
    parser.add_argument("--meta-step", type=float, default=0.1)
    parser.add_argument("--meta-optimizer", choices=("sgd", "adam"), default="sgd")
    parser.add_argument("--nchw", action="store_true", help="build the models NCHW instead of channels-last")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", help="cpu or cuda (all three loops)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "synthetic"
        make_synthetic(root, SyntheticSpec(classes=args.classes, pairs=TRAIN_SHOTS, size=NATIVE_SIZE, seed=args.seed),
                       progress=False)
        print(f"data: {args.classes} synthetic classes x {TRAIN_SHOTS} pairs, {NATIVE_SIZE} px JPEG/PNG; "
              f"{args.threads} torch thread(s); times are medians, ratios medians of per-round ratios")
        for key in args.configs:
            run_config(key, root, args)


if __name__ == "__main__":
    main()
