"""Adaptation methods: how an initialization becomes a segmenter for one task, from its support images.

Every method has one interface (`Adapter`): `fit(init, support, rng)` on the support tensors, then
`predict(images)` -> foreground probabilities (B, H, W). `evaluate`, `tune`, `FewShotSegmenter`, `adapt` and `serve`
dispatch by name through `make_adapter`, so every method runs on exactly the same episodes and inputs.

    finetune   U: gradient steps on the whole network (the paper's; its hyperparameters are `UpdateParams`, per
               shot count, with the BatchNorm regime as U's `bn_policy`; `head_init: probe` is LP-FT)
    probe      the network frozen; a class-balanced per-pixel logistic (or ridge) regression on its stride-4
               features: the encoder's stride-4 skip, its stride-16 output upsampled, the decoder's output
    prototype  the network frozen; masked average pooling of the support features into a foreground and a
               background prototype, cosine similarity x temperature, softmax (PANet's training-free baseline)
    rf         no network: scikit-image's multiscale intensity / edge / texture features and a scikit-learn random
               forest per pixel (ilastik's pixel classifier)

A method's settings are a small dataclass; the settings a card records (`card.adaptation`) are validated by it.
"""

from fewshotseg.adaptation.methods import (
    METHODS,
    Adapter,
    FinetuneAdapter,
    FrozenFeatures,
    MethodSpec,
    OneClassSupportError,
    ProbeAdapter,
    ProbeSettings,
    PrototypeAdapter,
    PrototypeSettings,
    RFAdapter,
    RFSettings,
    make_adapter,
    settings_for,
)

__all__ = ["METHODS", "Adapter", "FinetuneAdapter", "FrozenFeatures", "MethodSpec", "OneClassSupportError", "ProbeAdapter",
           "ProbeSettings", "PrototypeAdapter", "PrototypeSettings", "RFAdapter", "RFSettings", "make_adapter",
           "settings_for"]
