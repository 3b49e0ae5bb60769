"""Image sources and robust decoding (atlas.data): every bad input is generated here, in tmp_path."""

from __future__ import annotations

import io
import os
import pickle
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import imagegen as gen
from atlas.data import (
    IMAGE_EXTENSIONS,
    SKIP_REASONS,
    BadImage,
    EmptySourceError,
    FolderSource,
    ImageDataset,
    ImageRef,
    ListSource,
    TarSource,
    collate_images,
    decode_image,
    decode_jpegs,
    decoding,
    infer_label,
    jpeg_batch_decoder,
    list_photos,
    load_image,
    open_source,
    reason_name,
    to_rgb,
    torchcodec_problem,
)
from atlas.models import ImageTransform
from atlas.resources import imagenet_wnids

OK = SKIP_REASONS["ok"]
WNIDS = imagenet_wnids()


def reason_of(data: bytes, **kwargs) -> str:
    with pytest.raises(BadImage) as info:
        decode_image(data, **kwargs)
    return info.value.reason


def rgb_at(img: Image.Image, xy: tuple[int, int]) -> tuple[int, int, int]:
    return tuple(img.getpixel(xy))


def close_to(a, b, tol: int = 3) -> bool:
    return all(abs(int(x) - int(y)) <= tol for x, y in zip(a, b))


class SmallTransform:
    """Resize to 16x16 without aspect; picklable, has target_size and crop like ImageTransform."""

    crop = 16

    def target_size(self, width: int, height: int) -> tuple[int, int]:
        return 16, 16

    def __call__(self, img: Image.Image) -> torch.Tensor:
        arr = np.asarray(img.resize((16, 16), Image.NEAREST), dtype=np.float32) / 255.0
        return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


# ------------------------------------------------------------------------------- reason codes


def test_skip_reason_codes_are_stable_and_fit_the_status_column():
    assert SKIP_REASONS == {
        "ok": 0, "empty file": 1, "missing file": 2, "not an image": 3,
        "truncated": 4, "too large": 5, "too small": 6, "unreadable": 7,
    }
    assert all(0 <= c < 256 for c in SKIP_REASONS.values())
    assert reason_name(4) == "truncated"
    with pytest.raises(ValueError, match="unknown status code 99"):
        reason_name(99)
    with pytest.raises(ValueError, match="unknown skip reason"):
        BadImage("cosmic rays")
    err = pickle.loads(pickle.dumps(BadImage("too small", "4x4")))
    assert (err.reason, err.code, str(err)) == ("too small", 6, "too small: 4x4")


def test_image_extensions_cover_the_documented_formats():
    assert IMAGE_EXTENSIONS == {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm"}


# ---------------------------------------------------------------------------------- decoding


def test_bad_bytes_get_specific_reasons():
    assert reason_of(b"") == "empty file"
    assert reason_of(gen.garbage()) == "not an image"
    assert reason_of(gen.text_bytes()) == "not an image"
    assert reason_of(gen.truncated_jpeg()) == "truncated"
    png = gen.png(gen.noise_rgb((64, 64)))
    assert reason_of(png[: len(png) // 2]) == "truncated"
    assert reason_of(png[:40]) == "unreadable"  # a PNG signature, then a broken header
    assert reason_of(gen.png(gen.solid(size=(4, 4)))) == "too small"
    assert reason_of(gen.png(gen.solid(size=(100, 15)))) == "too small"
    assert decode_image(gen.png(gen.solid(size=(100, 15))), min_side=8).size == (100, 15)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "BMP", "GIF", "WEBP", "TIFF", "PPM"])
def test_every_format_decodes_to_rgb(fmt):
    img = decode_image(gen.encode(gen.solid((200, 30, 60), (40, 30)), fmt))
    assert img.mode == "RGB" and img.size == (40, 30)
    assert close_to(rgb_at(img, (20, 15)), (200, 30, 60), tol=6)


def test_grayscale_and_bilevel_become_gray_rgb():
    img = decode_image(gen.gray_png(77))
    assert img.mode == "RGB" and rgb_at(img, (3, 3)) == (77, 77, 77)
    bilevel = decode_image(gen.png(Image.new("1", (20, 20), 1)))
    assert rgb_at(bilevel, (0, 0)) == (255, 255, 255)


def test_cmyk_jpeg_colors_are_converted():
    assert close_to(rgb_at(decode_image(gen.cmyk_jpeg((0, 255, 255, 0))), (10, 10)), (255, 0, 0), tol=4)
    assert close_to(rgb_at(decode_image(gen.cmyk_jpeg((0, 0, 0, 255))), (10, 10)), (0, 0, 0), tol=4)


def test_16bit_png_is_scaled_not_clipped():
    values = np.zeros((16, 16), np.uint16)
    values[0, :5] = [0, 257, 32768, 65535, 1000]
    img = decode_image(gen.png16(values))
    assert Image.open(io.BytesIO(gen.png16(values))).mode == "I;16"
    row = np.asarray(img)[0, :5]
    np.testing.assert_array_equal(row[:, 0], [0, 1, 128, 255, 4])
    assert (row[:, 0] == row[:, 1]).all() and (row[:, 1] == row[:, 2]).all()


@pytest.mark.parametrize("mode", ["I;16", "I;16B", "I;16L", "I"])
def test_16bit_modes_scale_full_range(mode):
    img = Image.new(mode, (3, 1))
    for x, v in enumerate((0, 32768, 65535)):
        img.putpixel((x, 0), v)
    np.testing.assert_array_equal(np.asarray(to_rgb(img))[0, :, 0], [0, 128, 255])


def test_float_images():
    unit = Image.fromarray(np.array([[0.0, 0.5, 1.0]], np.float32), "F")
    np.testing.assert_array_equal(np.asarray(to_rgb(unit))[0, :, 1], [0, 128, 255])
    wide = Image.fromarray(np.array([[-2.0, 0.0, 2.0, np.nan]], np.float32), "F")
    np.testing.assert_array_equal(np.asarray(to_rgb(wide))[0, :, 2], [0, 128, 255, 128])


def test_transparency_is_composited_on_white():
    pal = decode_image(gen.palette_png_with_transparency())
    assert rgb_at(pal, (2, 5)) == (255, 255, 255)  # transparent blue
    assert rgb_at(pal, (30, 5)) == (255, 0, 0)  # opaque red
    assert rgb_at(decode_image(gen.rgba_png((255, 0, 0), alpha=0)), (1, 1)) == (255, 255, 255)
    assert rgb_at(decode_image(gen.rgba_png((255, 0, 0), alpha=255)), (1, 1)) == (255, 0, 0)
    assert close_to(rgb_at(decode_image(gen.rgba_png((0, 0, 0), alpha=128)), (1, 1)), (127, 127, 127), tol=1)
    la = decode_image(gen.png(Image.new("LA", (20, 20), (0, 0))))
    assert rgb_at(la, (1, 1)) == (255, 255, 255)


def test_huge_image_is_refused_before_any_allocation():
    # The PNG header claims 8000x7000 but holds one row of data: decoding it would say "truncated".
    t0 = time.perf_counter()
    assert reason_of(gen.header_only_png(8000, 7000)) == "too large"
    # Over twice PIL's own bomb limit: PIL's DecompressionBombError must not escape.
    assert reason_of(gen.header_only_png(20000, 20000)) == "too large"
    assert time.perf_counter() - t0 < 0.5
    # The same kind of file just under a limit is decoded at the size its header claims.
    small = gen.header_only_png(3000, 2000)
    assert reason_of(small, max_pixels=5_999_999) == "too large"
    assert decode_image(small, max_pixels=6_000_000).size == (3000, 2000)


@pytest.fixture(scope="module")
def big_jpeg() -> bytes:
    return gen.big_gray_jpeg(8000, 7000, value=128)  # 56 MP


def test_big_jpeg_is_reduced_by_draft_under_the_limit(big_jpeg):
    full = decode_image(big_jpeg)  # 56 MP > 50 MP: decoded at 1/2 scale
    assert full.size == (4000, 3500) and full.mode == "RGB"
    assert close_to(rgb_at(full, (2000, 1750)), (128, 128, 128), tol=2)
    assert decode_image(big_jpeg, target_size=(256, 256)).size == (1000, 875)
    assert decode_image(big_jpeg, target_size=(1900, 256)).size == (2000, 1750)
    assert decode_image(big_jpeg, target_size=(2100, 256)).size == (4000, 3500)
    assert decode_image(big_jpeg, max_pixels=1_000_000).size == (1000, 875)
    assert reason_of(big_jpeg, max_pixels=800_000) == "too large"
    # a target that needs more pixels than allowed: the target wins over shrinking further
    assert reason_of(big_jpeg, target_size=(4000, 3500), max_pixels=10_000_000) == "too large"


@pytest.mark.parametrize(
    ("size", "target", "expected"),
    [
        ((800, 600), (100, 75), (100, 75)),  # exactly 1/8
        ((800, 600), (101, 75), (200, 150)),  # one pixel more: 1/4
        ((800, 600), (224, 224), (400, 300)),
        ((800, 600), (400, 300), (400, 300)),
        ((801, 601), (400, 300), (401, 301)),  # libjpeg rounds up
        ((800, 600), (401, 300), (800, 600)),
        ((300, 200), (256, 256), (300, 200)),  # smaller than the target: full size
    ],
)
def test_draft_never_goes_below_the_target(size, target, expected):
    img = decode_image(gen.jpeg(gen.solid(size=size)), target_size=target)
    assert img.size == expected
    assert img.size[0] >= min(target[0], size[0]) and img.size[1] >= min(target[1], size[1])


def test_draft_with_a_transform_target_keeps_the_short_side():
    tf = ImageTransform(256, 224, keep_aspect=True)
    img = decode_image(gen.jpeg(gen.noise_rgb((2400, 1100))), target_size=tf.target_size)
    # the transform wants 559x256 from 2400x1100: 1/4 scale (600x275) is the smallest at least that big
    assert img.size == (600, 275)
    assert min(img.size) >= 256 and tf(img).shape == (3, 224, 224)


def test_pil_global_limit_does_not_block_jpeg_draft(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100_000)  # restored after the test
    data = gen.jpeg(gen.solid(size=(800, 600)))
    assert decode_image(data, target_size=(100, 75)).size == (100, 75)
    assert decode_image(data).size == (800, 600)
    # for other formats PIL's own limit still applies (documented), as "too large"
    assert reason_of(gen.png(gen.solid(size=(800, 600)))) == "too large"


# ----------------------------------------------------------------------------------- labels


def test_labels_from_wordnet_ids():
    assert infer_label("n01440764_tench.JPEG") == 0
    assert infer_label("n01443537.jpg") == 1
    assert infer_label("train/n01443537/img_1.jpg") == 1
    assert infer_label(["n01443537", "n01440764", "x.jpg"]) == 0  # nearest folder wins
    assert infer_label(f"{WNIDS[999]}_10026.JPEG") == 999
    assert infer_label("n01440764123_x.jpg") == -1  # more digits: not a wnid
    assert infer_label("n00000000/x.jpg") == -1  # not an ImageNet-1k class
    assert infer_label("cat.jpg") == -1


# ---------------------------------------------------------------------------------- sources


def make_mixed_folder(root: Path) -> dict[str, str]:
    """A folder of good and bad files; returns key -> expected reason."""
    expect = {
        f"{WNIDS[3]}_shark.jpg": "ok",
        "b_gray.png": "ok",
        "c_cmyk.JPG": "ok",
        "d_garbage.jpg": "not an image",
        "e_truncated.jpeg": "truncated",
        "f_empty.png": "empty file",
        "g_text.jpg": "not an image",
        "h_tiny.png": "too small",
        "i_huge.png": "too large",
        f"sub/{WNIDS[7]}/j_rgba.png": "ok",
        "sub/k_palette.gif": "ok",
        "z_16bit.tiff": "ok",
    }
    data = {
        f"{WNIDS[3]}_shark.jpg": gen.jpeg(),
        "b_gray.png": gen.gray_png(),
        "c_cmyk.JPG": gen.cmyk_jpeg(),
        "d_garbage.jpg": gen.garbage(),
        "e_truncated.jpeg": gen.truncated_jpeg(),
        "f_empty.png": b"",
        "g_text.jpg": gen.text_bytes(),
        "h_tiny.png": gen.png(gen.solid(size=(4, 4))),
        "i_huge.png": gen.header_only_png(8000, 7000),
        f"sub/{WNIDS[7]}/j_rgba.png": gen.rgba_png(alpha=200),
        "sub/k_palette.gif": gen.encode(Image.new("P", (20, 20), 3), "GIF"),
        "z_16bit.tiff": gen.encode(Image.fromarray(np.full((20, 20), 40000, np.uint16)), "TIFF"),
    }
    for key, blob in data.items():
        gen.write(root / key, blob)
    gen.write(root / "notes.txt", b"not an image, ignored")
    gen.write(root / "sub" / "README", b"ignored")
    gen.write(root / ".hidden.jpg", gen.jpeg())
    gen.write(root / ".cache" / "x.jpg", gen.jpeg())
    return expect


def test_folder_source_walks_sorted_and_labels(tmp_path):
    expect = make_mixed_folder(tmp_path)
    src = open_source(tmp_path)
    assert isinstance(src, FolderSource) and len(src) == len(expect)
    assert [r.key for r in src.refs()] == sorted(expect)
    assert [r.index for r in src.refs()] == list(range(len(expect)))
    assert src.ignored_files == 3  # notes.txt, sub/README, .hidden.jpg (hidden folders are not walked)
    labels = dict(zip(src.keys(), src.labels().tolist()))
    assert labels[f"{WNIDS[3]}_shark.jpg"] == 3 and labels[f"sub/{WNIDS[7]}/j_rgba.png"] == 7
    assert labels["b_gray.png"] == -1
    assert src.read_bytes(src.refs()[0]) == (tmp_path / "b_gray.png").read_bytes()
    assert src.path("sub/k_palette.gif") == str(tmp_path / "sub" / "k_palette.gif")
    assert open_source(str(tmp_path)).keys() == src.keys()



def test_list_photos_lists_what_a_folder_source_reads(tmp_path):
    expect = make_mixed_folder(tmp_path)
    (tmp_path / "album.jpg").mkdir()  # a folder named like a photo is not one
    assert list_photos(tmp_path) == [tmp_path / key for key in sorted(expect)]
    assert list_photos(tmp_path) == [Path(p) for p in map(FolderSource(tmp_path).path, FolderSource(tmp_path).refs())]
    top = [k for k in sorted(expect) if "/" not in k]
    assert list_photos(tmp_path, recursive=False) == [tmp_path / key for key in top]
    assert list_photos(tmp_path / "sub", recursive=False) == [tmp_path / "sub" / "k_palette.gif"]
    with pytest.raises(ValueError, match="not a folder"):
        list_photos(tmp_path / "notes.txt")

def test_folder_named_by_its_class_labels_its_images(tmp_path):
    gen.write(tmp_path / WNIDS[5] / "x.jpg", gen.jpeg())
    src = open_source(tmp_path / WNIDS[5])
    assert [(r.key, r.label) for r in src.refs()] == [("x.jpg", 5)]


def test_empty_folder_says_what_was_searched(tmp_path):
    with pytest.raises(EmptySourceError, match="no images found") as info:
        open_source(tmp_path)
    msg = str(info.value)
    assert str(tmp_path) in msg and ".jpg" in msg and "list file" in msg and ".tar" in msg
    gen.write(tmp_path / "a.txt", b"x")
    gen.write(tmp_path / "b.csv", b"x")
    with pytest.raises(EmptySourceError, match=r"2 other file\(s\) were ignored, e.g. a.txt"):
        open_source(tmp_path)
    assert isinstance(info.value, ValueError)


def test_missing_path_names_it(tmp_path):
    with pytest.raises(ValueError, match=r"'.*nowhere' does not exist"):
        open_source(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="no files match"):
        open_source(str(tmp_path / "shards-*.tar"))


def test_list_file(tmp_path):
    gen.write(tmp_path / "imgs" / "a.png", gen.png(gen.solid((10, 20, 30))))
    gen.write(tmp_path / "imgs" / f"{WNIDS[2]}_b.png", gen.png(gen.solid((40, 50, 60))))
    outside = gen.write(tmp_path / "elsewhere" / "c.jpg", gen.jpeg())
    list_file = tmp_path / "lists" / "files.txt"
    gen.write(list_file, "\n".join([
        "# a comment",
        "../imgs/a.png\t5",
        "",
        f"../imgs/{WNIDS[2]}_b.png",
        f"{outside}\tgoldfish\textra column",
        "../imgs/gone.jpg\tn01440764",
        "   # indented comment",
    ]).encode())
    src = open_source(list_file)
    assert isinstance(src, ListSource) and src.kind == "list"
    assert [(r.key, r.label) for r in src.refs()] == [
        ("../imgs/a.png", 5), (f"../imgs/{WNIDS[2]}_b.png", 2), (str(outside), 1), ("../imgs/gone.jpg", 0),
    ]
    assert src.path(src.refs()[0]) == str(tmp_path / "lists" / ".." / "imgs" / "a.png")
    assert src.read_bytes("../imgs/a.png") == (tmp_path / "imgs" / "a.png").read_bytes()
    ds = ImageDataset(src, SmallTransform())
    statuses = [ds[i][2] for i in range(len(ds))]
    assert statuses == [OK, OK, OK, SKIP_REASONS["missing file"]]
    assert torch.allclose(ds[0][1][:, 0, 0], torch.tensor([10, 20, 30]) / 255.0)


def test_list_file_errors_name_the_line(tmp_path):
    bad = gen.write(tmp_path / "bad.lst", b"a.jpg\t7\nb.jpg\tnot a class\n")
    with pytest.raises(ValueError, match=r"bad.lst:2: unknown class 'not a class'"):
        open_source(bad)
    with pytest.raises(EmptySourceError, match="lists no images"):
        open_source(gen.write(tmp_path / "empty.txt", b"# nothing\n\n"))
    with pytest.raises(ValueError, match="CSV is not read"):
        open_source(gen.write(tmp_path / "x.csv", b"a.jpg,1\n"))
    with pytest.raises(ValueError, match="not a UTF-8 text list file"):
        open_source(gen.write(tmp_path / "blob.bin", b"\xff\xfe\x00\x81" * 10))


def test_single_image_and_image_globs(tmp_path):
    for name in ("b.png", "a.png", "c.txt"):
        gen.write(tmp_path / name, gen.png() if name.endswith(".png") else b"x")
    one = open_source(tmp_path / "a.png")
    assert len(one) == 1 and one.read_bytes(one.refs()[0]) == (tmp_path / "a.png").read_bytes()
    both = open_source(str(tmp_path / "*.png"))
    assert [Path(k).name for k in both.keys()] == ["a.png", "b.png"]
    with pytest.raises(ValueError, match="neither an image nor a .tar shard"):
        open_source([tmp_path / "a.png", tmp_path / "c.txt"])


# --------------------------------------------------------------------------------- tar shards


def shard_color(i: int) -> tuple[int, int, int]:
    return (i * 40 % 256, 255 - i * 30, 100 + i)


def make_shards(root: Path) -> list[Path]:
    """Two shards, 3 + 2 images (solid PNG colours by global position), plus non-image members."""
    a = gen.make_tar(root / "shards" / "train-000.tar", {
        "s0/img.png": gen.png(gen.solid(shard_color(0))),
        "s0/img.cls": b"42",
        "notes.json": b"{}",
        "s1.PNG": gen.png(gen.solid(shard_color(1))),
        f"{WNIDS[9]}_s2.jpg": gen.jpeg(gen.solid(shard_color(2))),
    })
    b = gen.make_tar(root / "shards" / f"{WNIDS[11]}.tar", {
        "x.png": gen.png(gen.solid(shard_color(3))),
        "y.txt": b"ignored",
        "z.png": gen.png(gen.solid(shard_color(4))),
        "broken.jpg": gen.truncated_jpeg(),
    })
    return [a, b]


def test_tar_shards_index_keys_and_labels(tmp_path):
    a, b = make_shards(tmp_path)
    src = open_source(str(tmp_path / "shards" / "*.tar"))
    assert isinstance(src, TarSource) and len(src) == 6
    # shards sorted by name (n0... < train-...), members in archive order
    assert src.keys() == [
        f"{WNIDS[11]}.tar::x.png", f"{WNIDS[11]}.tar::z.png", f"{WNIDS[11]}.tar::broken.jpg",
        "train-000.tar::s0/img.png", "train-000.tar::s1.PNG", f"train-000.tar::{WNIDS[9]}_s2.jpg",
    ]
    assert src.labels().tolist() == [11, 11, 11, 42, -1, 9]
    assert src.ignored_files == 2  # notes.json, y.txt (the .cls member is a label)
    assert open_source([b, a]).keys() == src.keys()
    assert open_source(a).keys() == src.keys()[3:]
    img = decode_image(src.read_bytes(src.refs()[4]))
    assert rgb_at(img, (0, 0)) == shard_color(1)
    assert src.read_bytes("train-000.tar::s1.PNG") == src.read_bytes(src.refs()[4])
    assert src.ref("train-000.tar::s1.PNG").index == 4 and src.path(src.refs()[4]) is None
    with pytest.raises(KeyError, match="no image with key 'nope.png'"):
        src.read_bytes("nope.png")


def test_tar_shards_through_dataloader_workers(tmp_path):
    make_shards(tmp_path)
    src = open_source(str(tmp_path / "shards" / "*.tar"))
    src.read_bytes(src.refs()[0])  # an open handle in the parent must not confuse forked workers
    ds = ImageDataset(src, SmallTransform())
    loader = torch.utils.data.DataLoader(ds, batch_size=2, num_workers=2, collate_fn=ds.collate_fn)
    seen: dict[int, object] = {}
    for indices, images, ok, failures in loader:
        for row, i in enumerate(ok.tolist()):
            seen[i] = tuple(round(float(v) * 255) for v in images[row, :, 3, 3])
        for i, code in failures:
            seen[i] = reason_name(code)
        assert sorted(indices.tolist()) == sorted(ok.tolist() + [i for i, _ in failures])
    order = [3, 4, None, 0, 1, 2]  # source index -> colour number (None: the truncated JPEG)
    assert sorted(seen) == list(range(6))
    for index, colour in enumerate(order):
        if colour is None:
            assert seen[index] == "truncated"
        elif index == 5:  # JPEG: approximately
            assert close_to(seen[index], shard_color(colour), tol=4)
        else:
            assert seen[index] == shard_color(colour)
    src.close()


def test_tar_source_pickles_and_reports_vanished_or_cut_shards(tmp_path):
    a, b = make_shards(tmp_path)
    src = TarSource([a, b])
    first = src.read_bytes(src.refs()[0])
    clone = pickle.loads(pickle.dumps(src))
    assert clone.read_bytes(clone.refs()[0]) == first
    clone.close()
    src.close()
    size = b.stat().st_size
    with open(b, "r+b") as f:  # cut the shard inside its last image member
        f.truncate(size - 3000)
    with pytest.raises(BadImage) as info:
        load_image(src, src.refs()[2])
    assert info.value.reason == "truncated"
    src.close()  # an open handle would keep reading the removed file
    os.remove(b)
    with pytest.raises(BadImage) as info:
        load_image(src, src.refs()[0])
    assert info.value.reason == "missing file"
    assert rgb_at(load_image(src, src.refs()[4]), (1, 1)) == shard_color(1)


def test_bad_tar_inputs(tmp_path):
    with pytest.raises(ValueError, match="compressed tar"):
        open_source(gen.write(tmp_path / "x.tar.gz", b"\x1f\x8b"))
    with pytest.raises(ValueError, match="not an uncompressed tar"):
        open_source(gen.write(tmp_path / "junk.tar", gen.garbage(600)))
    with pytest.raises(EmptySourceError, match=r"no image members .*1 other member"):
        open_source(gen.make_tar(tmp_path / "t.tar", {"a.txt": b"x"}))
    a = gen.make_tar(tmp_path / "ok.tar", {"a.png": gen.png()})
    with pytest.raises(ValueError, match="mixes .tar shards with other files"):
        open_source([a, gen.write(tmp_path / "a.png", gen.png())])


# ----------------------------------------------------------------------------- dataset, batches


def test_dataloader_over_mixed_folder_yields_every_index_once(tmp_path):
    expect = make_mixed_folder(tmp_path)
    src = open_source(tmp_path)
    ds = ImageDataset(src, ImageTransform(20, 16, keep_aspect=False))
    assert ds.image_shape == (3, 16, 16)
    loader = torch.utils.data.DataLoader(ds, batch_size=3, num_workers=2, collate_fn=ds.collate_fn)
    got: dict[int, int] = {}
    for indices, images, ok, failures in loader:
        assert images.shape == (len(ok), 3, 16, 16) and images.dtype == torch.float32
        if len(ok):
            assert 0.0 <= float(images.min()) and float(images.max()) <= 1.0
        for i in ok.tolist():
            assert i not in got
            got[i] = OK
        for i, code in failures:
            assert i not in got
            got[i] = code
        assert indices.tolist() == sorted(indices.tolist())
    assert sorted(got) == list(range(len(src)))
    assert {src.refs()[i].key: reason_name(c) for i, c in got.items()} == expect


def test_dataset_indices_subset_and_errors(tmp_path):
    make_mixed_folder(tmp_path)
    src = open_source(tmp_path)
    empty = src.keys().index("f_empty.png")
    ds = ImageDataset(src, SmallTransform(), indices=[empty, 0])
    assert len(ds) == 2 and [ds[i][0] for i in range(2)] == [empty, 0]
    index, tensor, code = ds[1]
    assert (index, code) == (0, OK) and tensor.shape == (3, 16, 16)
    assert ds[0][1] is None and reason_name(ds[0][2]) == "empty file"
    with pytest.raises(ValueError, match="index 12 is out of range for a source of 12 images"):
        ImageDataset(src, SmallTransform(), indices=[0, 12])


def test_dataset_uses_the_transform_target_for_draft(tmp_path, monkeypatch):
    gen.write(tmp_path / "big.jpg", gen.jpeg(gen.noise_rgb((1600, 1200))))
    seen: list[tuple[int, int]] = []

    class Recording(SmallTransform):
        def __call__(self, img):
            seen.append(img.size)
            return super().__call__(img)

    ds = ImageDataset(open_source(tmp_path), Recording())
    assert ds[0][2] == OK and seen == [(200, 150)]  # 1/8: still >= the 16x16 target
    ds = ImageDataset(open_source(tmp_path), Recording(), target_size=(500, 500))
    assert ds[0][2] == OK and seen[-1] == (800, 600)


def test_collate_images():
    t = torch.rand(3, 8, 8)
    batch = [(4, t, 0), (5, None, SKIP_REASONS["truncated"]), (6, t * 0.5, 0)]
    indices, images, ok, failures = collate_images(batch)
    assert indices.tolist() == [4, 5, 6] and ok.tolist() == [4, 6]
    assert images.shape == (2, 3, 8, 8) and torch.equal(images[1], t * 0.5)
    assert failures == [(5, SKIP_REASONS["truncated"])]
    indices, images, ok, failures = collate_images([(1, None, 3), (2, None, 6)], image_shape=(3, 8, 8))
    assert images.shape == (0, 3, 8, 8) and ok.shape == (0,) and ok.dtype == torch.int64
    assert failures == [(1, 3), (2, 6)]
    with pytest.raises(ValueError, match="different shapes"):
        collate_images([(0, torch.rand(3, 8, 8), 0), (1, torch.rand(3, 9, 9), 0)])


def test_image_ref_is_small_and_frozen():
    ref = ImageRef(0, "a.jpg", 3)
    with pytest.raises(AttributeError):
        ref.label = 4  # type: ignore[misc]
    assert not hasattr(ref, "__dict__")


# ---------------------------------------------------------------------------- real photographs


@pytest.mark.shared
def test_sample_photos_are_indexed_in_class_order(sample_dir):
    src = open_source(sample_dir)
    assert len(src) == 1000 and src.ignored_files == 0
    assert src.labels().tolist() == list(range(1000))
    assert src.refs()[0].key == "n01440764_tench.JPEG"
    img = load_image(src, src.refs()[0], target_size=(256, 256))
    assert img.mode == "RGB" and min(img.size) >= 256


# --- the batched JPEG decoder: TorchCodec where it works here, else PIL ---------------------------
# Tolerance of TorchCodec against PIL's full-size decode: at most 1 level of 255 per pixel (both are
# libjpeg-turbo; measured: identical pixels on all 1000 ImageNet sample photos but the one with an
# EXIF orientation, which TorchCodec rotates).

_TORCHCODEC = torchcodec_problem()
needs_torchcodec = pytest.mark.skipif(_TORCHCODEC is not None, reason=f"TorchCodec is not usable here: {_TORCHCODEC}")


def _bytes_tensor(data: bytes) -> torch.Tensor:
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


def _pil_chw(data: bytes) -> torch.Tensor:
    return torch.from_numpy(np.array(decode_image(data))).permute(2, 0, 1)


def test_the_batched_jpeg_decoder_is_pil_when_torchcodec_cannot_be_imported(monkeypatch):
    assert jpeg_batch_decoder() == ("pil" if _TORCHCODEC else "torchcodec")
    decoding._torchcodec_problem.cache_clear()
    monkeypatch.setitem(sys.modules, "torchcodec", None)  # what an uninstalled package looks like to import
    monkeypatch.setitem(sys.modules, "torchcodec.decoders", None)
    try:
        assert jpeg_batch_decoder() == "pil"
        assert "torchcodec cannot be imported" in torchcodec_problem()
        with pytest.raises(RuntimeError, match="needs TorchCodec"):
            decode_jpegs([_bytes_tensor(gen.jpeg())])
    finally:
        monkeypatch.undo()
        decoding._torchcodec_problem.cache_clear()
    assert jpeg_batch_decoder() == ("pil" if _TORCHCODEC else "torchcodec")


@needs_torchcodec
def test_torchcodec_decodes_jpegs_like_pil_and_rejects_damaged_ones():
    rgb = gen.jpeg(gen.noise_rgb((60, 45), seed=1))
    gray = gen.encode(gen.noise_rgb((48, 40), seed=2).convert("L"), "JPEG")
    progressive = gen.encode(gen.noise_rgb((50, 30), seed=3), "JPEG", progressive=True)
    damaged = [gen.truncated_jpeg(3), b"\xff\xd8\xff" + gen.garbage(seed=4) + b"\xff\xd9", gen.text_bytes()]
    got = decode_jpegs([_bytes_tensor(d) for d in [rgb, damaged[0], gray, damaged[1], progressive, damaged[2]]])
    assert [g is None for g in got] == [False, True, False, True, False, True]  # one bad stream spoils no other
    for data, img in zip([rgb, gray, progressive], [got[0], got[2], got[4]]):
        ref = _pil_chw(data)
        assert img.dtype == torch.uint8 and img.shape == ref.shape
        assert (img.int() - ref.int()).abs().max() <= 1
    for data in damaged:  # PIL skips and counts each of them
        assert reason_of(data) in ("truncated", "unreadable", "not an image")
    assert decode_jpegs([]) == []


@needs_torchcodec
def test_torchcodec_applies_exif_orientation_which_pil_decoding_does_not():
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    data = gen.encode(gen.noise_rgb((60, 40), seed=5), "JPEG", exif=exif.tobytes())
    (img,) = decode_jpegs([_bytes_tensor(data)])
    assert tuple(img.shape) == (3, 60, 40)  # rotated: this is why collect hands such JPEGs to PIL
    assert decode_image(data).size == (60, 40)  # stored orientation, as torchvision's ImageFolder loader


@needs_torchcodec
def test_torchcodec_decodes_the_pixels_pil_does_on_real_photos(sample_paths):
    paths = sample_paths[::50]  # 20 photos
    gray = next(p for p in sample_paths if Image.open(p).mode == "L")
    datas = [p.read_bytes() for p in [*paths, gray]]
    got = decode_jpegs([_bytes_tensor(d) for d in datas])
    worst = 0
    for path, data, img in zip([*paths, gray], datas, got):
        ref = _pil_chw(data)
        assert img is not None and img.shape == ref.shape, path.name
        worst = max(worst, int((img.int() - ref.int()).abs().max()))
    assert worst <= 1, f"largest difference {worst} of 255"
