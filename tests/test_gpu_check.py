"""benchmarks/gpu_check.sh keeps working: its CPU run (``--device cpu``, tiny sizes) on real
weights and a dozen sample photos prints the summary table and writes a complete JSON."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_check_runs_on_the_cpu(tmp_path, inceptionv1_weights, sample_paths):
    data = tmp_path / "gpu_data"
    (data / "photos").mkdir(parents=True)
    (data / "bvlc_googlenet.pth").symlink_to(inceptionv1_weights)
    for p in sample_paths[::90][:10]:
        (data / "photos" / p.name).symlink_to(p)
    out = tmp_path / "check.json"
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.run(
        ["bash", str(REPO / "benchmarks" / "gpu_check.sh"), str(data), "--device", "cpu", "--collect-images", "8",
         "--pipeline-images", "10", "--json", str(out)],
        capture_output=True, text=True, env=env, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    for line in ("collect images/s (with attribution)", "collect time waiting on decode",
                 "render icons/min, 80 px, 2 steps", "render icons/min, 80 px, 4 steps",
                 "amortised start: training, 3 steps", "amortised start: icons/min", "small pipeline end to end"):
        assert line in proc.stdout, proc.stdout
    result = json.loads(out.read_text())
    c = result["collect"]
    assert result["device"] == "cpu" and c["images"] == 8 and c["images_per_s"] > 0
    assert set(c["breakdown_share"]) == {"decode", "host_to_device", "model", "attribution", "write"}
    assert abs(sum(c["breakdown_share"].values()) - 1) < 1e-6 and 0 < c["decode_share"] < 1
    steps = result["render"]["steps"]
    assert set(steps) == {"2", "4"} and all(v["icons_per_min"] > 0 for v in steps.values())
    assert result["render"]["precision"]["bf16"]["mean_objective"] > 0
    a = result["render"]["amortised"]
    assert a["train_steps"] == 3 and a["train_seconds"] > 0 and a["icons_per_min"] > 0 and a["mean_objective"] > 0
    assert set(result["pipeline"]["stages"]) >= {"collect", "reduce", "grid", "render", "tiles"}
