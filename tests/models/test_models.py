"""The model zoo: the real InceptionV1, torchvision models by name, layer lookup, hooks."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from PIL import Image
from torch import nn

from atlas.models import (
    AtlasModel,
    ImageTransform,
    InceptionV1,
    ModelError,
    UnknownLayerError,
    caffe_preprocess,
    capture,
    load_model,
)


def test_inceptionv1_keys_match_bvlc_table():
    """Every key and shape of the BVLC state_dict (from its published key table) is defined."""
    net = InceptionV1()
    shapes = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    assert len(shapes) == 116
    assert sum(v.numel() for v in net.parameters()) == 6_998_552
    assert shapes["inception4c.branch3.1.weight"] == (64, 24, 5, 5)  # true 5x5, not torchvision's 3x3
    assert shapes["inception5b.branch1.weight"] == (384, 832, 1, 1)
    assert shapes["fc.weight"] == (1000, 1024)


def test_inceptionv1_shapes_at_224():
    model = load_model("inceptionv1", random_init=True)
    shapes = model.layer_shapes(["inception4c", "inception5b", "conv1_relu", "fc"])
    assert shapes == {"inception4c": (512, 14, 14), "inception5b": (1024, 7, 7),
                      "conv1_relu": (64, 112, 112), "fc": (1000,)}


def test_caffe_preprocess_is_bgr_255_mean_subtracted():
    x = torch.zeros(1, 3, 2, 2)
    x[:, 0] = 1.0  # pure red in RGB
    y = caffe_preprocess(x)
    # BGR order: channel 2 is red -> 255 - 123; blue and green are 0 - mean
    assert torch.allclose(y[0, :, 0, 0], torch.tensor([-104.0, -117.0, 255.0 - 123.0]))


def test_missing_weights_error_says_where_to_put_them(tmp_path, monkeypatch):
    monkeypatch.delenv("ATLAS_INCEPTIONV1_WEIGHTS", raising=False)
    with pytest.raises(ModelError, match="ATLAS_INCEPTIONV1_WEIGHTS") as e:
        load_model("inceptionv1", weights=tmp_path / "nope.pth")
    assert "--weights" in str(e.value) and str(tmp_path / "nope.pth") in str(e.value)


def test_wrong_weight_file_is_a_clear_error(tmp_path):
    bad = tmp_path / "other.pth"
    torch.save({"conv1.weight": torch.zeros(1)}, bad)
    with pytest.raises(ModelError, match="not a BVLC GoogLeNet state_dict"):
        load_model("inceptionv1", weights=bad)


def test_unknown_layer_lists_close_matches():
    model = load_model("inceptionv1", random_init=True)
    with pytest.raises(UnknownLayerError) as e:
        model.layer("inception4x")
    msg = str(e.value)
    assert "inception4c" in msg and "Did you mean" in msg and "atlas layers" in msg


def test_unknown_model_spec():
    with pytest.raises(ModelError, match="Known models"):
        load_model("incepton")


def test_torchvision_by_name_random_init():
    model = load_model("torchvision:resnet18", random_init=True)
    assert model.name == "torchvision:resnet18"
    assert model.input_size == 224 and len(model.class_names) == 1000
    assert model.layer_shapes(["layer3"]) == {"layer3": (256, 14, 14)}
    out = model(torch.rand(2, 3, 224, 224))
    assert out.shape == (2, 1000)


def test_torchvision_unknown_arch_suggests():
    with pytest.raises(ModelError, match="resnet50"):
        load_model("torchvision:resnet5O", random_init=True)


def test_torchvision_offline_download_error_is_clear(monkeypatch, tmp_path):
    """Without the published file and without network, the error says how to supply it."""
    import torch.hub

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))

    def no_network(*a, **k):
        raise OSError("network is unreachable")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_network)
    with pytest.raises(ModelError) as e:
        load_model("torchvision:googlenet")
    msg = str(e.value)
    assert "--weights" in msg and "--random-init" in msg and "googlenet" in msg


def test_user_module_through_python_api():
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    model = load_model(net, input_size=32, class_names=["a", "b"])
    assert isinstance(model, AtlasModel)
    assert model.layer_shapes(["1"]) == {"1": (4, 32, 32)}
    assert model(torch.rand(1, 3, 32, 32)).shape == (1, 2)


def test_capture_removes_hooks_even_on_error():
    model = load_model("inceptionv1", random_init=True)
    layer = model.layer("inception4c")
    with pytest.raises(RuntimeError):
        with capture(model, ["inception4c"]):
            assert len(layer._forward_hooks) == 1
            raise RuntimeError("boom")
    assert len(layer._forward_hooks) == 0



def _small_model() -> AtlasModel:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    return load_model(net, input_size=16, class_names=["a", "b"])


def test_capture_with_stop_ends_the_forward_after_the_last_layer():
    model = _small_model()
    ran, after = [], []
    probe = model.layer("6").register_forward_hook(lambda *_: ran.append("6"))
    try:
        x = torch.rand(2, 3, 16, 16)
        with capture(model, ["3", "1"], stop=True) as acts:
            model(x)
            after.append("block went on")
        assert ran == [] and after == []  # the linear layer never ran; the block ended with the pass
        assert set(acts) == {"1", "3"} and acts["3"].shape == (2, 4, 16, 16)
        with capture(model, ["3"]) as full:
            out = model(x)
        assert ran == ["6"] and out.shape == (2, 2)
        torch.testing.assert_close(acts["3"], full["3"])
    finally:
        probe.remove()
    assert all(not m._forward_hooks for m in model.modules())


def test_captured_outputs_keep_their_gradient_also_with_stop():
    model = _small_model()
    x = torch.rand(1, 3, 16, 16, requires_grad=True)
    with capture(model, ["3"], stop=True) as acts:
        model(x)
    (grad,) = torch.autograd.grad(acts["3"].sum(), x)
    assert grad.abs().sum() > 0
    with capture(model, ["3"], detach=True) as acts:
        model(x)
    assert not acts["3"].requires_grad


def test_record_outputs_takes_any_named_modules_and_removes_its_hooks():
    from atlas.models.hooks import record_outputs

    model = _small_model()
    convs = [(name, m) for name, m in model.net.named_modules() if isinstance(m, nn.Conv2d)]
    with record_outputs(convs, stop=True) as acts:
        model(torch.rand(1, 3, 16, 16))
    assert sorted(acts) == ["0", "2"]
    with pytest.raises(RuntimeError), record_outputs(convs):
        raise RuntimeError("boom")  # other errors go through
    assert all(not m._forward_hooks for m in model.modules())


def test_image_transform_caffe_and_torchvision_styles():
    img = Image.new("RGB", (500, 250), (255, 0, 0))
    caffe = ImageTransform(256, 224, keep_aspect=False)
    tv = ImageTransform(256, 224, keep_aspect=True)
    assert caffe.target_size(500, 250) == (256, 256)
    assert tv.target_size(500, 250) == (512, 256)
    t = caffe(img)
    assert t.shape == (3, 224, 224) and t.dtype == torch.float32
    assert torch.allclose(t[:, 100, 100], torch.tensor([1.0, 0.0, 0.0]))


def test_layers_cli_lists_shapes():
    out = subprocess.run([sys.executable, "-m", "atlas", "layers", "inceptionv1", "--random-init", "--spatial"],
                         capture_output=True, text=True, check=True).stdout
    assert "inception4c" in out and "(512, 14, 14)" in out
    assert "fc " not in out  # not spatial


@pytest.mark.shared
@pytest.mark.slow
def test_real_inceptionv1_top1_on_1000_sample_images(inceptionv1, sample_paths):
    """The BVLC weights load and classify like the real network: >= 78% top-1 (README: 78.8%)."""
    assert len(sample_paths) == 1000
    transform = inceptionv1.image_transform

    class Photos(torch.utils.data.Dataset):
        def __len__(self):
            return len(sample_paths)

        def __getitem__(self, i):
            with Image.open(sample_paths[i]) as im:
                return transform(im.convert("RGB")), i

    loader = torch.utils.data.DataLoader(Photos(), batch_size=50, num_workers=1)
    correct = 0
    with torch.no_grad():
        for x, labels in loader:
            correct += (inceptionv1(x).argmax(1) == labels).sum().item()
    top1 = correct / 1000
    assert top1 >= 0.78, f"top-1 {top1:.3f}"
