"""Run plumbing usable from every layer: run folders, atomic writes, JSONL, device choice, provenance and the
worker pool. Imports nothing of the domain (models, data, initializations): only `fewshotseg.errors`."""
