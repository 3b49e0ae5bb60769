"""The model-randomisation sanity check (Adebayo et al. 2018) and its parts."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from atlas.models import load_model
from atlas.tools.sanity import cascading_randomization, randomized_copy, rank_correlation, top_down_layers


class Small(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(4, 6, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        return self.fc(self.pool(self.relu(self.conv2(self.relu(self.conv1(x))))).flatten(1))


def test_top_down_layers_and_randomized_copy():
    model = load_model(Small(), input_size=8)
    assert top_down_layers(model) == ["fc", "conv2", "conv1"]  # parametrised only, from the output back
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rand = randomized_copy(model, ["fc", "conv2"], seed=1)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # the model is untouched
    after = rand.state_dict()
    assert not torch.equal(after["net.fc.weight"], before["net.fc.weight"])
    assert not torch.equal(after["net.conv2.weight"], before["net.conv2.weight"])
    assert torch.equal(after["net.conv1.weight"], before["net.conv1.weight"])
    again = randomized_copy(model, ["fc", "conv2"], seed=1).state_dict()
    assert all(torch.equal(again[k], after[k]) for k in after)  # seeded
    with pytest.raises(ValueError, match="no parameters"):
        randomized_copy(model, ["relu"])


def test_rank_correlation():
    a = np.arange(16.0).reshape(4, 4)
    assert rank_correlation(a, a**3) == pytest.approx(1.0)  # ranks, not values
    assert rank_correlation(a, -a) == pytest.approx(-1.0)
    assert rank_correlation(a, np.zeros_like(a)) == 0.0  # a constant map shares no ranking
    tied = np.array([0.0, 0.0, 1.0, 2.0])
    assert rank_correlation(tied, np.array([0.0, 0.0, 1.0, 2.0])) == pytest.approx(1.0)


@pytest.mark.shared
@pytest.mark.slow
def test_randomising_the_top_layers_changes_the_maps(inceptionv1, sample_paths, one_thread):
    """Adebayo et al. 2018 on the real InceptionV1: with fc, inception5b and inception5a
    re-initialised, the class-sensitive maps lose their ranking and guided backprop, deconvnet
    and Grad-CAM++ keep theirs (the table in docs/explain.md: 8 photos, every depth)."""
    photos = [sample_paths[0], sample_paths[801]]
    r = cascading_randomization(inceptionv1, photos, depth=3, ig_steps=4, progress=False,
                                methods=("saliency", "guided_backprop", "deconvnet", "grad_cam", "grad_cam_pp",
                                         "cam", "integrated_gradients"))
    assert [d[-1] for d in r.depths] == ["fc", "inception5b", "inception5a"]
    top3 = {m: float(r.mean(m)[-1]) for m in r.correlation}
    assert top3["grad_cam"] < 0.3 and r.passes("grad_cam")
    assert top3["cam"] < 0.6
    assert top3["saliency"] < 0.7 and top3["integrated_gradients"] < 0.7  # half the ranking or more is lost
    # the literature's failures, reproduced: these maps hardly depend on the top of the network
    for m in ("guided_backprop", "deconvnet"):
        assert top3[m] > 0.9 and not r.passes(m), (m, top3[m])
    assert top3["grad_cam_pp"] > 0.7 and not r.passes("grad_cam_pp")
    assert "| grad_cam |" in r.table() and "passes" in r.table()
