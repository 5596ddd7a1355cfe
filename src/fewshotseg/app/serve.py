"""Start the page: load the initializations once, make the server's temporary folder, launch Gradio safely.

Safe by default: it binds 127.0.0.1 (other hosts are a choice, and `serve` warns about them), `auth` asks for a
user name and password, uploads are limited in bytes (Gradio refuses larger files before they reach the disk) and in
count and pixels (`Workspace`), and everything written lives under one temporary folder of this server: Gradio's
uploads (`GRADIO_TEMP_DIR`) and one folder per session, removed when the session or the server ends.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from fewshotseg.app.workspace import Initialization, Limits
from fewshotseg.errors import SettingError, UserError

LOOPBACK = ("127.0.0.1", "localhost", "::1")


@dataclass
class ServeOptions:
    inits: list[str] = field(default_factory=lambda: ["general"])
    host: str = "127.0.0.1"
    port: int = 7860
    auth: str = ""  # "USER:PASS"
    limits: Limits = field(default_factory=Limits)
    concurrency: int = 1  # adaptations at once (each uses every CPU core torch is given)
    device: str = "cpu"
    method: str = "card"  # the Method control's starting value: the initialization's own, or a named method


def load_initializations(specs: list[str], device: str) -> list[Initialization]:
    """One `Initialization` per spec, labelled by its name; the shipped `general` one, when missing, is a clear
    error that says to pass --init."""
    from fewshotseg.initializations.weights import PACKAGED, packaged_folder
    from fewshotseg.segmenter import FewShotSegmenter

    out: list[Initialization] = []
    for spec in specs:
        if spec in PACKAGED:
            try:
                packaged_folder(spec)
            except UserError:
                raise UserError(f"the shipped {spec!r} initialization is not installed with this copy of fewshotseg; "
                                "pass --init FOLDER (a folder with model.safetensors + card.json, e.g. one written "
                                "by save_pretrained, or a meta-trained run folder)") from None
        seg = FewShotSegmenter.from_pretrained(spec, device=device)
        label = spec if spec in PACKAGED or spec in ("random", "imagenet") else Path(spec).resolve().name
        if label in {i.label for i in out}:
            label = spec
        out.append(Initialization(label, seg))
    return out


def parse_auth(text: str) -> tuple[str, str] | None:
    if not text:
        return None
    user, sep, password = text.partition(":")
    if not sep or not user or not password:
        raise SettingError("--auth USER:PASS: give a user name and a password separated by ':'")
    return user, password


def serve(options: ServeOptions, *, block: bool = True):
    """Launch the page; with `block=False` return (demo, url, close) for tests and scripts."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home
    auth = parse_auth(options.auth)
    if options.host not in LOOPBACK:
        print(f"fewshotseg serve: warning: listening on {options.host}, not on 127.0.0.1: anyone who can reach "
              f"this machine on port {options.port} can use the page"
              + ("" if auth else " (no --auth: without a password)"), file=sys.stderr)
    inits = load_initializations(options.inits, options.device)
    root = Path(tempfile.mkdtemp(prefix="fewshotseg-serve-"))
    os.environ["GRADIO_TEMP_DIR"] = str(root / "uploads")  # Gradio writes uploads here, and nowhere else

    from fewshotseg.app.page import build_page

    demo = build_page(inits, options.limits, root / "sessions", concurrency=options.concurrency,
                      method0=options.method)
    demo.queue(default_concurrency_limit=options.concurrency)

    def close() -> None:
        demo.close()
        demo.sessions.close_all()
        shutil.rmtree(root, ignore_errors=True)

    try:
        _, url, _ = demo.launch(server_name=options.host, server_port=options.port, auth=auth, share=False,
                                max_file_size=f"{int(options.limits.max_file_mb * 1e6)}b", inbrowser=False,
                                prevent_thread_lock=not block, show_error=True, quiet=not block)
    except OSError as err:
        close()
        raise UserError(f"cannot listen on {options.host}:{options.port} ({err}); choose another --port") from None
    except BaseException:
        close()
        raise
    if block:
        close()
        return None
    return demo, url, close
