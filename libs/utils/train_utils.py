"""Training engine: optimiser groups, model EMA, seeding, checkpoints, train / valid loops.

Each piece follows the reference's training script: the same optimiser groups, loop order, EMA
update, seeding, checkpoint keys and prediction format.
"""
from __future__ import annotations

import contextlib
import io
import os
import random
import time
from copy import deepcopy
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch
from torch import nn

from . import distributed as du
from .io import atomic_open, write_pickle
from .run_log import Progress
from .lr_schedulers import make_scheduler  # noqa: F401  (the reference exports it from here)

__all__ = ["make_optimizer", "make_scheduler", "ModelEma", "fix_random_seed", "get_rng_state", "set_rng_state",
           "save_checkpoint", "load_checkpoint", "add_module_prefix", "AverageMeter",
           "autocast_dtype", "train_one_epoch", "inference", "valid_one_epoch"]

LOSS_KEYS = ("cls_loss", "reg_loss", "final_loss")


# ---------------------------------------------------------------------------------------------
# Optimiser
# ---------------------------------------------------------------------------------------------
def _decays(module: nn.Module, param_name: str) -> Optional[bool]:
    """True / False if ``module.<param_name>`` gets / skips weight decay; None if unknown."""
    if param_name == "bias":
        return False
    if param_name == "weight":
        if isinstance(module, (nn.Linear, nn.modules.conv._ConvNd)):
            return True
        if isinstance(module, (nn.GroupNorm, nn.LayerNorm, nn.modules.batchnorm._NormBase)) \
                or type(module).__name__.endswith("Norm"):
            return False
    if param_name in ("scale", "rel_pe"):  # Scale, AffineDropPath, relative position table
        return False
    return None


def make_optimizer(model: nn.Module, optimizer_config: Dict[str, Any]) -> torch.optim.Optimizer:
    """AdamW or SGD over two parameter groups, each sorted by parameter name (as the reference).

    Group 0 (``weight_decay = opt.weight_decay``): weights of convolutions and linear layers.
    Group 1 (no decay): biases, norm weights, ``Scale``/``AffineDropPath`` scales, ``rel_pe``.
    Pass the unwrapped model. ``optimizer_config['learning_rate']`` is used as given (the caller
    applies the per-process scaling rule).
    """
    decay, no_decay = [], []
    for module_name, module in model.named_modules():
        for param_name, _ in module.named_parameters(recurse=False):
            full = f"{module_name}.{param_name}" if module_name else param_name
            verdict = _decays(module, param_name)
            if verdict is None:
                raise ValueError(f"make_optimizer: cannot tell whether parameter '{full}' "
                                 f"({type(module).__name__}.{param_name}) gets weight decay; "
                                 "add a rule for it in libs/utils/train_utils.py:_decays")
            (decay if verdict else no_decay).append(full)
    params = dict(model.named_parameters())
    groups = [{"params": [params[n] for n in sorted(decay)], "weight_decay": optimizer_config["weight_decay"]},
              {"params": [params[n] for n in sorted(no_decay)], "weight_decay": 0.0}]
    if optimizer_config["type"] == "SGD":
        return torch.optim.SGD(groups, lr=optimizer_config["learning_rate"],
                               momentum=optimizer_config["momentum"])
    if optimizer_config["type"] == "AdamW":
        return torch.optim.AdamW(groups, lr=optimizer_config["learning_rate"])
    raise ValueError(f"opt.type: expected AdamW or SGD, got {optimizer_config['type']!r}")


# ---------------------------------------------------------------------------------------------
# Model EMA
# ---------------------------------------------------------------------------------------------
class ModelEma(nn.Module):
    """Exponential moving average of every state-dict tensor: ``e <- decay * e + (1 - decay) * m``.

    Constant decay, no warm-up, starting from the weights at construction time. ``self.module``
    is a deep copy of the (unwrapped) model kept in eval mode.
    """

    def __init__(self, model: nn.Module, decay: float = 0.999):
        super().__init__()
        self.module = deepcopy(model).eval().requires_grad_(False)
        self.decay = decay

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """One EMA step towards ``model`` (unwrapped; same architecture)."""
        ema_sd, model_sd = self.module.state_dict(), model.state_dict()
        ema_f, model_f = [], []
        for key, ema_v in ema_sd.items():
            model_v = model_sd[key]
            if ema_v.is_floating_point():
                ema_f.append(ema_v)
                model_f.append(model_v)
            else:
                ema_v.copy_(model_v)
        if ema_f:
            # same rounding as the reference's `decay * e + (1 - decay) * m`
            torch._foreach_mul_(ema_f, self.decay)
            torch._foreach_add_(ema_f, torch._foreach_mul(model_f, 1.0 - self.decay))


# ---------------------------------------------------------------------------------------------
# Seeds and RNG state
# ---------------------------------------------------------------------------------------------
def fix_random_seed(seed: int, include_cuda: bool = True) -> torch.Generator:
    """Seed torch (CPU and CUDA), numpy, ``random`` and ``PYTHONHASHSEED``; with ``include_cuda``
    also switch to deterministic algorithms. Returns the global torch generator (the one the
    training loader shuffles with)."""
    rng_generator = torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)
    os.environ["PYTHONHASHSEED"] = str(seed)
    if include_cuda:
        torch.cuda.manual_seed_all(seed)
        torch.backends.cudnn.enabled = True
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
        torch.use_deterministic_algorithms(True, warn_only=True)
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = ":4096:8"
    else:
        torch.backends.cudnn.enabled = True
        torch.backends.cudnn.benchmark = True
    return rng_generator


def get_rng_state() -> Dict[str, Any]:
    """States of torch (CPU + CUDA), numpy and ``random``; loadable with ``weights_only=True``."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached),
            "random": random.getstate()}


def set_rng_state(state: Dict[str, Any]) -> None:
    """Inverse of :func:`get_rng_state`."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"][:torch.cuda.device_count()])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    random.setstate(tuple(tuple(x) if isinstance(x, list) else x for x in state["random"]))


# ---------------------------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------------------------
def add_module_prefix(state_dict: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Keys as the reference's DataParallel model names them (``module.`` + key)."""
    return {k if k.startswith("module.") else f"module.{k}": v for k, v in state_dict.items()}


def save_checkpoint(state: Dict[str, Any], is_best: bool, file_folder: str,
                    file_name: str = "checkpoint.pth.tar") -> None:
    """``torch.save`` to ``file_folder/file_name`` atomically (temp file + rename: a failed write,
    e.g. a full disk, leaves the previous file in place and raises ``OSError``); with ``is_best``
    also write ``model_best.pth.tar`` (without optimiser and scheduler, as the reference)."""
    os.makedirs(file_folder, exist_ok=True)
    _atomic_torch_save(state, os.path.join(file_folder, file_name))
    if is_best:
        best = {k: v for k, v in state.items() if k not in ("optimizer", "scheduler")}
        _atomic_torch_save(best, os.path.join(file_folder, "model_best.pth.tar"))


def _atomic_torch_save(obj: Any, path: str) -> None:
    # serialise in memory, then write with Python's file API: write errors (ENOSPC, EACCES)
    # arrive as OSError with their errno, not as torch's generic RuntimeError
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    try:
        with atomic_open(path, "wb") as f:
            f.write(buffer.getbuffer())
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror, path) from None


def load_checkpoint(path: str, required: Sequence[str] = ()) -> Dict[str, Any]:
    """Load a checkpoint on the CPU with ``weights_only=True`` (ours and the reference's both load),
    checking that the keys in ``required`` are present; errors name the file and the key."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: checkpoint file not found")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - unreadable file: one clear line
        reason = str(exc).splitlines()[0].split(". ")[0] if str(exc) else type(exc).__name__
        raise ValueError(f"{path}: cannot read the checkpoint (truncated or not a checkpoint file: "
                         f"{reason})") from None
    if not isinstance(ckpt, dict):
        raise ValueError(f"{path}: expected a checkpoint dict, got {type(ckpt).__name__}")
    missing = [k for k in required if k not in ckpt]
    if missing:
        raise KeyError(f"{path}: checkpoint has no '{missing[0]}' entry (it has: {', '.join(sorted(ckpt))})")
    return ckpt


# ---------------------------------------------------------------------------------------------
# Loops
# ---------------------------------------------------------------------------------------------
class AverageMeter:
    """Running average of a scalar (``val`` last value, ``avg`` mean over all updates)."""

    def __init__(self) -> None:
        self.val, self.avg, self.sum, self.count = 0.0, 0.0, 0.0, 0

    def update(self, val: float, n: int = 1) -> None:
        self.val = val
        self.sum += val * n
        self.count += n
        self.avg = self.sum / self.count


def autocast_dtype(amp: Optional[str]) -> Optional[torch.dtype]:
    """``None | 'bf16' | 'fp16'`` -> the autocast dtype (None: full float32)."""
    choices = {None: None, "bf16": torch.bfloat16, "fp16": torch.float16}
    if amp not in choices:
        raise ValueError(f"amp: expected null, 'bf16' or 'fp16', got {amp!r}")
    return choices[amp]


def _autocast(device_type: str, amp: Optional[str]):
    """Autocast context for ``amp`` (a no-op context for full precision)."""
    dtype = autocast_dtype(amp)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device_type, dtype=dtype)


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)) else model


def _format_eta(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600:d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def _train_step(model: nn.Module, video_list, optimizer: torch.optim.Optimizer, scheduler, *,
                world_size: int, device_type: str, clip_grad_l2norm: float, amp: Optional[str],
                scaler: Optional[torch.amp.GradScaler], model_ema: Optional[ModelEma]) -> torch.Tensor:
    """One iteration; returns the detached ``[cls_loss, reg_loss, final_loss]`` (3,)."""
    optimizer.zero_grad(set_to_none=True)
    with _autocast(device_type, amp):
        losses = model(video_list)
    loss = losses["final_loss"] * world_size if world_size > 1 else losses["final_loss"]
    scaled = scaler is not None and scaler.is_enabled()
    if scaled:
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
    else:
        loss.backward()
    if clip_grad_l2norm > 0.0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip_grad_l2norm)
    if scaled:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    scheduler.step()
    if model_ema is not None:
        model_ema.update(_unwrap(model))
    return torch.stack([losses[k].detach().float() for k in LOSS_KEYS])


def _log_scalars(tb_writer, meters: Dict[str, AverageMeter], lr: float, step: int) -> None:
    """The reference's TensorBoard scalars of one print interval."""
    tb_writer.add_scalar("train/learning_rate", lr, step)
    tb_writer.add_scalars("train/all_losses", {k: meters[k].val for k in LOSS_KEYS[:2]}, step)
    tb_writer.add_scalar("train/final_loss", meters["final_loss"].val, step)


def train_one_epoch(train_loader, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler,
                    curr_epoch: int, model_ema: Optional[ModelEma] = None, clip_grad_l2norm: float = -1,
                    tb_writer=None, print_freq: int = 20, *, amp: Optional[str] = None,
                    scaler: Optional[torch.amp.GradScaler] = None,
                    max_epochs: Optional[int] = None, position: Optional[List[int]] = None
                    ) -> List[Dict[str, float]]:
    """Train one epoch; returns the per-iteration losses ``[{cls_loss, reg_loss, final_loss}, ...]``.

    Per iteration (the reference's order): zero grads -> forward (under autocast when ``amp``) -> backward ->
    clip the global gradient L2 norm -> optimiser step -> scheduler step -> EMA update.
    Under DDP the loss is multiplied by the world size before backward, so that DDP's gradient
    *mean* becomes the gradient of the global-batch loss (the model sums positives over ranks
    for its normaliser); reported losses are summed over ranks, i.e. they equal the loss a single
    process computes on the global batch. Every ``print_freq`` iterations except iteration 0 (as
    the reference): a status line and the TensorBoard scalars ``train/learning_rate``,
    ``train/all_losses``, ``train/final_loss`` at ``global_step = curr_epoch * iterations + iteration``.
    ``position``, when given, is set to ``[epoch, iteration]`` before each iteration (to report
    where an interruption happened).
    """
    model.train()
    num_iters = len(train_loader)
    world_size = du.get_world_size()
    device_type = next(model.parameters()).device.type
    meters = {k: AverageMeter() for k in LOSS_KEYS}
    history: List[Dict[str, float]] = []
    pending: List[torch.Tensor] = []
    desc = f"Epoch {curr_epoch + 1}" + (f"/{max_epochs}" if max_epochs else "")
    progress = Progress(num_iters, desc, enabled=du.is_main_process())
    try:
        start = time.time()
        for iter_idx, video_list in enumerate(train_loader):
            if position is not None:
                position[:] = [curr_epoch, iter_idx]
            pending.append(_train_step(model, video_list, optimizer, scheduler, world_size=world_size,
                                       device_type=device_type, clip_grad_l2norm=clip_grad_l2norm, amp=amp,
                                       scaler=scaler, model_ema=model_ema))
            progress.update(1)
            if iter_idx % print_freq != 0 and iter_idx != num_iters - 1:
                continue
            # one collective + one sync per print_freq iterations, not per iteration
            for values in du.all_reduce_sum(torch.stack(pending)).cpu().tolist():
                history.append(dict(zip(LOSS_KEYS, values)))
                for k, v in zip(LOSS_KEYS, values):
                    meters[k].update(v)
            pending.clear()
            if iter_idx == 0 or iter_idx % print_freq != 0:
                continue
            lr = scheduler.get_last_lr()[0]
            if tb_writer is not None:
                _log_scalars(tb_writer, meters, lr, curr_epoch * num_iters + iter_idx)
            left = num_iters - iter_idx - 1 + ((max_epochs or curr_epoch + 1) - curr_epoch - 1) * num_iters
            eta = _format_eta((time.time() - start) / (iter_idx + 1) * left)
            progress.line(f"[{iter_idx:d}/{num_iters:d}] loss {meters['final_loss'].val:.4f} "
                          f"(cls {meters['cls_loss'].val:.4f} reg {meters['reg_loss'].val:.4f}) "
                          f"lr {lr:.2e} run ETA {eta}")
    finally:
        progress.close()
    if du.is_main_process():
        print(f"[Train]: Epoch {curr_epoch + 1} finished in {time.time() - start:.1f} s, "
              f"mean loss {meters['final_loss'].avg:.4f}, lr={scheduler.get_last_lr()[0]:.8f}", flush=True)
    return history


def _collect(outputs, vids, starts, ends, labels, scores) -> None:
    """Append one batch of model outputs to the per-field lists (videos without predictions skipped)."""
    for out in outputs:
        num = out["segments"].shape[0]
        if num == 0:
            continue
        vids.extend([out["video_id"]] * num)
        segs = out["segments"].detach().float().cpu()
        starts.append(segs[:, 0])
        ends.append(segs[:, 1])
        labels.append(out["labels"].detach().cpu())
        scores.append(out["scores"].detach().float().cpu())


@torch.no_grad()
def inference(val_loader, model: nn.Module, amp: Optional[str] = None) -> Dict[str, Any]:
    """Run the model (eval mode) over ``val_loader``; returns the prediction dict the reference saves.

    ``{'video-id': list[str], 't-start', 't-end': float32 arrays (seconds), 'label': int64 array,
    'score': float32 array}``, concatenated over videos in loader order. Videos without
    predictions contribute nothing; no predictions at all gives empty arrays.
    """
    model.eval()
    device_type = next(model.parameters()).device.type
    vids: List[str] = []
    starts, ends, labels, scores = [], [], [], []
    progress = Progress(len(val_loader), "Inference", enabled=du.is_main_process())
    try:
        for video_list in val_loader:
            with _autocast(device_type, amp):
                outputs = model(video_list)
            _collect(outputs, vids, starts, ends, labels, scores)
            progress.update(1)
    finally:
        progress.close()

    def cat(parts, dtype):
        return torch.cat(parts).numpy().astype(dtype) if parts else np.zeros(0, dtype=dtype)

    return {"video-id": vids, "t-start": cat(starts, np.float32), "t-end": cat(ends, np.float32),
            "label": cat(labels, np.int64), "score": cat(scores, np.float32)}


def valid_one_epoch(val_loader, model: nn.Module, curr_epoch: int, ext_score_file: Optional[str] = None,
                    evaluator=None, output_file: Optional[str] = None, tb_writer=None,
                    *, amp: Optional[str] = None, global_step: Optional[int] = None) -> float:
    """Inference, then either evaluation (average mAP returned, logged as ``validation/mAP``) or,
    with ``output_file`` and no evaluator, pickling the predictions (returns 0.0).

    Score fusion with ``ext_score_file`` (external video-level class scores) is applied only before evaluation.
    TensorBoard: ``validation/mAP`` at ``global_step`` (the training curves' x-axis; default
    ``curr_epoch``) and ``validation/epoch`` (``curr_epoch + 1``) at the same step.
    """
    if evaluator is None and output_file is None:
        raise ValueError("valid_one_epoch needs an evaluator or an output_file")
    results = inference(val_loader, model, amp=amp)
    if evaluator is not None:
        if isinstance(ext_score_file, str):
            from .postprocessing import postprocess_results
            results = postprocess_results(results, ext_score_file)
        _, mAP, _ = evaluator.evaluate(results, verbose=True)
    else:
        write_pickle(results, output_file)
        mAP = 0.0
    if tb_writer is not None:
        step = curr_epoch if global_step is None else global_step
        tb_writer.add_scalar("validation/mAP", mAP, step)
        tb_writer.add_scalar("validation/epoch", curr_epoch + 1, step)
    return float(mAP)
