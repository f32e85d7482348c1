"""Heads over all pyramid levels in one pass (levels stacked along time with zero gaps, the path
taken under autocast) == the per-level formulation: outputs and gradients, fp32 to 1e-5, with
padded steps, per-video extents (inference batches), with and without LayerNorm, and under bf16
autocast."""
import pytest
import torch

from libs.modeling.blocks import reference_formulation
from libs.modeling.heads import ClsHead, RegHead, stack_levels
from test_fast_paths import single_thread  # noqa: F401  (autouse fixture: one thread)

LENGTHS = [32, 16, 8, 4, 2]


def _levels(seed, channels=8, valid=(32, 11), extent=None):
    """Channels-last level features (as the neck gives them), masks with padded steps, and
    per-level extents (``extent``: per-video extent at level 0, or None)."""
    g = torch.Generator().manual_seed(seed)
    feats, masks, extents = [], [], []
    for l, n in enumerate(LENGTHS):
        x = torch.randn(2, n, channels, generator=g).transpose(1, 2).requires_grad_()
        feats.append(x)
        steps = torch.arange(n)[None, None, :]
        masks.append(steps < torch.tensor(valid)[:, None, None] // 2 ** l)
        extents.append(None if extent is None
                       else steps < torch.tensor(extent)[:, None, None] // 2 ** l)
    return feats, masks, (None if extent is None else extents)


def _heads(with_ln, channels=8, seed=0):
    torch.manual_seed(seed)
    cls = ClsHead(channels, channels, 5, num_layers=3, kernel_size=3, with_ln=with_ln)
    reg = RegHead(channels, channels, len(LENGTHS), num_layers=3, kernel_size=3,
                  with_ln=with_ln)
    with torch.no_grad():     # distinct per-level scales and non-trivial LayerNorm affines
        for l, s in enumerate(reg.scale):
            s.scale.fill_(0.5 + 0.3 * l)
        for p in list(cls.parameters()) + list(reg.parameters()):
            if p.dim() == 3 and p.shape[0] == 1:
                p.add_(torch.randn_like(p) * 0.3)
    return cls, reg


def _per_level(head, feats, masks, extents):
    """The per-level formulation, level by level (what the head did before stacking)."""
    extents = extents or [None] * len(feats)
    if isinstance(head, ClsHead):
        return [head._logits(x, m, e) for x, m, e in zip(feats, masks, extents)]
    return [head._offsets(s, x, m, e) for x, m, e, s in zip(feats, masks, extents, head.scale)]


def _stacked(head, feats, masks, extents):
    """The stacked pass, called directly (the heads take it under autocast only)."""
    stack = stack_levels(feats, masks, extents or [None] * len(feats), head.kernel_size // 2)
    if isinstance(head, ClsHead):
        return stack.split(head._logits(stack.x, stack.mask, stack.extent, stack))
    return stack.split(head._stacked_offsets(stack))


def _outputs_and_grads(head, run, feats):
    outs = run()
    weights = [torch.randn(o.shape, generator=torch.Generator().manual_seed(7)) for o in outs]
    loss = sum((o.float() * w).sum() for o, w in zip(outs, weights))
    grads = torch.autograd.grad(loss, list(head.parameters()) + feats)
    return [o.detach().float() for o in outs], [g.float() for g in grads]


def _close(a, b, tol):
    scale = max(1.0, b.abs().max().item())
    assert (a - b).abs().max().item() <= tol * scale, ((a - b).abs().max().item(), scale)


@pytest.mark.parametrize("with_ln", [True, False])
@pytest.mark.parametrize("extent", [None, (32, 20)])
def test_stacked_heads_equal_per_level(with_ln, extent):
    feats, masks, extents = _levels(1, extent=extent)   # video 0 fills the tensor, 1 is padded
    for head in _heads(with_ln):
        head.train(extent is None)
        stacked = _outputs_and_grads(head, lambda: _stacked(head, feats, masks, extents), feats)
        plain = _outputs_and_grads(head, lambda: _per_level(head, feats, masks, extents), feats)
        assert [o.shape for o in stacked[0]] == [o.shape for o in plain[0]]
        for a, b in zip(stacked[0] + stacked[1], plain[0] + plain[1]):
            _close(a, b, 1e-5)
        # the padded steps carry LayerNorm biases into the convs, so they matter: a
        # stacked pass without the gaps would differ at the level borders
        assert any(o.abs().max() > 0 for o in stacked[0])


def test_gaps_are_needed():
    feats, masks, _ = _levels(2)
    cls, _ = _heads(True)
    stack = stack_levels(feats, masks, [None] * len(feats), gap=1)
    assert stack.x.shape[-1] == sum(LENGTHS) + len(LENGTHS) - 1
    assert stack.x.transpose(1, 2).is_contiguous()           # channels-last memory
    for l, view in enumerate(stack.split(stack.x)):
        assert torch.equal(view, feats[l])
    no_gap = stack_levels(feats, masks, [None] * len(feats), gap=0)
    with torch.no_grad():
        joined = no_gap.split(cls._logits(no_gap.x, no_gap.mask, None, no_gap))
        plain = _per_level(cls, feats, masks, None)
    assert not all(torch.allclose(a, b, atol=1e-4) for a, b in zip(joined, plain))


def test_stacked_only_under_autocast_and_not_in_reference_formulation(monkeypatch):
    feats, masks, _ = _levels(3)
    cls, _ = _heads(True)
    import libs.modeling.heads as heads
    calls = []
    monkeypatch.setattr(heads, "stack_levels", lambda *a: calls.append(1) or stack_levels(*a))
    with torch.no_grad():
        cls(feats, masks)                                  # float32: per level
        assert not calls
        with torch.autocast("cpu", dtype=torch.bfloat16):
            cls(feats, masks)
            assert calls == [1]
            with reference_formulation():
                cls(feats, masks)
    assert calls == [1]


@pytest.mark.parametrize("with_ln", [True, False])
def test_stacked_heads_under_bf16_autocast(with_ln):
    """Under autocast the outputs and input gradients are the per-level ones (each output step
    is the same bf16 dot product); weight gradients are summed over all levels in one bf16
    convolution instead of per level in fp32, so both are compared with fp32."""
    feats, masks, _ = _levels(4, channels=16)
    for head in _heads(with_ln, channels=16):
        num_params = len(list(head.parameters()))
        results = []
        for run, bf16 in ((lambda: head(feats, masks), True),
                          (lambda: _per_level(head, feats, masks, None), True),
                          (lambda: _per_level(head, feats, masks, None), False)):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                outs, grads = _outputs_and_grads(head, run, feats)
            results.append((outs + grads[num_params:], grads[:num_params]))
        (act_a, par_a), (act_b, par_b), (_, par_fp32) = results
        for a, b in zip(act_a, act_b):
            _close(a, b, 1e-6)
        for a, b, ref in zip(par_a, par_b, par_fp32):
            _close(a, ref, 0.1)
            _close(b, ref, 0.1)
