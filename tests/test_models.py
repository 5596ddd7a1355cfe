"""EfficientLab: encoder cut, decoder shapes, variants, parameter counts and pretrained-weight mapping."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fewshotseg.models.efficientlab import VARIANTS, EfficientLab, ModelConfig, build_model, count_parameters
from fewshotseg.models.encoder import Encoder
from fewshotseg.models.losses import l2_parameters, segmentation_loss


@pytest.mark.parametrize("name", ["tf_efficientnet_b0", "tinynet_e", "mobilenetv3_small_100"])
def test_encoder_channels_and_strides_match_real_feature_shapes(name):
    encoder = Encoder(name)
    skip, deep = encoder(torch.randn(2, 3, 96, 96))
    assert (skip.shape[1], deep.shape[1]) == encoder.channels
    assert 96 // skip.shape[-1] == encoder.strides[0] == 4
    assert 96 // deep.shape[-1] == encoder.strides[1] == 16


def test_b0_is_cut_after_eleven_blocks_with_112_channels():
    encoder = Encoder("tf_efficientnet_b0")
    assert encoder.num_blocks == 11
    assert encoder.channels == (24, 112)
    assert count_parameters(encoder) == 851_808  # the reference's hand count for stem + blocks 0-10


@pytest.mark.parametrize("name", ["tf_efficientnet_b0", "tinynet_e", "mobilenetv3_small_100"])
def test_no_unused_encoder_parameter_remains(name):
    encoder = Encoder(name)
    skip, deep = encoder(torch.randn(2, 3, 64, 64))
    (skip.sum() + deep.sum()).backward()
    unused = [n for n, p in encoder.named_parameters() if p.grad is None]
    assert unused == []


def test_parameter_counts_equal_the_reference_hand_counts():
    el3 = EfficientLab(ModelConfig("efficientlab-3", "tf_efficientnet_b0"))
    el63 = EfficientLab(ModelConfig("efficientlab-6-3", "tf_efficientnet_b0"))
    assert count_parameters(el3) == 1_368_242
    assert count_parameters(el63) == 2_071_714
    assert count_parameters(el3.decoder) == 516_208
    assert count_parameters(el63.decoder) == 516_208 + 703_472


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("size", [64, 224])
def test_every_variant_runs_forward_with_finite_two_class_output(variant, size):
    model = build_model(ModelConfig(variant=variant, encoder="tf_efficientnet_b0")).eval()
    with torch.no_grad():
        out = model(torch.rand(2, 3, size, size))
    assert out.shape == (2, 2, size, size)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_loss_reaches_every_trainable_parameter(variant):
    model = build_model(ModelConfig(variant=variant, encoder="tinynet_e")).train()
    x = torch.rand(4, 3, 64, 64)
    y = (torch.rand(4, 64, 64) > 0.7).long()
    segmentation_loss(model(x), y).backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.any())]
    assert missing == []


def test_no_residual_variant_differs_only_by_the_residual():
    torch.manual_seed(0)
    with_res = build_model(ModelConfig("efficientlab-3", "tinynet_e")).eval()
    without = build_model(ModelConfig("efficientlab-3-no-residual", "tinynet_e")).eval()
    without.load_state_dict(with_res.state_dict())
    x = torch.rand(1, 3, 64, 64)
    assert not torch.allclose(with_res(x), without(x))
    skip, deep = with_res.encoder((x - with_res.mean) / with_res.std)
    rsd = with_res.decoder.rsd[0]
    up = torch.nn.functional.interpolate(deep, size=skip.shape[-2:], mode="bilinear", align_corners=True)
    torch.testing.assert_close(rsd(deep, skip) - without.decoder.rsd[0](deep, skip), up)


def test_efficientlab_6_3_first_rsd_concatenates_deep_features_with_themselves():
    model = EfficientLab(ModelConfig("efficientlab-6-3", "tf_efficientnet_b0"))
    first = model.decoder.rsd[0]
    assert first.branch1x1[0].in_channels == 224  # 112 upsampled (identity) + 112 skip (the same tensor)
    assert model.decoder.rsd[1].branch1x1[0].in_channels == 136  # 112 + the 24-channel stride-4 skip


def test_l2_excludes_batchnorm_parameters_only():
    model = EfficientLab(ModelConfig("efficientlab-3", "tinynet_e"))
    l2 = {id(p) for p in l2_parameters(model)}
    bn = {id(p) for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d) for p in m.parameters()}
    assert l2.isdisjoint(bn)
    assert l2 | bn == {id(p) for p in model.parameters()}
    assert id(model.head[1].bias) in l2  # biases are penalised, as in the reference


@pytest.mark.parametrize("name", ["tf_efficientnet_lite0", "tf_efficientnet_lite1", "tf_efficientnet_lite2"])
def test_lite_imagenet_weights_load_strictly_and_name_the_coffee_photo(name):
    skimage = pytest.importorskip("skimage")
    import importlib

    import timm
    from PIL import Image
    from timm.data import ImageNetInfo

    from fewshotseg.models.pretrained import PACKAGED_WEIGHTS, package_state_dict

    pytest.importorskip(PACKAGED_WEIGHTS[name][1])
    importlib.import_module(PACKAGED_WEIGHTS[name][1])
    classifier = timm.create_model(name)
    classifier.load_state_dict(package_state_dict(name), strict=True)
    classifier.eval()
    photo = Image.fromarray(skimage.data.coffee()).resize((224, 224), Image.BICUBIC)
    x = torch.from_numpy(np.array(photo)).permute(2, 0, 1)[None].float() / 255
    x = (x - 0.5) / 0.5  # timm's normalisation for tf_efficientnet_lite0
    with torch.no_grad():
        top = classifier(x).softmax(1)[0].argmax().item()
    assert ImageNetInfo().index_to_description(top) == "espresso"


def test_imagenet_encoder_weights_reach_the_truncated_encoder():
    from fewshotseg.models.pretrained import lite0_package_state_dict

    model = build_model(ModelConfig("efficientlab-3", "tf_efficientnet_lite0"), encoder_weights="imagenet")
    reference = lite0_package_state_dict()
    for name, tensor in model.encoder.body.state_dict().items():
        torch.testing.assert_close(tensor, reference[name])


def test_encoder_weights_from_a_local_safetensors_file(tmp_path):
    from safetensors.torch import save_file

    source = build_model(ModelConfig("efficientlab-3", "tinynet_e"))
    path = tmp_path / "enc.safetensors"
    save_file({k: v.contiguous() for k, v in source.encoder.body.state_dict().items()}, str(path))
    model = build_model(ModelConfig("efficientlab-3", "tinynet_e"), encoder_weights=str(path))
    for (name, a), b in zip(model.encoder.body.state_dict().items(), source.encoder.body.state_dict().values()):
        torch.testing.assert_close(a, b, msg=name)


def test_a_wrong_weights_file_fails_loudly(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "bad.safetensors"
    save_file({"conv_stem.weight": torch.zeros(1)}, str(path))
    with pytest.raises(ValueError, match="missing"):
        build_model(ModelConfig("efficientlab-3", "tinynet_e"), encoder_weights=str(path))


def test_model_info_prints_the_counts(capsys):
    from fewshotseg.cli import main

    assert main(["model-info", "--variant", "efficientlab-6-3", "--encoder", "tf_efficientnet_b0"]) == 0
    out = capsys.readouterr().out
    assert "2,071,714" in out and "stride 16" in out and "112 ch" in out


def test_rsd_pool_branch_shortcut_equals_convolving_the_broadcast_map():
    from fewshotseg.models.residual_skip_decoder import ResidualSkipDecoder

    torch.manual_seed(0)
    rsd = ResidualSkipDecoder(deep_channels=12, skip_channels=5, channels=12).eval()
    deep, skip = torch.randn(2, 12, 3, 4), torch.randn(2, 5, 9, 11)
    up = torch.nn.functional.interpolate(deep, size=(9, 11), mode="bilinear", align_corners=True)
    cat = torch.cat([up, skip], 1)
    pooled = cat.mean(dim=(2, 3), keepdim=True).expand_as(cat)
    expected = rsd.fuse(torch.cat([rsd.branch1x1(cat), rsd.branch3x3(cat), pooled], 1)) + up
    torch.testing.assert_close(rsd(deep, skip), expected, rtol=1e-5, atol=1e-5)


def test_a_hub_download_says_before_it_waits_and_fails_with_what_to_do(monkeypatch, caplog):
    import huggingface_hub.constants
    import timm

    from fewshotseg.models import pretrained

    def offline(*args, **kwargs):
        raise OSError("Name or service not known")

    monkeypatch.setattr(timm, "create_model", offline)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)  # as if HF_HUB_OFFLINE were unset
    with caplog.at_level("WARNING"), pytest.raises(pretrained.WeightsUnavailable, match="--encoder tf_efficientnet_lite0"):
        pretrained.hub_state_dict("tf_efficientnet_b0")
    assert "HF_HUB_OFFLINE=1 to fail at once" in caplog.text  # said before the retries, not after
    caplog.clear()
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # offline already: no wait, no warning
    with pytest.raises(pretrained.WeightsUnavailable):
        pretrained.hub_state_dict("tf_efficientnet_b0")
    assert not caplog.text


def _random_statistics_(model: torch.nn.Module) -> torch.nn.Module:
    """Every BatchNorm given non-trivial statistics and affine parameters (seeded), so that folding has work to do."""
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.2)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(n, generator=g) * 0.2)
    return model.eval()


@pytest.mark.parametrize("encoder", ["tf_efficientnet_lite0", "tinynet_e", "mobilenetv3_small_100"])
def test_folded_batchnorm_gives_the_same_outputs_and_leaves_the_network_alone(encoder):
    from fewshotseg.models.closed_form import pixel_features
    from fewshotseg.models.folding import fold_batchnorm

    torch.manual_seed(0)
    model = _random_statistics_(build_model(ModelConfig(encoder=encoder)))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    norms = sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.encoder.modules())
    folded = fold_batchnorm(model)
    assert folded is not model
    # every encoder norm follows its convolution and is folded away; the decoder's follow a swish and stay
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in folded.encoder.modules()) == 0 < norms
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in folded.decoder.modules()) == 3
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the network itself unchanged
    x = torch.rand(3, 3, 96, 96)
    with torch.no_grad():
        expected, got = model(x), folded(x)
        features = pixel_features(model, x, ("skip", "deep", "decoder"))
        folded_features = pixel_features(folded, x, ("skip", "deep", "decoder"))
    assert (expected - model(x)).abs().max() == 0  # (the comparison is between the two, not of noise)
    for a, b in ((got, expected), (folded_features, features)):  # float rounding, relative to the largest value
        assert a.shape == b.shape and (a - b).abs().max() <= 1e-5 * b.abs().max(), (a - b).abs().max() / b.abs().max()


def test_folding_a_layout_it_does_not_know_warns_and_keeps_the_network():
    from fewshotseg.models.folding import fold_batchnorm

    class NormFirst(torch.nn.Module):  # conv declared before its BatchNorm, but the norm is applied first
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 3, 3, padding=1)
            self.bn = torch.nn.BatchNorm2d(3)

        def forward(self, x):
            return self.conv(self.bn(x))

    model = _random_statistics_(NormFirst())
    with pytest.warns(RuntimeWarning, match="does not match"):
        assert fold_batchnorm(model) is model
    with pytest.raises(ValueError, match="eval mode"):
        fold_batchnorm(model.train())
