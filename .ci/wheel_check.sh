#!/usr/bin/env bash
# The wheel works: build the sdist and the wheel (the wheel from the sdist, as `python -m build` does), `twine check`
# them, check that the sdist holds what the tests need, install the wheel (not editable, not the checkout) into a
# clean virtual environment and run `fewshotseg adapt` with the shipped initialization on the real-photo fixtures,
# from a folder outside the checkout.
#
# Installing torch again would cost gigabytes, so the clean environment sees the CI environment's installed
# dependencies through a .pth line naming its site-packages. A directory added by a .pth line does not get its own
# .pth files processed, so the checkout's editable install (a .pth file there) stays invisible: checked below,
# before the wheel is installed, by `import fewshotseg` failing.
#
# Usage: .ci/wheel_check.sh [PYTHON]   (PYTHON: the CI environment's interpreter, with build and twine; default
# .venv/bin/python; WHEEL_CHECK_KEEP=1 keeps the temporary folder)
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd -P)
ci_python=$(command -v "${1:-.venv/bin/python}") || { echo "wheel check: no interpreter ${1:-.venv/bin/python}" >&2; exit 1; }
ci_python="$(cd "$(dirname "$ci_python")" && pwd)/$(basename "$ci_python")"  # absolute, not resolved: a venv's link
export HF_HUB_OFFLINE=1
unset PYTHONPATH PYTHONHOME PYTHONSTARTUP
started=$SECONDS
say() { echo "wheel check: $*"; }
fail() { echo "wheel check: FAILED: $*" >&2; exit 1; }

work=$(mktemp -d /tmp/fewshotseg-wheel.XXXXXX)
[ -n "${WHEEL_CHECK_KEEP:-}" ] || trap 'rm -rf "$work"' EXIT  # WHEEL_CHECK_KEEP=1 keeps it to look into

# 1. Build the sdist, then the wheel from it, and check both.
"$ci_python" -m build --outdir "$work/dist" . >"$work/build.log" 2>&1 || { cat "$work/build.log"; fail "build"; }
sdist=$(ls "$work"/dist/fewshotseg-*.tar.gz)
wheel=$(ls "$work"/dist/fewshotseg-*.whl)
say "built $(basename "$sdist") ($(du -k "$sdist" | cut -f1) KiB) and $(basename "$wheel") ($(du -k "$wheel" | cut -f1) KiB)"
"$ci_python" -m twine --no-color check --strict "$sdist" "$wheel" | sed 's/^/wheel check: /'

# 2. The sdist holds every tracked file under tests/, configs/ and the shipped initialization, and the wheel holds
#    the shipped initialization.
"$ci_python" - "$sdist" "$wheel" "$repo" <<'PY'
import subprocess, sys, tarfile, zipfile
from pathlib import Path

sdist, wheel, repo = sys.argv[1:]
with tarfile.open(sdist) as tar:
    members = {m.split("/", 1)[1] for m in tar.getnames() if "/" in m}
needed_dirs = ["tests", "configs", "src/fewshotseg/inits/general"]
try:
    tracked = subprocess.run(["git", "-C", repo, "ls-files", "--", *needed_dirs], check=True, capture_output=True,
                             text=True).stdout.split()
except (OSError, subprocess.CalledProcessError):  # no git: every file in those folders
    tracked = [str(p.relative_to(repo)) for d in needed_dirs for p in Path(repo, d).rglob("*")
               if p.is_file() and "__pycache__" not in p.parts]
tracked += ["README.md", "LICENSE", "pyproject.toml"]
missing = sorted(set(tracked) - members)
if missing:
    sys.exit(f"wheel check: FAILED: the sdist lacks {len(missing)} files the tests need: {', '.join(missing[:20])}")
fixtures = sorted(m for m in members if m.startswith("tests/fixtures/real-photos/"))
inits = sorted(m for m in members if m.startswith("src/fewshotseg/inits/general/"))
print(f"wheel check: the sdist holds all {len(set(tracked))} files the tests need: tests/ "
      f"({sum(m.startswith('tests/') for m in members)} files, {len(fixtures)} under tests/fixtures/real-photos), "
      f"configs/ ({sum(m.startswith('configs/') for m in members)} files), the shipped initialization "
      f"({', '.join(Path(m).name for m in inits)}), README.md")
with zipfile.ZipFile(wheel) as zf:
    names = set(zf.namelist())
shipped = {Path(m).name for m in inits}
lacking = sorted(n for n in shipped if f"fewshotseg/inits/general/{n}" not in names)
if lacking or "fewshotseg/inits/general/model.safetensors" not in names:
    sys.exit(f"wheel check: FAILED: the wheel lacks fewshotseg/inits/general/{lacking or 'model.safetensors'}")
if any(n.startswith(("tests/", "configs/")) for n in names):
    sys.exit("wheel check: FAILED: the wheel installs tests/ or configs/ as top-level packages")
print(f"wheel check: the wheel holds fewshotseg/inits/general/ ({', '.join(sorted(shipped))})")
PY

# 3. A clean virtual environment that sees the CI environment's dependencies but not the checkout.
clean="$work/venv"
"$ci_python" -m venv --without-pip "$clean"  # pip too comes from the CI environment (and installs into this one)
ci_site=$("$ci_python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
clean_site=$("$clean/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
echo "$ci_site" >"$clean_site/_fewshotseg_ci_dependencies.pth"
cd "$work"  # outside the checkout from here on
if "$clean/bin/python" -c 'import fewshotseg' 2>/dev/null; then
    fail "the clean environment imports fewshotseg before the wheel is installed (the checkout leaks in)"
fi
"$clean/bin/python" -c 'import torch, timm, scipy' || fail "the CI environment's dependencies are not visible"
say "clean environment $clean: the CI environment's dependencies are visible, fewshotseg is not importable"

# --ignore-installed: the CI environment's editable install is visible to pip (its metadata), and not to be touched
"$clean/bin/python" -m pip install --quiet --no-deps --no-index --ignore-installed "$wheel"
files=$("$clean/bin/python" -m pip show --files fewshotseg)
grep -q "^Location: $clean_site\$" <<<"$files" || fail "pip sees fewshotseg elsewhere than $clean_site"
grep -q "fewshotseg/inits/general/model.safetensors" <<<"$files" || fail "the wheel installed no shipped initialization"
say "installed $(basename "$wheel") with pip --no-deps into $clean_site"
"$clean/bin/python" - "$clean_site" "$repo" "$ci_site" <<'PY'
import sys
from importlib import metadata
from pathlib import Path

import fewshotseg

site, repo, ci_site = (Path(a).resolve() for a in sys.argv[1:4])
where = Path(fewshotseg.__file__).resolve()
print(f"wheel check: fewshotseg.__file__ = {fewshotseg.__file__}")
if not where.is_relative_to(site) or where.is_relative_to(repo):
    sys.exit(f"wheel check: FAILED: fewshotseg was imported from {where}, not from the clean environment {site}")
leaks = [p for p in sys.path if p and Path(p).resolve().is_relative_to(repo) and Path(p).resolve() != ci_site]
if leaks:  # (the CI environment's site-packages may lie in the checkout, as .venv does)
    sys.exit(f"wheel check: FAILED: the checkout is on sys.path: {leaks}")
print(f"wheel check: sys.path holds no folder of the checkout {repo} but the CI environment's {ci_site}")
dist = metadata.distribution("fewshotseg")
print(f"wheel check: fewshotseg {fewshotseg.__version__} (metadata {dist.version} in "
      f"{Path(dist._path).parent}), not editable")
PY
"$clean/bin/python" - <<'PY'
import sys
from importlib import metadata

from packaging.requirements import Requirement

requirements = [Requirement(r) for r in metadata.requires("fewshotseg") or []]
needed = [r for r in requirements if r.marker is None or r.marker.evaluate({"extra": ""})]
unmet = []
for r in needed:
    try:
        version = metadata.version(r.name)
    except metadata.PackageNotFoundError:
        version = None
    if version is None or not r.specifier.contains(version, prereleases=True):
        unmet.append(f"{r} (found {version})")
if unmet:
    sys.exit(f"wheel check: FAILED: the wheel's requirements are not met: {'; '.join(unmet)}")
print(f"wheel check: the wheel's {len(needed)} requirements are met by the CI environment's packages")
PY

# 4. `fewshotseg adapt` from the clean environment's console script: the shipped initialization, support pairs
#    name.jpg + name_mask.png from one real-photo class, the class's last two photos as the queries (two, since
#    the shipped U normalises the query batch with its own BatchNorm statistics).
script="$clean/bin/fewshotseg"
head -n 1 "$script" | grep -qF "$clean/bin/python" || fail "$script does not run the clean environment's python"
class=eiffel_tower
photos="$repo/tests/fixtures/real-photos/$class"
mkdir -p support query
pairs=$(ls "$photos"/*.jpg | sort -V)
queries=$(echo "$pairs" | tail -n 2)
for jpg in $pairs; do
    n=$(basename "$jpg" .jpg)
    if grep -qxF "$jpg" <<<"$queries"; then
        cp "$jpg" "query/${class}_$n.jpg"
    else
        cp "$jpg" "support/${class}_$n.jpg"
        cp "$photos/$n.png" "support/${class}_${n}_mask.png"
    fi
done
say "adapt: $(ls support | grep -c _mask.png) support pairs and $(ls query | wc -l) query images of $class, in $work"
adapt_started=$SECONDS
"$script" adapt --support support --query query --out out >adapt.log 2>&1 || { cat adapt.log; fail "adapt"; }
say "adapt took $((SECONDS - adapt_started)) s"
"$clean/bin/python" - "$photos" <<'PY'
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

import fewshotseg

photos = Path(sys.argv[1])
summary = json.loads(Path("out/adapt.json").read_text())
if len(summary["queries"]) != len(list(Path("query").iterdir())):
    sys.exit(f"wheel check: FAILED: adapt wrote {len(summary['queries'])} masks ({summary['failed']})")
for q in summary["queries"]:
    mask_path = Path(q["mask"])
    mask = np.asarray(Image.open(mask_path))
    query = Image.open(q["query"])
    if mask.shape[:2] != (query.height, query.width) or not set(np.unique(mask)) <= {0, 255}:
        sys.exit(f"wheel check: FAILED: {mask_path} is not a 0/255 mask of the query's size")
    overlay = mask_path.with_name(mask_path.name.replace("_mask.png", "_overlay.png"))
    if not overlay.is_file():
        sys.exit(f"wheel check: FAILED: adapt wrote no {overlay}")
    truth = np.asarray(Image.open(photos / f"{Path(q['query']).stem.rsplit('_', 1)[1]}.png").convert("L")) > 0
    pred = mask > 0
    iou = (pred & truth).sum() / max((pred | truth).sum(), 1)
    print(f"wheel check: wrote {mask_path.name} {mask.shape[1]}x{mask.shape[0]} ({100 * pred.mean():.1f} % "
          f"foreground, IoU {100 * iou:.1f} % against the fixture's mask) and {overlay.name}")
print(f"wheel check: adapt used {summary['init']} ({summary['support_pairs']} support pairs, "
      f"method {summary['method']['method']}), fewshotseg from {Path(fewshotseg.__file__).parent}")
PY

# 5. The sdist's own tests run against the installed wheel (a quick subset: configs and the real-photo fixtures).
mkdir sdist && tar -xzf "$sdist" -C sdist
cd sdist/fewshotseg-*
"$clean/bin/python" -m pytest -q -p no:cacheprovider tests/test_configs.py \
    "tests/test_data_loading.py::test_real_photos_load_as_binary_masks_with_sensible_foreground" >pytest.log 2>&1 \
    || { cat pytest.log; fail "the sdist's tests against the wheel"; }
say "tests from the sdist, against the wheel: $(tail -n 1 pytest.log)"
"$clean/bin/python" -c 'import fewshotseg, sys; from pathlib import Path
sys.exit(0 if "site-packages" in Path(fewshotseg.__file__).parts else "the sdist tests imported the unpacked src")'
say "OK in $((SECONDS - started)) s"
