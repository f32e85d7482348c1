"""tools/run_seeds.py: N seeds trained and evaluated, mean ± std, resumable; TemporalMaxer learns."""
import json
import os

import numpy as np

from tools import run_seeds
from tools.make_demo_data import make_demo_data

CONFIG = "configs/demo_temporalmaxer.yaml"


def _tiny_opts(root):
    data = os.path.join(str(root), "data")
    make_demo_data(data, num_train=48, num_test=16, num_classes=3, feat_dim=16, min_len=48,
                   max_len=128, amplitude=0.8, seed=0)
    return [f"dataset.json_file={data}/annotations/demo.json", f"dataset.feat_folder={data}/features",
            "dataset.num_classes=3", "dataset.input_dim=16", "dataset.max_seq_len=128",
            "model.backbone_arch=[2,3]", "model.regression_range=[[0,4],[4,8],[8,16],[16,10000]]",
            "model.embd_dim=32", "model.fpn_dim=32", "model.head_dim=32",
            "opt.learning_rate=0.004", "opt.epochs=9", "opt.warmup_epochs=1",
            f"output_folder={root}/ckpt"]


def test_two_seeds_of_temporalmaxer_learn_and_summarise(tmp_path, capsys):
    opts = _tiny_opts(tmp_path)
    args = [CONFIG, "--seeds", "2", "--output", "t", "--first-seed", "5", "--device", "cpu",
            "--ema-decay", "0.98", "-c", "0", "--opts", *opts]
    out = run_seeds.main(args)
    folders = [str(tmp_path / f"ckpt/demo_temporalmaxer_t_seed{s}") for s in (5, 6)]
    assert [r["folder"] for r in out["runs"]] == folders
    maps = []
    for folder, seed in zip(folders, (5, 6)):
        with open(os.path.join(folder, "config.yaml")) as fd:
            assert f"init_rand_seed: {seed}" in fd.read()
        with open(os.path.join(folder, "eval_metrics.json")) as fd:
            maps.append(json.load(fd)["average_mAP"])
    # SimOTA + max-pooling pyramid learns the synthetic actions (untrained: near 0)
    assert min(maps) > 0.5
    assert maps[0] != maps[1]                       # the seeds differ
    summary = out["summary"]["average_mAP"]
    assert np.isclose(summary["mean"], np.mean(maps)) and np.isclose(summary["std"], np.std(maps, ddof=1))
    printed = capsys.readouterr().out
    assert f"Average mAP: {100 * np.mean(maps):.2f} ± {100 * np.std(maps, ddof=1):.2f} (%)" in printed
    with open(tmp_path / "ckpt/demo_temporalmaxer_t_seeds.json") as fd:
        saved = json.load(fd)
    assert all(r["train_s"] > 0 for r in saved["runs"])
    # a second call finds both seeds evaluated, only summarises and keeps the recorded times
    again = run_seeds.main(args)
    assert again["runs"] == saved["runs"] and again["summary"] == out["summary"]
    assert "not run again" in capsys.readouterr().out
