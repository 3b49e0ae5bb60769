"""Grid stage: half-open binning, per-cell means/attribution/examples, and cells.h5."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
from test_reduce import LAYER, write_activations

from atlas.stages.grid import (
    GridSettings,
    cell_attribution,
    cell_coords,
    cell_examples,
    cell_means,
    grid_cells,
    grid_file,
)
from atlas.store.cells import cells_attrs, read_cells
from atlas.store.layout import NONFINITE, PLACED, ZERO, LayoutWriter


def write_layout(path: Path, xy: np.ndarray, status: np.ndarray | None = None,
                 row_ids: np.ndarray | None = None) -> Path:
    """A complete ``layout.h5`` with the given positions (no UMAP involved)."""
    m = len(xy)
    status = np.zeros(m, np.uint8) if status is None else status
    row_ids = np.arange(m, dtype=np.int64) if row_ids is None else row_ids
    with LayoutWriter.create(path, row_ids, {"fixture": 1},
                             {"model": "fake-net", "layer": LAYER, "source": "activations.h5"}) as w:
        w.write_fit(row_ids[:3], xy[:3], row_ids[:3], xy[:3], 0)
        w.write_rows(0, xy, status)
        w.commit(m)
        xy = np.where((status == NONFINITE)[:, None], np.nan, xy).astype(np.float32)
        w.finish(xy, status, np.zeros(2), np.ones(2))
    return path


# --------------------------------------------------------------------------- binning


def test_grid_cells_half_open_bins_by_hand() -> None:
    xy = np.array([
        [0.0, 0.0],      # corner -> cell 0
        [0.25, 0.0],     # on the x border 1/4 -> ix 1
        [0.2499, 0.0],   # just below it -> ix 0
        [1.0, 0.0],      # 1.0 -> last bin
        [0.0, 1.0],      # iy 3 -> 12
        [1.0, 1.0],      # 15
        [0.5, 0.75],     # ix 2, iy 3 -> 14
        [0.74999, 0.5],  # ix 2, iy 2 -> 10
    ])
    np.testing.assert_array_equal(grid_cells(xy, 4), [0, 1, 0, 3, 12, 15, 14, 10])
    np.testing.assert_array_equal(grid_cells(xy, 1), np.zeros(8))
    np.testing.assert_array_equal(cell_coords([0, 1, 12, 14, 10], 4), [[0, 0], [0, 1], [3, 0], [3, 2], [2, 2]])


def test_grid_cells_borders_k_over_size_land_in_bin_k() -> None:
    for size in (7, 10, 49, 160):
        k = np.arange(size)
        xy = np.stack([k / size, np.zeros(size)], 1)  # 1/49 * 49 != 1 in float64: no floor(x * size)
        np.testing.assert_array_equal(grid_cells(xy, size), k)
        np.testing.assert_array_equal(grid_cells(xy.astype(np.float32), size), k)
    # float32 0.7 is below the float64 0.7 but is the border in float32: bin 7
    assert grid_cells(np.array([[0.7, 0.7]], np.float32), 10)[0] == 77
    assert grid_cells(np.array([[0.7, 0.7]], np.float16), 10)[0] == 77


@pytest.mark.parametrize("bad", [[1.0001, 0.5], [-1e-9, 0.5], [np.nan, 0.5], [0.5, np.inf]])
def test_grid_cells_rejects_points_outside_the_unit_square(bad: list[float]) -> None:
    with pytest.raises(ValueError, match="outside \\[0, 1\\] or not finite.*normalise"):
        grid_cells(np.array([[0.5, 0.5], bad]), 4)


# --------------------------------------------------------------------------- cell statistics


def test_cell_means_min_count_and_empty_cells_by_hand() -> None:
    xy = np.array([[0.1, 0.1], [0.2, 0.3], [0.9, 0.1], [0.1, 0.9], [0.6, 0.7], [0.8, 0.8], [0.99, 0.99]])
    acts = np.array([[1, 2], [3, 4], [5, 6], [7, 8], [1, 1], [3, 3], [5, 5]], np.float16)
    ids = grid_cells(xy, 2)
    np.testing.assert_array_equal(ids, [0, 0, 1, 2, 3, 3, 3])
    means, cells, counts = cell_means(acts, ids, 4, min_count=2)
    np.testing.assert_array_equal(cells, [0, 3])
    np.testing.assert_array_equal(counts, [2, 3])
    np.testing.assert_array_equal(means, [[2, 3], [3, 3]])
    assert means.dtype == np.float32
    # size 3 leaves empty cells; min_count 1 keeps every occupied one, chunking changes nothing
    ids3 = grid_cells(xy, 3)
    means, cells, counts = cell_means(acts, ids3, 9, min_count=1, chunk_rows=2)
    np.testing.assert_array_equal(ids3, [0, 0, 2, 6, 7, 8, 8])
    np.testing.assert_array_equal(cells, [0, 2, 6, 7, 8])
    np.testing.assert_array_equal(counts, [2, 1, 1, 1, 2])
    np.testing.assert_array_equal(means, [[2, 3], [5, 6], [7, 8], [1, 1], [4, 4]])


def test_cell_means_matches_a_naive_mask_loop(rng: np.random.Generator) -> None:
    n, c, size = 5000, 16, 7
    xy = rng.beta(2, 3, (n, 2))
    acts = rng.gamma(1.0, 2.0, (n, c)).astype(np.float16)
    ids = grid_cells(xy, size)
    means, cells, counts = cell_means(acts, ids, size * size, min_count=20, chunk_rows=777)
    ref_cells, ref_means, ref_counts = [], [], []
    for cell in range(size * size):
        mask = ids == cell
        if mask.sum() >= 20:
            ref_cells.append(cell)
            ref_counts.append(mask.sum())
            ref_means.append(acts[mask].astype(np.float64).mean(0))
    np.testing.assert_array_equal(cells, ref_cells)
    np.testing.assert_array_equal(counts, ref_counts)
    np.testing.assert_allclose(means, ref_means, rtol=1e-6)
    assert len(cells) < size * size  # the threshold dropped some sparse corner cells


def test_cell_attribution_mean_of_listed_values_by_hand() -> None:
    tc = np.array([[4, 1], [1, 7], [2, 3]])
    tv = np.array([[2.0, 1.0], [3.0, 0.5], [9.0, 9.0]], np.float32)
    ids = np.array([5, 5, 2])  # cell 2 is not kept
    classes, values = cell_attribution(tc, tv, ids, np.array([5]), np.array([2]), k=4, chunk_rows=1)
    np.testing.assert_array_equal(classes, [[1, 4, 7, -1]])
    np.testing.assert_allclose(values, [[2.0, 1.0, 0.25, 0.0]])
    assert classes.dtype == np.int16 and values.dtype == np.float32


def test_cell_examples_nearest_to_the_mean_one_per_image() -> None:
    acts = np.array([[1, 0], [0.9, 0.1], [0, 1], [1, 0.05], [5, 5]], np.float32)
    ids = np.array([3, 3, 3, 3, 0])
    means, cells, _ = cell_means(acts, ids, 4, min_count=1)
    np.testing.assert_allclose(means[1], [0.725, 0.2875])
    # cosine to the mean: row 1 0.965, row 3 0.947, row 0 0.930, row 2 0.369
    rows = cell_examples(acts, ids, cells, means, n_examples=3, chunk_rows=2)
    np.testing.assert_array_equal(rows, [[4, -1, -1], [1, 3, 0]])
    # rows 0 and 1 come from image 0: only the better one (row 1) is an example
    rows = cell_examples(acts, ids, cells, means, image_index=np.array([0, 0, 1, 2, 3]), n_examples=3)
    np.testing.assert_array_equal(rows, [[4, -1, -1], [1, 3, 2]])


# --------------------------------------------------------------------------- the stage


@pytest.fixture
def run(tmp_path: Path, rng: np.random.Generator) -> dict[str, object]:
    """400 rows: blobs in the unit square, 4 channels, image = row // 2, rows 7 and 8 not valid."""
    n = 400
    xy = np.clip(rng.normal(0.5, 0.18, (n, 2)), 0, 1).astype(np.float32)
    acts = rng.gamma(1.0, 1.0, (n, 4)).astype(np.float32)
    tc = np.stack([np.arange(n) % 3, (np.arange(n) + 1) % 3], 1)
    tv = np.tile(np.array([2.0, 1.0], np.float32), (n, 1))
    status = np.zeros(n, np.uint8)
    status[7], status[8] = ZERO, NONFINITE
    a = write_activations(tmp_path / "activations.h5", acts, top_classes=tc, top_values=tv,
                          image_index=np.arange(n) // 2, extra_rows=5)
    lay = write_layout(tmp_path / "layout.h5", xy, status)
    return {"acts": a, "layout": lay, "cells": tmp_path / "cells.h5", "xy": xy, "x": acts.astype(np.float16),
            "tc": tc, "valid": status == PLACED}


def test_grid_file_writes_cells_h5_that_reads_back(run: dict) -> None:
    summary = grid_file(run["acts"], run["layout"], run["cells"], sizes=(2, 8), min_count=3, progress=False)
    valid = run["valid"]
    assert summary.rows == 398 and summary.cells[2] == 4
    attrs = cells_attrs(run["cells"])
    assert attrs["kind"] == "cells" and attrs["complete"] and attrs["sizes"] == [2, 8]
    assert attrs["layer"] == LAYER and attrs["model"] == "fake-net" and attrs["settings"]["min_count"] == 3
    levels = read_cells(run["cells"])
    for size, lv in levels.items():
        ids = grid_cells(run["xy"][valid], size)
        counts = np.bincount(ids, minlength=size * size)
        keep = np.flatnonzero(counts >= 3)
        np.testing.assert_array_equal(lv.cell_id, keep)
        np.testing.assert_array_equal(lv.count, counts[keep])
        np.testing.assert_array_equal(lv.coords, np.stack(np.divmod(keep, size), 1))
        assert lv.n_dropped_rows == counts[counts < 3].sum()
        x, xy = run["x"][valid].astype(np.float64), run["xy"][valid].astype(np.float64)
        for j in (0, len(keep) // 2, len(keep) - 1):  # spot checks against plain numpy
            mask = ids == keep[j]
            np.testing.assert_allclose(lv.direction[j], x[mask].mean(0), rtol=1e-5)
            np.testing.assert_allclose(lv.center[j], xy[mask][:, ::-1].mean(0), rtol=1e-5)
            # rows of class r % 3 get 2.0, of class (r + 1) % 3 get 1.0
            tc = run["tc"][valid][mask]
            mean_attr = np.array([(2.0 * (tc[:, 0] == c) + 1.0 * (tc[:, 1] == c)).mean() for c in range(3)])
            np.testing.assert_allclose(lv.top_values[j, :3], np.sort(mean_attr)[::-1], rtol=1e-6)
            assert lv.top_classes[j, 3] == -1 and lv.top_values[j, 3] == 0
            ex = lv.example_rows[j][lv.example_rows[j] >= 0]
            assert len(ex) == min(8, len(np.unique(np.flatnonzero(valid)[mask] // 2)))
            assert set(ex) <= set(np.flatnonzero(valid)[mask]) and len(set(ex // 2)) == len(ex)
            np.testing.assert_array_equal(lv.example_images[j][: len(ex)], ex // 2)
        assert lv.top_classes.shape == (len(keep), 5) and lv.example_rows.shape == (len(keep), 8)
        assert 7 not in lv.example_rows and 8 not in lv.example_rows
    with h5py.File(run["cells"], "r") as f:
        g = f["levels/8"]
        assert g.attrs["size"] == 8 and g.attrs["min_count"] == 3
        assert {k: g[k].dtype.str for k in ("cell_id", "coords", "center", "count", "direction", "top_classes",
                                            "top_values", "example_rows", "example_images")} == {
            "cell_id": "<i4", "coords": "<i4", "center": "<f4", "count": "<i4", "direction": "<f4",
            "top_classes": "<i2", "top_values": "<f4", "example_rows": "<i8", "example_images": "<i8"}
    again = grid_file(run["acts"], run["layout"], run["cells"], sizes=(2, 8), min_count=3, progress=False)
    assert again.up_to_date


def test_grid_file_class_filter_and_class_layout(run: dict, tmp_path: Path) -> None:
    # class filter on the full layout: rows whose top class is 2 (rows 2, 5, 8, ...; row 8 not valid)
    grid_file(run["acts"], run["layout"], run["cells"], sizes=(1,), min_count=1, class_filter="2",
              class_top_n=0, progress=False)
    lv = read_cells(run["cells"])[1]
    assert lv.count.tolist() == [len(range(2, 400, 3)) - 1]
    assert lv.top_classes[0, :2].tolist() == [2, 0] and lv.top_values[0, :2].tolist() == [2.0, 1.0]
    # a class layout (row_ids a subset): example rows are rows of the layer, not of the layout
    rows = np.arange(0, 400, 4)
    lay = write_layout(tmp_path / "class_layout.h5", run["xy"][rows], row_ids=rows)
    grid_file(run["acts"], lay, tmp_path / "c.h5", sizes=(1,), min_count=1, progress=False)
    lv = read_cells(tmp_path / "c.h5")[1]
    assert lv.count.tolist() == [100]
    assert set(lv.example_rows[0]) <= set(rows.tolist())
    np.testing.assert_allclose(lv.direction[0], run["x"][rows].astype(np.float64).mean(0), rtol=1e-5)


def test_grid_settings_name_the_fix() -> None:
    with pytest.raises(ValueError, match="sizes must be distinct positive integers"):
        GridSettings(sizes=(20, 20))
    with pytest.raises(ValueError, match="min_count must be at least 1"):
        GridSettings(min_count=0)


# --------------------------------------------------------------------------- settings at the door


def _grid_args(run: dict, *extra: str) -> tuple[str, ...]:
    return ("grid", "--activations", str(run["acts"]), "--layout", str(run["layout"]), "-o", str(run["cells"]),
            *extra)


def test_grid_sizes_beyond_any_memory_are_refused_before_any_work(run: dict, atlas_cli) -> None:
    code, _out, err = atlas_cli(*_grid_args(run, "--sizes", "20,100000"))
    assert code == 2 and "--sizes" in err and "100000" in err and "Traceback" not in err
    assert not run["cells"].exists()
    with pytest.raises(ValueError, match="100000"):
        GridSettings(sizes=(100000,))


def test_the_command_prints_no_traceback_for_a_grid_beyond_memory(run: dict) -> None:
    """As the user runs it (a process of its own; capped at 16 GiB of address space so that a
    grid that does get allocated fails fast instead of filling the machine)."""
    import resource
    import subprocess
    import sys

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (16 << 30, 16 << 30))

    p = subprocess.run([sys.executable, "-m", "atlas", "-q", *_grid_args(run, "--sizes", "100000")],
                       capture_output=True, text=True, preexec_fn=cap, timeout=300)
    assert p.returncode == 2 and "Traceback" not in p.stderr and "--sizes" in p.stderr, p.stderr
    assert not run["cells"].exists()


def test_a_grid_bigger_than_the_available_memory_is_refused_with_an_estimate(run: dict, monkeypatch) -> None:
    import atlas.stages.grid.stage as grid_stage

    monkeypatch.setattr(grid_stage, "available_memory", lambda: 64 << 20)
    with pytest.raises(ValueError, match="MiB") as e:
        grid_file(run["acts"], run["layout"], run["cells"], sizes=(2, 2000), min_count=1, progress=False)
    msg = str(e.value)
    assert "2000" in msg and "available" in msg and "sizes" in msg
    assert not run["cells"].exists()
    grid_file(run["acts"], run["layout"], run["cells"], sizes=(2, 8), min_count=1, progress=False)  # small is fine


def test_a_grid_that_keeps_no_cell_is_an_error_with_a_hint(run: dict, atlas_cli) -> None:
    code, _out, err = atlas_cli(*_grid_args(run, "--sizes", "20,40", "--min-count", "1000"))
    assert code == 2 and "Traceback" not in err
    assert "no cell" in err and "min-count" in err and "sizes" in err
    assert not run["cells"].exists()


def test_the_default_grid_on_a_few_rows_is_an_error_not_an_empty_atlas(tmp_path: Path, rng, atlas_cli) -> None:
    """36 rows (12 photos, 3 positions each) spread over the default 20 x 20 .. 160 x 160 grids
    leave no cell with the default 6 rows: an error with the numbers to change, no cells.h5."""
    xy = rng.random((36, 2)).astype(np.float32)
    write_activations(tmp_path / "activations.h5", rng.random((36, 4)).astype(np.float32))
    write_layout(tmp_path / "layout.h5", xy)
    code, _out, err = atlas_cli("grid", str(tmp_path))
    assert code == 2 and "Traceback" not in err
    assert "20x20, 40x40, 80x80, 160x160" in err and "--min-count" in err and "--sizes" in err
    assert not (tmp_path / "cells.h5").exists()


@pytest.mark.parametrize("value", ["abc", "20,x", "20,,40", ""])
def test_list_options_that_do_not_parse_name_the_option(run: dict, atlas_cli, value: str) -> None:
    code, _out, err = atlas_cli(*_grid_args(run, "--sizes", value))
    assert code == 2 and "--sizes" in err and repr(value) in err
    assert not run["cells"].exists()


def test_grid_option_ranges_name_the_option(run: dict, atlas_cli) -> None:
    for option, value in (("--min-count", "0"), ("--top-k", "0"), ("--examples", "-1"), ("--sizes", "0,20")):
        code, _out, err = atlas_cli(*_grid_args(run, option, value))
        assert code == 2 and option in err, (option, err)
