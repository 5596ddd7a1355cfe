"""Paths as a user types them.

Every path a command takes (a flag, a positional argument, a field of a `--config` file) is relative to the current
folder, as in the shell, may hold spaces, and may start with `~` for the home folder. The shell expands `~` only at
the start of an unquoted word, so `--init "~/runs/el3"`, `--init=~/runs/el3`, `data: ~/corpus` in a config file,
`--splits file:~/splits.json`, `--data fp-k:~/FSS,~/VOC` and `--init fomaml=~/runs/el3` are expanded here.
"""

from __future__ import annotations

import os
import re
from typing import Any

# `scheme:` or `label=` before a path: file:PATH, hsnet:DIR, pascal5i:DIR, fp-k:A,B, journal:FILE, LABEL=SPEC.
_PREFIXED = re.compile(r"^([A-Za-z0-9_.+-]+[:=])(~.*)$", re.S)


def expand_user(value: Any) -> Any:
    """`value` with a leading `~` (also after a `scheme:` or `label=` prefix, and in each comma-separated part
    after it) replaced by the home folder; lists item by item; anything else unchanged. URLs (`scheme://`) are
    left alone."""
    if isinstance(value, list):
        return [expand_user(v) for v in value]
    if not isinstance(value, str):
        return value
    if value.startswith("~"):
        return os.path.expanduser(value)
    match = _PREFIXED.match(value)
    if match is None:
        return value
    head, rest = match.groups()
    return head + ",".join(os.path.expanduser(part) if part.startswith("~") else part for part in rest.split(","))
