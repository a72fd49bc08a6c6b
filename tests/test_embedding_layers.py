"""benchmarks/embedding_layers.py: the layers it reads out of an exported embedder, and its projection."""

import numpy as np
import torch

from conftest import load_script


def test_layers_of_a_scripted_embedder_end_in_its_own_output():
    from train.model import build_embedder, script_embedder

    layers_script = load_script("benchmarks/embedding_layers.py")
    torch.manual_seed(0)
    model, _ = build_embedder("resnet10t", embedding_dim=16)
    module = script_embedder(model)
    x = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8)
    got = layers_script.layer_features(module, x.numpy())
    assert got["backbone"].shape == (3, model.head[0].in_features)
    assert got["hidden"].shape == (3, model.head[0].out_features) and (got["hidden"] >= 0).all()  # after the ReLU
    with torch.no_grad():
        np.testing.assert_allclose(got["final"], module(x).numpy(), atol=1e-5)  # the layers are the model's own
    v = layers_script.variants(got)
    assert v["tap"].shape == (3, got["backbone"].shape[1] + got["hidden"].shape[1])
    assert np.allclose(np.linalg.norm(v["tap"], axis=1), 1, atol=1e-5)
    # the tap is the two normalised layers side by side: its cosine is the mean of theirs
    cos = lambda a: a @ a.T  # noqa: E731
    np.testing.assert_allclose(cos(v["tap"]), (cos(v["backbone"]) + cos(v["hidden"])) / 2, atol=1e-5)


def test_projection_is_fitted_on_the_rows_given_and_reports_the_energy_kept():
    from scanner.evaluation.baselines import l2_normalise

    layers_script = load_script("benchmarks/embedding_layers.py")
    rng = np.random.default_rng(0)
    x = l2_normalise(np.concatenate([rng.normal(size=(50, 3)) @ rng.normal(size=(3, 10)),
                                           rng.normal(size=(5, 10))]))
    fit = np.r_[np.ones(50, bool), np.zeros(5, bool)]  # the last five rows (held out) have another span
    out, kept = layers_script.projected(x, fit, 3)
    assert out.shape == (55, 3) and kept > 0.999  # the fit rows span 3 directions
    np.testing.assert_allclose(out[:50] @ out[:50].T, x[:50] @ x[:50].T, atol=1e-4)  # their cosines kept
