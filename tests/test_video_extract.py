"""tools/extract_features.py on videos the tests encode: feature counts and time stamps, streaming
= whole video, batch size, resume / atomic outputs, bad inputs, torchvision backbones, flow."""
import json
import os
import sys

import numpy as np
import pytest
import torch

from libs.video import missing_video_extra

pytestmark = pytest.mark.skipif(missing_video_extra() is not None,
                                reason=str(missing_video_extra()))

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "tools"))
import extract_features  # noqa: E402
from tests.video_helpers import random_i3d_state_dict, write_video  # noqa: E402

TINY = ["--backbone", "i3d", "--weights", "none", "--short-side", "32", "--crop-size", "32",
        "--no-progress"]


def run_tool(capsys, *args):
    code = extract_features.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("videos")
    frames = {"v40_30": (40, 30), "v37_25": (37, 25), "v21_30": (21, 30)}
    for name, (n, fps) in frames.items():
        write_video(str(folder / f"{name}.mp4"), n, fps, height=40, width=48)
    return folder


@pytest.mark.parametrize("video, clip, stride, fps, count, frames, rate", [
    ("v40_30", 16, 4, None, 7, 40, 30.0),      # (40 - 16) // 4 + 1
    ("v37_25", 8, 8, None, 4, 37, 25.0),       # (37 - 8) // 8 + 1
    ("v21_30", 16, 4, None, 2, 21, 30.0),      # 21 frames: clips at 0 and 4; frame 20 unused
    ("v40_30", 8, 4, 15, 4, 20, 15.0),         # 40 frames at 30 -> 20 at 15 fps: (20 - 8) // 4 + 1
])
def test_feature_count_and_time_line(videos, tmp_path, capsys, video, clip, stride, fps, count,
                                     frames, rate):
    extra = ["--fps", fps] if fps else []
    code, out, _ = run_tool(capsys, videos / f"{video}.mp4", tmp_path, *TINY, "--clip-len", clip,
                            "--stride", stride, *extra)
    assert code == 0 and "1 videos extracted" in out
    feats = np.load(tmp_path / f"{video}.npy")
    assert feats.shape == (count, 1024) and feats.dtype == np.float32
    record = json.load(open(tmp_path / "features_meta.json"))["videos"][video]
    assert record["num_features"] == count and record["frames"] == frames
    assert record["fps"] == rate and record["feat_stride"] == stride
    assert record["num_frames"] == clip and record["backbone"] == "i3d"
    source_frames, source_fps = int(video[1:3]), float(video.split("_")[1])
    assert record["duration"] == pytest.approx(source_frames / source_fps)
    # the loaders' / predict.py's time line: feature t centred at (t * stride + clip / 2) / fps
    centres = (np.arange(count) * record["feat_stride"] + record["num_frames"] / 2) / record["fps"]
    assert centres[-1] + clip / 2 / rate <= record["duration"] + 1e-9   # last clip inside video
    assert centres[0] == pytest.approx(clip / 2 / rate)


def whole_video_features(path, extractor, clip, stride):
    """Reference: decode everything, then cut each clip out of the whole array."""
    from libs.video.decoding import VideoReader

    with VideoReader(path) as reader:
        items = list(extractor.frame_inputs(iter(reader)))
    video = torch.stack([item[0] for item in items], dim=1)          # (C, N, H, W)
    starts = range(0, video.shape[1] - clip + 1, stride)
    with torch.no_grad():
        return torch.cat([extractor((video[None, :, s:s + clip],)) for s in starts]).numpy()


def test_streaming_equals_whole_video_and_batch_size_does_not_matter(videos, tmp_path, capsys):
    from libs.video.backbones import build_extractor

    video = videos / "v40_30.mp4"
    results = []
    for batch, workers in ((1, 0), (3, 1), (8, 0)):
        out = tmp_path / f"b{batch}"
        code, _, _ = run_tool(capsys, video, out, *TINY, "--batch-size", batch,
                              "--workers", workers)
        assert code == 0
        results.append(np.load(out / "v40_30.npy"))
    torch.manual_seed(0)                       # the tool's seed for --weights none
    extractor = build_extractor(extract_features.options_from_args(
        extract_features.parse_args([str(video), "x", *TINY])), torch.device("cpu"))
    whole = whole_video_features(str(video), extractor, 16, 4)
    for feats in results:
        np.testing.assert_allclose(feats, whole, rtol=1e-5, atol=1e-5)


def test_resume_skips_finished_videos_and_failures_leave_no_files(videos, tmp_path, capsys):
    code, out, _ = run_tool(capsys, videos / "v40_30.mp4", tmp_path, *TINY)
    assert code == 0
    stamp = os.stat(tmp_path / "v40_30.npy").st_mtime_ns
    code, out, _ = run_tool(capsys, videos, tmp_path, *TINY)
    assert code == 0 and "2 videos extracted, 1 already done, 0 failed" in out
    assert os.stat(tmp_path / "v40_30.npy").st_mtime_ns == stamp
    code, _, err = run_tool(capsys, videos, tmp_path, *TINY, "--stride", "8")
    assert code == 2 and "made with other options (stride differ)" in err


def test_a_failing_video_leaves_no_partial_output(videos, tmp_path, monkeypatch):
    from libs.video import extract

    def failing(batches, *args, **kwargs):
        for _ in batches:
            raise RuntimeError("out of memory while running the model")

    monkeypatch.setattr(extract, "extract_video", failing)
    code = extract_features.main([str(videos / "v40_30.mp4"), str(tmp_path), *TINY])
    assert code == 1
    assert os.listdir(tmp_path) == []          # no .npy, no temp file, no metadata entry


def test_bad_inputs_get_one_line_each_and_the_others_go_on(videos, tmp_path, capsys):
    bad = tmp_path / "in"
    bad.mkdir()
    (bad / "junk.mp4").write_bytes(b"this is not a video")
    write_video(str(bad / "short.mp4"), 9, 30, height=40, width=48)
    code, out, err = run_tool(capsys, bad, videos / "v21_30.mp4", tmp_path / "missing.mp4",
                              tmp_path / "out", *TINY)
    lines = err.strip().splitlines()
    assert code == 1 and "1 videos extracted, 0 already done, 3 failed" in out
    assert any(line.startswith("error: ") and "junk.mp4: cannot open the video" in line
               for line in lines)
    assert any("short.mp4: the video has 9 frames at 30 fps, fewer than one clip (16 frames)"
               in line for line in lines)
    assert any("missing.mp4: cannot open the video" in line for line in lines)
    assert sorted(os.listdir(tmp_path / "out")) == ["features_meta.json", "v21_30.npy"]


def test_errors_inside_preprocessing_name_the_video(videos, tmp_path, capsys):
    code, _, err = run_tool(capsys, videos / "v21_30.mp4", tmp_path, "--backbone", "i3d",
                            "--weights", "none", "--short-side", "32", "--crop-size", "48",
                            "--no-progress")
    assert code == 1
    assert err.strip() == f"error: {videos}/v21_30.mp4: frames of 32x38 are smaller than the " \
                          f"48x48 crop"


def test_zero_frame_video(tmp_path, capsys):
    import av

    path = tmp_path / "empty.avi"            # a header and a video stream, no frames
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=30)
        stream.width, stream.height, stream.pix_fmt = 48, 40, "yuv420p"
        container.start_encoding()
    code, out, err = run_tool(capsys, path, tmp_path / "out", *TINY)
    assert code == 1 and err.strip() == f"error: {path}: the video has no frames"


def test_bad_weights_and_backbone_stop_with_one_line(videos, tmp_path, capsys):
    video = videos / "v21_30.mp4"
    code, _, err = run_tool(capsys, video, tmp_path, "--backbone", "i3d", "--rgb-weights",
                            tmp_path / "rgb.pt")
    assert code == 2 and err.strip() == f"extract_features.py: error: {tmp_path}/rgb.pt: " \
                                        f"weights file not found"
    torch.save({"conv.weight": torch.zeros(3)}, tmp_path / "other.pt")
    code, _, err = run_tool(capsys, video, tmp_path, "--backbone", "i3d", "--rgb-weights",
                            tmp_path / "other.pt")
    assert code == 2 and "other.pt: not an I3D RGB state dict in the pytorch-i3d layout" in err
    code, _, err = run_tool(capsys, video, tmp_path, "--backbone", "r2plus1d", "--weights", "none")
    assert code == 2 and "unknown video backbone 'r2plus1d'; did you mean 'r2plus1d_18'?" in err
    code, _, err = run_tool(capsys, video, tmp_path, "--backbone", "i3d")
    assert code == 2 and "i3d needs --rgb-weights FILE" in err
    assert len(err.strip().splitlines()) == 1


def test_i3d_weights_file_is_used(videos, tmp_path, capsys):
    from libs.video.i3d import InceptionI3d

    torch.save(random_i3d_state_dict(InceptionI3d(3), 3), tmp_path / "rgb.pt")
    args = ["--backbone", "i3d", "--short-side", "32", "--crop-size", "32", "--no-progress"]
    code, _, _ = run_tool(capsys, videos / "v21_30.mp4", tmp_path / "a", *args, "--rgb-weights",
                          tmp_path / "rgb.pt")
    code2, _, _ = run_tool(capsys, videos / "v21_30.mp4", tmp_path / "b", *TINY)
    assert code == code2 == 0
    assert not np.allclose(np.load(tmp_path / "a/v21_30.npy"), np.load(tmp_path / "b/v21_30.npy"))


def test_bf16_autocast_close_to_fp32(videos, tmp_path, capsys):
    for amp in ("none", "bf16"):
        code, _, _ = run_tool(capsys, videos / "v21_30.mp4", tmp_path / amp, *TINY,
                              *(["--amp", amp] if amp != "none" else []))
        assert code == 0
    fp32, bf16 = np.load(tmp_path / "none/v21_30.npy"), np.load(tmp_path / "bf16/v21_30.npy")
    assert np.abs(bf16 - fp32).max() < 0.05 * np.abs(fp32).max()
    assert not np.array_equal(bf16, fp32)
