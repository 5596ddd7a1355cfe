"""Where the realistic training corpus comes from: Debian packages of licensed art and photographs.

Each source is a Debian package, fetched with `apt-get download` into a cache folder and unpacked there with
`dpkg-deb -x` (nothing is installed system-wide). A package's version and the licences its `copyright` file names are
recorded in the corpus MANIFEST. `--debs DIR` builds from `.deb` files already in DIR without calling apt-get.

Roles:
* `icons`: freedesktop icon themes; an object concept is an icon name (`printer`, `camera-photo`) drawn by several
  independent theme families. Mimetypes, app logos, emotes and symbolic icons are left out.
* `clipart`: openclipart (public domain); a class is a leaf category folder with enough drawings.
* `stamps`: Tux Paint's stamps, photographs and drawings of objects with exact alpha; a category folder's
  photographs become a held-out real-photo class (validation or test), its drawings a drawn class that trains like
  clip art unless it shares a photo class's concept (then it goes to that class's side; see `build`).
* `backgrounds`: photographs and textures the objects are pasted on.

Not used, on purpose: emoji icon sets, `mate-backgrounds` and `plasma-workspace-wallpapers` (kept for an independent
evaluation of what the corpus teaches).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from fewshotseg.data.dataset import DataError


@dataclass(frozen=True)
class Source:
    package: str
    role: str  # icons | clipart | stamps | backgrounds
    family: str = ""  # independent art family (icons): themes forked from one another share a family
    roots: tuple[str, ...] = ()  # folders inside the package to read (backgrounds); default: the role's own


SOURCES: tuple[Source, ...] = (
    # Icon themes that ship PNG renderings; forks and recolourings of one design share a family.
    Source("adwaita-icon-theme", "icons", "adwaita"),
    Source("gnome-icon-theme", "icons", "gnome2"),
    Source("mate-icon-theme", "icons", "gnome2"),
    Source("faenza-icon-theme", "icons", "faenza"),
    Source("obsidian-icon-theme", "icons", "faenza"),
    Source("moka-icon-theme", "icons", "moka"),
    Source("paper-icon-theme", "icons", "moka"),
    Source("lxde-icon-theme", "icons", "nuovext"),
    Source("oxygen-icon-theme", "icons", "oxygen"),
    Source("tango-icon-theme", "icons", "tango"),
    Source("openclipart-png", "clipart"),
    Source("tuxpaint-stamps-default", "stamps"),
    Source("tuxpaint-data", "backgrounds", roots=("usr/share/tuxpaint/templates",)),
    Source("lomiri-wallpapers-16.04", "backgrounds", roots=("usr/share/backgrounds",)),
    Source("palapeli-data", "backgrounds", roots=("usr/share/palapeli",)),
)
RESERVED = ("mate-backgrounds", "plasma-workspace-wallpapers", "fonts-noto-color-emoji", "fonts-twemoji-svginot")


def by_name(names: list[str] | None) -> list[Source]:
    """The sources to use: all of them, or the named subset (an unknown or reserved name is an error)."""
    if not names:
        return list(SOURCES)
    known = {s.package: s for s in SOURCES}
    for name in names:
        if name in RESERVED:
            raise DataError(f"--packages {name}: reserved for independent evaluation, never used for training")
        if name not in known:
            raise DataError(f"--packages {name}: not a corpus source; known: {', '.join(known)}")
    return [known[n] for n in names]


@dataclass
class Unpacked:
    source: Source
    root: Path  # the unpacked file tree
    version: str
    licences: list[str]
    deb: Path


def fetch_command(cache: Path, packages: list[str]) -> str:
    return f"mkdir -p {cache}/debs && cd {cache}/debs && apt-get update && apt-get download {' '.join(packages)}"


def _deb_for(folder: Path, package: str) -> Path | None:
    found = sorted(folder.glob(f"{package}_*.deb"))
    return found[-1] if found else None


def fetch(sources: list[Source], cache: Path, *, debs: Path | None = None, progress=print) -> list[Unpacked]:
    """Unpack every source's `.deb` into `cache/unpacked/`, downloading the missing ones with apt-get.

    With `debs`, only that folder's `.deb` files are used (offline) and a missing package is an error that gives
    the command to fetch it.
    """
    if shutil.which("dpkg-deb") is None:
        raise DataError("dpkg-deb is needed to unpack the corpus sources (Debian's dpkg package): apt-get install dpkg")
    cache = Path(cache)
    folder = Path(debs) if debs else cache / "debs"
    folder.mkdir(parents=True, exist_ok=True)
    missing = [s.package for s in sources if _deb_for(folder, s.package) is None]
    if missing and debs is None:
        if shutil.which("apt-get") is None:
            raise DataError(f"missing corpus source package(s) {', '.join(missing)} and no apt-get here; on a Debian "
                            f"machine run: {fetch_command(cache, missing)} (or pass --debs DIR with the .deb files)")
        progress(f"downloading {len(missing)} Debian package(s) into {folder}: {' '.join(missing)}")
        done = subprocess.run(["apt-get", "download", *missing], cwd=folder, capture_output=True, text=True,
                              timeout=1800)
        missing = [p for p in missing if _deb_for(folder, p) is None]
        if missing:
            tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or [""]
            raise DataError(f"could not download {', '.join(missing)} ({tail[0]}); run: {fetch_command(cache, missing)}")
    elif missing:
        raise DataError(f"{folder}: no .deb for {', '.join(missing)}; fetch with: "
                        f"cd {folder} && apt-get download {' '.join(missing)}")
    out = []
    for source in sources:
        deb = _deb_for(folder, source.package)
        assert deb is not None
        version = _dpkg(["dpkg-deb", "-f", str(deb), "Version"], deb).strip()
        root = cache / "unpacked" / f"{source.package}_{_safe(version)}"
        if not (root / ".complete").exists():
            if root.exists():
                shutil.rmtree(root)
            root.mkdir(parents=True)
            progress(f"unpacking {deb.name}")
            _dpkg(["dpkg-deb", "-x", str(deb), str(root)], deb)
            (root / ".complete").write_text(version + "\n")
        out.append(Unpacked(source, root, version, licences(root, source.package), deb))
    return out


def _dpkg(cmd: list[str], deb: Path) -> str:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise DataError(f"{deb}: not a readable Debian package ({done.stderr.strip()[:200]}); delete it and fetch "
                        f"it again with apt-get download")
    return done.stdout


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.+-]", "_", text)


def licences(root: Path, package: str) -> list[str]:
    """The distinct `License:` values of the package's machine-readable copyright file."""
    path = root / "usr/share/doc" / package / "copyright"
    if not path.is_file():
        return ["unknown (no copyright file)"]
    names = []
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("License:"):
            name = line.split(":", 1)[1].strip()
            if name and name not in names:
                names.append(name)
    return names or ["see usr/share/doc/" + package + "/copyright"]
