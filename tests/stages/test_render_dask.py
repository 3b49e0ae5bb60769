"""Render at production settings, on the CPU: batches as Dask tasks (a worker killed mid-run loses
and doubles nothing, and the icons equal a single-process render), autocast, torch.compile.

The model is the tiny seeded net of ``tinynet.py``, built by each worker from a
``ModelSpec(factory="test_render_dask:...")`` (this module is importable in the workers, which
inherit the test process's ``sys.path``).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time

import numpy as np
import pytest
import torch
from distributed import Client, LocalCluster
from test_render import write_fake_cells

from atlas.models import AtlasModel, load_model
from atlas.runtime.distributed import ModelSpec, worker_device
from atlas.stages.render import IconBatch, compile_model, render_cells, render_icon_batch
from atlas.store.icons import IconsFile, read_icons
from tinynet import Tiny

pytestmark = pytest.mark.usefixtures("one_thread")

FAST = dict(icon_size=40, steps=6, progress=False)


class _Slow(Tiny):
    """Tiny, but every forward pass sleeps, so that batches are still running when a worker is killed."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(0.03)
        return super().forward(x)


def slow_tiny_model() -> AtlasModel:
    return load_model(_Slow(), input_size=16)


def test_worker_device_is_the_spec_without_several_gpus():
    assert worker_device("cpu") == "cpu"
    assert worker_device("cuda:1") == "cuda:1"
    if torch.cuda.device_count() <= 1:
        assert worker_device("auto") == "auto"


@pytest.mark.slow
def test_render_on_dask_with_a_worker_killed_equals_a_single_process_render(tmp_path, monkeypatch):
    cells = write_fake_cells(tmp_path / "cells.h5", {4: 9, 6: 23}, seed=3, model="_Slow")
    ref = render_cells(cells, tmp_path / "ref.h5", slow_tiny_model(), batch_size=2, device="cpu", **FAST)
    assert ref.complete

    writes: list[int] = []
    real_write = IconsFile.write

    def counting_write(self, size, rows, *args):  # records every batch the client writes
        writes.extend((size, int(r)) for r in rows)
        return real_write(self, size, rows, *args)

    monkeypatch.setattr(IconsFile, "write", counting_write)
    spec = ModelSpec(factory="test_render_dask:slow_tiny_model", device="cpu")
    out = tmp_path / "dist.h5"
    outcome: dict[str, object] = {}
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster, \
            Client(cluster) as client:
        pids_before = client.run(os.getpid)

        def run() -> None:
            try:
                outcome["summary"] = render_cells(cells, out, spec, batch_size=2, device="cpu", scheduler=client,
                                                  **FAST)
            except BaseException as e:  # reported by the assertion below
                outcome["error"] = e

        runner = threading.Thread(target=run)
        runner.start()
        victim = None
        deadline = time.time() + 90
        while time.time() < deadline and victim is None:
            busy = [addr for addr, keys in client.processing().items() if keys]
            if len(writes) >= 4 and busy:
                victim = busy[0]
            else:
                time.sleep(0.02)
        assert victim is not None, "no batch was in flight to kill a worker under"
        assert len(writes) < 32, "the render finished before a worker could be killed"
        os.kill(pids_before[victim], signal.SIGKILL)
        runner.join(timeout=180)
        assert not runner.is_alive(), "the distributed render did not finish after a worker was killed"
        assert "error" not in outcome, outcome.get("error")
        assert pids_before[victim] not in client.run(os.getpid).values()  # the nanny restarted it
    summary = outcome["summary"]
    assert summary.complete and summary.rendered == {4: 9, 6: 23}
    assert len(writes) == len(set(writes)) == 32  # every cell written exactly once
    a, b = read_icons(tmp_path / "ref.h5"), read_icons(out)
    for size in (4, 6):
        assert b[size].done.all()
        np.testing.assert_array_equal(a[size].cell_id, b[size].cell_id)
        np.testing.assert_array_equal(a[size].icons, b[size].icons, err_msg=f"level {size}")
        np.testing.assert_array_equal(a[size].objective, b[size].objective)


def test_render_refuses_a_model_name_without_a_scheduler(tmp_path):
    cells = write_fake_cells(tmp_path / "cells.h5", {2: 3})
    with pytest.raises(ValueError, match="scheduler"):
        render_cells(cells, tmp_path / "icons.h5", "inceptionv1", device="cpu", **FAST)


def _batch(n: int = 4, steps: int = 24, precision: str = "fp32") -> IconBatch:
    rng = np.random.default_rng(0)
    return IconBatch("relu2", 4, np.arange(n), np.arange(n, dtype=np.int32), rng.random((n, 4)).astype(np.float32),
                     icon_size=40, steps=steps, precision=precision)


def test_bf16_autocast_reaches_about_the_objective_of_fp32():
    model = load_model(Tiny(), input_size=16)
    fp32 = render_icon_batch(model, _batch())
    bf16 = render_icon_batch(model, _batch(precision="bf16"))
    assert bf16.objective.dtype == np.float32
    # the objective of the final icons, measured in fp32 for both: bf16 steps reach at least 90% of it
    assert bf16.objective.mean() >= 0.9 * fp32.objective.mean(), (bf16.objective, fp32.objective)
    assert np.abs(bf16.icons.astype(int) - fp32.icons.astype(int)).mean() > 0  # it did run in bf16


def test_compile_runs_or_falls_back_with_a_log_line(monkeypatch, caplog):
    model = load_model(Tiny(), input_size=16)
    eager = render_icon_batch(model, _batch(steps=4))
    compiled = compile_model(model, "relu2", icon_size=40, backend="eager")
    assert compiled is not model
    np.testing.assert_allclose(render_icon_batch(compiled, _batch(steps=4)).objective, eager.objective, rtol=1e-4)

    def broken(self, *a, **k):
        raise RuntimeError("no C++ compiler found")

    monkeypatch.setattr(torch.nn.Module, "compile", broken)
    with caplog.at_level(logging.WARNING, logger="atlas.stages.render"):
        fallback = compile_model(model, "relu2", icon_size=40)
    assert fallback is model
    assert "torch.compile(backend='inductor') failed (RuntimeError: no C++ compiler found)" in caplog.text


def tiny_model() -> AtlasModel:
    return load_model(Tiny(), input_size=16)


def test_an_amortised_render_on_dask_equals_a_single_process_render(tmp_path):
    """The network is trained in the client (from the spec) and every batch carries its cells'
    predicted icons to the workers: the icons of a render in one process."""
    from atlas.stages.render.amortised import start_file

    cells = write_fake_cells(tmp_path / "cells.h5", {4: 9}, seed=3)
    kw = dict(FAST, start="amortised", amortise_steps=5, refine_steps=3, batch_size=3, device="cpu")
    ref = render_cells(cells, tmp_path / "ref.h5", tiny_model(), **kw)
    spec = ModelSpec(factory="test_render_dask:tiny_model", device="cpu")
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster, \
            Client(cluster) as client:
        dist = render_cells(cells, tmp_path / "dist.h5", spec, scheduler=client, **kw)
    assert ref.complete and dist.complete and start_file(tmp_path / "dist.h5").exists()
    np.testing.assert_array_equal(read_icons(tmp_path / "ref.h5")[4].icons, read_icons(tmp_path / "dist.h5")[4].icons)
