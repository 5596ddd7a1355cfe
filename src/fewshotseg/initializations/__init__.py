"""Initializations: the weights a command starts from, and what they say about themselves.

* `weights.py`: initialization files (`model.safetensors`, `checkpoint.pt`), the packaged ones, and turning an
  `--init` value (`random`, `imagenet`, a file or run folder) into a network;
* `card.py`: `card.json` and the model-card README beside the weights (`Card`);
* `pretrained.py`: folders of weights + card (`resolve_pretrained`, `save_pretrained`), run cards, and recording
  what `tune` found into a card.

Sits above `models/` (it builds networks) and `runs/` (atomic writes, run-folder file names).
"""
