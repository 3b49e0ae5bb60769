"""Token layers (atlas.models.tokens): detection from a shape, the grid <-> token conversion, and how
the zoo loads vision transformers (torchvision by name, a user's module, timm when installed)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from atlas.models import ModelError, capture, check_model_spec, load_model
from atlas.models.tokens import TokenLayout, grid_view, token_layout, vit_token_grid
from atlas.runtime import forward_ad
from tinytokens import TinyTokens, small_vit


@pytest.mark.parametrize(("shape", "grid", "want"), [
    ((197, 768), None, TokenLayout(1, (14, 14))),
    ((196, 768), None, TokenLayout(0, (14, 14))),
    ((201, 768), None, TokenLayout(5, (14, 14))),  # class + 4 registers
    ((17, 16), (4, 4), TokenLayout(1, (4, 4))),
    ((19, 16), (4, 4), TokenLayout(3, (4, 4))),
    ((1 + 4 * 6, 16), (4, 6), TokenLayout(1, (4, 6))),  # a non-square grid needs the model's grid
])
def test_token_layout_from_shape(shape, grid, want):
    assert token_layout(shape, grid) == want


@pytest.mark.parametrize(("shape", "grid"), [
    ((768, 14, 14), None),  # a convolutional layer
    ((1000,), None),  # logits
    ((3, 16), None),  # fewer tokens than a 2 x 2 grid
    ((10, 16), (4, 4)),  # fewer tokens than the model's grid
])
def test_not_token_layers(shape, grid):
    assert token_layout(shape, grid) is None


def test_describe_and_token_index():
    assert TokenLayout(1, (14, 14)).describe() == "cls+14x14"
    assert TokenLayout(0, (14, 14)).describe() == "14x14"
    assert TokenLayout(5, (14, 14)).describe() == "5+14x14"
    layout = TokenLayout(1, (3, 4))
    assert layout.n_tokens == 13 and layout.token_index(0, 0) == 1 and layout.token_index(2, 3) == 12


def test_to_grid_is_a_view_of_the_patch_tokens_and_to_tokens_inverts_it():
    layout = TokenLayout(2, (3, 4))
    tokens = torch.randn(2, 5, layout.n_tokens, 6)  # extra leading dims (e.g. batched gradients) too
    g = layout.to_grid(tokens)
    assert g.shape == (2, 5, 6, 3, 4)
    for y in range(3):
        for x in range(4):
            assert torch.equal(g[..., y, x], tokens[..., layout.token_index(y, x), :])
    g[0, 0, :, 1, 2] = 7.0  # a view: writes reach the tokens
    assert torch.all(tokens[0, 0, layout.token_index(1, 2)] == 7.0)
    back = layout.to_tokens(g, special=tokens[..., :2, :])
    assert torch.equal(back, tokens)
    assert torch.all(layout.to_tokens(g)[..., :2, :] == 0)
    with pytest.raises(ValueError, match="tokens for layout 2\\+3x4"):
        layout.to_grid(torch.zeros(1, 12, 6))


def test_grid_view_leaves_other_outputs_alone():
    conv = torch.randn(2, 8, 5, 5)
    assert grid_view(conv) is conv
    flat = torch.randn(2, 10)
    assert grid_view(flat) is flat
    assert grid_view(torch.randn(2, 17, 8)).shape == (2, 8, 4, 4)


def test_user_vision_transformer_gets_its_grid_and_fixed_size():
    net = small_vit()
    assert vit_token_grid(net) == (4, 4)
    model = load_model(net, input_size=32)
    assert model.token_grid == (4, 4) and model.fixed_size
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        out = model(x)
    assert out.shape == (2, 5)
    name = "encoder.layers.encoder_layer_1"
    shapes = model.layer_shapes([name, f"{name}.mlp.1", "encoder.layers.encoder_layer_1.self_attention"])
    assert shapes == {name: (17, 16), f"{name}.mlp.1": (17, 32)}  # attention's tuple output is left out
    assert model.token_layout(shapes[f"{name}.mlp.1"]) == TokenLayout(1, (4, 4))
    with torch.no_grad(), capture(model, [name], grid=True) as acts:
        model(x)
    assert acts[name].shape == (2, 16, 4, 4)


def test_fixed_size_model_resamples_other_sizes():
    model = load_model(small_vit(), input_size=32)
    small = torch.rand(1, 3, 20, 20)
    up = torch.nn.functional.interpolate(small, size=(32, 32), mode="bilinear", align_corners=False)
    with torch.no_grad():
        assert torch.allclose(model(small), model(up))
    free = load_model(TinyTokens(), input_size=32)
    assert free.token_grid is None and not free.fixed_size


def test_token_grid_given_for_a_user_module():
    model = load_model(TinyTokens(registers=2), input_size=32, token_grid=(4, 4))
    assert model.token_grid == (4, 4)
    assert model.token_layout(model.layer_shapes(["block.1"])["block.1"]).describe() == "3+4x4"


def test_torchvision_vit_b_16_by_name():
    model = load_model("torchvision:vit_b_16", random_init=True)
    assert model.token_grid == (14, 14) and model.fixed_size and model.input_size == 224
    names = ["encoder.layers.encoder_layer_6", "encoder.layers.encoder_layer_6.mlp.1"]
    shapes = model.layer_shapes(names)
    assert shapes == {names[0]: (197, 768), names[1]: (197, 3072)}
    assert {model.token_layout(s).describe() for s in shapes.values()} == {"cls+14x14"}


def test_layers_cli_shows_token_layers_as_usable():
    out = subprocess.run([sys.executable, "-m", "atlas", "layers", "torchvision:vit_b_16", "--random-init",
                          "--spatial"], capture_output=True, text=True, check=True).stdout
    lines = {line.split()[0]: line for line in out.splitlines() if line and not line.startswith("#")}
    assert "tokens cls+14x14" in lines["encoder.layers.encoder_layer_6.mlp.1"]
    assert "(768, 14, 14)" in lines["conv_proj"]
    assert "heads.head" not in lines  # neither spatial nor tokens


def test_timm_specs():
    assert check_model_spec("timm:vit_tiny_patch16_224") == "timm:vit_tiny_patch16_224"
    try:
        import timm  # noqa: F401
    except ImportError:
        with pytest.raises(ModelError, match="needs the timm package.*torchvision:vit_b_16"):
            load_model("timm:vit_tiny_patch16_224", random_init=True)
        return
    model = load_model("timm:vit_tiny_patch16_224", random_init=True)  # pragma: no cover (timm not installed here)
    assert model.token_grid == (14, 14) and model.fixed_size
    assert model.token_layout(model.layer_shapes(["blocks.6"])["blocks.6"]).describe() == "cls+14x14"


def test_forward_ad_level_restores_the_attention_fast_path():
    before = torch.backends.mha.get_fastpath_enabled()
    with forward_ad.dual_level():
        assert not torch.backends.mha.get_fastpath_enabled()
    assert torch.backends.mha.get_fastpath_enabled() == before
