"""1D NMS: hand-computed answers, a line-by-line port of the reference kernel (spec E.3) as
the plain definition, and C++ == PyTorch on thousands of random cases."""
import math
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np
import pytest
import torch

from libs.utils import batched_nms
from libs.utils import cpp_build
from libs.utils import nms as nms_module
from libs.utils import nms_torch
from libs.utils.nms import (cpp_nms_available, hard_nms_grouped, seg_voting,
                            soft_nms_grouped)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
needs_cpp = pytest.mark.skipif(not cpp_nms_available(),
                               reason="C++ NMS extension not built")
BACKENDS = ["torch"] + (["cpp"] if cpp_nms_available() else [])
F32 = np.float32


def t(rows):
    return torch.tensor(rows, dtype=torch.float32)


# ------------------------------------------------------------------------------------------
# Plain definition: the reference's soft-NMS loop, one scalar at a time (spec E.3)
# ------------------------------------------------------------------------------------------
def naive_soft_nms(segs, scores, iou_threshold, sigma, min_score, method):
    x1 = [F32(s[0]) for s in segs]
    x2 = [F32(s[1]) for s in segs]
    sc = [F32(s) for s in scores]
    area = [F32(F32(b - a) + F32(1e-6)) for a, b in zip(x1, x2)]
    inds = list(range(len(segs)))
    out = []
    n, i = len(segs), 0
    while i < n:
        m = i
        for pos in range(i + 1, n):
            if sc[m] < sc[pos]:
                m = pos
        for arr in (x1, x2, sc, area, inds):
            arr[i], arr[m] = arr[m], arr[i]
        out.append((x1[i], x2[i], sc[i]))
        pos = i + 1
        while pos < n:
            inter = max(F32(0), F32(min(x2[i], x2[pos]) - max(x1[i], x1[pos])))
            ovr = F32(inter / F32(F32(area[i] + area[pos]) - inter))
            if method == "gaussian":
                weight = F32(math.exp(float(F32(-(ovr * ovr) / F32(sigma)))))
            elif method == "linear":
                weight = F32(1 - ovr) if ovr >= F32(iou_threshold) else F32(1)
            else:
                weight = F32(0) if ovr >= F32(iou_threshold) else F32(1)
            sc[pos] = F32(sc[pos] * weight)
            if sc[pos] < F32(min_score):
                for arr in (x1, x2, sc, area, inds):
                    arr[pos] = arr[n - 1]
                n -= 1
            else:
                pos += 1
        i += 1
    return np.array(out, dtype=np.float32).reshape(-1, 3), inds[:n]


def one_group(n):
    return torch.tensor([0, n])


def run_soft(backend, segs, scores, *, thr=0.5, sigma=0.5, min_score=0.001, method="gaussian"):
    dets, inds, counts = soft_nms_grouped(segs, scores, one_group(len(scores)), thr, sigma,
                                          min_score, method, backend=backend)
    k = int(counts[0])
    return dets[:k], inds[:k]


# ------------------------------------------------------------------------------------------
# Hand-computed answers
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
def test_spec_j_soft_nms_vector(backend):
    segs, scores = t([[0, 1], [0, 1], [5, 6]]), t([0.5, 0.5, 0.5])
    dets, inds = run_soft(backend, segs, scores)
    assert inds.tolist() == [0, 2, 1]
    iou = 1 / (1 + 2e-6)                      # inter 1 over (1+1e-6) + (1+1e-6) - 1
    expected = 0.5 * math.exp(-iou ** 2 / 0.5)
    np.testing.assert_allclose(dets.numpy(), [[0, 1, 0.5], [5, 6, 0.5], [0, 1, expected]],
                               rtol=1e-6)
    assert dets[2, 2].item() == pytest.approx(0.0677, abs=1e-4)
    out_segs, out_scores, _ = batched_nms(segs, scores, torch.zeros(3, dtype=torch.long),
                                          0.5, 0.001, 100, backend=backend)
    assert out_scores.tolist() == pytest.approx([0.5, 0.5, expected], rel=1e-6)
    kept = batched_nms(segs, scores, torch.zeros(3, dtype=torch.long), 0.5, 0.001, 100,
                       use_soft_nms=False, backend=backend)
    assert kept[0].tolist() == [[0, 1], [5, 6]]


@pytest.mark.parametrize("backend", BACKENDS)
def test_best_candidate_survives_below_min_score(backend):
    out = batched_nms(t([[0, 1], [0, 1]]), t([0.0005, 0.0004]), torch.zeros(2, dtype=torch.long),
                      0.5, 0.001, 100, backend=backend)
    assert out[1].tolist() == pytest.approx([0.0005])


@pytest.mark.parametrize("backend", BACKENDS)
def test_hard_nms_known_iou_and_strict_min_score(backend):
    # IoU([0,10],[5,15]) = 5/15 = 0.333 (the 1e-6 barely matters)
    segs, scores = t([[0, 10], [5, 15], [20, 30], [21, 30]]), t([0.9, 0.8, 0.7, 0.01])
    inds, counts = hard_nms_grouped(segs, scores, one_group(4), 0.3, backend=backend)
    assert inds[:int(counts[0])].tolist() == [0, 2]
    inds, counts = hard_nms_grouped(segs, scores, one_group(4), 0.34, backend=backend)
    assert inds[:int(counts[0])].tolist() == [0, 1, 2]
    # wrapper: min_score 0.01 removes the last one first (strict >), so nothing suppresses it
    labels = torch.zeros(4, dtype=torch.long)
    _, out_scores, _ = batched_nms(segs, scores, labels, 0.95, 0.01, 100, use_soft_nms=False,
                                   backend=backend)
    assert out_scores.tolist() == pytest.approx([0.9, 0.8, 0.7])


@pytest.mark.parametrize("backend", BACKENDS)
def test_linear_soft_nms(backend):
    segs, scores = t([[0, 10], [5, 15], [20, 30]]), t([0.9, 0.8, 0.7])
    dets, inds = run_soft(backend, segs, scores, thr=0.3, method="linear")
    iou = 5 / (10 + 10 + 2e-6 - 5)
    assert inds.tolist() == [0, 2, 1]
    assert dets[:, 2].tolist() == pytest.approx([0.9, 0.7, 0.8 * (1 - iou)], rel=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_removal_moves_last_live_candidate_forward(backend):
    # round 1: B overlaps A and is removed; D (last) moves into B's slot ahead of C.
    # C and D tie at 0.4, so the lowest position (D) is selected first.
    segs = t([[0, 10], [0, 10], [20, 30], [40, 50]])
    scores = t([1.0, 0.5, 0.4, 0.4])
    dets, inds = run_soft(backend, segs, scores, min_score=0.1)
    assert inds.tolist() == [0, 3, 2]
    assert naive_soft_nms(segs.tolist(), scores.tolist(), 0.5, 0.5, 0.1, "gaussian")[1] == \
        [0, 3, 2]


@pytest.mark.parametrize("backend", BACKENDS)
def test_multiclass_caps_per_class_and_sorts(backend):
    segs = t([[0, 10], [1, 11], [30, 40], [0, 10], [50, 60]])
    scores = t([0.9, 0.8, 0.3, 0.85, 0.2])
    labels = torch.tensor([2, 2, 2, 0, 0])
    out_segs, out_scores, out_labels = batched_nms(segs, scores, labels, 0.5, 0.001, 2,
                                                   use_soft_nms=False, backend=backend)
    # class 0 keeps both; class 2 keeps [0,10] and [30,40] ([1,11] suppressed), capped at 2
    # per class, then the best 2 overall
    assert out_scores.tolist() == pytest.approx([0.9, 0.85])
    assert out_labels.tolist() == [2, 0]


@pytest.mark.parametrize("backend", BACKENDS)
def test_class_agnostic_voting_hand_computed(backend):
    segs, scores = t([[0, 10], [1, 11]]), t([0.9, 0.6])
    labels = torch.tensor([3, 5])
    out_segs, out_scores, out_labels = batched_nms(segs, scores, labels, 0.5, 0.001, 10,
                                                   use_soft_nms=False, multiclass=False,
                                                   voting_thresh=0.75, backend=backend)
    # weights: 0.9 * IoU 1 and 0.6 * IoU 9/11 -> start 6/17, end 10 + 6/17
    np.testing.assert_allclose(out_segs.numpy(), [[6 / 17, 10 + 6 / 17]], rtol=1e-6)
    assert out_scores.tolist() == pytest.approx([0.9]) and out_labels.tolist() == [3]


def test_seg_voting_ignores_candidates_below_threshold():
    refined = seg_voting(t([[0, 10]]), t([[0, 10], [5, 15]]), t([0.5, 1.0]), 0.75)
    assert refined.tolist() == [[0, 10]]


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_and_single_inputs(backend):
    empty = batched_nms(torch.zeros(0, 2), torch.zeros(0), torch.zeros(0, dtype=torch.int32),
                        0.5, 0.001, 100, backend=backend)
    assert [tuple(x.shape) for x in empty] == [(0, 2), (0,), (0,)]
    assert empty[2].dtype == torch.int32
    for soft in (True, False):
        for multiclass in (True, False):
            out = batched_nms(t([[2, 5]]), t([0.3]), torch.tensor([4]), 0.5, 0.001, 100,
                              use_soft_nms=soft, multiclass=multiclass, backend=backend)
            assert out[0].tolist() == [[2, 5]] and out[2].tolist() == [4]
            assert out[1].tolist() == pytest.approx([0.3])
    # hard NMS with every score filtered out
    out = batched_nms(t([[2, 5]]), t([0.001]), torch.tensor([4]), 0.5, 0.001, 100,
                      use_soft_nms=False, multiclass=False, backend=backend)
    assert out[0].shape == (0, 2)


# ------------------------------------------------------------------------------------------
# Random cases
# ------------------------------------------------------------------------------------------
def random_groups(seed, num_groups, max_size):
    """Groups of random size (0 included); every third group has quantised coordinates and
    scores (identical segments, tied scores), every seventh only identical scores."""
    gen = torch.Generator().manual_seed(seed)
    sizes = torch.randint(0, max_size + 1, (num_groups,), generator=gen)
    sizes[0], sizes[1] = 1, max_size
    segs, scores = [], []
    for g, n in enumerate(sizes.tolist()):
        start = torch.rand(n, generator=gen) * 60
        length = torch.rand(n, generator=gen) * 15 + 0.1
        score = torch.rand(n, generator=gen)
        if g % 3 == 0:
            start, length = (start / 5).round() * 5, (length / 4).round() * 4 + 1
            score = (score * 3).round() / 3 + 0.01
        if g % 7 == 0:
            score = torch.full((n,), 0.42)
        segs.append(torch.stack([start, start + length], 1))
        scores.append(score)
    offsets = torch.cat([torch.zeros(1, dtype=torch.long), sizes.cumsum(0)])
    return torch.cat(segs), torch.cat(scores), offsets


def split_outputs(offsets, counts, *arrays):
    out = []
    for g in range(len(counts)):
        s = int(offsets[g])
        out.append([a[s:s + int(counts[g])] for a in arrays])
    return out


@pytest.mark.parametrize("method", ["gaussian", "linear", "hard"])
def test_torch_soft_nms_matches_plain_definition(method):
    segs, scores, offsets = random_groups(1, 150, 14)
    dets, inds, counts = soft_nms_grouped(segs, scores, offsets, 0.3, 0.5, 0.05, method,
                                          backend="torch")
    for g, (d, i) in enumerate(split_outputs(offsets, counts, dets, inds)):
        s, e = int(offsets[g]), int(offsets[g + 1])
        ref_dets, ref_inds = naive_soft_nms(segs[s:e].tolist(), scores[s:e].tolist(), 0.3, 0.5,
                                            0.05, method)
        assert (i - s).tolist() == ref_inds
        np.testing.assert_allclose(d.numpy(), ref_dets, rtol=0, atol=1e-6)


def valid_rows(offsets, counts):
    """Flat positions of every group's first ``counts[g]`` output rows."""
    return nms_module._first_rows(offsets, counts, int(offsets[-1]))


@needs_cpp
@pytest.mark.parametrize("method, sigma, min_score", [
    ("gaussian", 0.5, 0.001), ("gaussian", 0.9, 0.05), ("gaussian", 0.4, 0.0),
    ("linear", 0.5, 0.001), ("linear", 0.9, 0.0), ("hard", 0.5, 0.05)])
def test_cpp_and_torch_soft_nms_agree(method, sigma, min_score):
    segs, scores, offsets = random_groups(2, 1000, 30)
    cpp = soft_nms_grouped(segs, scores, offsets, 0.3, sigma, min_score, method, backend="cpp")
    tch = soft_nms_grouped(segs, scores, offsets, 0.3, sigma, min_score, method,
                           backend="torch")
    assert torch.equal(cpp[2], tch[2])
    rows = valid_rows(offsets, cpp[2])
    assert torch.equal(cpp[1][rows], tch[1][rows])
    assert torch.equal(cpp[0][rows, :2], tch[0][rows, :2])
    torch.testing.assert_close(cpp[0][rows, 2], tch[0][rows, 2], rtol=0, atol=1e-6)


@needs_cpp
@pytest.mark.parametrize("thr", [0.1, 0.5, 0.9])
def test_cpp_and_torch_hard_nms_agree(thr):
    segs, scores, offsets = random_groups(3, 1000, 30)
    cpp = hard_nms_grouped(segs, scores, offsets, thr, backend="cpp")
    tch = hard_nms_grouped(segs, scores, offsets, thr, backend="torch")
    assert torch.equal(cpp[1], tch[1])
    rows = valid_rows(offsets, cpp[1])
    assert torch.equal(cpp[0][rows], tch[0][rows])


@needs_cpp
def test_cpp_parallel_path_agrees_with_torch():
    # > 2048 candidates switches the C++ kernels to several threads
    segs, scores, offsets = random_groups(4, 20, 400)
    cpp = soft_nms_grouped(segs, scores, offsets, 0.1, 0.5, 0.001, backend="cpp")
    tch = soft_nms_grouped(segs, scores, offsets, 0.1, 0.5, 0.001, backend="torch")
    assert torch.equal(cpp[2], tch[2])
    assert torch.equal(hard_nms_grouped(segs, scores, offsets, 0.2, backend="cpp")[1],
                       hard_nms_grouped(segs, scores, offsets, 0.2, backend="torch")[1])


@needs_cpp
@pytest.mark.parametrize("soft", [True, False])
@pytest.mark.parametrize("multiclass", [True, False])
def test_batched_nms_backends_agree(soft, multiclass):
    gen = torch.Generator().manual_seed(5)
    for case in range(60):
        n = int(torch.randint(0, 60, (1,), generator=gen))
        start = torch.rand(n, generator=gen) * 50
        segs = torch.stack([start, start + torch.rand(n, generator=gen) * 10 + 0.1], 1)
        scores = torch.rand(n, generator=gen)
        if case % 4 == 0:
            scores = torch.full((n,), 0.3)
        labels = torch.randint(0, 4, (n,), generator=gen)
        kwargs = dict(iou_threshold=0.3, min_score=0.001, max_seg_num=int(5 + case % 40),
                      use_soft_nms=soft, multiclass=multiclass, sigma=0.5, voting_thresh=0.75)
        a = batched_nms(segs, scores, labels, backend="cpp", **kwargs)
        b = batched_nms(segs, scores, labels, backend="torch", **kwargs)
        assert torch.equal(a[2], b[2])
        torch.testing.assert_close(a[0], b[0], rtol=0, atol=1e-5)
        torch.testing.assert_close(a[1], b[1], rtol=0, atol=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_torch_nms_on_cuda_matches_cpu():
    segs, scores, offsets = random_groups(6, 200, 40)
    cpu = soft_nms_grouped(segs, scores, offsets, 0.3, 0.5, 0.001, backend="torch")
    gpu = [x.cpu() for x in soft_nms_grouped(segs.cuda(), scores.cuda(), offsets, 0.3, 0.5,
                                             0.001, backend="torch")]
    assert torch.equal(cpu[2], gpu[2])
    rows = valid_rows(offsets, cpu[2])
    assert torch.equal(cpu[1][rows], gpu[1][rows])
    torch.testing.assert_close(cpu[0][rows], gpu[0][rows], rtol=0, atol=1e-6)
    # hard NMS orders equal scores with the device's sort, so compare on distinct scores
    unique = torch.randperm(len(scores), generator=torch.Generator().manual_seed(0)) + 1.0
    hard_cpu = hard_nms_grouped(segs, unique, offsets, 0.3, backend="torch")
    hard_gpu = hard_nms_grouped(segs.cuda(), unique.cuda(), offsets, 0.3, backend="torch")
    assert torch.equal(hard_cpu[1], hard_gpu[1].cpu())
    rows = valid_rows(offsets, hard_cpu[1])
    assert torch.equal(hard_cpu[0][rows], hard_gpu[0].cpu()[rows])
    labels = torch.randint(0, 3, (len(scores),))
    out = batched_nms(segs.cuda(), scores.cuda(), labels.cuda(), 0.3, 0.001, 100)
    assert out[0].is_cuda and out[0].shape[0] > 0


# ------------------------------------------------------------------------------------------
# Backend selection
# ------------------------------------------------------------------------------------------
def test_disabling_the_extension_falls_back_with_one_warning():
    code = ("import warnings; warnings.simplefilter('always')\n"
            "import torch, libs\n"
            "from libs.utils import batched_nms, cpp_nms_available\n"
            "assert not cpp_nms_available()\n"
            "with warnings.catch_warnings(record=True) as caught:\n"
            "    warnings.simplefilter('always')\n"
            "    for _ in range(3):\n"
            "        out = batched_nms(torch.tensor([[0., 1.], [0., 1.], [5., 6.]]),\n"
            "                          torch.full((3,), 0.5), torch.zeros(3, dtype=torch.long),\n"
            "                          0.5, 0.001, 100)\n"
            "assert sum('PyTorch NMS' in str(w.message) for w in caught) == 1, caught\n"
            "assert out[0].shape == (3, 2)\n"
            "print('ok')\n")
    env = dict(os.environ, ACTIONFORMER_DISABLE_CPP_NMS="1")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


def test_cpp_backend_requested_without_extension(monkeypatch):
    monkeypatch.setattr(nms_module, "_EXT", None)
    with pytest.raises(RuntimeError, match="not available"):
        hard_nms_grouped(t([[0, 1]]), t([0.5]), one_group(1), 0.5, backend="cpp")
    with pytest.raises(ValueError, match="backend"):
        hard_nms_grouped(t([[0, 1]]), t([0.5]), one_group(1), 0.5, backend="gpu")


# ------------------------------------------------------------------------------------------
# The position-free loop, early stopping, and the extension compiled on first use
# ------------------------------------------------------------------------------------------
def packed_groups(segs, scores, offsets):
    sizes, width, group, col = nms_torch.pad_groups(offsets, segs.device)
    return nms_torch._pack(segs, scores, group, col, sizes.numel(), width), width


PARAMS = [("gaussian", 0.3, 0.5, 0.001), ("gaussian", 0.3, 0.9, 0.05), ("linear", 0.3, 0.5, 0.0),
          ("linear", 0.5, 0.5, 0.01), ("hard", 0.4, 0.5, 0.05)]


@pytest.mark.parametrize("by_chains", [False, True])
@pytest.mark.parametrize("method, thr, sigma, min_score", PARAMS)
def test_position_free_loop_equals_positional_loop(method, thr, sigma, min_score, by_chains):
    # random groups, a third with quantised segments and scores (ties), some all equal; the
    # loop runs over whole groups or over chains of overlapping segments merged back
    segs, scores, offsets = random_groups(7, 300, 25)
    packed, width = packed_groups(segs, scores, offsets)
    params = nms_torch.SoftParams(nms_torch.f32(thr), nms_torch.f32(sigma),
                                  nms_torch.f32(min_score), nms_torch.SOFT_NMS_METHODS[method])
    found = nms_torch._select(segs, scores, offsets, params, width, None, by_chains)
    counts = torch.bincount(found.group, minlength=300)
    ref_cols, ref_sel, ref_counts = nms_torch._soft_nms_positional(packed, params, width)
    untied = ~found.tied
    assert found.tied.any() and untied.sum() > 150          # both kinds occur
    assert torch.equal(counts[untied], ref_counts[untied])
    for g in untied.nonzero().squeeze(1).tolist():
        k, mine = int(counts[g]), found.group == g
        assert torch.equal(found.rows[mine] - offsets[g], ref_cols[g, :k])
        assert torch.equal(found.scores[mine], ref_sel[g, :k])
    # a group of distinct scores is never reported tied
    distinct = torch.tensor([len(set(scores[int(offsets[g]):int(offsets[g + 1])].tolist()))
                             == int(offsets[g + 1] - offsets[g]) for g in range(300)])
    quantised = torch.arange(300) % 3 == 0
    assert not found.tied[distinct & ~quantised & (torch.arange(300) % 7 != 0)].any()


@pytest.mark.parametrize("method, thr, sigma, min_score", PARAMS)
def test_early_stop_keeps_a_prefix_above_everything_left_out(method, thr, sigma, min_score):
    segs, scores, offsets = random_groups(8, 40, 60)
    args = (segs, scores, offsets, thr, sigma, min_score, method)
    full = soft_nms_grouped(*args, backend="torch")
    for top_total, cap in ((10, None), (50, 30), (400, 5)):
        part = soft_nms_grouped(*args, backend="torch", max_outputs=cap, top_total=top_total)
        limit = full[2] if cap is None else full[2].clamp(max=cap)
        assert (part[2] <= limit).all()
        rows = valid_rows(offsets, part[2])
        assert torch.equal(part[1][rows], full[1][rows])
        assert torch.equal(part[0][rows], full[0][rows])
        left_out = torch.ones(len(scores), dtype=torch.bool)
        left_out[rows] = False
        left_out &= torch.zeros_like(left_out).index_fill_(0, valid_rows(offsets, limit), True)
        kept = part[0][rows, 2]
        if kept.numel() >= top_total:
            kth = kept.topk(top_total).values[-1]
            assert (full[0][left_out, 2] < kth).all()
        else:
            assert not left_out.any()


def test_max_outputs_caps_both_backends():
    segs, scores, offsets = random_groups(9, 30, 40)
    for backend in BACKENDS:
        full = soft_nms_grouped(segs, scores, offsets, 0.3, 0.5, 0.001, backend=backend)
        capped = soft_nms_grouped(segs, scores, offsets, 0.3, 0.5, 0.001, backend=backend,
                                  max_outputs=3)
        assert torch.equal(capped[2], full[2].clamp(max=3))
        rows = valid_rows(offsets, capped[2])
        assert torch.equal(capped[1][rows], full[1][rows])


def test_batched_nms_early_stop_matches_full_computation():
    # many classes, few kept overall: the PyTorch loop stops early; equal scores force the
    # full recomputation (the final sort orders ties by its input)
    gen = torch.Generator().manual_seed(11)
    n = 1200
    start = torch.rand(n, generator=gen) * 1000
    segs = torch.stack([start, start + torch.rand(n, generator=gen) * 80 + 1], 1)
    labels = (torch.rand(n, generator=gen) ** 3 * 12).long()
    for scores in (torch.rand(n, generator=gen) ** 2,
                   (torch.rand(n, generator=gen) * 50).round() / 50 + 0.01):
        naive_kept = []
        for c in range(12):
            sel = (labels == c).nonzero().squeeze(1)
            dets, inds = naive_soft_nms(segs[sel].tolist(), scores[sel].tolist(), 0.1, 0.5,
                                        0.001, "gaussian")
            naive_kept += [float(d[2]) for d in dets[:60]]
        best = sorted(naive_kept, reverse=True)[:60]
        outs = [batched_nms(segs, scores, labels, 0.1, 0.001, 60, backend=b) for b in BACKENDS]
        for out in outs:
            np.testing.assert_allclose(out[1].numpy(), best, rtol=0, atol=1e-6)
            assert torch.equal(out[2], outs[0][2]) and torch.equal(out[0], outs[0][0])


def clustered_candidates(seed, num=2000, num_classes=20, skewed=False, length=2304):
    """One video's candidates: clustered around 30 actions, 2-100 steps long, mostly low
    scores; classes uniform or mostly the first few."""
    gen = torch.Generator().manual_seed(seed)
    centers = torch.rand(30, generator=gen) * length
    mid = centers[torch.randint(0, 30, (num,), generator=gen)] + torch.randn(
        num, generator=gen) * 20
    half = (torch.rand(num, generator=gen) * 98 + 2) / 2
    scores = torch.rand(num, generator=gen) ** 3
    u = torch.rand(num, generator=gen)
    labels = ((u ** 4 if skewed else u) * num_classes).long()
    return torch.stack([mid - half, mid + half], 1), scores, labels


@needs_cpp
@pytest.mark.parametrize("multiclass, skewed", [(True, False), (True, True), (False, False)])
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_batched_nms_on_clustered_candidates_matches_the_kernel(multiclass, skewed, precision):
    # video-sized inputs take every shortcut of the PyTorch soft-NMS (chains, the best
    # candidates first, the early stop); bf16-rounded scores tie often (the exact replay)
    for seed in range(3):
        segs, scores, labels = clustered_candidates(seed, skewed=skewed)
        if precision == "bf16":
            scores = scores.bfloat16().float()
        for max_seg_num in (200, 30):
            kwargs = dict(iou_threshold=0.1, min_score=0.001, max_seg_num=max_seg_num,
                          multiclass=multiclass, sigma=0.5, voting_thresh=0.7)
            cpp = batched_nms(segs, scores, labels, backend="cpp", **kwargs)
            tch = batched_nms(segs, scores, labels, backend="torch", **kwargs)
            assert torch.equal(cpp[2], tch[2])
            torch.testing.assert_close(tch[0], cpp[0], rtol=0, atol=1e-4)
            torch.testing.assert_close(tch[1], cpp[1], rtol=0, atol=1e-6)


@pytest.mark.parametrize("scores, expected", [
    ([0.004, 0.008, 0.006], [1]),           # best of three chains, all below min_score
    ([0.004, 0.008, 0.008], [1]),           # tied best: the lowest row, as the kernel
    ([0.5, 0.008, 0.009], [0]),             # later chains' firsts below min_score are no picks
])
def test_first_pick_below_min_score_across_chains(scores, expected):
    # three segments that do not overlap: three chains of one class; the kernel picks the
    # best once and removes everything below min_score right after
    segs = t([[0, 1], [2, 3], [4, 5]])
    dets, inds = run_soft("torch", segs, t(scores), min_score=0.01)
    ref_dets, ref_inds = naive_soft_nms(segs.tolist(), scores, 0.5, 0.5, 0.01, "gaussian")
    assert inds.tolist() == ref_inds == expected


def test_best_candidates_first_equals_all_candidates(monkeypatch):
    # the run on the best candidates alone is kept only when it provably gives the same
    # selections: compare with the same call on every candidate, for tries that succeed
    # at once, on the second try and never
    calls = []
    select = nms_torch._select
    monkeypatch.setattr(nms_torch, "_select", lambda *a: calls.append(a[0].shape[0])
                        or select(*a))
    params = nms_torch.SoftParams(nms_torch.f32(0.1), nms_torch.f32(0.5),
                                  nms_torch.f32(0.001), nms_torch.SOFT_NMS_METHODS["gaussian"])
    tries = set()
    for seed, num_classes, top_total in ((0, 20, 200), (1, 1, 200), (1, 2, 200), (2, 1, 900)):
        segs, scores, labels = clustered_candidates(seed, num=1500, num_classes=num_classes)
        labels, order = labels.sort(stable=True)
        segs, scores = segs[order], scores[order]
        offsets = torch.cat([torch.zeros(1, dtype=torch.long),
                             torch.bincount(labels, minlength=num_classes).cumsum(0)])
        calls.clear()
        rows, sel, counts = nms_torch.soft_nms(segs, scores, offsets, params, 1500, top_total)
        tries.add(tuple(n < len(scores) for n in calls))
        all_rows, all_sel, all_counts = nms_torch.soft_nms(segs, scores, offsets, params, 1500,
                                                           None)
        kth = all_sel.topk(min(top_total, len(all_sel))).values[-1]
        wanted = all_sel >= kth
        assert torch.equal(rows, all_rows[wanted]) and torch.equal(sel, all_sel[wanted])
    assert (True,) in tries and (True, True) in tries and (False,) in tries


def test_extension_loading_order(monkeypatch):
    built = object()
    monkeypatch.setattr(nms_module, "load_or_build", lambda: built)
    monkeypatch.setitem(sys.modules, "libs.utils._nms_cpp", None)    # no in-place build
    monkeypatch.delattr(sys.modules["libs.utils"], "_nms_cpp", raising=False)
    monkeypatch.delenv("ACTIONFORMER_DISABLE_CPP_NMS", raising=False)
    assert nms_module._load_extension() is built
    monkeypatch.setattr(nms_module, "load_or_build", lambda: None)   # no compiler
    assert nms_module._load_extension() is None
    assert "no C++ compiler" in nms_module._ext_problem
    monkeypatch.setenv("ACTIONFORMER_DISABLE_CPP_NMS", "1")
    monkeypatch.setattr(nms_module, "load_or_build", lambda: pytest.fail("must not build"))
    assert nms_module._load_extension() is None


@pytest.mark.skipif(shutil.which(os.environ.get("CXX", "c++")) is None,
                    reason="no C++ compiler")
def test_extension_compiled_on_first_use(monkeypatch):
    # compiles (30-150 s) into a cache shared by later runs on this machine, then loads from it
    cache = os.path.join(tempfile.gettempdir(), "actionformer-test-torch-extensions")
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", cache)
    path = cpp_build.jit_extension_path()
    built_before = os.path.exists(path)
    code = ("import torch\n"
            "from libs.utils import cpp_build\n"
            "ext = cpp_build.load_or_build()\n"
            "segs = torch.tensor([[0., 10.], [1., 11.], [20., 30.]])\n"
            "dets, inds, counts = ext.nms_soft_grouped(segs, torch.tensor([.9, .8, .7]),\n"
            "                                          torch.tensor([0, 3]), .3, .5, .001, 2)\n"
            "print(inds.tolist(), counts.tolist(), ext.__file__)\n")
    runs = [subprocess.run([sys.executable, "-c", code], cwd=REPO, env=dict(os.environ),
                           capture_output=True, text=True, timeout=900) for _ in range(2)]
    assert all(run.returncode == 0 for run in runs), runs[0].stderr[-2000:]
    assert ("compiling the C++ NMS extension once" in runs[0].stderr) == (not built_before)
    assert "compiling" not in runs[1].stderr                       # loaded from the cache
    assert runs[1].stdout.split() == ["[0,", "2,", "1]", "[3]", path]
    assert os.listdir(os.path.dirname(path)) == [os.path.basename(path)]   # no leftovers
