"""A checkpoint trained by TriDet's own code loads here, and eval.py reproduces TriDet's
detections and mAP (fixture made by tools/make_tridet_fixture.py; data regenerated here)."""
import json
import os
import pickle
import shutil

import numpy as np
import torch

import eval as eval_cli
from tools.make_demo_data import make_demo_data
from tools.make_tridet_fixture import CONFIG, DATA_ARGS

FIXTURE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "tridet")


def test_fixture_config_is_the_one_the_script_writes():
    from libs.core import load_config
    cfg = load_config(os.path.join(FIXTURE, "config.yaml"))
    assert cfg["model_name"] == "TriDet" and cfg["model"]["num_bins"] == CONFIG["model"]["num_bins"]
    ckpt = torch.load(os.path.join(FIXTURE, "checkpoint.pth.tar"), weights_only=True)
    assert all(k.startswith("module.") for k in ckpt["state_dict_ema"])   # TriDet's DataParallel


def test_eval_reproduces_tridets_detections_and_map(tmp_path):
    data = tmp_path / "data"
    make_demo_data(str(data), **DATA_ARGS)
    ckpt = tmp_path / "ckpt" / "epoch_007.pth.tar"
    ckpt.parent.mkdir()
    shutil.copy(os.path.join(FIXTURE, "checkpoint.pth.tar"), ckpt)
    out = eval_cli.main([os.path.join(FIXTURE, "config.yaml"), str(ckpt), "--device", "cpu",
                         "--opts", f"dataset.json_file={data}/annotations/demo.json",
                         f"dataset.feat_folder={data}/features"])
    with open(os.path.join(FIXTURE, "detections.pkl"), "rb") as fd:
        theirs = pickle.load(fd)
    ours = out["results"]
    assert list(ours["video-id"]) == list(theirs["video-id"]) and len(ours["video-id"]) > 100
    assert np.array_equal(np.asarray(ours["label"]), np.asarray(theirs["label"]))
    for key in ("t-start", "t-end"):
        np.testing.assert_allclose(ours[key], theirs[key], rtol=0, atol=1e-4, err_msg=key)
    np.testing.assert_allclose(ours["score"], theirs["score"], rtol=1e-5, atol=1e-7)
    with open(os.path.join(FIXTURE, "metrics.json")) as fd:
        expected = json.load(fd)
    assert abs(out["metrics"]["average_mAP"] - expected["average_mAP"]) < 1e-6
    assert expected["average_mAP"] > 0.2    # a trained model, not a chance-level one
    np.testing.assert_allclose(out["metrics"]["mAP"], [expected["mAP"][str(t)] for t in
                                                       expected["tiou_thresholds"]], atol=1e-6)
