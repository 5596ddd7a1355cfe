"""Task sampling: which examples of a class are support, query, D^tr, D^val or an inner mini-batch.

Every function takes a `numpy.random.Generator` and returns local example indices (0..n-1 within one class).
Generators are derived from (seed, *keys) with `episode_rng`, so the examples a task gets depend only on the seed
and the task's identity (meta-iteration, position in the meta-batch, class, split), never on the order in which a
process happened to draw them: that is what makes a 2-process run equal a 1-process run, and a resumed run equal an
uninterrupted one. Examples are shuffled everywhere (the reference code always took the first n in file order,
REFERENCE §3.2, so half of every FSS-1000 task was never seen by Reptile with 5 train-shots).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from fewshotseg.data.dataset import SegmentationDataset


def episode_rng(seed: int, *keys: int) -> np.random.Generator:
    return np.random.default_rng([seed, *keys])


def torch_generator(rng: np.random.Generator) -> torch.Generator:
    return torch.Generator().manual_seed(int(rng.integers(2**62)))


def sample_classes(rng: np.random.Generator, names: list[str], count: int) -> list[str]:
    """`count` distinct classes (with replacement only when there are fewer classes than `count`)."""
    if not names and count > 0:
        raise ValueError(f"cannot sample {count} task(s): the split has no classes")
    replace = count > len(names)
    return [names[i] for i in rng.choice(len(names), size=count, replace=replace)]


def support_query_split(
    rng: np.random.Generator, n: int, shots: int, queries: int = 5
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """k support and `queries` query examples, disjoint, plus the unused rest (e.g. 1-shot on FSS: 4 left)."""
    if shots < 1 or shots + queries > n:
        raise ValueError(f"a class with {n} examples cannot give {shots} support + {queries} query examples")
    order = rng.permutation(n)
    return order[:shots], order[shots : shots + queries], order[shots + queries :]


def reptile_examples(rng: np.random.Generator, n: int, train_shots: int) -> np.ndarray:
    """Reptile's D: `train_shots` distinct examples of the task (the paper's best: 5 of FSS-1000's 10)."""
    return rng.permutation(n)[: min(train_shots, n)]


def fomaml_split(rng: np.random.Generator, n: int, n_tr: int, n_val: int, *, replacement: bool) -> tuple[np.ndarray, np.ndarray]:
    """D^tr and D^val for FOMAML.

    replacement=False is the original FOMAML: disjoint sets from one shuffle. replacement=True is FOMAML*: both drawn
    independently *with replacement* from the same pool of n, so they can repeat and overlap (paper §5, REFERENCE
    §3.5: the reference drew `randint(10, size=5)` twice).
    """
    if replacement:
        return rng.integers(0, n, size=n_tr), rng.integers(0, n, size=n_val)
    if n_tr + n_val > n:
        raise ValueError(f"disjoint FOMAML needs {n_tr} + {n_val} examples, the task has {n}")
    order = rng.permutation(n)
    return order[:n_tr], order[n_tr : n_tr + n_val]


def inner_batches(rng: np.random.Generator, examples: np.ndarray, batch_size: int, steps: int) -> list[np.ndarray]:
    """`steps` mini-batches that cycle through shuffled epochs of `examples`; a batch may span two epochs.

    With 5 examples and batch 8 every batch holds all 5 plus 3 from the next shuffle (the reference's rule).
    An empty set of examples cannot fill a batch: that is an error, never an endless loop.
    """
    examples = np.asarray(examples)
    if steps > 0 and (len(examples) == 0 or batch_size < 1):
        raise ValueError(f"cannot draw {steps} mini-batch(es) of {batch_size} from {len(examples)} examples; "
                         "each task needs at least one training example and a batch size of at least 1")
    stream: list[int] = []
    batches = []
    for _ in range(steps):
        while len(stream) < batch_size:
            stream.extend(examples[rng.permutation(len(examples))].tolist())
        batches.append(np.array(stream[:batch_size]))
        stream = stream[batch_size:]
    return batches


def fp_k_prefixes(rng: np.random.Generator, n: int, ks: list[int], n_test: int = 20) -> tuple[dict[int, np.ndarray], np.ndarray]:
    """FP-k: one shuffle; the last `n_test` are the test set, and each k trains on the first k (nested prefixes)."""
    if max(ks) + n_test > n:
        raise ValueError(f"FP-k needs {max(ks)} + {n_test} examples per task, the task has {n}")
    order = rng.permutation(n)
    test = order[n - n_test :]
    return {k: order[:k] for k in ks}, test


@dataclass
class TaskTensors:
    """One class's examples as tensors, converted once per task and indexed per mini-batch."""

    images: torch.Tensor  # (n, 3, S, S) float in [0, 1], channels-last
    masks: torch.Tensor  # (n, S, S) int64 in {0, 1}

    @classmethod
    def from_dataset(cls, dataset: SegmentationDataset, name: str, local: np.ndarray | None = None) -> TaskTensors:
        images, masks = dataset.pairs(name)
        if local is not None:
            images, masks = images[local], masks[local]
        return cls.from_arrays(np.asarray(images), np.asarray(masks))

    @classmethod
    def from_arrays(cls, images: np.ndarray, masks: np.ndarray) -> TaskTensors:
        x = torch.from_numpy(np.array(images, dtype=np.uint8)).permute(0, 3, 1, 2).float().div_(255)  # copy: memmaps are read-only
        return cls(x.contiguous(memory_format=torch.channels_last), torch.from_numpy(np.asarray(masks, dtype=np.int64)))

    def __len__(self) -> int:
        return self.images.shape[0]

    def take(self, index: np.ndarray | list[int]) -> TaskTensors:
        index = torch.as_tensor(np.asarray(index), dtype=torch.long)
        return TaskTensors(self.images[index], self.masks[index])
