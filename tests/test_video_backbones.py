"""torchvision video backbones (features = the classifier's input) and optical flow."""
import numpy as np
import pytest
import torch

from libs.video import missing_video_extra

pytestmark = pytest.mark.skipif(missing_video_extra() is not None,
                                reason=str(missing_video_extra()))


def extractor(name, device="cpu"):
    from libs.video.backbones import build_extractor
    from libs.video.options import ExtractorOptions

    return build_extractor(ExtractorOptions(backbone=name, weights="none"), torch.device(device))


@pytest.mark.parametrize("name, size, dim", [("r2plus1d_18", 112, 512), ("s3d", 224, 1024),
                                             ("mvit_v2_s", 224, 768), ("swin3d_t", 224, 768)])
def test_feature_dims(name, size, dim):
    with torch.device("meta"):
        ext = extractor(name, "meta")
        feats = ext((torch.empty(2, 3, 16, size, size),))
    assert ext.dim == dim and tuple(feats.shape) == (2, dim)


@pytest.mark.parametrize("name, head", [("r2plus1d_18", "fc"), ("swin3d_t", "head")])
def test_features_are_the_classifier_input(name, head):
    """Classifier(feature) equals the full torchvision model's logits (small inputs)."""
    from libs.video.tv_import import torchvision_models

    torch.manual_seed(7)
    full = torchvision_models().get_model(name, weights=None).eval()
    torch.manual_seed(7)
    ext = extractor(name)
    clip = torch.randn(1, 3, 4, 32, 32)
    with torch.no_grad():
        assert torch.allclose(getattr(full, head)(ext((clip,))), full(clip), atol=1e-5)


def test_per_frame_transform_equals_the_weights_transform_on_a_clip():
    from libs.video.tv_import import torchvision_models

    frames = np.random.default_rng(0).integers(0, 256, (5, 60, 90, 3), dtype=np.uint8)
    ext = extractor("r2plus1d_18")
    ours = torch.stack([item[0] for item in ext.frame_inputs(iter(frames))], dim=1)
    weights = torchvision_models().get_model_weights("r2plus1d_18").DEFAULT
    theirs = weights.transforms()(torch.from_numpy(frames).permute(0, 3, 1, 2))
    assert ours.shape == (3, 5, 112, 112)
    torch.testing.assert_close(ours, theirs)


def test_i3d_rgb_input_is_the_ports_scaling_and_crop():
    from libs.video.backbones import I3dExtractor, resize_short_side
    from libs.video.options import ExtractorOptions

    rng = np.random.default_rng(1)
    square = rng.integers(0, 256, (224, 224, 3), dtype=np.uint8)
    wide = rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)
    cpu = torch.device("cpu")
    (got,), = I3dExtractor(ExtractorOptions(weights="none", short_side=224), cpu).frame_inputs(
        iter([square]))
    expected = torch.from_numpy(square).permute(2, 0, 1).float() / 255 * 2 - 1
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)    # [-1, 1], no resize
    assert resize_short_side(wide, 256).shape == (256, 341, 3)
    (got,), = I3dExtractor(ExtractorOptions(weights="none"), cpu).frame_inputs(iter([wide]))
    assert got.shape == (3, 224, 224)


def test_unknown_weights_name():
    with pytest.raises(ValueError, match="r2plus1d_18 has weights KINETICS400_V1"):
        from libs.video.backbones import build_extractor
        from libs.video.options import ExtractorOptions

        build_extractor(ExtractorOptions(backbone="r2plus1d_18", weights="IMAGENET"),
                        torch.device("cpu"))


def test_clip_lengths_the_models_cannot_take():
    from libs.video.backbones import build_extractor
    from libs.video.options import ExtractorOptions

    for name, clip, need in (("s3d", 8, "at least 14"), ("mvit_v2_s", 32, "exactly 16")):
        with pytest.raises(ValueError, match=f"--clip-len {clip}: {name} needs {need} frames"):
            build_extractor(ExtractorOptions(backbone=name, weights="none", clip_len=clip),
                            torch.device("meta"))


def test_flow_scaling_known_answer():
    from libs.video.flow import flow_to_input

    got = flow_to_input(torch.tensor([-30.0, -20.0, -10.0, 0.0, 5.0, 20.0, 31.0]))
    assert got.tolist() == [-1.0, -1.0, -0.5, 0.0, 0.25, 1.0, 1.0]


def test_tvl1_finds_the_square_moving_right():
    from libs.video.flow import FLOW_METHODS, flow_fields
    from tests.video_helpers import moving_square_frames

    frames = moving_square_frames(4, 64, 80)            # a 16-px square moving 3 px right per frame
    fields = list(flow_fields(iter(frames), FLOW_METHODS.get("tvl1")(torch.device("cpu"), None)))
    assert len(fields) == 4 and torch.equal(fields[3], fields[2])     # last field repeated
    inside = fields[0][:, 28:36, 8:12]                  # the square's interior (rows 24-40)
    assert inside[0].median().item() == pytest.approx(3.0, abs=0.5)
    assert inside[1].abs().median().item() < 0.5


def test_raft_streams_pairs_like_one_call():
    from libs.video.flow import FLOW_METHODS, flow_fields
    from tests.video_helpers import moving_square_frames

    torch.manual_seed(0)
    compute = FLOW_METHODS.get("raft")(torch.device("cpu"), "none")
    frames = moving_square_frames(4, 128, 132)           # padded to 128 x 136 inside
    one_by_one = list(flow_fields(iter(frames), compute, pairs_per_call=1))
    together = list(flow_fields(iter(frames), compute, pairs_per_call=3))
    assert [tuple(f.shape) for f in one_by_one] == [(2, 128, 132)] * 4
    for a, b in zip(one_by_one, together):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_two_stream_i3d_features(tmp_path):
    from tests.video_helpers import write_video
    import extract_features_path  # noqa: F401  (puts tools/ on sys.path)
    import extract_features

    write_video(str(tmp_path / "v.mp4"), 20, 30, height=40, width=48)
    code = extract_features.main([str(tmp_path / "v.mp4"), str(tmp_path / "out"), "--backbone",
                                  "i3d", "--weights", "none", "--two-stream", "--short-side",
                                  "32", "--crop-size", "32", "--no-progress"])
    feats = np.load(tmp_path / "out" / "v.npy")
    assert code == 0 and feats.shape == (2, 2048)
    assert not np.allclose(feats[:, :1024], feats[:, 1024:])
