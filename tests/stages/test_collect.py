"""The collect stage: rows, attribution, resumption after SIGKILL, bad input, the CLI."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from atlas.data import SKIP_REASONS, EmptySourceError
from atlas.models import load_model
from atlas.stages.collect.rows import capture_until_last
from atlas.stages.collect.stage import CollectSettings, collect, compute_rows, layer_specs, sample_positions
from atlas.store.activations import ActivationsFile, parts_dir_for

# torchvision.io's decoders warn that they are deprecated (torchvision 0.29): collect must not use them
pytestmark = pytest.mark.filterwarnings(
    "error:The image decoding and encoding capabilities of TorchVision:DeprecationWarning")


def tiny_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(),   # "1": (8, 16, 16) at 32 px
        nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(),  # "3": (16, 8, 8)
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 5),
    )


@pytest.fixture
def tiny_model():
    return load_model(tiny_net(), input_size=32, class_names=list("abcde"))


def write_photos(folder: Path, n: int, size=(48, 40), seed=0) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        arr = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
        p = folder / f"img{i:04d}.png"
        Image.fromarray(arr).save(p)
        paths.append(p)
    return paths


def test_sample_positions_deterministic_and_away_from_edges():
    s = CollectSettings(positions_per_image=5, edge_margin=2, seed=3)
    a = sample_positions(7, (14, 14), s)
    b = sample_positions(7, (14, 14), s)
    assert np.array_equal(a, b) and a.shape == (5, 2)
    assert a.min() >= 2 and a.max() <= 11
    assert len({tuple(p) for p in a}) == 5  # distinct
    assert not np.array_equal(a, sample_positions(8, (14, 14), s))
    allpos = sample_positions(0, (3, 4), CollectSettings(sampling="all"))
    assert allpos.tolist() == [[y, x] for y in range(3) for x in range(4)]


def test_capture_until_last_stops_the_forward_after_its_last_layer(tiny_model):
    ran = []
    probe = tiny_model.layer("6").register_forward_hook(lambda *_: ran.append("6"))
    try:
        got = capture_until_last(tiny_model, torch.rand(2, 3, 32, 32), ["3", "1"])
    finally:
        probe.remove()
    assert ran == [] and sorted(got) == ["1", "3"] and got["3"].shape == (2, 16, 8, 8)
    assert not got["3"].requires_grad and all(not m._forward_hooks for m in tiny_model.modules())

def test_attribution_equals_autograd_reference(tiny_model):
    """attribution_c = h . d logit_c / d h at the sampled position, for every class c."""
    torch.manual_seed(1)
    x = torch.rand(3, 3, 32, 32)
    settings = CollectSettings(layers=("1",), positions_per_image=2, top_k=5, full_attribution=True)
    specs = layer_specs(tiny_model, ["1"])
    rows = compute_rows(tiny_model, x, [10, 11, 12], specs, settings)["1"]
    assert rows["activations"].shape == (6, 8)
    # reference: autograd, one backward pass per class
    layer_out = {}
    h = tiny_model.layer("1").register_forward_hook(lambda m, i, o: layer_out.__setitem__("h", o))
    xr = x.clone().requires_grad_(True)
    logits = tiny_model(xr)
    h.remove()
    act = layer_out["h"]
    for r in range(6):
        b, (y, xx) = r // 2, rows["position"][r]
        ref = []
        for c in range(5):
            g = torch.autograd.grad(logits[b, c], act, retain_graph=True)[0]
            ref.append((act[b, :, y, xx] * g[b, :, y, xx]).sum().item())
        np.testing.assert_allclose(rows["attribution/full"][r], ref, rtol=2e-3, atol=1e-4)
        order = np.argsort(ref)[::-1]
        assert rows["attribution/top_classes"][r].tolist() == order.tolist()
        np.testing.assert_allclose(rows["activations"][r], act[b, :, y, xx].detach().numpy(), rtol=1e-3, atol=1e-3)
    assert rows["image_index"].tolist() == [10, 10, 11, 11, 12, 12]


def test_candidate_attribution_equals_forward_mode_at_every_position(tiny_model):
    """With attribution_classes=N the ranked classes are each image's N top-scoring ones plus its
    label, and their values are the forward-mode values of the same rows, at every position."""
    torch.manual_seed(2)
    x = torch.rand(4, 3, 32, 32)
    specs = layer_specs(tiny_model, ["1"])
    exact = compute_rows(tiny_model, x, [0, 1, 2, 3], specs,
                         CollectSettings(layers=("1",), sampling="all", top_k=5, full_attribution=True))["1"]
    labels = [4, -1, 0, 2]
    cand = compute_rows(tiny_model, x, [0, 1, 2, 3], specs,
                        CollectSettings(layers=("1",), sampling="all", top_k=3, attribution_classes=2),
                        labels=labels)["1"]
    assert cand["activations"].shape == (4 * 256, 8) and cand["attribution/top_classes"].shape == (4 * 256, 3)
    np.testing.assert_array_equal(cand["position"], exact["position"])
    np.testing.assert_array_equal(cand["activations"], exact["activations"])
    with torch.no_grad():
        logits = tiny_model(x)
    for b in range(4):
        rows = slice(b * 256, (b + 1) * 256)
        top2 = set(logits[b].topk(2).indices.tolist())
        allowed = top2 | {labels[b]} if labels[b] >= 0 and labels[b] not in top2 else set(logits[b].topk(3).indices.tolist())
        assert set(np.unique(cand["attribution/top_classes"][rows]).tolist()) <= allowed
        if labels[b] >= 0:
            assert labels[b] in set(cand["attribution/top_classes"][rows].ravel().tolist())
        full = exact["attribution/full"][rows].astype(np.float32)
        got = np.take_along_axis(full, cand["attribution/top_classes"][rows].astype(np.int64), 1)
        np.testing.assert_allclose(cand["attribution/top_values"][rows], got, rtol=2e-3, atol=1e-4)
        # ranked within the candidates: values descend
        assert (np.diff(cand["attribution/top_values"][rows], axis=1) <= 1e-6).all()


def test_candidate_attribution_settings_are_checked():
    with pytest.raises(ValueError, match="attribution_classes = 0"):
        CollectSettings(attribution_classes=8, full_attribution=True)
    with pytest.raises(ValueError, match="attribution_classes must be"):
        CollectSettings(attribution_classes=-1)
    assert CollectSettings(attribution_classes=4, top_k=10).kept_classes(1000) == 5


def test_collect_writes_documented_layout(tmp_path, tiny_model):
    write_photos(tmp_path / "photos", 10)
    out = tmp_path / "acts.h5"
    s = CollectSettings(layers=("1", "3"), positions_per_image=2, top_k=3, block_size=4)
    summary = collect(tmp_path / "photos", out, tiny_model, s, batch_size=3, workers=0, progress=False)
    assert summary.rows == {"1": 20, "3": 20}
    with ActivationsFile(out) as f:
        assert f.layers == ["1", "3"] and f.n_images == 10
        assert f.attrs["kind"] == "activations" and f.attrs["complete"]
        assert f.spec("3").grid_shape == (8, 8) and f.spec("3").channels == 16
        assert f.read("1", "activations").dtype == np.float16
        assert f.read("1", "activations").shape == (20, 8)
        assert f.read("3", "attribution/top_classes").shape == (20, 3)
        assert f.read("1", "image_index").tolist() == sorted(list(range(10)) * 2)
        assert f.image_keys()[0].endswith("img0000.png")
        assert (f.image_status() == 0).all()
    assert not parts_dir_for(out).exists()
    again = collect(tmp_path / "photos", out, tiny_model, s, workers=0, progress=False)
    assert again.up_to_date


def test_collect_skips_and_counts_bad_images(tmp_path, tiny_model):
    photos = tmp_path / "photos"
    write_photos(photos, 4)
    (photos / "zero.jpg").write_bytes(b"")
    (photos / "garbage.jpg").write_bytes(b"this is not a jpeg at all" * 10)
    good = photos / "img0000.png"
    data = (photos / "cut.jpg")
    Image.open(good).convert("RGB").save(data, quality=90)
    data.write_bytes(data.read_bytes()[: len(data.read_bytes()) // 2])
    Image.new("L", (40, 40), 128).save(photos / "gray.png")
    Image.new("CMYK", (40, 40), (0, 255, 0, 0)).save(photos / "cmyk.jpg")
    Image.new("RGB", (4, 4)).save(photos / "tiny.png")
    (photos / "notes.txt").write_text("not an image, ignored")
    out = tmp_path / "acts.h5"
    summary = collect(photos, out, tiny_model, CollectSettings(layers=("3",)), workers=0, progress=False)
    assert summary.rows == {"3": 6}  # 4 photos + gray + cmyk
    assert sum(summary.skipped.values()) == 4
    assert summary.skipped.get("empty file") == 1 and summary.skipped.get("too small") == 1
    with ActivationsFile(out) as f:
        keys, status = f.image_keys(), f.image_status()
        by_name = {Path(k).name: int(s) for k, s in zip(keys, status)}
    assert by_name["zero.jpg"] == SKIP_REASONS["empty file"]
    assert by_name["cut.jpg"] == SKIP_REASONS["truncated"]
    assert by_name["gray.png"] == 0 and by_name["cmyk.jpg"] == 0
    assert "notes.txt" not in by_name


def test_empty_source_is_a_clear_error(tmp_path, tiny_model):
    (tmp_path / "empty").mkdir()
    with pytest.raises(EmptySourceError):
        collect(tmp_path / "empty", tmp_path / "a.h5", tiny_model, CollectSettings(layers=("1",)), progress=False)


def test_non_spatial_and_unknown_layers(tmp_path, tiny_model):
    write_photos(tmp_path / "p", 1)
    with pytest.raises(ValueError, match="spatial"):
        collect(tmp_path / "p", tmp_path / "a.h5", tiny_model, CollectSettings(layers=("6",)), progress=False)
    with pytest.raises(ValueError, match="Did you mean"):
        collect(tmp_path / "p", tmp_path / "a.h5", tiny_model, CollectSettings(layers=("33",)), progress=False)


def test_interrupted_run_resumes_in_process(tmp_path, tiny_model):
    write_photos(tmp_path / "p", 23)
    s = CollectSettings(layers=("3",), positions_per_image=3, block_size=5)
    ref = collect(tmp_path / "p", tmp_path / "ref.h5", tiny_model, s, workers=0, progress=False)
    part = collect(tmp_path / "p", tmp_path / "a.h5", tiny_model, s, workers=0, progress=False, max_blocks=2)
    assert not (tmp_path / "a.h5").exists() and part.images == 10
    done = collect(tmp_path / "p", tmp_path / "a.h5", tiny_model, s, workers=0, progress=False)
    assert done.resumed_blocks == 2 and done.images == 13
    _assert_same_rows(tmp_path / "ref.h5", tmp_path / "a.h5", "3")
    assert ref.rows == done.rows == {"3": 69}


def test_changed_settings_refuse_to_mix_with_partial_run(tmp_path, tiny_model):
    write_photos(tmp_path / "p", 12)
    s = CollectSettings(layers=("3",), block_size=4)
    collect(tmp_path / "p", tmp_path / "a.h5", tiny_model, s, workers=0, progress=False, max_blocks=1)
    with pytest.raises(ValueError, match="other settings"):
        collect(tmp_path / "p", tmp_path / "a.h5", tiny_model, CollectSettings(layers=("3",), block_size=4, seed=9),
                workers=0, progress=False)
    done = collect(tmp_path / "p", tmp_path / "a.h5", tiny_model, CollectSettings(layers=("3",), block_size=4, seed=9),
                   workers=0, progress=False, overwrite=True)
    assert done.rows == {"3": 12}


def _assert_same_rows(a: Path, b: Path, layer: str) -> None:
    with h5py.File(a, "r") as fa, h5py.File(b, "r") as fb:
        ga, gb = fa[f"layers/{layer}"], fb[f"layers/{layer}"]
        assert ga.attrs["n_rows"] == gb.attrs["n_rows"]
        for name in ("activations", "image_index", "position", "attribution/top_classes", "attribution/top_values"):
            np.testing.assert_array_equal(ga[name][:], gb[name][:], err_msg=name)
        np.testing.assert_array_equal(fa["images/status"][:], fb["images/status"][:])


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "atlas", "-q", "collect", *args]


@pytest.mark.slow
def test_sigkill_at_any_moment_then_rerun_gives_the_uninterrupted_rows(tmp_path):
    """Kill the real CLI with SIGKILL mid-run (twice), rerun: same rows as a clean run."""
    photos = tmp_path / "photos"
    write_photos(photos, 40, size=(64, 48))
    (photos / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 broken")
    common = ["--model", "inceptionv1", "--random-init", "--device", "cpu", "--layer", "inception4c",
              "--positions", "2", "--block-size", "4", "--batch-size", "4", "--workers", "1"]
    ref = tmp_path / "ref.h5"
    subprocess.run(_cli(str(photos), "-o", str(ref), *common), check=True, capture_output=True)

    out = tmp_path / "killed.h5"
    parts = parts_dir_for(out)
    for kill_after_parts in (2, 5):
        proc = subprocess.Popen(_cli(str(photos), "-o", str(out), *common), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None:
            n = len(list(parts.glob("part-*.h5"))) if parts.exists() else 0
            if n >= kill_after_parts:
                break
            time.sleep(0.05)
        assert proc.poll() is None, "collect finished before it could be killed; use more photos"
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        assert not out.exists()
    subprocess.run(_cli(str(photos), "-o", str(out), *common), check=True, capture_output=True)
    _assert_same_rows(ref, out, "inception4c")
    with ActivationsFile(out) as f:
        ids = f.read("inception4c", "image_index")
        assert len(ids) == 80 and len(np.unique(ids)) == 40  # 2 rows per good photo, none twice
    assert not parts.exists()


@pytest.mark.shared
@pytest.mark.slow
def test_real_photos_attribution_points_to_the_label(inceptionv1, sample_dir, tmp_path):
    """On real photos, the attributed classes at sampled positions point to the true class far more
    often than to a shuffled label (single positions are often background, so not always)."""
    listing = tmp_path / "list.txt"
    paths = sorted(sample_dir.glob("*.JPEG"))[::50]  # 20 photos across the classes
    listing.write_text("\n".join(str(p) for p in paths))
    out = tmp_path / "acts.h5"
    s = CollectSettings(layers=("inception4c",), positions_per_image=4)
    collect(listing, out, inceptionv1, s, batch_size=10, workers=1, progress=False)
    with ActivationsFile(out) as f:
        labels = f.image_labels()[f.read(None, "image_index")]
        top = f.read(None, "attribution/top_classes")
        assert (labels >= 0).all() and top.shape == (80, 10)
    in_top10 = (top == labels[:, None]).any(1).mean()
    shuffled = max((top == np.random.default_rng(s).permutation(labels)[:, None]).any(1).mean() for s in range(5))
    # measured: 10% of rows have the label first, 20% within the top 10; shuffled labels ~1%
    assert (top[:, 0] == labels).mean() >= 0.05
    assert in_top10 >= 0.12 and in_top10 >= 5 * max(shuffled, 0.0125)


@pytest.mark.shared
@pytest.mark.slow
def test_real_photos_candidate_attribution_equals_per_position_forward_mode(inceptionv1, sample_paths):
    """On real photos and the real InceptionV1, every position's attribution to the candidate
    classes from the batched backward passes equals today's per-position forward-mode values."""
    from atlas.stages.collect.rows import attributed_slots, candidate_attribution

    paths = sample_paths[::250]  # 4 photos of different classes
    x = torch.stack([inceptionv1.image_transform(Image.open(p)) for p in paths])
    labels = torch.tensor([i * 250 for i in range(len(paths))])
    h, classes, attr = candidate_attribution(inceptionv1, x, "inception4c", 8, labels)
    assert h.shape == (4, 512, 14, 14) and classes.shape == (4, 9) and attr.shape == (4, 9, 14, 14)
    assert all(int(labels[b]) in classes[b].tolist() for b in range(4))
    pos = np.array([[[1, 1], [6, 9], [12, 3]]] * 4)
    acts, exact = attributed_slots(inceptionv1, x, "inception4c", pos)
    for slot in range(3):
        y, xx = pos[0, slot]
        ref = exact[slot].gather(1, classes)  # (4, 9) forward-mode values of the candidates
        np.testing.assert_allclose(attr[:, :, y, xx].numpy(), ref.numpy(), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(h[:, :, y, xx].numpy(), acts[slot].numpy(), rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------- names and folders at the door


def _save_png(path: bytes | str | Path, seed: int = 0) -> bytes:
    """A small noise PNG at ``path`` (a bytes path may hold any bytes); returns the file's bytes."""
    arr = np.random.default_rng(seed).integers(0, 256, (40, 48, 3), dtype=np.uint8)
    with open(path, "wb") as fh:
        Image.fromarray(arr).save(fh, "PNG")
    with open(path, "rb") as fh:
        return fh.read()


def test_a_file_name_that_is_not_utf8_is_stored_losslessly(tmp_path, tiny_model):
    """Names are bytes on Linux: one that is not UTF-8 is collected like any other, and the key read
    back from activations.h5 opens the same file (collect, the thumbnails' reader)."""
    from atlas.stages.tiles.thumbs import ImageReader

    photos = tmp_path / "photos"
    write_photos(photos, 3)
    (photos / "sub\xe9").mkdir()  # a UTF-8 folder name beside a name that is not UTF-8
    raw_names = [b"caf\xe9-\xff.png", "sub\xe9".encode() + b"/x\x80y.png"]
    data = {name: _save_png(os.fsencode(photos) + b"/" + name, seed=i) for i, name in enumerate(raw_names)}
    out = tmp_path / "acts.h5"
    summary = collect(photos, out, tiny_model, CollectSettings(layers=("3",)), workers=0, progress=False)
    assert summary.rows == {"3": 5} and not summary.skipped
    with ActivationsFile(out) as f:
        keys, status, source = f.image_keys(), f.image_status(), str(f.attrs["source"])
    assert (status == 0).all() and len(keys) == 5
    by_bytes = {os.fsencode(k): k for k in keys}
    assert set(raw_names) <= set(by_bytes)
    reader = ImageReader(source)
    try:
        for name, content in data.items():
            key = by_bytes[name]
            assert Path(source, key).read_bytes() == content
            assert reader.read(key) == content
    finally:
        reader.close()
    with h5py.File(out, "r") as f:  # the stored bytes are the name's own bytes
        assert set(raw_names) <= set(f["images/key"][:].tolist())
    assert collect(photos, out, tiny_model, CollectSettings(layers=("3",)), workers=0, progress=False).up_to_date


def test_a_source_folder_whose_name_is_not_utf8_is_refused_before_any_work(tmp_path, tiny_model, atlas_cli):
    photos = os.fsencode(tmp_path) + b"/ph\xf6tos"
    os.mkdir(photos)
    _save_png(photos + b"/a.png")
    out = tmp_path / "acts.h5"
    with pytest.raises(ValueError, match="not valid UTF-8") as e:
        collect(os.fsdecode(photos), out, tiny_model, CollectSettings(layers=("3",)), workers=0, progress=False)
    assert "ph\\udcf6tos" in str(e.value) and "rename" in str(e.value)
    assert not out.exists() and not parts_dir_for(out).exists()
    code, _out, err = atlas_cli("collect", os.fsdecode(photos), "-o", str(out), "--random-init", "--device", "cpu")
    assert code == 2 and "not valid UTF-8" in err and "Traceback" not in err
    assert not out.exists() and not parts_dir_for(out).exists()


def test_a_folder_of_only_corrupt_files_is_an_error_and_a_rerun_starts_clean(tmp_path, atlas_cli):
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "a.jpg").write_bytes(b"this is not a jpeg" * 10)
    (photos / "b.png").write_bytes(b"")
    out = tmp_path / "run" / "activations.h5"
    args = ("collect", str(photos), "-o", str(out), "--random-init", "--device", "cpu", "--workers", "0",
            "--layer", "inception3a")
    code, stdout, err = atlas_cli(*args)
    assert code == 2, (stdout, err)
    assert "none of the 2 images" in err and "1 not an image" in err and "1 empty file" in err
    assert not out.exists() and not parts_dir_for(out).exists()
    # the same names with readable photos: the rerun reads them, no failed block is reused
    _save_png(photos / "a.jpg", seed=1)
    _save_png(photos / "b.png", seed=2)
    code, stdout, err = atlas_cli(*args)
    assert code == 0, err
    with ActivationsFile(out) as f:
        assert (f.image_status() == 0).all() and f.n_rows("inception3a") == 2
