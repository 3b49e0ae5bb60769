"""Collect (and reduce's placement) on Dask distributed: same rows as in-process, a worker killed
mid-run loses and duplicates nothing, clear errors for schedulers that cannot be used, and
`atlas run` with ``scheduler = "local:2"``.

Real ``distributed.LocalCluster``s of worker processes; the model is a tiny seeded net that each
worker builds itself from a ``ModelSpec(factory="test_distributed:...")`` (this module is
importable in the workers because they inherit the test process's ``sys.path``).
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from distributed import Client, LocalCluster

import imagegen
from atlas.config import ConfigError, load_config
from atlas.data import open_source
from atlas.models import AtlasModel, load_model
from atlas.pipeline import run_pipeline
from atlas.runtime.distributed import ModelSpec, SchedulerError, keys_digest, parse_scheduler
from atlas.stages.collect.blocks import BlockJob, collect_block
from atlas.stages.collect.stage import CollectSettings, collect
from atlas.stages.reduce import reduce_file
from atlas.store.activations import ActivationsFile, parts_dir_for
from atlas.store.layout import read_layout
from tinynet import Tiny

ROW_FIELDS = ("activations", "image_index", "position", "attribution/top_classes", "attribution/top_values")
TINY = ModelSpec(factory="test_distributed:tiny_model", device="cpu")
SLOW = ModelSpec(factory="test_distributed:slow_tiny_model", device="cpu")


def tiny_model() -> AtlasModel:
    """The seeded tiny net at 32 px: layers ``relu`` (6, 16, 16) and ``relu2`` (4, 16, 16), 5 classes."""
    return load_model(Tiny(), input_size=32, class_names=list("abcde"))


class _Slow(Tiny):
    """Tiny, but every forward pass sleeps, so that tasks are still running when a worker is killed."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(0.1)
        return super().forward(x)


def slow_tiny_model() -> AtlasModel:
    return load_model(_Slow(), input_size=32, class_names=list("abcde"))


def write_images(folder: Path, n: int, bad: int = 2) -> Path:
    """``n`` noise JPEGs of assorted sizes plus ``bad`` broken files (truncated, garbage)."""
    for i in range(n):
        imagegen.write(folder / f"img{i:03d}.jpg", imagegen.jpeg(imagegen.noise_rgb((40 + i % 7, 36 + i % 5), seed=i)))
    for i in range(bad):
        data = imagegen.truncated_jpeg(i) if i % 2 == 0 else imagegen.garbage(seed=i)
        imagegen.write(folder / f"bad{i}.jpg", data)
    return folder


def assert_same_rows(a: Path, b: Path) -> None:
    with h5py.File(a, "r") as fa, h5py.File(b, "r") as fb:
        assert fa.attrs["settings_hash"] == fb.attrs["settings_hash"]
        np.testing.assert_array_equal(fa["images/status"][:], fb["images/status"][:])
        for layer in fa["layers"]:
            assert fa[f"layers/{layer}"].attrs["n_rows"] == fb[f"layers/{layer}"].attrs["n_rows"]
            for name in ROW_FIELDS:
                np.testing.assert_array_equal(fa[f"layers/{layer}/{name}"][:], fb[f"layers/{layer}/{name}"][:],
                                              err_msg=f"{layer}/{name}")


def _cached_models() -> list[str]:
    import atlas.runtime.distributed

    return sorted(str(spec.factory or spec.name) for spec in atlas.runtime.distributed._MODELS)


@pytest.fixture(scope="module")
def client():
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster, \
            Client(cluster) as c:
        yield c


@pytest.mark.slow
def test_distributed_collect_equals_in_process(tmp_path, client):
    photos = write_images(tmp_path / "photos", 22)
    s = CollectSettings(layers=("relu", "relu2"), positions_per_image=3, top_k=3, block_size=4)
    ref = collect(photos, tmp_path / "ref.h5", TINY, s, batch_size=4, workers=0, progress=False)
    out = tmp_path / "dist.h5"
    dist = collect(photos, out, TINY, s, batch_size=4, progress=False, scheduler=client)
    assert dist.rows == ref.rows == {"relu": 66, "relu2": 66}
    assert dist.skipped == ref.skipped and sum(dist.skipped.values()) == 2
    assert_same_rows(tmp_path / "ref.h5", out)
    assert not parts_dir_for(out).exists()
    # each worker built the model from its spec (nothing pickled it to them), and both had blocks
    assert all(models == ["test_distributed:tiny_model"] for models in client.run(_cached_models).values())
    again = collect(photos, out, TINY, s, progress=False, scheduler=client)
    assert again.up_to_date


@pytest.mark.slow
def test_distributed_run_resumes_an_in_process_partial_run(tmp_path, client):
    photos = write_images(tmp_path / "photos", 13, bad=1)
    s = CollectSettings(layers=("relu2",), positions_per_image=2, block_size=3)
    collect(photos, tmp_path / "ref.h5", TINY, s, batch_size=3, workers=0, progress=False)
    out = tmp_path / "a.h5"
    collect(photos, out, TINY, s, batch_size=3, workers=0, progress=False, max_blocks=2)
    done = collect(photos, out, TINY, s, batch_size=3, progress=False, scheduler=client)
    assert done.resumed_blocks == 2 and done.images == 14 - 6
    assert_same_rows(tmp_path / "ref.h5", out)


def test_block_task_is_idempotent(tmp_path):
    """Running a block's task twice (a worker died after writing, Dask reran it) rewrites the same
    part: same rows, no duplicates, and the join equals the uninterrupted run."""
    photos = write_images(tmp_path / "photos", 10, bad=1)
    s = CollectSettings(layers=("relu2",), positions_per_image=2, block_size=4)
    collect(photos, tmp_path / "ref.h5", TINY, s, batch_size=2, workers=0, progress=False)
    out = tmp_path / "a.h5"
    collect(photos, out, TINY, s, batch_size=2, workers=0, progress=False, max_blocks=1)
    parts = parts_dir_for(out)
    settings = json.loads((parts / "settings.json").read_text())["settings"]
    keys = [r.key for r in open_source(str(photos)).refs()]
    job = BlockJob(output=str(out), parts_settings=settings, model=TINY, n_images=11, block=1, start=4, stop=8,
                   keys_digest=keys_digest(keys[4:8]), settings=s, specs=_specs(s), batch_size=2)
    runs, rows = [], []
    for _ in range(2):
        runs.append(collect_block(job, str(photos)))
        rows.append(_read_part(parts / "part-00000001.h5"))
    assert runs[0].rows == runs[1].rows == {"relu2": 8}
    assert rows[0]["image_index"].tolist() == [4, 4, 5, 5, 6, 6, 7, 7]
    for name in ROW_FIELDS:
        np.testing.assert_array_equal(rows[0][name], rows[1][name], err_msg=name)
    assert sorted(p.name for p in parts.glob("part-*.h5")) == ["part-00000000.h5", "part-00000001.h5"]
    assert not list(parts.glob(".*tmp*"))
    done = collect(photos, out, TINY, s, batch_size=2, workers=0, progress=False)
    assert done.resumed_blocks == 2
    assert_same_rows(tmp_path / "ref.h5", out)


def _specs(s: CollectSettings):
    from atlas.stages.collect.stage import layer_specs

    return tuple(layer_specs(tiny_model(), s.layers))


def _read_part(path: Path) -> dict[str, np.ndarray]:
    with h5py.File(path, "r") as f:
        return {name: f[f"layers/relu2/{name}"][:] for name in ROW_FIELDS}


def test_block_task_refuses_a_source_that_differs_from_the_clients(tmp_path):
    photos = write_images(tmp_path / "photos", 6, bad=0)
    s = CollectSettings(layers=("relu2",), block_size=3)
    out = tmp_path / "a.h5"
    collect(photos, out, TINY, s, workers=0, progress=False, max_blocks=1)
    settings = json.loads((parts_dir_for(out) / "settings.json").read_text())["settings"]
    job = BlockJob(output=str(out), parts_settings=settings, model=TINY, n_images=6, block=1, start=3, stop=6,
                   keys_digest=keys_digest(["other", "images", "here"]), settings=s, specs=_specs(s), batch_size=3)
    with pytest.raises(ValueError, match="same files, at the same path, on every machine"):
        collect_block(job, str(photos))
    elsewhere = dataclasses.replace(job, output=str(tmp_path / "not-shared" / "a.h5"))
    with pytest.raises(FileNotFoundError, match="filesystem shared by the client and every worker"):
        collect_block(elsewhere, str(photos))


@pytest.mark.slow
def test_worker_killed_mid_run_loses_and_duplicates_nothing(tmp_path, client):
    photos = write_images(tmp_path / "photos", 36, bad=2)
    s = CollectSettings(layers=("relu2",), positions_per_image=2, block_size=2)
    ref = tmp_path / "ref.h5"
    collect(photos, ref, SLOW, s, batch_size=2, workers=0, progress=False)
    out = tmp_path / "dist.h5"
    parts = parts_dir_for(out)
    pids_before = client.run(os.getpid)
    outcome: dict[str, object] = {}

    def run() -> None:
        try:
            outcome["summary"] = collect(photos, out, SLOW, s, batch_size=2, progress=False, scheduler=client)
        except BaseException as e:  # reported by the assertion below
            outcome["error"] = e

    runner = threading.Thread(target=run)
    runner.start()
    victim = None
    deadline = time.time() + 90
    while time.time() < deadline and victim is None:
        done = len(list(parts.glob("part-*.h5"))) if parts.exists() else 0
        busy = [addr for addr, keys in client.processing().items() if keys]
        if done >= 3 and busy:
            victim = busy[0]
        else:
            time.sleep(0.05)
    assert victim is not None, "no block was in flight to kill a worker under"
    assert len(list(parts.glob("part-*.h5"))) < 19, "the run finished before a worker could be killed"
    os.kill(pids_before[victim], signal.SIGKILL)
    runner.join(timeout=180)
    assert not runner.is_alive(), "the distributed collect did not finish after a worker was killed"
    assert "error" not in outcome, outcome.get("error")
    pids_after = client.run(os.getpid)
    assert pids_before[victim] not in pids_after.values()  # the nanny started a new worker process
    summary = outcome["summary"]
    assert summary.rows == {"relu2": 72}
    assert_same_rows(ref, out)
    with ActivationsFile(out) as f:
        ids = f.read("relu2", "image_index")
        pos = f.read("relu2", "position")
        good = np.flatnonzero(f.image_status() == 0)
    assert len({(int(i), int(y), int(x)) for i, (y, x) in zip(ids, pos)}) == len(ids) == 72  # no duplicates
    assert np.array_equal(np.unique(ids), good) and len(good) == 36  # no gaps
    assert not parts.exists()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_unreachable_scheduler_is_a_quick_clear_error(tmp_path):
    photos = write_images(tmp_path / "photos", 2, bad=0)
    address = f"tcp://127.0.0.1:{_free_port()}"
    t0 = time.perf_counter()
    with pytest.raises(SchedulerError) as e:
        collect(photos, tmp_path / "a.h5", TINY, CollectSettings(layers=("relu2",)), progress=False, scheduler=address)
    assert time.perf_counter() - t0 < 10
    msg = str(e.value)
    assert address in msg and "dask scheduler" in msg and "dask worker" in msg
    cli = subprocess.run([sys.executable, "-m", "atlas", "-q", "collect", str(photos), "-o", str(tmp_path / "b.h5"),
                          "--model", "inceptionv1", "--random-init", "--scheduler", address],
                         capture_output=True, text=True, timeout=120)
    assert cli.returncode == 2, cli.stderr
    assert f"atlas collect: error: cannot reach the Dask scheduler at {address}" in cli.stderr
    assert "Traceback" not in cli.stderr


def test_scheduler_specs_are_checked():
    assert parse_scheduler("local") == ("local", None)
    assert parse_scheduler("local:3") == ("local", 3)
    assert parse_scheduler("tcp://10.0.0.5:8786") == ("address", None)
    assert parse_scheduler("10.0.0.5:8786") == ("address", None)
    for bad in ("local:0", "banana", "tcp://host", "tcp://host:port"):
        with pytest.raises(SchedulerError, match="local:N|at least 1"):
            parse_scheduler(bad)
    with pytest.raises(ValueError, match="each worker loads itself"):
        collect("unused", "unused.h5", tiny_model(), scheduler="local:1")


def test_config_scheduler_key(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text('[run]\nscheduler = "local:2"\n[collect]\nsource = "x"\n')
    assert load_config(cfg).run.scheduler == "local:2"
    cfg.write_text('[run]\nscheduler = "local:two"\n[collect]\nsource = "x"\n')
    with pytest.raises(ConfigError, match=r"\[run\] scheduler.*local:two"):
        load_config(cfg)


@pytest.mark.slow
def test_reduce_placement_on_the_cluster_equals_threads(tmp_path, client):
    photos = write_images(tmp_path / "photos", 30, bad=0)
    acts = tmp_path / "acts.h5"
    collect(photos, acts, TINY, CollectSettings(layers=("relu",), positions_per_image=4), workers=0, progress=False)
    kw = dict(sample_size=40, n_neighbors=5, chunk_rows=16, progress=False)
    threads = reduce_file(acts, tmp_path / "threads.h5", **kw)
    dist = reduce_file(acts, tmp_path / "dist.h5", scheduler=client, **kw)
    assert dist.rows == threads.rows == 120 and dist.placed == threads.placed > 100
    a, b = read_layout(tmp_path / "threads.h5"), read_layout(tmp_path / "dist.h5")
    np.testing.assert_array_equal(a.xy, b.xy)  # NaN (rows that cannot be placed) compare equal
    np.testing.assert_array_equal(a.valid, b.valid)


@pytest.mark.slow
def test_atlas_run_with_a_local_cluster_end_to_end(tmp_path):
    from tinyrun import make_config

    cfg = make_config(tmp_path, n_photos=8)
    cfg.write_text(cfg.read_text().replace("[run]\n", '[run]\nscheduler = "local:2"\n', 1)
                   .replace("sizes = [2, 4]", "sizes = [2]").replace("steps = 3", "steps = 2"))
    assert load_config(cfg).run.scheduler == "local:2"
    summaries = run_pipeline(cfg, progress=False)
    assert list(summaries) == ["collect", "reduce", "grid", "render", "tiles", "classes", "aligned"]
    assert "collected 8 images" in summaries["collect"]
    run = tmp_path / "run"
    with ActivationsFile(run / "activations.h5") as f:
        assert f.n_rows("inception4c") == 24
    assert read_layout(run / "layout.h5").valid.sum() == 24
    assert (run / "tiles" / "manifest.json").is_file()
