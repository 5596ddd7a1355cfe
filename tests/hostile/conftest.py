"""A tiny world every hostile case runs against, made once per session: a 12-class x 8-pair built-in benchmark
at 32 px with its cache, a 2-iteration tinynet_e meta-training run, an update-parameters file, and adapt's
support and query folders."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest


@dataclass(frozen=True)
class World:
    root: Path
    data: Path  # the benchmark
    init: Path  # a meta-training run folder (model.safetensors, checkpoint.pt, config.yaml)
    params: Path  # an update_params.json as `tune` writes it
    support: Path  # labelled pairs for adapt (FSS layout)
    query: Path  # images for adapt


TINY = ["--encoder", "tinynet_e", "--size", "32", "--device", "cpu"]
# How the world's meta-training run was made (a case that continues it repeats these).
INIT_FLAGS = "--iterations 2 --meta-batch 1 --inner-steps 2 --inner-batch 2 --checkpoint-interval 1"


@pytest.fixture(scope="session")
def world(tmp_path_factory) -> World:
    from fewshotseg.cli import main
    from fewshotseg.data.cache import prepare
    from fewshotseg.data.synthetic import SyntheticSpec, make_synthetic

    root = tmp_path_factory.mktemp("hostile-world")
    data = root / "data"
    make_synthetic(data, SyntheticSpec(classes=12, pairs=8, size=32, seed=7), progress=False)
    prepare(str(data), size=32)
    init = root / "init"
    code = main(["meta-train", "--data", str(data), "--run-dir", str(init), *TINY, *INIT_FLAGS.split(),
                 "--eval-interval", "0", "--threads", "1"])
    assert code == 0
    params = root / "update_params.json"
    params.write_text(json.dumps({"update_params": {"lr": 0.01, "steps": 2, "batch_size": 2}}, indent=2) + "\n")
    splits = json.loads((data / "splits.json").read_text())
    support, query = root / "support", root / "query"
    shutil.copytree(data / splits["test"][0], support)
    query.mkdir()
    for jpg in sorted((data / splits["test"][1]).glob("*.jpg"))[:2]:
        shutil.copy(jpg, query / jpg.name)
    return World(root, data, init, params, support, query)
