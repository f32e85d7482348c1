"""Loading reference-style checkpoints (``module.`` prefix, ``state_dict_ema``) strictly."""
import pytest
import torch

from libs.modeling import load_model_weights, strip_prefix
from libs.modeling.blocks import LayerNorm, MaskedConv1D


class _Net(torch.nn.Module):
    def __init__(self, width=4):
        super().__init__()
        self.conv = MaskedConv1D(2, width, 3, padding=1)
        self.norm = LayerNorm(width)

    def forward(self, x, mask):
        return self.norm(self.conv(x, mask)[0])


def _reference_checkpoint(model):
    """What the reference saves: DataParallel keys under state_dict / state_dict_ema."""
    prefixed = {f"module.{k}": v.clone() for k, v in model.state_dict().items()}
    ema = {k: v + 1.0 for k, v in prefixed.items()}
    return {"epoch": 3, "state_dict": prefixed, "state_dict_ema": ema, "optimizer": {}}


def test_loads_ema_weights_from_a_prefixed_checkpoint_file(tmp_path):
    torch.manual_seed(0)
    source = _Net()
    path = tmp_path / "epoch_003.pth.tar"
    torch.save(_reference_checkpoint(source), path)
    target = _Net()
    load_model_weights(target, path)
    for (name, p_src), p_dst in zip(source.state_dict().items(), target.state_dict().values()):
        torch.testing.assert_close(p_dst, p_src + 1.0, msg=name)
    load_model_weights(target, str(path), key="state_dict")
    x, mask = torch.randn(1, 2, 5), torch.ones(1, 1, 5, dtype=torch.bool)
    torch.testing.assert_close(target(x, mask), source(x, mask))


def test_accepts_a_plain_state_dict():
    source, target = _Net(), _Net()
    load_model_weights(target, source.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(source.state_dict().values(),
                                                 target.state_dict().values()))


def test_mismatches_are_reported_readably():
    ckpt = _reference_checkpoint(_Net())
    del ckpt["state_dict_ema"]["module.norm.bias"]
    ckpt["state_dict_ema"]["module.extra.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match=r"missing keys \(1\): norm\.bias.*"
                                         r"unexpected keys \(1\): extra\.weight"):
        load_model_weights(_Net(), ckpt)
    with pytest.raises(ValueError, match=r"shape mismatches \(\d\): conv\.conv\.weight "
                                         r"\(4, 2, 3\) vs model \(8, 2, 3\)"):
        load_model_weights(_Net(width=8), _reference_checkpoint(_Net())["state_dict_ema"])
    with pytest.raises(KeyError, match="no 'state_dict_ema' entry"):
        load_model_weights(_Net(), {"epoch": 1, "optimizer": {}})


def test_strip_prefix_only_when_every_key_has_it():
    assert list(strip_prefix({"module.a": 1, "module.b": 2})) == ["a", "b"]
    assert list(strip_prefix({"module.a": 1, "b": 2})) == ["module.a", "b"]
