"""The realistic training corpus: real art and photographs with exact alpha masks, from Debian packages."""

from fewshotseg.data.corpus.build import CorpusSpec, make_corpus

__all__ = ["CorpusSpec", "make_corpus"]
