"""Clip sampling and frame-rate resampling: known answers by hand (no video extra needed)."""
from fractions import Fraction

import pytest

from libs.video.sampling import ClipSampling, FrameRateResampler, num_clips


@pytest.mark.parametrize("frames, clip_len, stride, expected", [
    (16, 16, 4, 1), (19, 16, 4, 1), (20, 16, 4, 2), (40, 16, 4, 7), (15, 16, 4, 0),
    (37, 8, 8, 4), (100, 16, 16, 6), (1, 1, 1, 1)])
def test_num_clips_known_answers(frames, clip_len, stride, expected):
    assert num_clips(frames, clip_len, stride) == expected


def test_clip_starts_and_centres():
    sampling = ClipSampling(clip_len=16, stride=4)
    assert list(sampling.clip_starts(27)) == [0, 4, 8]          # 27 - 16 = 11 -> starts 0, 4, 8
    # centre of clip t: (4 t + 8) / 30 s
    assert sampling.clip_centres(27, 30.0) == pytest.approx([8 / 30, 12 / 30, 16 / 30])


def test_resampler_halves_and_raises_rate():
    half = FrameRateResampler(30, 15)
    assert list(half.source_indices(7)) == [0, 2, 4, 6]        # output k shows source 2k
    assert half.num_output_frames(7) == 4
    up = FrameRateResampler(25, 30)                              # k -> floor(k * 25 / 30)
    assert list(up.source_indices(5)) == [0, 0, 1, 2, 3, 4]
    assert up.num_output_frames(5) == 6


def test_resampler_ntsc_rate_is_exact():
    ntsc = FrameRateResampler(Fraction(30000, 1001), 30)
    # 1000 source frames last 1000 * 1001 / 30000 s = 33.3667 s: 1001 frames at 30 fps
    assert ntsc.num_output_frames(1000) == 1001
    indices = list(ntsc.source_indices(1000))
    assert len(indices) == 1001 and indices[-1] == 999
    assert sum(ntsc.repeats(i) == 2 for i in range(1000)) == 1      # one frame shown twice


def test_bad_sampling_values():
    with pytest.raises(ValueError):
        ClipSampling(clip_len=0)
    with pytest.raises(ValueError):
        ClipSampling(fps=-1.0)


def test_config_features_block_defaults_match_the_extractor_options():
    from libs.core import load_default_config
    from libs.video.options import ExtractorOptions

    block = load_default_config()["features"]
    assert block.pop("backbone") is None                     # nothing recorded by default
    defaults = ExtractorOptions().to_dict()
    defaults.pop("backbone")
    assert block == defaults
    with pytest.raises(ValueError, match=r"cfg.yaml: features.strid: unknown key; did you mean "
                                         r"stride\?"):
        ExtractorOptions.from_mapping({"strid": 4}, "cfg.yaml")
