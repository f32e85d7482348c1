"""tools/predict.py on video files: equals predict.py on the features extracted from them; the
extractor comes from the config's features: block or the checkpoint folder's config.yaml."""
import json
import os
import shutil

import pytest
import yaml

from libs.video import missing_video_extra
from tests.fixtures_data import video, write_json
from tests.test_predict import random_checkpoint, tiny_config
from tests.video_helpers import write_video
from tools import predict

pytestmark = pytest.mark.skipif(missing_video_extra() is not None,
                                reason=str(missing_video_extra()))

FEATURES = {"backbone": "i3d", "weights": "none", "short_side": 32, "crop_size": 32,
            "clip_len": 16, "stride": 4}


@pytest.fixture
def setup(tmp_path):
    json_file = write_json(str(tmp_path / "ann.json"), {
        "clip": video("test", duration=4.0, fps=30.0, acts=[("Run", 1, 1.0, 2.0)])})
    config = tiny_config(tmp_path, json_file, str(tmp_path / "unused"))
    raw = yaml.safe_load(open(config))
    raw["dataset"]["input_dim"] = 1024
    raw["features"] = FEATURES
    with open(config, "w") as f:
        yaml.safe_dump(raw, f)
    cfg, model, ckpt = random_checkpoint(config, tmp_path / "run")
    (tmp_path / "videos").mkdir()
    write_video(str(tmp_path / "videos" / "clip.mp4"), 120, 30, height=40, width=48)
    return {"config": config, "raw": raw, "ckpt": str(ckpt), "json": json_file,
            "videos": tmp_path / "videos"}


def test_video_equals_its_extracted_features(setup, tmp_path, capsys):
    from tools import extract_features

    args = ["--topk", "40", "--min-score", "0"]
    assert predict.main([setup["config"], setup["ckpt"], str(setup["videos"]),
                         "--out", str(tmp_path / "video.json"), *args]) == 0
    assert "clip: 4.0 s, 27 steps" in capsys.readouterr().out     # (120 - 16) // 4 + 1 features
    opts = [f"--{k.replace('_', '-')}={v}" for k, v in FEATURES.items()]
    assert extract_features.main([str(setup["videos"]), str(tmp_path / "feats"),
                                  "--no-progress", *opts]) == 0
    assert predict.main([setup["config"], setup["ckpt"], str(tmp_path / "feats" / "clip.npy"),
                         "--labels", setup["json"], "--out", str(tmp_path / "feats.json"),
                         *args]) == 0
    from_video = json.loads((tmp_path / "video.json").read_text())
    from_feats = json.loads((tmp_path / "feats.json").read_text())
    assert len(from_video["results"]["clip"]) > 5
    assert from_video["results"] == from_feats["results"]


def test_features_block_from_the_checkpoint_folder(setup, tmp_path, capsys):
    bare = dict(setup["raw"])
    bare.pop("features")
    config = tmp_path / "bare.yaml"
    config.write_text(yaml.safe_dump(bare))
    out = str(tmp_path / "p.json")
    with pytest.raises(ValueError, match=r"bare\.yaml: features\.backbone: not set, so video "
                                         r"files cannot be turned into features"):
        predict.main([str(config), setup["ckpt"], str(setup["videos"]), "--out", out])
    shutil.copy(setup["config"], os.path.join(os.path.dirname(setup["ckpt"]), "config.yaml"))
    assert predict.main([str(config), setup["ckpt"], str(setup["videos"]), "--out", out]) == 0
    assert "clip" in json.loads(open(out).read())["results"]


def test_mismatched_sampling_and_bad_videos(setup, tmp_path, capsys):
    with pytest.raises(ValueError, match=r"features.stride / clip_len = 8 / 16 but the model's "
                                         r"feat_stride / num_frames = 4 / 16"):
        predict.main([setup["config"], setup["ckpt"], str(setup["videos"]),
                      "--opts", "features.stride=8"])
    (setup["videos"] / "broken.mp4").write_bytes(b"not a video")
    code = predict.main([setup["config"], setup["ckpt"], str(setup["videos"]),
                         "--out", str(tmp_path / "p.json")])
    err = capsys.readouterr().err
    assert code == 1 and "broken.mp4: cannot open the video" in err
    assert "clip" in json.loads((tmp_path / "p.json").read_text())["results"]
