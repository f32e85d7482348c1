"""The model on a GPU, value for value against the CPU: inference outputs and detections, batching
invariance, chunked long-video inference, a training step's losses and gradients, autocast.

Skipped where CUDA is absent.
"""
import pytest
import torch

from libs.modeling import load_model_weights
from libs.modeling.blocks import inference_chunk_steps
from test_modeling_model import LENGTHS, _item, _run, _sorted_detections, _tiny_model

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.fixture
def no_tf32():
    """Full fp32 on the GPU (TF32 convolutions alone differ from the CPU by ~1e-3)."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def _cpu_and_gpu_models(**kwargs):
    """The same weights on the CPU and on the GPU; no dropout or drop-path, so that training
    steps draw nothing at random."""
    kwargs.setdefault("train_cfg", {"dropout": 0.0, "droppath": 0.0})
    cpu_model = _tiny_model(**kwargs)
    gpu_model = _tiny_model(seed=1, **kwargs).cuda()
    load_model_weights(gpu_model, cpu_model.state_dict())
    return cpu_model, gpu_model


def _assert_same_detections(gpu_dets, cpu_dets, atol=1e-4):
    for g, c in zip(gpu_dets, cpu_dets):
        assert g["segments"].device.type == "cpu"
        assert g["video_id"] == c["video_id"]
        assert g["segments"].shape == c["segments"].shape and g["segments"].shape[0] > 0
        torch.testing.assert_close(_sorted_detections(g), _sorted_detections(c), atol=atol, rtol=0)


@pytest.mark.parametrize("nms", ["none", "soft"])
def test_cuda_model_matches_the_cpu_model(no_tf32, nms):
    cpu_model, gpu_model = _cpu_and_gpu_models(test_cfg={"nms_method": nms, "min_score": 0.001})
    cpu_model.eval(), gpu_model.eval()
    assert gpu_model.device.type == "cuda"
    items = [_item(f"v{i}", n, seed=i) for i, n in enumerate(LENGTHS)]     # on the CPU
    gpu_dets, gpu_out = _run(gpu_model, items)
    cpu_dets, cpu_out = _run(cpu_model, items)
    for g, c in zip(gpu_out["cls"] + gpu_out["reg"], cpu_out["cls"] + cpu_out["reg"]):
        torch.testing.assert_close(g.cpu(), c, atol=1e-4, rtol=1e-4)
    _assert_same_detections(gpu_dets, cpu_dets)


def test_batched_inference_equals_per_video_inference_on_cuda(no_tf32):
    model = _tiny_model(test_cfg={"min_score": 0.001}).cuda().eval()
    items = [_item(f"v{i}", n, seed=i) for i, n in enumerate(LENGTHS)]
    batch_dets, _ = _run(model, items)
    for b, item in enumerate(items):
        dets, _ = _run(model, [item])
        torch.testing.assert_close(_sorted_detections(batch_dets[b]), _sorted_detections(dets[0]),
                                   atol=1e-5, rtol=0)


def test_chunked_inference_equals_whole_video_inference_on_cuda(no_tf32):
    model = _tiny_model(test_cfg={"nms_method": "soft", "min_score": 0.001}).cuda().eval()
    items = [_item("long", 250, seed=1), _item("short", 100, seed=2)]
    with inference_chunk_steps(None):
        whole_dets, whole = _run(model, items)
    with inference_chunk_steps(11):
        chunked_dets, chunked = _run(model, items)
    for key in ("cls", "reg"):
        for a, b in zip(chunked[key], whole[key]):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    _assert_same_detections(chunked_dets, whole_dets, atol=1e-5)


def _losses_and_grads(model, batch, amp=None):
    """Losses and CPU gradients of one step from the model's current state (the loss
    normaliser, a running average that each training forward updates, is restored after)."""
    normalizer = model.loss_normalizer
    model.zero_grad(set_to_none=True)
    device_type = model.device.type
    with torch.autocast(device_type, dtype=amp or torch.float32, enabled=amp is not None):
        losses = model(batch)
    losses["final_loss"].backward()
    model.loss_normalizer = normalizer
    grads = {n: p.grad.detach().float().cpu() for n, p in model.named_parameters()
             if p.grad is not None}
    return {k: float(v) for k, v in losses.items()}, grads


def test_training_step_on_cuda_matches_the_cpu(no_tf32):
    cpu_model, gpu_model = _cpu_and_gpu_models()
    cpu_model.train(), gpu_model.train()
    batch = [_item("a", 40, 0), _item("b", 64, 1)]
    cpu_losses, cpu_grads = _losses_and_grads(cpu_model, batch)
    gpu_losses, gpu_grads = _losses_and_grads(gpu_model, batch)
    assert cpu_losses["final_loss"] > 0
    for key, value in cpu_losses.items():
        assert gpu_losses[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key
    assert gpu_grads.keys() == cpu_grads.keys() and len(cpu_grads) > 0
    for name, grad in cpu_grads.items():
        torch.testing.assert_close(gpu_grads[name], grad, atol=1e-4, rtol=1e-3, msg=name)


@pytest.mark.parametrize("amp", [torch.bfloat16, torch.float16])
def test_autocast_training_step_on_cuda_is_close_to_fp32(amp):
    _, model = _cpu_and_gpu_models()
    model.train()
    batch = [_item("a", 40, 0), _item("b", 64, 1)]
    ref_losses, ref_grads = _losses_and_grads(model, batch)
    losses, grads = _losses_and_grads(model, batch, amp=amp)
    for key, value in ref_losses.items():
        assert losses[key] == pytest.approx(value, rel=5e-2, abs=1e-3), key
    assert all(torch.isfinite(g).all() for g in grads.values())
    flat = torch.cat([grads[n].flatten() for n in ref_grads])
    ref_flat = torch.cat([g.flatten() for g in ref_grads.values()])
    assert torch.nn.functional.cosine_similarity(flat, ref_flat, dim=0) > 0.98
