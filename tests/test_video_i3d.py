"""I3D: state-dict layout and outputs equal to piergiaj/pytorch-i3d's own code, endpoint shapes,
and the weight-file checks. ``fixtures/i3d_parity.npz`` holds the port's keys, shapes and outputs
on seeded random weights and inputs (made by ``fixtures/make_i3d_parity.py``)."""
import os

import numpy as np
import pytest
import torch

from libs.video.i3d import I3dWeightsError, InceptionI3d, load_i3d_weights
from tests.fixtures.make_i3d_parity import CASES, seeded_input
from tests.video_helpers import random_i3d_state_dict

FIXTURE = np.load(os.path.join(os.path.dirname(__file__), "fixtures", "i3d_parity.npz"))


@pytest.mark.parametrize("in_ch", [3, 2])
def test_state_dict_keys_and_shapes_equal_the_ports(in_ch):
    ours = {k: tuple(v.shape) for k, v in InceptionI3d(in_ch).state_dict().items()}
    port = {str(k): tuple(int(n) for n in str(s).split(",") if n)
            for k, s in zip(FIXTURE[f"keys_{in_ch}"], FIXTURE[f"shapes_{in_ch}"])}
    assert {k: v for k, v in port.items() if not k.startswith("logits.")} == ours
    assert port["logits.conv3d.weight"] == (400, 1024, 1, 1, 1)


def test_state_dict_known_entries():
    """A few shapes read off the architecture (Carreira & Zisserman, Fig. 3)."""
    shapes = {k: tuple(v.shape) for k, v in InceptionI3d(3).state_dict().items()}
    assert shapes["Conv3d_1a_7x7.conv3d.weight"] == (64, 3, 7, 7, 7)
    assert shapes["Conv3d_2c_3x3.conv3d.weight"] == (192, 64, 3, 3, 3)
    assert shapes["Mixed_3b.b1b.conv3d.weight"] == (128, 96, 3, 3, 3)
    assert shapes["Mixed_4f.b3b.conv3d.weight"] == (128, 528, 1, 1, 1)
    assert shapes["Mixed_5c.b0.bn.running_var"] == (384,)
    assert len(shapes) == 57 * 6   # 57 conv units: conv3d.weight + 5 BatchNorm tensors each


def test_endpoint_shapes_at_224():
    model = InceptionI3d(3).to("meta")
    shapes = {name: tuple(y.shape[1:]) for name, y in
              model.endpoints(torch.empty(1, 3, 16, 224, 224, device="meta"))}
    assert shapes == {
        "Conv3d_1a_7x7": (64, 8, 112, 112), "MaxPool3d_2a_3x3": (64, 8, 56, 56),
        "Conv3d_2b_1x1": (64, 8, 56, 56), "Conv3d_2c_3x3": (192, 8, 56, 56),
        "MaxPool3d_3a_3x3": (192, 8, 28, 28), "Mixed_3b": (256, 8, 28, 28),
        "Mixed_3c": (480, 8, 28, 28), "MaxPool3d_4a_3x3": (480, 4, 14, 14),
        "Mixed_4b": (512, 4, 14, 14), "Mixed_4c": (512, 4, 14, 14), "Mixed_4d": (512, 4, 14, 14),
        "Mixed_4e": (528, 4, 14, 14), "Mixed_4f": (832, 4, 14, 14),
        "MaxPool3d_5a_2x2": (832, 2, 7, 7), "Mixed_5b": (832, 2, 7, 7),
        "Mixed_5c": (1024, 2, 7, 7)}


@pytest.mark.parametrize("case", list(CASES))
def test_features_equal_the_ports(case, tmp_path):
    in_ch, wseed, xseed, shape, _ = CASES[case]
    model = InceptionI3d(in_ch)
    path = str(tmp_path / "w.pt")
    torch.save(random_i3d_state_dict(model, wseed), path)
    load_i3d_weights(model, path)
    with torch.no_grad():
        ours = model.eval()(seeded_input(xseed, shape)).numpy()
    expected = FIXTURE[case]
    assert ours.shape == expected.shape
    np.testing.assert_allclose(ours, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


def _saved(tmp_path, state, name="w.pt"):
    path = str(tmp_path / name)
    torch.save(state, path)
    return path


def test_old_files_without_num_batches_tracked_and_other_logits_load(tmp_path):
    model = InceptionI3d(3)
    state = random_i3d_state_dict(model, 5, num_classes=157)       # Charades classifier
    state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    load_i3d_weights(model, _saved(tmp_path, state))
    assert torch.equal(model.Mixed_4d.b2b.conv3d.weight, state["Mixed_4d.b2b.conv3d.weight"])


def test_wrong_layouts_name_the_file_and_the_keys(tmp_path):
    state = random_i3d_state_dict(InceptionI3d(3), 5)
    missing = {k: v for k, v in state.items() if k != "Mixed_3c.b0.conv3d.weight"}
    with pytest.raises(I3dWeightsError, match=r"m\.pt: not an I3D RGB state dict .*missing "
                                              r"Mixed_3c\.b0\.conv3d\.weight"):
        load_i3d_weights(InceptionI3d(3), _saved(tmp_path, missing, "m.pt"))
    with pytest.raises(I3dWeightsError, match=r"not an I3D flow state dict .*wrong shape "
                                              r"Conv3d_1a_7x7\.conv3d\.weight \(64, 3, 7, 7, 7\)"):
        load_i3d_weights(InceptionI3d(2), _saved(tmp_path, state))   # RGB file as flow weights
    renamed = {f"backbone.{k}": v for k, v in state.items()}
    with pytest.raises(I3dWeightsError, match="unexpected backbone.Conv3d_1a_7x7"):
        load_i3d_weights(InceptionI3d(3), _saved(tmp_path, renamed))
    with pytest.raises(I3dWeightsError, match=r"nothere\.pt: weights file not found"):
        load_i3d_weights(InceptionI3d(3), str(tmp_path / "nothere.pt"))
    (tmp_path / "junk.pt").write_text("not a torch file")
    with pytest.raises(I3dWeightsError, match=r"junk\.pt: cannot read the weights file"):
        load_i3d_weights(InceptionI3d(3), str(tmp_path / "junk.pt"))
