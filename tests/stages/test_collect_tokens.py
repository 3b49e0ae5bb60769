"""collect on token layers (vision transformers' (B, T, C)): rows at patch positions of the patch grid,
the class/register tokens left out and said so, attribution equal to a direct autograd computation."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch

from atlas.models import capture, load_model
from atlas.models.hooks import layer_as_leaf
from atlas.stages.collect.stage import CollectSettings, collect, layer_specs
from atlas.store.activations import ActivationsFile
from tinytokens import TinyTokens, small_vit

pytestmark = pytest.mark.usefixtures("one_thread")


def write_photos(folder, n: int, size=(48, 40)) -> list:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        paths.append(folder / f"img{i:04d}.png")
        Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(paths[-1])
    return paths


def _photos_tensor(model, paths) -> torch.Tensor:
    from PIL import Image

    return torch.stack([model.image_transform(Image.open(p)) for p in paths])


def _tokens(model, images: torch.Tensor, layer: str) -> torch.Tensor:
    with torch.no_grad(), capture(model, [layer]) as acts:
        model(images)
    return acts[layer]


def _direct_attribution(model, images: torch.Tensor, layer: str, image: int, token: int) -> np.ndarray:
    """h . d logit_c / d h at one token of one image, for every class c, by plain reverse-mode autograd."""
    rows = []
    for c in range(5):
        with layer_as_leaf(model.layer(layer)) as captured, torch.enable_grad():
            logits = model(images)
        (g,) = torch.autograd.grad(logits[image, c], captured["h"])
        rows.append(float((g[image, token] * captured["h"][image, token].detach()).sum()))
    return np.array(rows)


@pytest.mark.parametrize("registers", [0, 2])
def test_rows_are_patch_tokens_and_the_special_tokens_are_left_out(tmp_path, registers):
    model = load_model(TinyTokens(registers=registers), input_size=32)
    paths = write_photos(tmp_path / "p", 3)
    layers = ("block.1", "mix")
    s = CollectSettings(layers=layers, sampling="all", attribution=False, dtype="float32")
    summary = collect(tmp_path / "p", tmp_path / "a.h5", model, s, workers=0, progress=False)
    layout = f"{1 + registers}+4x4" if registers else "cls+4x4"
    assert summary.rows == {"block.1": 3 * 16, "mix": 3 * 16}
    assert f"block.1: tokens {layout}, the {1 + registers} leading class/register token" in summary.describe()
    images = _photos_tensor(model, paths)
    with ActivationsFile(tmp_path / "a.h5") as acts:
        for layer, width in (("block.1", 12), ("mix", 12)):
            spec = acts.spec(layer)
            assert (spec.channels, spec.grid_shape) == (width, (4, 4))
            assert (spec.token_layout, spec.skipped_tokens) == (layout, 1 + registers)
            tokens = _tokens(model, images, layer).numpy()
            rows = acts.read(layer, "activations")
            pos = acts.read(layer, "position")
            img = acts.read(layer, "image_index")
            assert set(map(tuple, pos)) == {(y, x) for y in range(4) for x in range(4)}
            want = tokens[img, 1 + registers + pos[:, 0] * 4 + pos[:, 1]]
            np.testing.assert_allclose(rows, want, rtol=1e-5, atol=1e-6)
            for special in range(1 + registers):  # no row is a class or register token
                assert not np.isclose(rows[:, None, :], tokens[img, special][:, None, :], atol=1e-6).all(-1).any()
    with h5py.File(tmp_path / "a.h5", "r") as f:
        assert f["layers/block.1"].attrs["token_layout"] == layout
        assert int(f["layers/block.1"].attrs["skipped_tokens"]) == 1 + registers


@pytest.mark.parametrize(("net", "layer"), [
    (TinyTokens, "block.1"),
    (small_vit, "encoder.layers.encoder_layer_0"),  # the residual stream after a block
    (small_vit, "encoder.layers.encoder_layer_1.mlp.1"),  # the MLP's hidden layer, after the GELU
])
@pytest.mark.parametrize("attribution_classes", [0, 4])  # forward mode (every class) / backward per class
def test_attribution_equals_direct_autograd(tmp_path, net, layer, attribution_classes):
    model = load_model(net(), input_size=32)
    paths = write_photos(tmp_path / "p", 2)
    s = CollectSettings(layers=(layer,), positions_per_image=2, edge_margin=0, top_k=5, dtype="float32",
                        attribution_classes=attribution_classes)
    collect(tmp_path / "p", tmp_path / "a.h5", model, s, workers=0, progress=False)
    images = _photos_tensor(model, paths)
    with ActivationsFile(tmp_path / "a.h5") as acts:
        assert acts.spec(layer).token_layout == "cls+4x4"
        classes = acts.read(layer, "attribution/top_classes")
        values = acts.read(layer, "attribution/top_values")
        pos = acts.read(layer, "position")
        img = acts.read(layer, "image_index")
    for row in (0, len(pos) - 1):
        direct = _direct_attribution(model, images, layer, int(img[row]), 1 + int(pos[row, 0]) * 4 + int(pos[row, 1]))
        assert np.abs(direct).max() > 1e-4  # a real test: the token matters to the logits
        np.testing.assert_allclose(values[row], direct[classes[row]], rtol=1e-4, atol=1e-5)
        if not attribution_classes:
            assert list(classes[row]) == list(np.argsort(-direct))


def test_last_block_output_has_no_patch_attribution():
    """What the README warns of: after the last block, the class token reads a patch token only
    through LayerNorm, which a scaled token does not change, so h . d logit / d h is 0 there."""
    model = load_model(small_vit(), input_size=32)
    images = torch.rand(1, 3, 32, 32)
    last = _direct_attribution(model, images, "encoder.layers.encoder_layer_2", 0, 6)
    earlier = _direct_attribution(model, images, "encoder.layers.encoder_layer_1", 0, 6)
    assert np.abs(last).max() < 1e-5 * np.abs(earlier).max()


@pytest.mark.slow
def test_torchvision_vit_b_16(tmp_path):
    model = load_model("torchvision:vit_b_16", random_init=True)
    layers = ("encoder.layers.encoder_layer_6", "encoder.layers.encoder_layer_6.mlp.1")
    write_photos(tmp_path / "p", 2, size=(240, 230))
    s = CollectSettings(layers=layers, positions_per_image=3, top_k=3)
    summary = collect(tmp_path / "p", tmp_path / "a.h5", model, s, workers=0, batch_size=2, progress=False)
    assert summary.rows == {layers[0]: 6, layers[1]: 6}
    assert "encoder.layers.encoder_layer_6: tokens cls+14x14, the 1 leading class/register token not collected" \
        in summary.describe()
    with ActivationsFile(tmp_path / "a.h5") as acts:
        spec = acts.spec(layers[0])
        assert (spec.channels, spec.grid_shape, spec.token_layout, spec.skipped_tokens) == (768, (14, 14),
                                                                                          "cls+14x14", 1)
        assert acts.spec(layers[1]).channels == 3072
        pos = acts.read(layers[0], "position")
        assert pos.min() >= 1 and pos.max() <= 12  # away from the edges of the 14 x 14 patch grid
        assert acts.read(layers[1], "activations").shape == (6, 3072)


def test_layers_that_are_neither_spatial_nor_tokens_are_refused():
    model = load_model(small_vit(), input_size=32)
    with pytest.raises(ValueError, match=r"neither \(C, H, W\) nor tokens.*spatial or token layer"):
        layer_specs(model, ["heads.head"])
    with pytest.raises(ValueError, match="not a tensor"):
        layer_specs(model, ["encoder.layers.encoder_layer_1.self_attention"])
    spec, = layer_specs(model, ["conv_proj"])  # the patch embedding is a (C, H, W) layer
    assert spec.grid_shape == (4, 4) and spec.token_layout is None


def test_timm_vit_collects_and_renders_token_rows(tmp_path):
    """A timm ViT by name (random weights): a block's tokens collected as patch positions (the class
    token left out), attribution on, and an icon of a collected direction raises the objective."""
    pytest.importorskip("timm")
    from atlas import optvis
    from atlas.optvis import evaluate, fft_image, render_vis
    from atlas.stages.render import icon_view_transforms

    model = load_model("timm:vit_tiny_patch16_224", random_init=True)
    layer = "blocks.6"
    write_photos(tmp_path / "p", 3, size=(240, 230))
    s = CollectSettings(layers=(layer,), positions_per_image=3, top_k=3, attribution_classes=4)
    summary = collect(tmp_path / "p", tmp_path / "a.h5", model, s, workers=0, batch_size=3, progress=False)
    assert summary.rows == {layer: 9}
    with ActivationsFile(tmp_path / "a.h5") as acts:
        spec = acts.spec(layer)
        assert (spec.channels, spec.grid_shape, spec.token_layout, spec.skipped_tokens) == (192, (14, 14),
                                                                                          "cls+14x14", 1)
        rows = acts.read(layer, "activations").astype(np.float32)
        assert np.abs(acts.read(layer, "attribution/top_values")).max() > 0
    # a direction photos vary along (in a random-init ViT most of an activation is the same in every image)
    vec = torch.as_tensor(rows[:1] - rows.mean(0, keepdims=True))
    obj = optvis.directions(layer, vec, cossim_pow=1.0, spatial_mean=True)
    gens = [torch.Generator().manual_seed(0)]
    param = fft_image(64, 1, generator=gens)
    with torch.no_grad():
        start = evaluate(model, obj, param())
    res = render_vis(model, obj, param, icon_view_transforms("transformer"), steps=16, lr=0.08, generator=gens)
    assert torch.all(res.values > start + 0.05 * start.abs()), (start, res.values)
