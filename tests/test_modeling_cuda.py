"""The model on a GPU: device handling, batching invariance, CPU agreement, training step, AMP.

Skipped where CUDA is absent.
"""
import pytest
import torch

from libs.modeling import load_model_weights
from test_modeling_model import LENGTHS, _item, _run, _tiny_model

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.fixture
def no_tf32():
    """Full fp32 on the GPU (TF32 convolutions alone differ from the CPU by ~1e-3)."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def test_cpu_items_run_on_a_cuda_model_and_match_the_cpu_model(no_tf32):
    cpu_model = _tiny_model(test_cfg={"nms_method": "none"}).eval()
    gpu_model = _tiny_model(test_cfg={"nms_method": "none"}).eval()
    load_model_weights(gpu_model.cuda(), cpu_model.state_dict())
    assert gpu_model.device.type == "cuda"
    items = [_item(f"v{i}", n, seed=i) for i, n in enumerate(LENGTHS)]     # on the CPU
    gpu_dets, gpu_out = _run(gpu_model, items)
    cpu_dets, cpu_out = _run(cpu_model, items)
    for g, c in zip(gpu_out["cls"] + gpu_out["reg"], cpu_out["cls"] + cpu_out["reg"]):
        torch.testing.assert_close(g.cpu(), c, atol=1e-4, rtol=1e-4)
    for g, c in zip(gpu_dets, cpu_dets):
        assert g["segments"].device.type == "cpu"
        assert g["segments"].shape == c["segments"].shape


def test_batched_inference_equals_per_video_inference_on_cuda(no_tf32):
    model = _tiny_model(test_cfg={"min_score": 0.001}).cuda().eval()
    items = [_item(f"v{i}", n, seed=i) for i, n in enumerate(LENGTHS)]
    batch_dets, _ = _run(model, items)
    for b, item in enumerate(items):
        dets, _ = _run(model, [item])
        for key in ("segments", "scores", "labels"):
            torch.testing.assert_close(batch_dets[b][key], dets[0][key], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("amp", [None, torch.bfloat16])
def test_training_step_on_cuda(amp):
    model = _tiny_model().cuda().train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    batch = [_item("a", 40, 0), _item("b", 64, 1)]
    with torch.autocast("cuda", dtype=amp or torch.float32, enabled=amp is not None):
        losses = model(batch)
    assert all(torch.isfinite(v) for v in losses.values())
    losses["final_loss"].backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    optimizer.step()
