"""Run plumbing usable from every layer: run folders, atomic writes, initialization files, device choice and the
worker pool. Imports nothing from fewshotseg except `fewshotseg.models` (to build a model from a saved config)."""
