"""The adaptation methods (U, probe, prototype, rf) behind one interface, and the closed-form heads under them."""

from __future__ import annotations

import copy
import json
import warnings

import numpy as np
import pytest
import torch

from fewshotseg.adaptation import MethodSpec, OneClassSupportError, make_adapter, settings_for
from fewshotseg.data.tasks import TaskTensors
from fewshotseg.models.closed_form import balanced_weights, logistic_head, pixel_features, ridge_head
from fewshotseg.models.efficientlab import ModelConfig, build_model


def test_the_probe_is_exact_on_separable_features():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1000, 8, generator=g)
    direction = torch.randn(8, generator=g)
    score = x @ direction - 0.3
    x, score = x[score.abs() > 0.5], score[score.abs() > 0.5]  # separable with a margin, unbalanced
    y = (score > 0).float()
    head = logistic_head(x, y, 1e-4, balanced_weights(y), max_iter=500)
    assert head.converged
    assert torch.equal((x @ head.weight + head.bias) > 0, y.bool())
    # ridge regression recovers a target that is exactly linear in the features (weights and bias)
    xd = x.double()
    target = xd @ direction.double() + 0.25
    exact = ridge_head(xd, target, 1e-9)
    torch.testing.assert_close(exact.weight, direction.double(), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(exact.bias, torch.tensor(0.25, dtype=torch.float64), rtol=1e-6, atol=1e-6)


def test_ridge_gradient_matches_autograd_through_a_naive_solve():
    g = torch.Generator().manual_seed(1)
    for n in (30, 6):  # the primal (n > C) and the dual (n <= C) solve
        x = torch.randn(n, 10, dtype=torch.float64, generator=g, requires_grad=True)
        y = (torch.rand(n, generator=g, dtype=torch.float64) > 0.5).double()
        w = balanced_weights(y)
        head = ridge_head(x, y, 0.5, w)
        q = torch.randn(5, 10, dtype=torch.float64, generator=g)
        loss = ((q @ head.weight + head.bias) ** 2).sum()
        (grad,) = torch.autograd.grad(loss, x)

        x2 = x.detach().clone().requires_grad_(True)
        xb = torch.cat([x2, torch.ones(n, 1, dtype=torch.float64)], 1)
        reg = torch.diag(torch.tensor([0.5] * 10 + [0.0], dtype=torch.float64))
        naive = torch.linalg.inv(xb.T @ torch.diag(w) @ xb + reg) @ xb.T @ (w * y) if n > 10 else None
        if naive is None:  # the dual's bias is penalised by a tiny amount; compare with the same problem
            reg[-1, -1] = 1e-6 * 0.5
            naive = torch.linalg.inv(xb.T @ torch.diag(w) @ xb + reg) @ xb.T @ (w * y)
        loss2 = ((q @ naive[:-1] + naive[-1]) ** 2).sum()
        (grad2,) = torch.autograd.grad(loss2, x2)
        torch.testing.assert_close(head.weight, naive[:-1].detach(), rtol=1e-6, atol=1e-8)
        torch.testing.assert_close(grad, grad2, rtol=1e-5, atol=1e-8)


def _task(dataset, cls: str, idx: list[int]) -> TaskTensors:
    return TaskTensors.from_dataset(dataset, cls).take(idx)


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    return build_model(ModelConfig(encoder="tinynet_e")).eval()


def test_lp_ft_head_after_the_probe_step_is_the_probes_solution(tiny_model, tiny_dataset):
    from fewshotseg.meta_learning.update_routine import probe_head_
    from fewshotseg.models.closed_form import flatten, mask_targets

    support = _task(tiny_dataset, tiny_dataset.names[0], [0, 1, 2])
    model = copy.deepcopy(tiny_model)
    probe_head_(model, support.images, support.masks, 1e-3)
    model.eval()
    with torch.no_grad():
        feats = pixel_features(model, support.images, ("decoder",), normalise=False)
        labels = (mask_targets(support.masks, feats.shape[-2:]) >= 0.5).float().flatten()
        head = logistic_head(flatten(feats), labels, 1e-3, balanced_weights(labels))
        skip, deep = model.encoder((support.images - model.mean) / model.std)
        logits = model.head(model.decoder(skip, deep))  # stride 4, before upsampling
    torch.testing.assert_close(logits[:, 1] - logits[:, 0], head.logits(feats), rtol=1e-4, atol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["finetune", "probe", "prototype", "rf"])
def test_each_method_beats_the_all_foreground_floor_on_tiny_tasks(tiny_model, tiny_dataset, method):
    from fewshotseg.meta_learning.update_routine import UpdateParams

    ious, floors = [], []
    for cls in tiny_dataset.names[:6]:
        support, query = _task(tiny_dataset, cls, [0, 1, 2, 3, 4]), _task(tiny_dataset, cls, [5, 6, 7])
        adapter = make_adapter(MethodSpec.of(method), params=UpdateParams(lr=0.02, steps=10, bn_policy="support"))
        adapter.fit(tiny_model, support, np.random.default_rng(0))
        pred = adapter.predict(query.images) > 0.5
        truth = query.masks.bool()
        ious.append(float((pred & truth).sum() / (pred | truth).sum()))
        floors.append(float(truth.float().mean()))  # the IoU of predicting everything foreground
    assert np.mean(ious) > np.mean(floors)


def test_a_one_class_support_set_is_refused_and_a_non_converged_probe_warns(tiny_model, tiny_dataset):
    support = _task(tiny_dataset, tiny_dataset.names[0], [0, 1])
    full = TaskTensors(support.images, torch.ones_like(support.masks))
    with pytest.raises(OneClassSupportError, match="only foreground"):
        make_adapter(MethodSpec.of("probe")).fit(tiny_model, full, np.random.default_rng(0))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        make_adapter(MethodSpec.of("probe", {"max_iter": 1, "l2": 1e-6})).fit(tiny_model, support,
                                                                             np.random.default_rng(0))
    assert any("did not converge" in str(w.message) and "max_iter" in str(w.message) for w in caught)


def test_settings_are_validated_by_name():
    with pytest.raises(ValueError, match="unknown probe setting"):
        settings_for("probe", {"lr": 1})
    with pytest.raises(ValueError, match="features"):
        settings_for("prototype", {"features": ["skipp"]})
    with pytest.raises(ValueError, match="unknown adaptation method"):
        MethodSpec.of("knn")
    spec = MethodSpec.of("probe", {"features": ["skip", "deep"]})
    assert MethodSpec.of(**spec.as_dict()) == spec and "skip+deep" in spec.describe()


def test_evaluate_runs_a_method_on_the_same_episodes_and_records_it(tiny_benchmark, tmp_path):
    from fewshotseg.evaluation.evaluate import EvaluateConfig, evaluate

    rows = {}
    for method in ("finetune", "probe"):
        cfg = EvaluateConfig(init="random", data=str(tiny_benchmark), run_dir=str(tmp_path / method), shots=[1],
                             size=32, encoder="tinynet_e", max_tasks=2, workers=1, method=method)
        results = evaluate(cfg, progress=False)
        assert results["method"]["method"] == method
        assert results["shots"]["1"]["seconds_per_episode"] > 0
        rows[method] = [json.loads(line) for line in (tmp_path / method / "episodes.jsonl").read_text().splitlines()]
    assert [(r["class"], r["split"], r["query"]) for r in rows["finetune"]] == \
        [(r["class"], r["split"], r["query"]) for r in rows["probe"]]


def test_tune_searches_a_methods_settings_and_records_them_in_the_card(tiny_benchmark, tmp_path, tiny_config):
    from fewshotseg.cli import main
    from fewshotseg.initializations.card import read_card
    from fewshotseg.initializations.weights import save_initialization
    from fewshotseg.models.efficientlab import build_model

    torch.manual_seed(0)
    init = tmp_path / "init" / "model.safetensors"
    init.parent.mkdir()
    save_initialization(init, build_model(tiny_config))
    assert main(["tune", "--init", str(init), "--data", str(tiny_benchmark), "--run-dir", str(tmp_path / "t"),
                 "--method", "probe", "--trials", "3", "--val-tasks", "3", "--shots", "1", "--size", "32"]) == 0
    result = json.loads((tmp_path / "t" / "method.json").read_text())
    assert result["method"] == "probe" and 1e-5 <= result["settings"]["l2"] <= 1e-1
    trials = json.loads((tmp_path / "t" / "trials.json").read_text())["trials"]
    assert result["objective"] == max(t["value"] for t in trials if t["value"] is not None)
    card = read_card(init.parent)
    assert card.adaptation["method"] == "probe" and card.adaptation["settings"] == result["settings"]
    # the card's method is now the default of evaluate (and adapt, serve, FewShotSegmenter)
    from fewshotseg.evaluation.evaluate import EvaluateConfig, method_spec

    spec, source = method_spec(EvaluateConfig(init=str(init.parent), data="x", run_dir="y"))
    assert spec.method == "probe" and "method.json" in source


def test_r2d2_meta_steps_lower_the_query_loss_under_the_closed_form_head(tiny_dataset, tiny_config):
    from fewshotseg.meta_learning.meta_learner import MetaLearner
    from fewshotseg.meta_learning.meta_update import ridge_query_loss
    from fewshotseg.meta_learning.update_routine import UpdateParams

    torch.manual_seed(0)
    model = build_model(tiny_config)
    task = TaskTensors.from_dataset(tiny_dataset, tiny_dataset.names[0])
    support, query = task.take([0, 1, 2, 3, 4]), task.take([5, 6, 7, 8, 9])

    def loss() -> float:
        probe = copy.deepcopy(model).train()
        return float(ridge_query_loss(probe, support, query, 1e-3))

    before = loss()
    meta = MetaLearner(model, "r2d2", UpdateParams(lr=1.0, steps=1), meta_optimizer="adam", meta_step=1e-3,
                       train_shots=10, val_shots=5)
    for i in range(5):
        meta.meta_step([task], rngs=[np.random.default_rng(i)])
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert loss() < before


def test_frozen_features_of_an_untrained_decoder_are_refused_naming_both():
    from fewshotseg.errors import SettingError
    from fewshotseg.initializations.adapting import resolve_method
    from fewshotseg.initializations.pretrained import init_card

    spec, _ = resolve_method(init_card("imagenet"), "probe")
    assert spec.as_dict()["settings"]["features"] == ["skip", "deep"]  # the encoder's features by default
    with pytest.raises(SettingError, match="probe method on the imagenet initialization with decoder features"):
        resolve_method(init_card("imagenet"), "probe", settings={"features": ["skip", "decoder"]})


@pytest.mark.parametrize("method,policy,refine", [("finetune", "support", 0), ("finetune", "support", 8),
                                                  ("probe", None, 0), ("prototype", None, 8)])
def test_a_saved_fitted_segmenter_predicts_the_same_masks_when_loaded(tmp_path, tiny_config, method, policy, refine):
    from conftest import REAL_PHOTOS
    from fewshotseg.meta_learning.update_routine import UpdateParams
    from fewshotseg.segmenter import ADAPTER_FILE, FewShotSegmenter

    torch.manual_seed(0)
    seg = FewShotSegmenter.from_pretrained("random", model_config=tiny_config, size=64, device="cpu")
    duck = REAL_PHOTOS / "duck_toy"
    params = UpdateParams(lr=0.01, steps=2, bn_policy=policy) if policy else None
    settings = {"stats": "support"} if method == "probe" else {}
    seg.fit([duck / "1.jpg", duck / "2.jpg"], [duck / "1.png", duck / "2.png"], method=method,
            settings={**settings, "refine_radius": refine}, update_params=params)
    before = seg.predict([duck / "3.jpg"])[0].probability
    seg.save_pretrained(tmp_path / "fitted")
    assert (tmp_path / "fitted" / ADAPTER_FILE).is_file() == (method != "finetune")
    loaded = FewShotSegmenter.from_pretrained(tmp_path / "fitted", device="cpu")
    assert loaded.fitted and loaded.method.method == method
    assert loaded.method.as_dict()["settings"]["refine_radius"] == refine  # the refinement is kept with the fit
    np.testing.assert_allclose(loaded.predict([duck / "3.jpg"])[0].probability, before, atol=1e-5)


def test_flip_gives_mirror_symmetric_predictions(tiny_model, tiny_dataset):
    support, query = _task(tiny_dataset, tiny_dataset.names[1], [0, 1, 2]), _task(tiny_dataset, tiny_dataset.names[1], [3])
    for method in ("probe", "prototype"):
        adapter = make_adapter(MethodSpec.of(method, {"flip": True}))
        adapter.fit(tiny_model, support, np.random.default_rng(0))
        # fitting on the support and its mirror, predicting image and mirror: a mirrored query is mirrored output
        torch.testing.assert_close(adapter.predict(query.images.flip(-1)), adapter.predict(query.images).flip(-1),
                                   rtol=1e-3, atol=1e-3)


def test_a_prior_pulls_the_probe_toward_it():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(400, 6, generator=g)
    y = (x[:, 0] > 0).float()
    free = logistic_head(x, y, 1e-3, balanced_weights(y), max_iter=300)
    prior = logistic_head(x, 1 - y, 1e-3, balanced_weights(y), max_iter=300)  # the opposite rule
    anchored = logistic_head(x, y, 1e3, balanced_weights(y), max_iter=300, prior=prior)
    # a strong pull keeps the prior's weights; a weak one leaves the data's solution (the prior only starts it)
    torch.testing.assert_close(anchored.weight, prior.weight, rtol=0, atol=2e-3)
    weak = logistic_head(x, y, 1e-3, balanced_weights(y), max_iter=300, prior=prior)
    assert torch.equal((x @ weak.weight + weak.bias > 0), (x @ free.weight + free.bias > 0))


def test_self_training_is_per_image_and_mirror_symmetric(tiny_model, tiny_dataset):
    support = _task(tiny_dataset, tiny_dataset.names[1], [0])
    query = _task(tiny_dataset, tiny_dataset.names[1], [1, 2, 3])
    plain = make_adapter(MethodSpec.of("probe", {"flip": True}))
    plain.fit(tiny_model, support, np.random.default_rng(0))
    adapter = make_adapter(MethodSpec.of("probe", {"flip": True, "self_train": 2, "confidence": 0.6}))
    adapter.fit(tiny_model, support, np.random.default_rng(0))
    together = adapter.predict(query.images)
    assert not torch.allclose(together, plain.predict(query.images), atol=1e-4)  # the refit changed something
    # each query is refit on its own pixels: alone or in a batch, the same probabilities
    for i in range(len(query.images)):
        torch.testing.assert_close(adapter.predict(query.images[i:i + 1])[0], together[i], rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(adapter.predict(query.images.flip(-1)), together.flip(-1), rtol=1e-3, atol=1e-3)


def test_self_training_settings_are_checked():
    with pytest.raises(ValueError, match="logistic"):
        settings_for("probe", {"self_train": 1, "solver": "ridge"})
    with pytest.raises(ValueError, match="confidence"):
        settings_for("probe", {"self_train": 1, "confidence": 0.4})


def test_refinement_snaps_a_blurred_probability_to_the_images_edge_and_keeps_it_per_image():
    from fewshotseg.adaptation.methods import FrozenFeatures

    image = torch.zeros(1, 3, 64, 64)
    image[..., 40:] = 1.0  # a bright object right of column 40 on a dark background
    truth = (image[:, :1] > 0.5).float()
    x = torch.arange(64, dtype=torch.float32)
    blurred = torch.sigmoid((x - 36) / 4).expand(1, 1, 64, 64)  # a coarse map: its edge 4 px off, and soft
    adapter = make_adapter(MethodSpec.of("probe", {"refine_radius": 8, "refine_eps": 1e-4}))
    assert isinstance(adapter, FrozenFeatures)
    refined = adapter.refined(blurred, image)
    assert not ((blurred > 0.5) == (truth > 0.5)).all()
    assert ((refined > 0.5) == (truth > 0.5)).all()  # the mask's edge now lies on the image's
    step = lambda p: float((p[..., 40] - p[..., 39]).min())  # noqa: E731
    assert step(refined) > 0.3 > 5 * step(blurred)  # and is a step there, no longer a ramp
    # linear in its input: class probabilities that sum to one still do; each image is filtered by its own guide
    two = torch.cat([blurred, 1 - blurred], 1)
    torch.testing.assert_close(adapter.refined(two, image).sum(1), torch.ones(1, 64, 64), rtol=0, atol=1e-4)
    pair = adapter.refined(torch.cat([blurred, blurred]), torch.cat([image, image.flip(-1)]))
    torch.testing.assert_close(pair[:1], refined)
    off = make_adapter(MethodSpec.of("probe"))
    assert off.refined(blurred, image) is blurred  # radius 0 (the settings' default): no refinement
    wide = make_adapter(MethodSpec.of("probe", {"refine_radius": 200, "refine_eps": 1e-4}))
    assert ((wide.refined(blurred, image) > 0.5) == (truth > 0.5)).all()  # wider than the image: the whole image


def test_refinement_settings_are_checked():
    for bad in ({"refine_radius": -1}, {"refine_radius": 4, "refine_eps": 0}):
        for method in ("probe", "prototype", "finetune"):
            with pytest.raises(ValueError, match="refine"):
                settings_for(method, bad)


def test_u_refines_its_predictions_when_asked_and_only_then(tiny_model, tiny_dataset):
    from fewshotseg.meta_learning.update_routine import UpdateParams

    support = _task(tiny_dataset, tiny_dataset.names[1], [0, 1, 2])
    query = _task(tiny_dataset, tiny_dataset.names[1], [3, 4])
    params = UpdateParams(lr=0.01, steps=2, bn_policy="support")
    found = {}
    for radius in (0, 4):
        adapter = make_adapter(MethodSpec.of("finetune", {"refine_radius": radius}), params=params)
        adapter.fit(tiny_model, support, np.random.default_rng(0))
        found[radius] = adapter.predict(query.images)
    from fewshotseg.adaptation.methods import refine

    # the same U (same seed), then the guided filter of its probabilities with each query as guide
    torch.testing.assert_close(found[4], refine(found[0][:, None], query.images, 4, 1e-3)[:, 0])
    assert not torch.allclose(found[4], found[0])


@pytest.mark.parametrize("stats", ["running", "support"])
def test_frozen_methods_read_a_folded_copy_and_keep_the_network_unfolded(tiny_model, tiny_dataset, stats):
    """The probe reads its features from a BatchNorm-folded copy (faster, same features up to rounding); the network
    it saves and hands out keeps its BatchNorm layers, with the statistics the settings ask for."""
    name = tiny_dataset.names[0]
    support, query = _task(tiny_dataset, name, [0, 1, 2]), _task(tiny_dataset, name, [3])
    adapter = make_adapter(MethodSpec.of("probe", {"stats": stats}))
    adapter.fit(tiny_model, support, np.random.default_rng(0))
    network = adapter.network()
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in network.encoder.modules())
    assert adapter._folded is not None and adapter._folded[0] is network and adapter._folded[1] is not network
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in adapter._folded[1].encoder.modules())
    with torch.no_grad():
        plain = pixel_features(network, query.images, tuple(adapter.settings.features))
    folded = adapter.features(query.images)
    assert (folded - plain).abs().max() <= 1e-5 * plain.abs().max()
