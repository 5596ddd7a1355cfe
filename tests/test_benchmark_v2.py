"""The built-in benchmark, version 2: distractors come from the image's own split only."""

from __future__ import annotations

import json

import numpy as np

from fewshotseg.data.synthetic import (
    GENERATOR_VERSION,
    SyntheticSpec,
    _index_by_attributes,
    class_list,
    distractor_classes,
    make_synthetic,
    split_classes,
    split_peers,
)


def test_distractors_never_cross_splits():
    spec = SyntheticSpec(classes=300, pairs=10, size=32, seed=3)
    classes = class_list(spec)
    splits = split_classes([c.name for c in classes], spec.seed)
    peers = split_peers(classes, splits)
    rng = np.random.default_rng(0)
    hard_in_train = 0
    for key in ("train", "val", "test"):
        own = set(splits[key])
        for target in [c for c in classes if c.name in own][:10]:
            pool = peers[target.name]
            drawn = [d for _ in range(50)
                     for d in distractor_classes(target, pool, 3, spec.hard_negative_rate, rng, _index_by_attributes(pool))]
            assert {d.name for d in drawn} <= own - {target.name}  # the same split, never the target itself
            hard = [d for d in drawn if sum(a != b for a, b in zip((d.shape, d.colour, d.texture),
                                                                     (target.shape, target.colour, target.texture))) == 1]
            hard_in_train += len(hard) if key == "train" else 0
    assert hard_in_train > 0  # hard negatives (one attribute off) still occur within a split


def test_benchmark_records_its_version(tmp_path):
    make_synthetic(tmp_path / "b", SyntheticSpec(classes=12, pairs=2, size=32, seed=0), progress=False)
    assert json.loads((tmp_path / "b" / "benchmark.json").read_text())["version"] == GENERATOR_VERSION == 2
