"""``model.sgp_masked`` (opt-in, default off): SGP blocks whose statistics and convolutions see only
a video's own steps, so that outputs no longer depend on how far the video is padded."""
import torch
from torch import nn

from libs.modeling.sgp import SGPBlock, masked_group_norm
from test_modeling_tridet import _item, _tiny_tridet


def test_masked_group_norm_is_group_norm_over_the_valid_steps():
    torch.manual_seed(0)
    norm = nn.GroupNorm(4, 8)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5), norm.bias.uniform_(-0.5, 0.5)
    x = torch.randn(2, 8, 12)
    full = torch.ones(2, 1, 12, dtype=torch.bool)
    torch.testing.assert_close(masked_group_norm(x, full, norm), norm(x), atol=1e-5, rtol=1e-5)
    lengths = (7, 12)
    mask = torch.arange(12)[None, None, :] < torch.tensor(lengths)[:, None, None]
    out = masked_group_norm(x, mask, norm)
    for b, n in enumerate(lengths):          # each video normalised over its own steps alone
        torch.testing.assert_close(out[b, :, :n], norm(x[b:b + 1, :, :n])[0], atol=1e-5, rtol=1e-5)


def _padded(x, steps):
    return torch.nn.functional.pad(x, (0, steps - x.shape[-1]))


def test_masked_sgp_block_ignores_the_padding():
    torch.manual_seed(1)
    length = 50
    x = torch.randn(1, 32, length)
    for stride in (1, 2):
        plain = SGPBlock(32, 3, stride, n_hidden=24, init_conv_vars=0.4)
        masked = SGPBlock(32, 3, stride, n_hidden=24, init_conv_vars=0.4, masked=True)
        masked.load_state_dict(plain.state_dict())
        outs = {}
        for block in (plain, masked):
            for steps in (64, 128):
                mask = (torch.arange(steps) < length)[None, None, :]
                out, out_mask = block(_padded(x, steps), mask)
                outs[block.masked, steps] = out[..., :length // stride]
                if block.masked:                              # padded steps stay zero
                    assert (out[~out_mask.expand_as(out)] == 0).all()
        torch.testing.assert_close(outs[True, 64], outs[True, 128], atol=1e-5, rtol=1e-5)
        assert (outs[False, 64] - outs[False, 128]).abs().max() > 1e-3   # TriDet's behaviour


def test_masked_tridet_detections_do_not_depend_on_max_seq_len():
    short = _item("s", 40, 3)
    detections = []
    for max_seq_len in (64, 128):
        model = _tiny_tridet(max_seq_len=max_seq_len, sgp_masked=True)
        model.eval()
        detections.append(model([short])[0])
    assert detections[0]["scores"].numel() > 0
    for key in ("segments", "scores"):
        torch.testing.assert_close(detections[0][key], detections[1][key], atol=1e-5, rtol=1e-5)
    assert torch.equal(detections[0]["labels"], detections[1]["labels"])
