"""Model cards: the Hugging Face README.md every initialization carries, the licences it names (and the wheel's
metadata agreeing with the shipped one), and tools/package_initialization.py's refusals (a dirty checkout, a run
trained from one, a card without a licence)."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil
import subprocess
import sys
import tomllib

import pytest
import yaml

from conftest import REPO

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

GENERAL = REPO / "src" / "fewshotseg" / "inits" / "general-fomaml"
FRONT_MATTER_KEYS = {"license", "library_name", "pipeline_tag", "datasets", "tags", "metrics"}
SECTIONS = ["## Intended use", "## Out-of-scope use", "## Known limitations", "## Training data",
            "## Training procedure", "## Evaluation", "## Licence", "## How to cite"]


def front_matter(text: str) -> dict:
    """The YAML between the leading `---` lines, parsed with yaml.safe_load."""
    assert text.startswith("---\n"), "a model card starts with its YAML front matter"
    end = text.index("\n---\n", 4)
    meta = yaml.safe_load(text[4:end])
    assert isinstance(meta, dict)
    return meta


def sections_in_order(text: str) -> bool:
    places = [text.find("\n" + s + "\n") for s in SECTIONS]
    return all(p > 0 for p in places) and places == sorted(places)


def corpus_card(**changes):
    from fewshotseg.initializations.card import Card

    corpus = {"corpus_version": 1, "splits": {"train": 3, "val": 1, "test": 1},
              "spec": {"size": 64, "pairs": 4, "seed": 0},
              "sources": [{"package": "art-gpl", "version": "1.0-1", "role": "icons", "licences": ["GPL-2+"]},
                          {"package": "photos-cc", "version": "2:3-1", "role": "backgrounds",
                           "licences": ["CC-BY-SA-4.0", "CC0-1.0"]}]}
    values = dict(
        name="tiny", model={"variant": "efficientlab-3", "encoder": "tinynet_e"}, size=64, summary="a test card",
        update_params={"default": {"lr": 0.01, "steps": 2, "batch_size": 8, "bn_policy": "transductive",
                                   "source": "meta-training's omega"}},
        training={"algorithm": "fomaml-star", "init": "imagenet", "data": "corpus", "splits": "auto",
                  "iterations": 12, "meta_batch": 5, "meta_optimizer": "adam 0.0001 -> 1e-06", "corpus": corpus,
                  "command": "fewshotseg meta-train --data corpus", "git_commit": "abc123+dirty",
                  "extra": {"a": 1, "b": [2, 3]}},
        metrics=[{"data": "corpus (validation classes)", "protocol": "paper, 5-shot", "shots": 5, "mean_iou": 0.5,
                  "ci95": 0.06, "episodes": 24},
                 {"data": "corpus (val classes)", "protocol": "UHO objective (validation)", "shots": 1,
                  "mean_iou": 0.4, "episodes": 8},
                 {"data": "corpus (validation classes)", "protocol": "paper, 5-shot", "shots": 5, "mean_iou": 0.3,
                  "ci95": 0.0, "episodes": 24}],
        license="GPL-3.0-only", license_notes="Because the sources are GPL-2+ and CC-BY-SA-4.0.",
        limitations=["1-shot masks are rough (measured 20 % on the test classes)."])
    values.update(changes)
    return Card(**values)


# ---------------------------------------------------------------------------------------------- rendering


def test_the_model_card_has_hugging_face_front_matter_and_every_section():
    text = corpus_card().model_card()
    meta = front_matter(text)
    assert FRONT_MATTER_KEYS <= set(meta)
    assert (meta["license"], meta["library_name"], meta["pipeline_tag"]) == ("gpl-3.0", "fewshotseg",
                                                                           "image-segmentation")
    assert meta["datasets"] == ["make-corpus-v1"] and meta["metrics"] == ["mean_iou"]
    assert {"few-shot-segmentation", "fomaml-star", "tinynet_e"} <= set(meta["tags"])
    assert sections_in_order(text), "the sections are missing or out of order"
    body = text.split("\n---\n", 1)[1]
    # every source with its licences; the training record readable, never a Python repr
    for needle in ("| art-gpl | 1.0-1 | icons | GPL-2+ |", "| photos-cc | 2:3-1 | backgrounds | CC-BY-SA-4.0; CC0-1.0 |",
                   "12 meta-iterations of 5 tasks each", "Adam", "extra: a: 1; b: 2, 3"):
        assert needle in body, needle
    assert "{'" not in body and "['" not in body
    # intervals: shown when measured; a row without one says why, never "± 0.0"
    assert "± 6.0" in body and "± 0.0" not in body
    assert "none: the best of the search's trials" in body and "not recorded for this row" in body
    # limitations: the measured ones, and the unrecoverable code of a dirty run
    assert "1-shot masks are rough" in body and "abc123" in body and "uncommitted changes" in body
    assert "**GPL-3.0-only**" in body and "Because the sources are GPL-2+" in body and "MIT" in body
    assert "Hendryx, Sean M. and Leach, Andrew B. and Hein, Paul D. and Morrison, Clayton T." in body
    assert "Meta-Learning Initializations for Image Segmentation" in body and "@software{fewshotseg" in body
    assert "Default adaptation method: `finetune` (the update routine U below)" in body  # no other method recorded
    probe = corpus_card(adaptation={"method": "probe", "settings": {"c": 0.5}, "source": "tune: t"}).model_card()
    assert "Default adaptation method: `probe` (c: 0.5), from tune: t;" in probe


def test_an_old_card_json_still_reads_and_says_what_it_does_not_record():
    """card.json written before licences and limitations (sources as "package version", a CI of 0.0)."""
    from fewshotseg.initializations.card import Card

    old = corpus_card().to_json()
    for key in ("license", "license_notes", "limitations"):
        del old[key]
    old["training"]["corpus"]["sources"] = ["art-gpl 1.0-1", "photos-cc 2:3-1"]
    old["training"]["git_commit"] = "abc123"
    card = Card.from_json(json.loads(json.dumps(old)), "old card.json")
    assert (card.license, card.license_notes, card.limitations) == ("", "", [])
    text = card.model_card()
    meta = front_matter(text)
    assert meta["license"] == "unknown" and FRONT_MATTER_KEYS <= set(meta)
    assert sections_in_order(text)
    assert "| art-gpl | 1.0-1 |  | not recorded in this card (see MANIFEST.json) |" in text
    assert "No failure cases were measured" in text and "No licence has been chosen" in text
    assert "uncommitted" not in text and "± 0.0" not in text


def test_a_licence_the_hub_does_not_know_is_other_with_its_name(tmp_path):
    text = corpus_card(license="LicenseRef-weights-1.0").model_card()
    meta = front_matter(text)
    assert meta["license"] == "other" and meta["license_name"] == "licenseref-weights-1.0"
    # save() links the licence text when one lies beside the card
    card = corpus_card()
    card.save(tmp_path)
    assert "license_link" not in front_matter((tmp_path / "README.md").read_text())
    (tmp_path / "LICENSE").write_text("GPL-3.0-only\n")
    card.save(tmp_path)
    readme = (tmp_path / "README.md").read_text()
    assert front_matter(readme)["license_link"] == "LICENSE" and "[LICENSE](LICENSE)" in readme


def test_a_run_card_lists_the_corpus_sources_licences_and_no_invented_ci(tmp_path):
    from fewshotseg.initializations.pretrained import write_run_card
    from fewshotseg.initializations.weights import save_initialization
    from fewshotseg.models.efficientlab import ModelConfig, build_model

    data, run = tmp_path / "corpus", tmp_path / "run"
    data.mkdir()
    run.mkdir()
    (data / "MANIFEST.json").write_text(json.dumps({
        "corpus_version": 1, "splits": {"train": 2, "val": 1, "test": 1}, "spec": {"size": 64},
        "sources": [{"package": "art-cc0", "version": "1.0-1", "role": "icons", "licences": ["CC0-1.0"],
                     "family": "x", "deb": "art-cc0_1.0-1_all.deb"}]}))
    (run / "metrics.jsonl").write_text(json.dumps({"iteration": 5, "val_miou": 0.4, "val_tasks": 3}) + "\n")
    model = build_model(ModelConfig(encoder="tinynet_e"))
    save_initialization(run / "model.safetensors", model, {"size": 64})
    card = write_run_card(run, model, size=64, update_params={"lr": 0.01}, source="meta-training's omega",
                          training={"algorithm": "reptile", "data": str(data)}, summary="")
    assert card.training["corpus"]["sources"] == [{"package": "art-cc0", "version": "1.0-1", "role": "icons",
                                                   "licences": ["CC0-1.0"]}]
    assert "ci95" not in card.metrics[0]  # metrics.jsonl had no interval: none is made up
    readme = (run / "README.md").read_text()
    assert "| art-cc0 | 1.0-1 | icons | CC0-1.0 |" in readme and "± 0.0" not in readme
    assert front_matter(readme)["datasets"] == ["make-corpus-v1"]


# ---------------------------------------------------------------------------------------------- the shipped card


@pytest.mark.parametrize("name", ["general", "general-fomaml"])
def test_the_shipped_card_is_current_licensed_and_agrees_with_the_wheel(name):
    from fewshotseg.initializations.card import hub_license, read_card, sha256

    folder = REPO / "src" / "fewshotseg" / "inits" / name
    card = read_card(folder)
    readme = (folder / "README.md").read_text()
    assert readme == card.model_card("LICENSE"), "README.md is stale: rewrite it with read_card(...).save(folder)"
    assert sha256(folder / "model.safetensors") == card.weights["sha256"]
    # the licence: in the card, the model card's front matter, the LICENSE beside the weights and the wheel
    assert card.license and front_matter(readme)["license"] == hub_license(card.license)
    licence_text = (folder / "LICENSE").read_text()
    assert f"SPDX: {card.license}" in licence_text
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    expression = project["project"]["license"]
    assert isinstance(expression, str) and {"MIT", card.license} <= set(expression.split(" AND "))
    assert f"src/fewshotseg/inits/{name}/LICENSE" in project["project"]["license-files"]
    assert "inits/*/LICENSE" in project["tool"]["setuptools"]["package-data"]["fewshotseg"]
    assert "± 0.0" not in readme and sections_in_order(readme)
    if name == "general":  # the default: a frozen ImageNet encoder with a probe, chosen on validation classes
        assert card.license == "Apache-2.0" and "Apache License" in licence_text
        assert card.adaptation["method"] == "probe" and "validation" in card.adaptation["source"]
        assert any("validation" in m["data"] for m in card.metrics)
        return
    assert card.license == "GPL-3.0-only" and "GNU GENERAL PUBLIC LICENSE" in licence_text
    assert "Version 3, 29 June 2007" in licence_text and "paper-icon-theme" in licence_text
    # every training source with its recorded licences
    sources = card.training["corpus"]["sources"]
    assert len(sources) == 15 and all(s["licences"] for s in sources)
    for s in sources:
        assert f"| {s['package']} | {s['version']} | {s['role']} | {'; '.join(s['licences'])} |" in readme
    assert "b78b5ee6947769b1bf77d5912852ef6801a198c5" in readme and "cannot be recovered" in readme


# ---------------------------------------------------------------------------------------------- packaging


def git(cwd, *args):
    return subprocess.run(["git", "-c", "user.name=test", "-c", "user.email=test@example.org", *args], cwd=cwd,
                          check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture
def checkout(tmp_path):
    """A git checkout holding tools/package_initialization.py and one source file, committed (clean)."""
    if not (REPO / "tools" / "package_initialization.py").is_file() or shutil.which("git") is None:
        pytest.skip("needs git and the checkout's tools/ (the sdist ships neither)")
    repo = tmp_path / "checkout"
    (repo / "tools").mkdir(parents=True)
    (repo / "src").mkdir()
    shutil.copy(REPO / "tools" / "package_initialization.py", repo / "tools")
    (repo / "src" / "mod.py").write_text("x = 1\n")
    git(repo, "init", "-q")
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", "start")
    return repo


def tool(repo):
    """The packaging tool as loaded from `repo`, so that the checkout it checks is `repo`."""
    spec = importlib.util.spec_from_file_location("package_initialization_under_test",
                                                  repo / "tools" / "package_initialization.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up while being defined
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A run folder: tinynet_e weights at 64 px with a card (no licence), trained from a clean checkout."""
    import torch

    from fewshotseg.initializations.card import Card
    from fewshotseg.models.efficientlab import ModelConfig
    from fewshotseg.segmenter import FewShotSegmenter

    torch.manual_seed(0)
    seg = FewShotSegmenter.from_pretrained("random", model_config=ModelConfig(encoder="tinynet_e"), size=64)
    seg.card = Card(name="run", model={}, size=64, update_params={"default": {"lr": 0.01, "steps": 2,
                                                                              "source": "meta-training's omega"}},
                    training={"algorithm": "reptile", "init": "random", "data": "none", "git_commit": "abc123"})
    return seg.save_pretrained(tmp_path_factory.mktemp("runs") / "run")


def package(repo, run, out, *flags):
    tool(repo).main([str(run), str(out), "--name", "tiny", *flags])
    from fewshotseg.initializations.card import read_card

    return read_card(out)


def refusal(repo, run, out, *flags) -> str:
    with pytest.raises(SystemExit) as stop:
        package(repo, run, out, *flags)
    assert isinstance(stop.value.code, str), "a refusal exits with a message"
    assert not (out / "model.safetensors").exists(), "a refused packaging writes nothing"
    return stop.value.code


def test_packaging_from_a_clean_checkout_records_the_commit_and_the_licence(checkout, tiny_run, tmp_path):
    licence = tmp_path / "MIT.txt"
    licence.write_text("MIT License\n")
    out = checkout / "inits" / "tiny"  # inside the checkout: the output folder never counts as a change
    for _ in range(2):  # packaging again over an earlier packaging's files works too
        card = package(checkout, tiny_run, out, "--license", "mit", "--license-file", str(licence),
                       "--limitation", "not measured on photographs")
        assert card.training["packaging"] == {"git_commit": git(checkout, "rev-parse", "HEAD")}
    assert card.license == "MIT" and card.limitations == ["not measured on photographs"]
    readme = (out / "README.md").read_text()
    meta = front_matter(readme)
    assert (meta["license"], meta["license_link"]) == ("mit", "LICENSE") and (out / "LICENSE").read_text() == "MIT License\n"
    assert not (out / "source.diff").exists() and "not measured on photographs" in readme
    # the licence file already beside the weights (packaging the shipped initialization again) is kept
    card = package(checkout, tiny_run, out, "--license", "MIT", "--license-file", str(out / "LICENSE"))
    assert (out / "LICENSE").read_text() == "MIT License\n" and card.license == "MIT"


def test_packaging_from_a_dirty_checkout_is_refused_listing_the_changed_files(checkout, tiny_run, tmp_path):
    (checkout / "src" / "mod.py").write_text("x = 2\n")
    (checkout / "notes.txt").write_text("an untracked file\n")
    message = refusal(checkout, tiny_run, tmp_path / "out", "--license", "MIT")
    assert "uncommitted changes" in message and "--allow-dirty" in message
    assert "src/mod.py" in message and "notes.txt" in message


def test_allow_dirty_writes_the_diff_beside_the_card_with_its_sha256(checkout, tiny_run, tmp_path):
    (checkout / "src" / "mod.py").write_text("x = 2\n")
    (checkout / "notes.txt").write_text("an untracked file\n")
    out = tmp_path / "out"
    card = package(checkout, tiny_run, out, "--license", "MIT", "--allow-dirty")
    diff = (out / "source.diff").read_bytes()
    record = card.training["packaging"]
    assert record["diff_sha256"] == hashlib.sha256(diff).hexdigest() and record["diff_file"] == "source.diff"
    assert record["changed"] == ["notes.txt", "src/mod.py"] and record["git_commit"] == git(checkout, "rev-parse", "HEAD")
    assert b"-x = 1" in diff and b"+x = 2" in diff and b"+an untracked file" in diff
    # the diff is the checkout's changes: applied to a fresh clone of the commit, it gives back the dirty tree
    clone = tmp_path / "clone"
    git(tmp_path, "clone", "-q", str(checkout), str(clone))
    git(clone, "apply", str(out / "source.diff"))
    assert (clone / "src" / "mod.py").read_text() == "x = 2\n" and (clone / "notes.txt").is_file()
    assert "source.diff" in (out / "README.md").read_text()
    # once the changes are committed, packaging again leaves no stale diff behind
    git(checkout, "add", ".")
    git(checkout, "commit", "-q", "-m", "the changes")
    card = package(checkout, tiny_run, out, "--license", "MIT")
    assert not (out / "source.diff").exists() and "diff_sha256" not in card.training["packaging"]


def test_a_card_without_a_licence_is_refused(checkout, tiny_run, tmp_path):
    message = refusal(checkout, tiny_run, tmp_path / "out")
    assert "names no licence" in message and "--license" in message
    message = refusal(checkout, tiny_run, tmp_path / "out", "--license", "GPL3")
    assert "not an SPDX licence expression" in message


def test_a_run_trained_from_a_dirty_checkout_is_refused_unless_allowed(checkout, tiny_run, tmp_path):
    from fewshotseg.initializations.card import read_card

    run = tmp_path / "dirty-run"
    shutil.copytree(tiny_run, run)
    card = read_card(run)
    card.training["git_commit"] = "abc123+dirty"
    card.save(run)
    message = refusal(checkout, run, tmp_path / "out", "--license", "MIT")
    assert "+dirty" in message and "cannot be recovered" in message
    card = package(checkout, run, tmp_path / "out", "--license", "MIT", "--allow-dirty")
    assert "diff_sha256" not in card.training["packaging"]  # the checkout itself was clean
    assert "`abc123` with uncommitted changes" in (tmp_path / "out" / "README.md").read_text()


def test_packaging_the_imagenet_encoder_with_a_method_and_bench_numbers(checkout, tmp_path):
    bench = tmp_path / "bench.json"
    bench.write_text(json.dumps({"split": "val", "classes": ["a", "b"], "rows": {"probe row": {
        "fields": {"init": "imagenet"}, "1shot": {"mean": 0.3, "low": 0.2, "high": 0.4, "splits": 4, "classes": 2},
        "5shot": {"mean": 0.5, "low": 0.4, "high": 0.6, "splits": 4, "classes": 2}}}}))
    out = tmp_path / "out"
    card = package(checkout, "imagenet", out, "--license", "Apache-2.0", "--size", "96", "--method", "probe",
                   "--method-settings", '{"features": ["skip", "deep"], "l2": 0.01}', "--method-source", "validation",
                   "--bench", str(bench), "--bench-row", "probe row")
    assert card.size == 96 and card.model["encoder"] == "tf_efficientnet_lite0"
    assert card.adaptation["method"] == "probe" and card.adaptation["settings"]["l2"] == 0.01
    assert [(m["shots"], m["low"], m["high"]) for m in card.metrics] == [(1, 0.2, 0.4), (5, 0.4, 0.6)]
    readme = (out / "README.md").read_text()
    assert "Default adaptation method: `probe`" in readme and "[20.0, 40.0]" in readme
    from fewshotseg.segmenter import FewShotSegmenter

    seg = FewShotSegmenter.from_pretrained(out, device="cpu")  # the card's method is what fit uses by default
    assert seg.method_for()[0].as_dict()["settings"]["features"] == ["skip", "deep"]
