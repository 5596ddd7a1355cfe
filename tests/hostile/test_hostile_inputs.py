"""A table of hostile inputs across every command. Each case asserts the exit code, that the message names the
culprit, that no traceback is printed, that the command returns within a time limit, and that every file that
existed before is byte-identical afterwards.

Most cases run in this process through `fewshotseg.cli.main` under an alarm (a hang fails the case instead of
blocking the run); the cases that used to hang, and a sample of the others, run as subprocesses with a timeout.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from .conftest import INIT_FLAGS, World

IN_PROCESS_LIMIT = 90  # seconds; generous for a busy 2-core machine, far below "forever"
SUBPROCESS_LIMIT = 150  # includes importing torch in a fresh interpreter

MT = "meta-train --data {data} --run-dir {run} --encoder tinynet_e --size 32 --device cpu --eval-interval 0"
EV = "evaluate --init {init} --data {data} --run-dir {run} --size 32 --device cpu --shots 1 --u-steps 1"
TU = ("tune --init {init} --data {data} --run-dir {run} --size 32 --device cpu --trials 1 --max-steps 2 --val-tasks 1 "
      "--shots 1")
JT = "joint-train --data {data} --run-dir {run} --encoder tinynet_e --size 32 --device cpu"
FK = "fp-k --data {data} --run-dir {run} --size 32 --encoder tinynet_e --device cpu --init r=random --test-images 4"
AW = "analyze-weights --data {data} --run-dir {run} --size 32 --encoder tinynet_e --device cpu --shots 1"
AD = "adapt --init {init} --support {support} --query {query} --out {run} --size 32 --u-steps 1 --device cpu"
QS = "quickstart --out {run}"
MS = "make-synthetic --out {run} --classes 2 --pairs 2 --size 32"


@dataclass(frozen=True)
class Case:
    id: str
    argv: str  # formatted with {data} {init} {params} {support} {query} {tmp} {run} {world}
    culprit: str | tuple[str, ...]  # text (or texts) the message must contain, case-insensitive
    code: int = 2
    setup: Callable[[Path, World], Callable[[], None] | None] | None = None
    subprocess: bool = False
    absent: tuple[str, ...] = ()  # text the output must not contain (e.g. a password)
    xfail: str = ""
    skip_if: Callable[[], str] | None = None


# --- setups: each writes hostile files into the case's own folder ---------------------------------------------


def write(name: str, content: str | bytes) -> Callable:
    def setup(tmp: Path, world: World) -> None:
        path = tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return setup


def class_folders(name: str, *classes: str) -> Callable:
    """A folder holding one copy of the world's support pairs per class name."""
    def setup(tmp: Path, world: World) -> None:
        for cls in classes:
            shutil.copytree(world.support, tmp / name / cls)
    return setup


def folder(name: str) -> Callable:
    def setup(tmp: Path, world: World) -> None:
        (tmp / name).mkdir(parents=True, exist_ok=True)
    return setup


def copy_adapt_folders(tmp: Path, world: World) -> None:
    import shutil

    shutil.copytree(world.support, tmp / "support")
    shutil.copytree(world.query, tmp / "query")


def copy_init_run(tmp: Path, world: World) -> None:
    import shutil

    shutil.copytree(world.init, tmp / "run")


def truncated_init(tmp: Path, world: World) -> None:
    blob = (world.init / "model.safetensors").read_bytes()
    (tmp / "trunc.safetensors").write_bytes(blob[: len(blob) // 2])


def random_bytes(name: str) -> Callable:
    def setup(tmp: Path, world: World) -> None:
        (tmp / name).write_bytes(bytes(range(256)) * 16)
    return setup


def other_encoder_init(tmp: Path, world: World) -> None:
    """A fewshotseg initialization whose metadata names one encoder while its weights are another's."""
    import json

    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    src = world.init / "model.safetensors"
    with safe_open(str(src), "pt") as fh:
        meta = fh.metadata()
    config = json.loads(meta["model_config"]) | {"encoder": "mobilenetv3_small_100"}
    save_file(load_file(str(src)), str(tmp / "other.safetensors"), metadata=meta | {"model_config": json.dumps(config)})


def foreign_results(tmp: Path, world: World) -> None:
    """A folder holding another run's evaluation results."""
    (tmp / "run").mkdir()
    (tmp / "run" / "results.json").write_text('{"init": "another", "shots": {}}\n')
    (tmp / "run" / "episodes.jsonl").write_text('{"class": "x", "shots": 1, "iou": 0.5}\n')


def locked_run(tmp: Path, world: World) -> Callable[[], None]:
    """Another process writes this run folder: hold its lock from a child process."""
    (tmp / "run").mkdir()
    child = subprocess.Popen([sys.executable, "-c", (
        "import sys, time, filelock; lock = filelock.FileLock(sys.argv[1]); lock.acquire(); print('held', flush=True);"
        " time.sleep(600)"), str(tmp / "run" / ".fewshotseg.lock")], stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "held"
    return lambda: (child.kill(), child.wait())


def small_classes(tmp: Path, world: World) -> None:
    """A benchmark whose classes hold 6 pairs: enough for 1-shot evaluation (1 + 5), not for 1-shot early stopping."""
    from fewshotseg.data.synthetic import SyntheticSpec, make_synthetic

    make_synthetic(tmp / "d6", SyntheticSpec(classes=6, pairs=6, size=32, seed=1), progress=False)


def split_without(key: str) -> Callable:
    """The world's split file with an empty `key` list."""
    def setup(tmp: Path, world: World) -> None:
        import json

        splits = json.loads((world.data / "splits.json").read_text())
        (tmp / "s.json").write_text(json.dumps(splits | {key: []}))
    return setup


def no_signal_pair(folder: Path, kind: str) -> None:
    """Turn the pair 1.jpg + 1.png of `folder` into one that carries no signal."""
    import numpy as np
    from PIL import Image

    image = np.asarray(Image.open(folder / "1.jpg"))
    h, w = image.shape[:2]
    if kind == "1x1":
        Image.fromarray(image[:1, :1]).save(folder / "1.jpg")
        Image.fromarray(np.full((1, 1), 255, np.uint8)).save(folder / "1.png")
    elif kind == "all-foreground":
        Image.fromarray(np.full((h, w), 255, np.uint8)).save(folder / "1.png")
    else:  # noise
        Image.fromarray((np.random.default_rng(0).random((h, w)) < 0.5).astype(np.uint8) * 255).save(folder / "1.png")


def support_without_signal(kind: str) -> Callable:
    def setup(tmp: Path, world: World) -> None:
        import shutil

        shutil.copytree(world.support, tmp / "support")
        no_signal_pair(tmp / "support", kind)
    return setup


def data_without_signal(kind: str) -> Callable:
    def setup(tmp: Path, world: World) -> None:
        import shutil

        shutil.copytree(world.data, tmp / "data", ignore=shutil.ignore_patterns(".fewshotseg-cache"))
        no_signal_pair(next(p for p in sorted((tmp / "data").iterdir()) if p.is_dir()), kind)
    return setup


def edited_run_config(old: str, new: str) -> Callable:
    """A copy of the world's meta-training run whose config.yaml was edited by hand."""
    def setup(tmp: Path, world: World) -> None:
        copy_init_run(tmp, world)
        text = (tmp / "run" / "config.yaml").read_text()
        assert old in text
        (tmp / "run" / "config.yaml").write_text(text.replace(old, new))
    return setup


def nan_weight_init(tmp: Path, world: World) -> None:
    """The world's initialization with one NaN weight: the file is broken, not the learning rate."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    src = world.init / "model.safetensors"
    with safe_open(str(src), "pt") as fh:
        meta = fh.metadata()
    state = load_file(str(src))
    name = next(k for k, v in state.items() if v.is_floating_point() and v.ndim == 4)
    state[name].view(-1)[0] = float("nan")
    save_file(state, str(tmp / "nan.safetensors"), metadata=meta)


def edited_card(key: str, value) -> Callable:
    """A copy of the world's initialization whose card.json holds a bad value (key "a.b" for nested fields)."""
    def setup(tmp: Path, world: World) -> None:
        import json
        import shutil

        shutil.copytree(world.init, tmp / "bad")
        card = json.loads((tmp / "bad" / "card.json").read_text())
        *parents, leaf = key.split(".")
        node = card
        for part in parents:
            node = node[part]
        node[leaf] = value
        (tmp / "bad" / "card.json").write_text(json.dumps(card))
    return setup


def hub_weights_cached() -> str:
    cache = Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface")) / "hub"
    return "timm's tf_efficientnet_b0 weights are in the hub cache" if any(cache.glob("*tf_efficientnet_b0*")) else ""


JT_RUN = " --epochs 0.1 --batch-size 4 --threads 1"


def joint_run(edit: tuple[str, str] | None = None) -> Callable:
    """A finished 0.1-epoch joint training in {tmp}/run (its config.yaml optionally edited by hand)."""
    def setup(tmp: Path, world: World) -> None:
        from fewshotseg.cli import main

        argv = [a.format(data=world.data, run=tmp / "run") for a in shlex.split(JT + JT_RUN)]
        assert main(argv) == 0
        if edit is not None:
            text = (tmp / "run" / "config.yaml").read_text()
            assert edit[0] in text
            (tmp / "run" / "config.yaml").write_text(text.replace(*edit))
    return setup


def no_cuda() -> str:
    return "a CUDA device is present" if torch.cuda.is_available() else ""


YAML = {
    "list": "- 1\n- 2\n", "unknown": "inner_lrr: 0.1\n", "maybe": "channels_last: maybe\n",
    "float-iterations": "iterations: 2.7\n", "preset": "preset: fast\n",
    "exp-then-bad": "inner_lr: 1e-3\nmeta_batch: 0\n", "nan": "inner_lr: .nan\n", "bool-count": "iterations: yes\n",
    "broken": "iterations: [1, 2\n",
}

CASES = [
    # --- meta-train settings: flags -------------------------------------------------------------------------------
    Case("mt-iterations-negative", MT + " --iterations -1", "--iterations"),
    Case("mt-iterations-zero", MT + " --iterations 0", "--iterations"),
    Case("mt-iterations-fraction", MT + " --iterations 2.7", "--iterations"),
    Case("mt-iterations-word", MT + " --iterations many", "--iterations"),
    Case("mt-meta-batch-zero", MT + " --meta-batch 0", "--meta-batch"),
    Case("mt-inner-steps-zero", MT + " --inner-steps 0", "--inner-steps"),
    Case("mt-inner-lr-nan", MT + " --inner-lr nan", "--inner-lr"),
    Case("mt-inner-lr-inf", MT + " --inner-lr inf", "--inner-lr"),
    Case("mt-inner-lr-negative", MT + " --inner-lr -0.1", "--inner-lr"),
    Case("mt-meta-step-zero", MT + " --meta-step 0", "--meta-step"),
    Case("mt-size-not-stride-multiple", MT + " --size 33", ("--size", "multiple of 16")),
    Case("mt-size-zero", MT + " --size 0", "--size"),
    Case("mt-size-too-small", MT + " --size 16", "--size"),
    Case("mt-algorithm-unknown", MT + " --algorithm maml", ("--algorithm", "fomaml-star")),
    Case("mt-device-unknown", MT + " --device gpu", ("--device", "cuda")),
    Case("mt-seed-negative", MT + " --seed -1", "--seed"),
    Case("mt-dropout-above-one", MT + " --dropout 1.5", "--dropout"),
    Case("mt-aug-rate-above-one", MT + " --aug-rate 2", "--aug-rate"),
    Case("mt-l2-negative", MT + " --l2 -1", "--l2"),
    Case("mt-bn-policy-unknown", MT + " --bn-policy magic", ("--bn-policy", "transductive")),
    Case("mt-variant-unknown", MT + " --variant unet", ("--variant", "efficientlab-3")),
    Case("mt-encoder-unknown", MT + " --encoder nonexistent_net --iterations 1", "nonexistent_net"),
    Case("mt-encoder-wrong-family", MT + " --encoder vit_tiny_patch16_224 --iterations 1", "vit_tiny_patch16_224"),
    Case("mt-val-shots-fill-pool", MT + " --train-shots 6 --val-shots 6", "--val-shots"),
    Case("mt-threads-negative", MT + " --threads -1", "--threads"),
    Case("mt-checkpoint-interval-zero", MT + " --checkpoint-interval 0", "--checkpoint-interval"),
    Case("mt-eval-tasks-zero", MT + " --eval-tasks 0", "--eval-tasks"),
    Case("mt-bn-momentum-above-one", MT + " --bn-momentum 1.5", "--bn-momentum"),
    Case("mt-drop-path-one", MT + " --drop-path-rate 1", "--drop-path-rate"),
    Case("mt-preset-unknown", MT + " --preset fast", "--preset"),
    Case("mt-missing-data", "meta-train --run-dir {run}", "--data"),
    Case("mt-missing-run-dir", "meta-train --data {data}", "--run-dir"),
    Case("mt-unknown-flag", MT + " --iteratons 5", "--iteratons"),
    # --- meta-train settings: YAML ----------------------------------------------------------------------------------
    Case("mt-config-missing", MT + " --config {tmp}/missing.yaml", "missing.yaml"),
    Case("mt-config-folder", MT + " --config {tmp}/cfg", "cfg", setup=folder("cfg")),
    Case("mt-config-list", MT + " --config {tmp}/c.yaml", ("c.yaml", "mapping"), setup=write("c.yaml", YAML["list"])),
    Case("mt-config-binary", MT + " --config {tmp}/c.yaml", "c.yaml", setup=write("c.yaml", bytes(range(256)))),
    Case("mt-config-broken-yaml", MT + " --config {tmp}/c.yaml", "c.yaml", setup=write("c.yaml", YAML["broken"])),
    Case("mt-config-unknown-field", MT + " --config {tmp}/c.yaml", "inner_lrr", setup=write("c.yaml", YAML["unknown"])),
    Case("mt-config-bool-maybe", MT + " --config {tmp}/c.yaml", "channels_last", setup=write("c.yaml", YAML["maybe"])),
    Case("mt-config-iterations-fraction", MT + " --config {tmp}/c.yaml", ("iterations", "2.7"),
         setup=write("c.yaml", YAML["float-iterations"])),
    Case("mt-config-iterations-yes", MT + " --config {tmp}/c.yaml", "iterations", setup=write("c.yaml", YAML["bool-count"])),
    Case("mt-config-unknown-preset", MT + " --config {tmp}/c.yaml", "fast", setup=write("c.yaml", YAML["preset"])),
    Case("mt-config-nan", MT + " --config {tmp}/c.yaml", "inner_lr", setup=write("c.yaml", YAML["nan"])),
    # "1e-3" (a string to YAML 1.1) is read as a number, so the only complaint is the real culprit.
    Case("mt-config-1e-3-is-a-number", MT + " --config {tmp}/c.yaml", "meta_batch",
         setup=write("c.yaml", YAML["exp-then-bad"]), absent=("inner_lr",)),
    # --- meta-train: data, run folders, devices, numbers -----------------------------------------------------------
    Case("mt-data-missing", MT.replace("{data}", "{tmp}/nowhere"), "nowhere"),
    Case("mt-data-is-a-file", MT.replace("{data}", "{tmp}/f.txt"), "f.txt", setup=write("f.txt", "hello")),
    Case("mt-data-empty-folder", MT.replace("{data}", "{tmp}/empty"), "empty", setup=folder("empty")),
    Case("mt-run-dir-is-a-file", MT + " --iterations 1", "run", setup=write("run", "not a folder")),
    Case("mt-resume-nothing", MT + " --iterations 1 --resume", ("nothing to resume", "run")),
    Case("mt-resume-changed-settings", MT + " --iterations 2 --meta-batch 1 --inner-steps 2 --inner-batch 2 "
         "--checkpoint-interval 1 --resume --inner-lr 0.9", ("inner_lr", "0.9"), setup=copy_init_run),
    Case("mt-existing-run-without-resume", MT + " " + INIT_FLAGS, ("--resume", "--overwrite"), setup=copy_init_run),
    # a resumed run goes on with its checkpoint's settings: an edited config.yaml is refused, showing the difference
    Case("mt-resume-config-yaml-edited", MT + " " + INIT_FLAGS + " --resume", ("config.yaml", "inner_lr: 0.005 -> 0.9"),
         setup=edited_run_config("inner_lr: 0.005", "inner_lr: 0.9")),
    Case("mt-resume-config-yaml-iterations-edited", MT + " " + INIT_FLAGS + " --resume",
         ("config.yaml", "iterations: 2 -> 5", "--iterations 5 with --resume"),
         setup=edited_run_config("iterations: 2", "iterations: 5")),
    Case("mt-resume-fewer-iterations-than-done", MT + " " + INIT_FLAGS.replace("--iterations 2", "--iterations 1") +
         " --resume", ("--iterations 1", "already done 2"), setup=copy_init_run),
    Case("mt-foreign-results", MT + " --iterations 1", ("results", "--overwrite"), setup=foreign_results),
    Case("mt-locked-run-folder", MT + " --iterations 1", ("run", "another process"), setup=locked_run),
    Case("mt-init-truncated", MT + " --iterations 1 --init {tmp}/trunc.safetensors", "trunc.safetensors",
         setup=truncated_init, absent=("weights_only",)),
    Case("mt-init-random-bytes", MT + " --iterations 1 --init {tmp}/w.pt", "w.pt", setup=random_bytes("w.pt"),
         absent=("weights_only=False",)),
    Case("mt-diverges", MT + " --iterations 3 --meta-batch 1 --inner-steps 2 --inner-batch 2 --inner-lr 1e12",
         ("diverged", "lr")),
    Case("mt-cuda-without-gpu", MT + " --device cuda --iterations 1", "cuda", skip_if=no_cuda),
    Case("mt-cuda-index-missing", MT + " --device cuda:7 --iterations 1", "cuda:7"),
    # an initialization's weights fix its architecture: a flag that disagrees is refused, naming both
    Case("mt-init-variant-disagrees", MT + " --init {init} --variant efficientlab-6-3 --iterations 1",
         ("--variant efficientlab-6-3", "efficientlab-3")),
    # --- evaluate -------------------------------------------------------------------------------------------------
    Case("ev-shots-negative", EV.replace("--shots 1", "--shots -1"), "--shots"),
    Case("ev-shots-more-than-the-data", EV.replace("--shots 1", "--shots 4"), ("4", "support")),
    Case("ev-shots-fraction", EV.replace("--shots 1", "--shots 2.5"), "--shots"),
    Case("ev-protocol-unknown", EV + " --protocol kaggle", "--protocol"),
    Case("ev-split-unknown", EV + " --split holdout", "--split"),
    Case("ev-splits-unknown", EV + " --splits bogus", "bogus"),
    Case("ev-num-splits-zero", EV + " --num-splits 0", "--num-splits"),
    Case("ev-max-tasks-negative", EV + " --max-tasks -1", "--max-tasks"),
    Case("ev-fold-out-of-range", EV + " --fold 7", "--fold"),
    Case("ev-workers-zero", EV + " --workers 0", "--workers"),
    Case("ev-u-lr-nan", EV + " --u-lr nan", "--u-lr"),
    Case("ev-u-lr-zero", EV + " --u-lr 0", "--u-lr"),
    Case("ev-u-steps-zero", EV.replace("--u-steps 1", "--u-steps 0"), "--u-steps"),
    Case("ev-u-batch-zero", EV + " --u-batch-size 0", "--u-batch-size"),
    Case("ev-u-dropout-one", EV + " --u-dropout 1", "--u-dropout"),
    Case("ev-u-optimizer-unknown", EV + " --u-optimizer rmsprop", ("--u-optimizer", "adam")),
    Case("ev-u-bn-policy-unknown", EV + " --u-bn-policy magic", "--u-bn-policy"),
    Case("ev-update-params-missing", EV + " --update-params {tmp}/none.json", "none.json"),
    Case("ev-update-params-garbage", EV + " --update-params {tmp}/p.json", "p.json", setup=write("p.json", "{lr: 1,")),
    Case("ev-update-params-list", EV + " --update-params {tmp}/p.json", "p.json", setup=write("p.json", "[1, 2]")),
    Case("ev-update-params-unknown-key", EV + " --update-params {tmp}/p.json", "lrr",
         setup=write("p.json", '{"lrr": 0.1}')),
    Case("ev-update-params-word", EV + " --update-params {tmp}/p.json", ("lr", "fast"),
         setup=write("p.json", '{"lr": "fast"}')),
    Case("ev-update-params-yaml", EV.replace(" --u-steps 1", "") + " --update-params {tmp}/p.yaml", ("steps", "p.yaml"),
         setup=write("p.yaml", "lr: 1e-3\nsteps: 0\n"), absent=("setting lr",)),
    Case("ev-init-missing", EV.replace("{init}", "{tmp}/nope"), "nope"),
    Case("ev-init-empty-folder", EV.replace("{init}", "{tmp}/empty"), "empty", setup=folder("empty")),
    Case("ev-init-truncated", EV.replace("{init}", "{tmp}/trunc.safetensors"), "trunc.safetensors",
         setup=truncated_init),
    Case("ev-init-random-bytes", EV.replace("{init}", "{tmp}/w.pt"), "w.pt", setup=random_bytes("w.pt"),
         absent=("weights_only=False",)),
    Case("ev-init-text-file", EV.replace("{init}", "{tmp}/w.safetensors"), "w.safetensors",
         setup=write("w.safetensors", "just text")),
    Case("ev-init-other-encoder", EV.replace("{init}", "{tmp}/other.safetensors"), "other.safetensors",
         setup=other_encoder_init),
    Case("ev-data-missing", EV.replace("{data}", "{tmp}/nowhere"), "nowhere"),
    Case("ev-run-dir-is-a-file", EV, "run", setup=write("run", "x")),
    Case("ev-foreign-results", EV, ("results", "--overwrite"), setup=foreign_results),
    Case("ev-locked-run-folder", EV, ("run", "another process"), setup=locked_run),
    Case("ev-diverges", EV.replace("--u-steps 1", "--u-steps 4") + " --u-lr 1e12", ("diverged", "smaller")),
    Case("ev-cuda-without-gpu", EV + " --device cuda", "cuda", skip_if=no_cuda),
    Case("ev-missing-init", "evaluate --data {data} --run-dir {run}", "--init"),
    # messages that point to the right fix
    Case("ev-init-nan-weight", EV.replace("{init}", "{tmp}/nan.safetensors"),
         ("nan.safetensors", "NaN", "the initialization itself is broken"), setup=nan_weight_init, absent=("--u-lr",)),
    Case("ev-card-bad-size", EV.replace("{init}", "{tmp}/bad").replace(" --size 32", ""),
         ("card.json", "size 'big'"), setup=edited_card("size", "big")),
    Case("ev-card-bad-lr", EV.replace("{init}", "{tmp}/bad").replace(" --u-steps 1", ""),
         ("card.json", "update_params['default']", "lr"), setup=edited_card("update_params.default.lr", "fast")),
    Case("ev-imagenet-offline", EV.replace("{init}", "imagenet") + " --encoder tf_efficientnet_b0",
         ("--encoder tf_efficientnet_lite0", "offline"), skip_if=hub_weights_cached, absent=("internal error",)),
    Case("ev-encoder-disagrees-with-init", EV + " --encoder tf_efficientnet_b0",
         ("--encoder tf_efficientnet_b0", "tinynet_e", "card.json")),
    # every shot count is checked before anything runs (8 pairs: 5-shot needs 5 + 5)
    Case("ev-shots-1-5-five-cannot-run", EV.replace("--shots 1", "--shots 1 5"), ("--shots 5", "10", "nothing was run")),
    Case("ev-hsnet-shots-more-than-any-class", EV.replace("--shots 1", "--shots 8") + " --protocol hsnet --episodes 2",
         ("--shots 8", "9 images")),
    Case("ev-split-without-test", EV + " --splits file:{tmp}/s.json", ("no test class", "s.json"),
         setup=split_without("test")),
    # --- tune -----------------------------------------------------------------------------------------------------
    Case("tu-shots-more-than-the-data", TU.replace("--shots 1", "--shots 4"), ("--shots", "4")),
    Case("tu-trials-zero", TU.replace("--trials 1", "--trials 0"), "--trials"),
    Case("tu-storage-malformed", TU + " --storage foo://bar", "foo://bar"),
    Case("tu-storage-sqlite-missing-folder", TU + " --storage sqlite:///{tmp}/missing/s.db", "missing"),
    Case("tu-storage-journal-missing-folder", TU + " --storage journal:{tmp}/missing/j.log", "missing"),
    Case("tu-holdout-above-one", TU + " --holdout 1.5", "--holdout"),
    Case("tu-max-steps-zero", TU.replace("--max-steps 2", "--max-steps 0"), "--max-steps"),
    Case("tu-patience-zero", TU + " --patience 0", "--patience"),
    Case("tu-search-unknown", TU + " --search lr,momentum", "momentum"),
    Case("tu-study-empty", TU + " --study ''", "--study"),
    Case("tu-val-tasks-negative", TU.replace("--val-tasks 1", "--val-tasks -1"), "--val-tasks"),
    Case("tu-init-missing", TU.replace("{init}", "{tmp}/nope"), "nope"),
    Case("tu-update-params-garbage", TU + " --update-params {tmp}/p.json", "p.json", setup=write("p.json", "{")),
    # 6 pairs: 1 support + 5 query leave no image to stop early on; refused before the study, not an optuna traceback
    Case("tu-shots-1-no-image-for-early-stopping", TU.replace("{data}", "{tmp}/d6"), ("7 images", "early stopping"),
         setup=small_classes, absent=("Trial", "optuna")),
    Case("tu-encoder-disagrees-with-init", TU + " --encoder mobilenetv3_small_100",
         ("--encoder mobilenetv3_small_100", "tinynet_e")),
    Case("tu-split-without-val", TU + " --splits file:{tmp}/s.json", ("no validation class", "s.json"),
         setup=split_without("val")),
    # --- joint-train ----------------------------------------------------------------------------------------------
    Case("jt-epochs-zero", JT + " --epochs 0", "--epochs"),
    Case("jt-epochs-nan", JT + " --epochs nan", "--epochs"),
    Case("jt-batch-size-zero", JT + " --batch-size 0", "--batch-size"),
    Case("jt-lr-negative", JT + " --lr -1", "--lr"),
    Case("jt-lr-final-zero", JT + " --lr-final 0", "--lr-final"),
    Case("jt-max-minutes-negative", JT + " --max-minutes -1", "--max-minutes"),
    Case("jt-optimizer-unknown", JT + " --optimizer lbfgs", "--optimizer"),
    Case("jt-resume-nothing", JT + " --epochs 0.1 --resume", ("nothing to resume", "run")),
    Case("jt-resume-more-epochs", JT + JT_RUN.replace("0.1", "0.5") + " --resume", ("--epochs 0.5", "the run's: 0.1"),
         setup=joint_run()),
    Case("jt-resume-config-yaml-edited", JT + JT_RUN + " --resume", ("config.yaml", "lr: 0.005 -> 0.5"),
         setup=joint_run(("lr: 0.005", "lr: 0.5"))),
    # --- fp-k -----------------------------------------------------------------------------------------------------
    Case("fk-ks-zero", FK + " --ks 0 2", "--ks"),
    Case("fk-repeats-zero", FK + " --ks 1 2 --repeats 0", "--repeats"),
    Case("fk-test-images-zero", FK + " --test-images 0", "--test-images"),
    Case("fk-holdout-zero", FK + " --holdout 0", "--holdout"),
    Case("fk-lr-schedule-unknown", FK + " --lr-schedule cosine", "--lr-schedule"),
    Case("fk-decay-every-zero", FK + " --decay-every 0", "--decay-every"),
    Case("fk-max-tasks-zero", FK + " --max-tasks 0", "--max-tasks"),
    Case("fk-init-missing", FK + " --ks 1 2 --init x={tmp}/nope", "nope"),
    Case("fk-more-pairs-than-the-data", FK + " --ks 1 50", ("54", "pairs")),
    # an initialization's weights fix its architecture: a flag that would build none of the compared ones is refused
    Case("fk-encoder-builds-none-of-the-inits", FK.replace("--init r=random", "--init m={init}").replace(
        "tinynet_e", "mobilenetv3_small_100"), ("--encoder mobilenetv3_small_100", "m has encoder tinynet_e")),
    # --- analyze-weights ------------------------------------------------------------------------------------------
    Case("aw-shots-zero", AW.replace("--shots 1", "--shots 0") + " --init a=random --init b=random", "--shots"),
    Case("aw-num-splits-zero", AW + " --init a=random --init b=random --num-splits 0", "--num-splits"),
    Case("aw-init-missing", AW + " --init a={tmp}/nope --init b=random", "nope"),
    Case("aw-no-init", AW, "--init"),
    Case("aw-variant-builds-none-of-the-inits", AW + " --init a={init} --init b={init} --variant efficientlab-6-3",
         ("--variant efficientlab-6-3", "a has variant efficientlab-3")),
    # --- make-synthetic, model-info, prepare, check-data ----------------------------------------------------------
    Case("ms-classes-zero", MS.replace("--classes 2", "--classes 0"), "--classes"),
    Case("ms-classes-too-many", MS.replace("--classes 2", "--classes 5000"), ("--classes", "1728")),
    Case("ms-pairs-zero", MS.replace("--pairs 2", "--pairs 0"), "--pairs"),
    Case("ms-size-zero", MS.replace("--size 32", "--size 0"), "--size"),
    Case("ms-seed-negative", MS + " --seed -3", "--seed"),
    Case("ms-workers-zero", MS + " --workers 0", "--workers"),
    Case("ms-out-is-a-file", MS, "run", setup=write("run", "x")),
    Case("mi-variant-unknown", "model-info --variant unet", "--variant"),
    Case("mi-encoder-unknown", "model-info --encoder nonexistent_net", "nonexistent_net"),
    Case("mi-size-zero", "model-info --encoder tinynet_e --size 0", "--size"),
    Case("pr-folder-missing", "prepare {tmp}/nowhere --size 32", "nowhere"),
    Case("pr-size-zero", "prepare {data} --size 0", "--size"),
    Case("pr-file-not-folder", "prepare {tmp}/f.txt --size 32", "f.txt", setup=write("f.txt", "x")),
    Case("cd-folder-missing", "check-data {tmp}/nowhere --size 32", "nowhere"),
    Case("cd-size-negative", "check-data {data} --size -4", "--size"),
    # data pairs that carry no signal are skipped and named (--strict: exit code 1)
    Case("cd-pair-image-1x1", "check-data {tmp}/data --size 32 --strict", ("1.jpg", "1x1 px"), code=1,
         setup=data_without_signal("1x1")),
    Case("cd-pair-mask-all-foreground", "check-data {tmp}/data --size 32 --strict", ("1.png", "every pixel"), code=1,
         setup=data_without_signal("all-foreground")),
    Case("cd-pair-mask-noise", "check-data {tmp}/data --size 32 --strict", ("1.png", "noise"), code=1,
         setup=data_without_signal("noise")),
    # --- report ---------------------------------------------------------------------------------------------------
    Case("rp-missing-path", "report {tmp}/nowhere --out {tmp}/rep", "nowhere"),
    Case("rp-notes-missing", "report {init} --out {tmp}/rep --notes {tmp}/notes.md", "notes.md"),
    Case("rp-out-is-a-file", "report {init} --out {tmp}/f.txt", "f.txt", setup=write("f.txt", "x")),
    Case("rp-empty-folder", "report {tmp}/empty --out {tmp}/rep", ("empty", "no finished fewshotseg run"),
         setup=folder("empty")),
    # --- quickstart -----------------------------------------------------------------------------------------------
    Case("qs-workers-zero", QS + " --workers 0", "--workers"),
    Case("qs-train-minutes-zero", QS + " --train-minutes 0", "--train-minutes"),
    Case("qs-classes-zero", QS + " --classes 0", "--classes"),
    Case("qs-pairs-two", QS + " --pairs 2", "--pairs"),
    Case("qs-size-not-stride-multiple", QS + " --size 40", "--size"),
    Case("qs-test-tasks-zero", QS + " --test-tasks 0", "--test-tasks"),
    # --- adapt ----------------------------------------------------------------------------------------------------
    Case("ad-out-is-the-support", AD.replace("{support}", "{tmp}/support").replace("{run}", "{tmp}/support"),
         ("--out", "support"), setup=copy_adapt_folders),
    Case("ad-out-is-the-query", AD.replace("{query}", "{tmp}/query").replace("{run}", "{tmp}/query"),
         ("--out", "query"), setup=copy_adapt_folders),
    Case("ad-support-missing", AD.replace("{support}", "{tmp}/nowhere"), "nowhere"),
    Case("ad-out-is-a-file", AD.replace("{run}", "{tmp}/out.jpg"), ("--out", "out.jpg", "is a file"),
         setup=write("out.jpg", "x")),
    Case("ad-init-mistyped", AD.replace("{init}", "generl"), ("generl", "general", "general-fomaml")),
    Case("ad-support-empty", AD.replace("{support}", "{tmp}/empty"), "empty", setup=folder("empty")),
    Case("ad-query-missing", AD.replace("{query}", "{tmp}/nowhere"), ("--query", "nowhere", "no such image or folder")),
    Case("ad-query-file-mistyped", AD.replace("{query}", "{tmp}/new.jpgg"), ("--query", "new.jpgg")),
    Case("ad-support-of-several-class-folders", AD.replace("{support}", "{tmp}/classes"),
         ("--support", "2 folders (a, b)", "pass one of them"), setup=class_folders("classes", "a", "b")),
    # U's flags with a frozen-feature method would do nothing: refused, saying what sets the probe's statistics
    Case("ad-stats-with-the-probe", AD.replace(" --u-steps 1", "") + " --method probe --stats support",
         ("--stats support", "probe", "--method finetune", "--method-settings")),
    Case("ad-u-preset-with-the-probe", AD.replace(" --u-steps 1", "") + " --method probe --u-preset paper",
         ("--u-preset paper", "probe", "--method finetune")),
    Case("ad-u-steps-with-the-probe", AD + " --method probe", ("--u-steps", "probe", "--method finetune")),
    Case("ad-u-lr-nan", AD + " --u-lr nan", "--u-lr"),
    Case("ad-threshold-above-one", AD + " --threshold 1.5", "--threshold"),
    Case("ad-size-not-stride-multiple", AD.replace("--size 32", "--size 33"), "--size"),
    Case("ad-init-garbage", AD.replace("{init}", "{tmp}/w.pt"), "w.pt", setup=random_bytes("w.pt")),
    Case("ad-variant-disagrees-with-init", AD + " --variant efficientlab-6-3", ("--variant efficientlab-6-3",
                                                                                "efficientlab-3")),
    Case("ad-general-with-another-encoder", AD.replace("{init}", "general").replace(" --size 32", "") +
         " --encoder tinynet_e", ("--encoder tinynet_e", "tf_efficientnet_lite2")),
    Case("ad-init-nan-weight", AD.replace("{init}", "{tmp}/nan.safetensors"), ("nan.safetensors", "NaN"),
         setup=nan_weight_init, absent=("smaller learning rate", "--u-lr")),
    Case("ad-card-bad-steps", AD.replace("{init}", "{tmp}/bad").replace(" --u-steps 1", ""), ("card.json", "steps"),
         setup=edited_card("update_params.default.steps", -3)),
    # support pairs that carry no signal: refused, naming the pair, the reason and what to do
    Case("ad-support-image-1x1", AD.replace("{support}", "{tmp}/support"), ("1.jpg", "1x1 px", "leave the pair out"),
         setup=support_without_signal("1x1")),
    Case("ad-support-mask-all-foreground", AD.replace("{support}", "{tmp}/support"),
         ("1.jpg", "every pixel as the object", "background 0"), setup=support_without_signal("all-foreground")),
    Case("ad-support-mask-noise", AD.replace("{support}", "{tmp}/support"), ("1.jpg", "noise", "leave the pair out"),
         setup=support_without_signal("noise")),
    # --- the command line itself ----------------------------------------------------------------------------------
    Case("no-command", "", "command"),
    Case("unknown-command", "train --data {data}", "train"),
    # --- the hangs of old, and a sample of the rest, as real processes --------------------------------------------
    Case("sp-ev-shots-zero", EV.replace("--shots 1", "--shots 0"), "--shots", subprocess=True),
    Case("sp-tu-shots-zero", TU + " --shots 0", "--shots", subprocess=True),
    Case("sp-mt-val-shots-fill-the-classes", MT + " --algorithm fomaml-star --val-shots 8 --iterations 2",
         ("--val-shots", "8"), subprocess=True),
    Case("sp-tu-storage-closed-port", TU + " --storage postgresql://fewshot:s3cret@127.0.0.1:9/optuna",
         ("127.0.0.1:9", "fewshot"), absent=("s3cret",), subprocess=True),
    Case("sp-rp-missing-path", "report {tmp}/nowhere --out {tmp}/rep", "nowhere", subprocess=True),
    Case("sp-mt-iterations-negative", MT + " --iterations -1", "--iterations", subprocess=True),
    Case("sp-ev-init-random-bytes", EV.replace("{init}", "{tmp}/w.pt"), "w.pt", setup=random_bytes("w.pt"),
         absent=("weights_only=False",), subprocess=True),
    Case("sp-mt-config-bool-maybe", MT + " --config {tmp}/c.yaml", "channels_last", setup=write("c.yaml", YAML["maybe"]),
         subprocess=True),
]


def test_the_table_is_large_and_covers_every_command():
    from fewshotseg.cli import VERBS

    assert len(CASES) >= 100
    assert len({c.id for c in CASES}) == len(CASES)
    covered = {c.argv.split()[0] for c in CASES if c.argv and c.id != "unknown-command"}
    assert {"quickstart", "adapt", "report", "tune", "fp-k", "analyze-weights", "joint-train", "evaluate",
            "make-synthetic", "meta-train", "model-info", "prepare", "check-data"} <= covered
    assert covered <= set(VERBS)


class Hung(BaseException):
    """Raised by the alarm: a BaseException, so the CLI's error handling cannot swallow it."""


def snapshot(*roots: Path) -> dict[Path, str]:
    return {p: hashlib.sha256(p.read_bytes()).hexdigest()
            for root in roots for p in sorted(root.rglob("*")) if p.is_file() and not p.is_symlink()}


def run_in_process(argv: list[str], capfd) -> tuple[int, str]:
    from fewshotseg.cli import main

    def alarm(*_):
        raise Hung(f"no answer within {IN_PROCESS_LIMIT} s")

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(IN_PROCESS_LIMIT)
    try:
        try:
            code = main(argv)
        except SystemExit as exit_:  # argparse's usage errors
            code = exit_.code if isinstance(exit_.code, int) else 2
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    out, err = capfd.readouterr()
    return code, out + err


def run_in_subprocess(argv: list[str]) -> tuple[int, str]:
    env = os.environ | {"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    try:
        done = subprocess.run([sys.executable, "-m", "fewshotseg", *argv], capture_output=True, text=True,
                              timeout=SUBPROCESS_LIMIT, env=env, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        pytest.fail(f"no answer within {SUBPROCESS_LIMIT} s: fewshotseg {shlex.join(argv)}")
    return done.returncode, done.stdout + done.stderr


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id, marks=([pytest.mark.xfail(reason=c.xfail, strict=False)]
                                                          if c.xfail else [])
                                               + ([pytest.mark.slow] if c.subprocess else []))  # a process each
                                  for c in CASES])
def test_hostile_input(case: Case, world: World, tmp_path: Path, capfd):
    if case.skip_if is not None and (reason := case.skip_if()):
        pytest.skip(reason)
    cleanup = case.setup(tmp_path, world) if case.setup else None
    names = {"data": world.data, "init": world.init, "params": world.params, "support": world.support,
             "query": world.query, "tmp": tmp_path, "run": tmp_path / "run", "world": world.root}
    argv = [part.format(**names) for part in shlex.split(case.argv)]
    before = snapshot(world.root, tmp_path)
    capfd.readouterr()
    started = time.monotonic()
    try:
        code, output = run_in_subprocess(argv) if case.subprocess else run_in_process(argv, capfd)
    finally:
        if cleanup is not None:
            cleanup()
    seconds = time.monotonic() - started
    shown = f"fewshotseg {shlex.join(argv)}\nexit code {code} after {seconds:.1f} s; output:\n{output}"
    assert "Traceback" not in output, shown
    assert code == case.code, shown
    for culprit in (case.culprit,) if isinstance(case.culprit, str) else case.culprit:
        assert culprit.lower() in output.lower(), f"the message does not name {culprit!r}\n{shown}"
    for text in case.absent:
        assert text not in output, f"the output shows {text!r}\n{shown}"
    after = snapshot(world.root, tmp_path)
    changed = sorted(str(p) for p, digest in before.items() if after.get(p) != digest)
    assert not changed, f"files that existed before were changed or removed: {changed}\n{shown}"
