"""fewshotseg: meta-learned initializations for few-shot image segmentation."""

__version__ = "0.1.0"
