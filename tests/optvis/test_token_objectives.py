"""Feature visualization of token layers: objectives read a vision transformer's (B, T, C) as its patch
grid, renders of a token-layer direction raise their objective, and the ``transformer`` icon view."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from atlas import optvis
from atlas.checks import SettingError
from atlas.models import capture, load_model
from atlas.optvis import evaluate, fft_image, render_vis
from atlas.optvis.transform import apply, icon_transforms
from atlas.stages.collect.stage import CollectSettings, collect
from atlas.stages.render import RenderSettings, cell_generator, icon_view_transforms, render_cells
from atlas.store.activations import ActivationsFile
from atlas.store.cells import CellLevel, write_cells
from atlas.store.icons import read_icons
from tinytokens import TinyTokens, small_vit

pytestmark = pytest.mark.usefixtures("one_thread")

MLP = "encoder.layers.encoder_layer_1.mlp.1"  # the MLP's hidden layer, after the GELU: (17, 32)


def test_objectives_read_token_layers_as_their_patch_grid():
    model = load_model(TinyTokens(registers=1), input_size=32)  # 2 special tokens, then 4 x 4 patches
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad(), capture(model, ["mix"]) as acts:
        model(x)
    tokens = acts["mix"]  # (3, 18, 12), as the model made it
    patches = tokens[:, 2:]
    v = torch.randn(12)
    with torch.no_grad():
        torch.testing.assert_close(evaluate(model, optvis.channel("mix", 3), x), patches[:, :, 3].mean(1))
        torch.testing.assert_close(evaluate(model, optvis.neuron("mix", 3), x), tokens[:, 2 + 2 * 4 + 2, 3])
        torch.testing.assert_close(evaluate(model, optvis.neuron("mix", 3, y=0, x=1), x), tokens[:, 3, 3])
        torch.testing.assert_close(evaluate(model, optvis.direction("mix", v), x), (patches @ v).mean(1))
        assert evaluate(model, optvis.diversity("mix"), x).shape == (3,)
        with pytest.raises(ValueError, match="outside layer mix's 4x4 grid"):
            evaluate(model, optvis.neuron("mix", 0, y=4, x=0), x)


@pytest.mark.parametrize("spatial_mean", [True, False])  # the render's "mean" and "center" objectives
def test_render_of_a_token_direction_raises_the_objective(spatial_mean):
    model = load_model(small_vit(), input_size=32)  # takes 32 px only: the icons are resampled to it
    vecs = _directions(model, 2)
    obj = optvis.directions(MLP, vecs, cossim_pow=1.0, spatial_mean=spatial_mean)
    gens = [torch.Generator().manual_seed(i) for i in range(2)]
    param = fft_image(64, 2, generator=gens)
    with torch.no_grad():
        start = evaluate(model, obj, param())  # the objective at step 0
    res = render_vis(model, obj, param, icon_view_transforms("transformer"), steps=32, lr=0.08, generator=gens)
    assert torch.all(res.values > start + 0.05 * start.abs()), (start, res.values)


def _directions(model, n: int) -> torch.Tensor:
    """Directions in ``MLP`` that photos vary along: the mean patch activation of each of ``n``
    noise images minus that of 16 (in a random-init ViT the position embeddings and biases make
    most of an activation, the same in every image)."""
    with torch.no_grad(), capture(model, [MLP], grid=True) as acts:
        model(torch.rand(16, 3, 32, 32, generator=torch.Generator().manual_seed(5)))
    mean = acts[MLP].mean((2, 3))
    return mean[:n] - mean.mean(0)


def test_render_cells_on_a_token_layer_from_collected_directions(tmp_path):
    net = small_vit()
    model = load_model(net, input_size=32)
    photos = tmp_path / "p"
    photos.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray(rng.integers(0, 256, (36, 40, 3), dtype=np.uint8)).save(photos / f"{i}.png")
    collect(photos, tmp_path / "acts.h5", model, CollectSettings(layers=(MLP,), sampling="all", attribution=False),
            workers=0, progress=False)
    with ActivationsFile(tmp_path / "acts.h5") as acts:
        rows = acts.read(MLP, "activations").astype(np.float32)  # 2 images x 16 patches
    rows -= rows.mean(0)  # what photos vary along (see _directions)
    directions = np.stack([rows[:16].mean(0), rows[16:].mean(0), rows[5]])
    ids = np.array([0, 1, 3], np.int32)
    level = CellLevel(size=2, min_count=1, cell_id=ids, coords=np.stack([ids // 2, ids % 2], 1),
                      center=np.full((3, 2), 0.5, np.float32), count=np.ones(3, np.int32), direction=directions,
                      top_classes=np.zeros((3, 1), np.int16), top_values=np.zeros((3, 1), np.float32),
                      example_rows=np.full((3, 1), -1, np.int64), example_images=np.full((3, 1), -1, np.int64))
    write_cells(tmp_path / "cells.h5", [level], settings={"test": 1},
                attrs={"model": model.name, "layer": MLP, "source": str(tmp_path / "acts.h5")})
    summary = render_cells(tmp_path / "cells.h5", tmp_path / "icons.h5", model, icon_view="transformer",
                           icon_size=64, steps=16, device="cpu", progress=False)
    assert summary.complete and summary.rendered == {2: 3}
    icons = read_icons(tmp_path / "icons.h5")[2]
    assert icons.icons.shape == (3, 64, 64, 3) and np.isfinite(icons.cossim).all()
    # the stored objective is that of the icon, higher than that of each cell's noise start
    obj = optvis.directions(MLP, directions, cossim_pow=RenderSettings.cossim_pow, spatial_mean=True)
    with torch.no_grad():
        start = evaluate(model, obj, fft_image(64, 3, generator=[cell_generator(0, 2, int(c)) for c in ids])())
    assert np.all(icons.objective > start.numpy())


def test_transformer_icon_view_is_a_checked_setting():
    settings = RenderSettings(icon_view="transformer")
    transforms = settings.transforms()
    assert len(transforms) == 9
    assert apply(transforms, torch.rand(2, 3, 80, 80), torch.Generator()).shape[-1] == 60
    assert [repr(t) for t in icon_view_transforms("whole")] == [repr(t) for t in icon_transforms()]  # unchanged
    with pytest.raises(SettingError, match="icon_view.*'whole', 'wide', 'notebooks', 'transformer'"):
        RenderSettings(icon_view="vit")
    with pytest.raises(ValueError, match="icon_size 16 is too small for the transforms"):
        RenderSettings(icon_view="transformer", icon_size=16)
    with pytest.raises(ValueError, match="augment must be one of 'standard', 'strong', got 'heavy'"):
        icon_transforms(augment="heavy")
