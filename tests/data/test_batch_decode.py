"""The GPU path of collect, exercised on the CPU: decode-mode selection, the batched TorchCodec
decoder and its PIL fallback against the PIL path, bad files through the batched path, autocast,
the breakdown; and no use of torchvision's deprecated image decoding.

Tolerances (stated once): the batched path's pixels are within 1.5 levels of 255 of PIL's on
average (measured: 0.23 over 100 ImageNet sample photos), and the real model's activations of the
two agree to a cosine above 0.99 per row; with the PIL fallback (no TorchCodec) they are identical.
bf16 autocast on the CPU: the tiny net's activations within 3% of fp32 (relative, max-norm),
InceptionV1's ``inception4c`` rows at cosine above 0.99.
"""

from __future__ import annotations

import logging
import re
import warnings
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from PIL import Image

import imagegen
from atlas.data import (
    SKIP_REASONS,
    BadImage,
    ImageDataset,
    decode_image,
    decoding,
    jpeg_batch_decoder,
    open_source,
    torchcodec_problem,
)
from atlas.models import ImageTransform, load_model
from atlas.stages.collect.batch_decode import (
    EncodedImageDataset,
    autocast,
    collate_encoded,
    decode_batch,
    resize_crop,
    resolve_decode,
)
from atlas.stages.collect.rows import capture_until_last
from atlas.stages.collect.stage import CollectSettings, collect
from tinynet import Tiny

REPO = Path(__file__).resolve().parents[2]
# torchvision.io's decoders warn that they are deprecated (torchvision 0.29): that warning fails these tests
NO_TORCHVISION_DECODING = pytest.mark.filterwarnings(
    "error:The image decoding and encoding capabilities of TorchVision:DeprecationWarning")
pytestmark = [pytest.mark.usefixtures("one_thread"), NO_TORCHVISION_DECODING]

_TORCHCODEC = torchcodec_problem()
_MISSING = "torchcodec cannot be imported (made to look missing by the test)"


@pytest.fixture(params=["torchcodec", "pil"])
def batch_decoder(request, monkeypatch) -> str:
    """Each decoder of the batched path: TorchCodec (skipped where it is not usable here) and the
    PIL fallback (TorchCodec made to look missing)."""
    if request.param == "torchcodec" and _TORCHCODEC:
        pytest.skip(f"TorchCodec is not usable here: {_TORCHCODEC}")
    if request.param == "pil":
        monkeypatch.setattr(decoding, "_torchcodec_problem", lambda: _MISSING)
    assert jpeg_batch_decoder() == request.param
    return request.param


@pytest.mark.skipif(_TORCHCODEC is not None, reason=f"TorchCodec is not usable here: {_TORCHCODEC}")
def test_decode_mode_selection():
    t = ImageTransform(36, 32, keep_aspect=True)
    assert resolve_decode("auto", "cpu", t) == "cpu"
    assert resolve_decode("auto", torch.device("cuda"), t) == "gpu"
    assert resolve_decode("auto", "cuda:1", t) == "gpu"
    assert resolve_decode("gpu", "cpu", t) == "gpu"  # the batched path with the CPU decoder
    assert resolve_decode("cpu", "cuda", t) == "cpu"
    # a transform the batched path cannot reproduce: auto falls back, gpu is refused
    assert resolve_decode("auto", "cuda", lambda img: img) == "cpu"
    with pytest.raises(ValueError, match="decode='cpu'"):
        resolve_decode("gpu", "cuda", lambda img: img)
    with pytest.raises(ValueError, match="auto, cpu, gpu"):
        resolve_decode("nvjpeg", "cuda", t)
    with pytest.raises(ValueError, match="fp32, bf16, fp16"):
        autocast("fp64", "cpu")


def test_without_torchcodec_the_batched_modes_decode_with_pil_and_say_why(monkeypatch, caplog):
    monkeypatch.setattr(decoding, "_torchcodec_problem", lambda: _MISSING)
    t = ImageTransform(36, 32, keep_aspect=True)
    with caplog.at_level(logging.WARNING, logger="atlas.stages.collect.batch_decode"):
        assert resolve_decode("auto", "cuda", t) == "cpu"
        assert resolve_decode("gpu", "cpu", t) == "cpu"
    assert len(caplog.records) == 2 and all("needs TorchCodec" in r.getMessage() and "made to look missing"
                                            in r.getMessage() for r in caplog.records)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="atlas.stages.collect.batch_decode"):
        assert resolve_decode("auto", "cpu", t) == resolve_decode("cpu", "cuda", t) == "cpu"
    assert not caplog.records  # nothing to say where PIL was asked for anyway
    with pytest.raises(ValueError, match="decode='cpu'"):
        resolve_decode("gpu", "cuda", lambda img: img)


def _folder(tmp_path: Path) -> Path:
    d = tmp_path / "imgs"
    imagegen.write(d / "a_jpeg.jpg", imagegen.jpeg(imagegen.noise_rgb((60, 45), seed=1)))
    imagegen.write(d / "b_png.png", imagegen.png(imagegen.noise_rgb((50, 40), seed=2)))
    imagegen.write(d / "c_cmyk.jpg", imagegen.cmyk_jpeg(size=(40, 40)))
    imagegen.write(d / "d_trunc.jpg", imagegen.truncated_jpeg(3))
    imagegen.write(d / "e_garbage.jpg", imagegen.garbage(seed=4))
    imagegen.write(d / "f_small.jpg", imagegen.jpeg(imagegen.noise_rgb((10, 40), seed=5)))
    imagegen.write(d / "g_empty.jpg", b"")
    imagegen.write(d / "h_gray.jpg", imagegen.encode(imagegen.noise_rgb((48, 48), seed=6).convert("L"), "JPEG"))
    return d


def test_encoded_dataset_routes_jpegs_and_classifies_bad_files_like_pil(tmp_path, batch_decoder):
    src = open_source(_folder(tmp_path))
    t = ImageTransform(36, 32, keep_aspect=True)
    enc, pil = EncodedImageDataset(src, t), ImageDataset(src, t)
    kinds = {}
    for i, ref in enumerate(src.refs()):
        _, payload, code = enc[i]
        assert code == pil[i][2], ref.key  # the same skip reason either way
        kinds[ref.key.split("/")[-1][:1]] = None if payload is None else payload[0]
    assert kinds == {"a": "jpeg", "b": "decoded", "c": "decoded", "d": None, "e": None, "f": None, "g": None,
                     "h": "jpeg"}
    idx, jpegs, decoded, failures = collate_encoded([enc[i] for i in range(len(enc))])
    imgs, ok, bad = decode_batch(jpegs, decoded, t, "cpu")
    assert imgs.shape == (4, 3, 32, 32) and ok.tolist() == [0, 1, 2, 7] and not bad
    assert sorted(c for _, c in failures) == sorted(SKIP_REASONS[r] for r in
                                                     ("truncated", "not an image", "too small", "empty file"))


def test_a_jpeg_the_batched_decoder_rejects_goes_to_pil_and_is_counted(batch_decoder):
    t = ImageTransform(36, 32, keep_aspect=True)
    good = torch.frombuffer(bytearray(imagegen.jpeg(imagegen.noise_rgb((40, 40), seed=0))), dtype=torch.uint8)
    broken = torch.frombuffer(bytearray(b"\xff\xd8\xff" + imagegen.garbage(seed=1) + b"\xff\xd9"), dtype=torch.uint8)
    imgs, ok, bad = decode_batch([(3, good), (5, broken)], [], t, "cpu")
    assert ok.tolist() == [3] and imgs.shape == (1, 3, 32, 32)
    with pytest.raises(BadImage) as pil_says:
        decode_image(broken.numpy().tobytes())
    assert bad == [(5, pil_says.value.code)] and pil_says.value.code != 0


def test_resize_crop_matches_pil_on_a_smooth_image():
    # a smooth ramp: PIL's bilinear and the antialiased interpolate agree to rounding there
    yy, xx = np.mgrid[0:90, 0:120]
    arr = np.stack([xx * 2, yy * 2, (xx + yy)], -1).clip(0, 255).astype(np.uint8)
    from PIL import Image

    t = ImageTransform(40, 32, keep_aspect=True)
    ref = t(Image.fromarray(arr))
    got = resize_crop(torch.from_numpy(arr).permute(2, 0, 1), t)
    assert got.shape == ref.shape == (3, 32, 32)
    assert (got - ref).abs().max() <= 1.5 / 255


def test_batched_decode_matches_pil_on_real_photos(sample_paths, inceptionv1, batch_decoder):
    paths = sample_paths[::100][:8]
    src = open_source([str(p) for p in paths])
    t = inceptionv1.image_transform
    enc, pil = EncodedImageDataset(src, t), ImageDataset(src, t)
    _, jpegs, decoded, _ = collate_encoded([enc[i] for i in range(len(enc))])
    assert len(jpegs) == len(paths)
    got, ok, bad = decode_batch(jpegs, decoded, t, "cpu")
    ref = torch.stack([pil[i][1] for i in range(len(pil))])
    diff = (got - ref).abs() * 255
    assert not bad and ok.tolist() == list(range(len(paths)))
    assert diff.mean() < 1.5, f"mean difference {diff.mean():.2f} of 255"
    if batch_decoder == "pil":
        assert diff.max() == 0  # the fallback is the PIL path itself
    with torch.no_grad():
        a = capture_until_last(inceptionv1, got, ["inception4c"])["inception4c"].mean((2, 3))
        b = capture_until_last(inceptionv1, ref, ["inception4c"])["inception4c"].mean((2, 3))
    assert torch.nn.functional.cosine_similarity(a, b).min() > 0.99


def test_collect_with_batched_decode_on_cpu_skips_the_same_files(tmp_path, batch_decoder):
    folder = _folder(tmp_path)
    model = load_model(Tiny(), input_size=32, class_names=list("abcde"))
    s = CollectSettings(layers=("relu2",), positions_per_image=2)
    runs = {}
    for mode in ("cpu", "gpu"):
        summary = collect(folder, tmp_path / f"{mode}.h5", model, s, batch_size=3, workers=0, progress=False,
                          decode=mode, breakdown=True)
        assert set(summary.timings) == {"decode", "host_to_device", "model", "attribution", "write"}
        assert summary.timings["decode"] > 0 and summary.timings["attribution"] > 0
        assert "decode" in summary.describe_breakdown()
        runs[mode] = summary
        with h5py.File(tmp_path / f"{mode}.h5", "r") as f:
            runs[mode + "_status"] = f["images/status"][:]
            runs[mode + "_acts"] = f["layers/relu2/activations"][:].astype(np.float32)
    assert runs["cpu"].skipped == runs["gpu"].skipped == {"empty file": 1, "not an image": 1, "too small": 1,
                                                          "truncated": 1}
    np.testing.assert_array_equal(runs["cpu_status"], runs["gpu_status"])
    a, b = runs["cpu_acts"], runs["gpu_acts"]
    assert a.shape == b.shape == (8, 4)
    assert np.abs(a - b).max() <= 0.05 * np.abs(a).max()  # noise images: rounding of the resize only
    if batch_decoder == "pil":
        np.testing.assert_array_equal(a, b)  # decode="gpu" without TorchCodec is decode="cpu"


def _exif_rotated_jpeg(seed: int = 0) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display; TorchCodec would, atlas does not
    return imagegen.encode(imagegen.noise_rgb((60, 44), seed=seed), "JPEG", exif=exif.tobytes())


def test_exif_rotated_jpegs_are_decoded_by_pil_in_the_worker(tmp_path, sample_dir):
    d = tmp_path / "imgs"
    imagegen.write(d / "a_rotated.jpg", _exif_rotated_jpeg())
    imagegen.write(d / "b_upright.jpg", imagegen.jpeg(imagegen.noise_rgb((60, 44), seed=1)))
    # the one sample photo with an EXIF orientation (6): a can opener, 392 x 294 as stored
    imagegen.write(d / "c_can_opener.jpg", (sample_dir / "n02951585_can_opener.JPEG").read_bytes())
    src = open_source(d)
    t = ImageTransform(36, 32, keep_aspect=True)
    enc, pil = EncodedImageDataset(src, t), ImageDataset(src, t)
    kinds = [enc[i][1][0] for i in range(len(enc))]
    assert kinds == ["decoded", "jpeg", "decoded"]
    for i in (0, 2):  # the PIL path's pixels exactly: the stored orientation
        assert torch.equal(enc[i][1][1], pil[i][1])


def test_atlas_does_not_call_torchvisions_image_decoding():
    call = re.compile(r"^\s*(from|import)\s+torchvision\.io\b|^\s*from\s+torchvision\s+import\s.*\bio\b"
                      r"|torchvision\.io\.\w+\(")
    uses = [f"{p.relative_to(REPO)}:{n}" for base in ("atlas", "benchmarks") for p in sorted((REPO / base).rglob("*.py"))
            for n, line in enumerate(p.read_text().splitlines(), 1) if call.search(line)]
    assert not uses, f"torchvision's image decoding (deprecated since torchvision 0.29) is used at {uses}"


def test_the_batched_path_raises_no_deprecation_warning(tmp_path, batch_decoder):
    src = open_source(_folder(tmp_path))
    t = ImageTransform(36, 32, keep_aspect=True)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        enc = EncodedImageDataset(src, t)
        _, jpegs, decoded, _ = collate_encoded([enc[i] for i in range(len(enc))])
        imgs, ok, bad = decode_batch(jpegs + [(9, torch.frombuffer(bytearray(imagegen.truncated_jpeg(1)),
                                                                   dtype=torch.uint8))], decoded, t, "cpu")
    assert ok.tolist() == [0, 1, 2, 7] and bad == [(9, SKIP_REASONS["truncated"])]
    assert not [str(w.message) for w in seen if "torchvision" in str(w.message).lower()
                or issubclass(w.category, DeprecationWarning)]


def test_bf16_autocast_on_cpu_is_close_to_fp32():
    model = load_model(Tiny(), input_size=32)
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = capture_until_last(model, x, ["relu2"])["relu2"]
        with autocast("bf16", "cpu"):
            low = capture_until_last(model, x, ["relu2"])["relu2"]
    assert low.dtype == torch.bfloat16  # autocast did run the convolutions in bf16
    assert (low.float() - ref).abs().max() <= 0.03 * ref.abs().max()


def test_bf16_collect_of_real_photos_is_close_to_fp32(tmp_path, sample_paths, inceptionv1_weights):
    lst = tmp_path / "list.txt"
    lst.write_text("\n".join(str(p) for p in sample_paths[:8]) + "\n")
    acts = {}
    for precision in ("fp32", "bf16"):
        out = tmp_path / f"{precision}.h5"
        collect(lst, out, "inceptionv1", CollectSettings(dtype="float32"), weights=inceptionv1_weights,
                device="cpu", batch_size=8, workers=0, progress=False, precision=precision)
        with h5py.File(out, "r") as f:
            acts[precision] = f["layers/inception4c/activations"][:]
            if precision == "bf16":
                assert "precision" in f.attrs["settings_json"]
    a, b = acts["fp32"], acts["bf16"]
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cos.min() > 0.99, cos
