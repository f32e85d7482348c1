"""Train an ActionFormer model.

    python train.py CONFIG --output NAME [--resume CKPT] [-p PRINT_FREQ] [-c CKPT_FREQ]
                    [--eval-freq N] [--device DEV] [--amp bf16|fp16] [--opts KEY=VALUE ...]
    torchrun --nproc_per_node=N train.py CONFIG ...        # DistributedDataParallel

Writes ``<output_folder>/<config name>_<NAME>/``: ``config.yaml`` / ``config.txt`` (the resolved
config), ``logs/`` (TensorBoard), ``epoch_XXX.pth.tar`` every ``ckpt_freq`` epochs and at the
last one, ``last.pth.tar`` (resume file, every epoch) and, with ``--eval-freq``,
``model_best.pth.tar``. See ``libs/utils/train_utils.py`` for the loop itself.

Learning-rate rule: ``opt.learning_rate`` is the rate for one process; with N processes
(``torchrun``) the optimiser uses ``N x opt.learning_rate`` for the global batch of
``N x loader.batch_size`` videos (the reference's "x number of devices" rule, with
``loader.batch_size`` counted per process).
"""
from __future__ import annotations

import argparse
import datetime
import glob
import os
import sys
import time
from typing import Any, Dict, List, Optional

import torch
from torch.utils.data.distributed import DistributedSampler

from libs.core import ConfigError, load_config, save_config
from libs.core.cli import run_main
from libs.datasets import make_data_loader, make_dataset
from libs.engine import resolve_device
from libs.modeling import make_meta_arch
from libs.modeling.checkpoint import load_model_weights
from libs.utils import distributed as du
from libs.utils.cpu_memory import reuse_freed_memory
from libs.utils.lr_schedulers import make_scheduler
from libs.utils.train_utils import (ModelEma, add_module_prefix, fix_random_seed, get_rng_state,
                                    load_checkpoint, make_optimizer, save_checkpoint, set_rng_state,
                                    train_one_epoch, valid_one_epoch)

RESUME_FILE = "last.pth.tar"


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Train a point-based transformer for action localization")
    parser.add_argument("config", metavar="CONFIG", help="path to a config file")
    parser.add_argument("-p", "--print-freq", default=10, type=int, help="log every N iterations (default 10)")
    parser.add_argument("-c", "--ckpt-freq", default=5, type=int, help="checkpoint every N epochs (default 5)")
    parser.add_argument("--output", default="", type=str, help="experiment name (default: a time stamp)")
    parser.add_argument("--resume", default="", type=str, metavar="PATH",
                        help="checkpoint to resume from (e.g. <experiment>/last.pth.tar)")
    parser.add_argument("--eval-freq", default=0, type=int,
                        help="validate the EMA model every N epochs and at the last one (default 0: never)")
    parser.add_argument("--device", default=None,
                        help="device, e.g. cpu or cuda:0 (default: the config's devices[0])")
    parser.add_argument("--amp", default=None, choices=["bf16", "fp16"], help="mixed precision (config key amp)")
    parser.add_argument("--ema-decay", default=None, type=float,
                        help="model EMA decay (config key ema_decay; default 0.999 as the reference). "
                             "Short runs need less, e.g. 0.99: the EMA keeps 0.999**N of the initial weights")
    parser.add_argument("--opts", nargs="+", default=[], metavar="KEY=VALUE",
                        help="config overrides, e.g. opt.epochs=10 loader.batch_size=4")
    return parser.parse_args(argv)


def experiment_folder(cfg: Dict[str, Any], config_path: str, output: str) -> str:
    """``<output_folder>/<config basename>_<output or time stamp>`` (spec H)."""
    name = os.path.basename(config_path).replace(".yaml", "")
    suffix = output or datetime.datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    return os.path.join(cfg.get("output_folder", "./ckpt/"), f"{name}_{suffix}")


def _training_state(epoch: int, model, model_ema: ModelEma, optimizer, scheduler, scaler,
                    iters_per_epoch: int, best_map: Optional[float]) -> Dict[str, Any]:
    """The reference's checkpoint keys (``module.``-prefixed weights) plus the exact-resume state.

    Collective under DDP (gathers every rank's RNG state); call it on all ranks.
    """
    inner = model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model
    rng_states = [get_rng_state()]
    if du.is_dist():
        rng_states = [None] * du.get_world_size()
        torch.distributed.all_gather_object(rng_states, get_rng_state())
    state = {"epoch": epoch,
             "state_dict": add_module_prefix(inner.state_dict()),
             "scheduler": scheduler.state_dict(),
             "optimizer": optimizer.state_dict(),
             "state_dict_ema": add_module_prefix(model_ema.module.state_dict()),
             # exact-resume extras (ignored by the reference's scripts)
             "loss_normalizer": float(getattr(inner, "loss_normalizer", 0.0)),
             "rng_state": rng_states,
             "global_step": epoch * iters_per_epoch,
             "best_mAP": best_map}
    if scaler.is_enabled():
        state["scaler"] = scaler.state_dict()
    return state


def _resume(path: str, model, model_ema: ModelEma, optimizer, scheduler, scaler) -> tuple:
    """Restore a checkpoint (ours or the reference's); returns (start epoch, best mAP)."""
    ckpt = load_checkpoint(path, required=("epoch", "state_dict", "state_dict_ema", "optimizer", "scheduler"))
    load_model_weights(model, ckpt, key="state_dict")
    load_model_weights(model_ema.module, ckpt, key="state_dict_ema")
    optimizer.load_state_dict(ckpt["optimizer"])
    scheduler.load_state_dict(ckpt["scheduler"])
    if "scaler" in ckpt and scaler.is_enabled():
        scaler.load_state_dict(ckpt["scaler"])
    exact = "rng_state" in ckpt and "loss_normalizer" in ckpt
    if exact:
        model.loss_normalizer = ckpt["loss_normalizer"]
        states = ckpt["rng_state"]
        rank = du.get_rank()
        set_rng_state(states[rank] if len(states) == du.get_world_size() else states[0])
    if du.is_main_process():
        note = "" if exact else " (no loss normaliser / RNG state in this file: continuing approximately)"
        print(f"=> resumed from {path} at epoch {ckpt['epoch']}{note}", flush=True)
    return int(ckpt["epoch"]), ckpt.get("best_mAP")


def main(argv: Optional[List[str]] = None) -> Dict[str, Any]:
    """Run the training; returns ``{'ckpt_folder', 'history' (per-iteration losses)}``."""
    args = parse_args(argv)
    cfg = load_config(args.config, args.opts)
    if args.amp is not None:
        cfg["amp"] = args.amp
    requested = args.device or cfg["devices"][0]
    local_rank = du.init_distributed(torch.device("cuda" if requested.startswith("cuda")
                                                  and torch.cuda.is_available() else "cpu"))
    device = resolve_device(requested, local_rank)
    world_size, rank = du.get_world_size(), du.get_rank()
    if args.device is None and len(cfg["devices"]) > 1 and du.is_main_process():
        print(f"warning: devices {cfg['devices']}: one process uses one device; launch with "
              f"torchrun --nproc_per_node={len(cfg['devices'])} for several", file=sys.stderr)

    # 1. seeds (the global torch generator also shuffles the training data), folders
    reuse_freed_memory()
    rng_generator = fix_random_seed(cfg["init_rand_seed"], include_cuda=True)
    ckpt_folder = experiment_folder(cfg, args.config, args.output)
    tb_writer = None
    if du.is_main_process():
        os.makedirs(ckpt_folder, exist_ok=True)
        if not args.resume and glob.glob(os.path.join(ckpt_folder, "epoch_*.pth.tar")):
            print(f"warning: {ckpt_folder} already holds checkpoints; they will be overwritten",
                  file=sys.stderr)
        from torch.utils.tensorboard import SummaryWriter
        tb_writer = SummaryWriter(os.path.join(ckpt_folder, "logs"))

    # 2. data
    train_dataset = make_dataset(cfg["dataset_name"], True, cfg["train_split"], **cfg["dataset"])
    cfg["model"]["train_cfg"]["head_empty_cls"] = train_dataset.get_attributes()["empty_label_ids"]
    sampler = None
    if du.is_dist():
        sampler = DistributedSampler(train_dataset, num_replicas=world_size, rank=rank, shuffle=True,
                                     seed=cfg["init_rand_seed"], drop_last=True)
    train_loader = make_data_loader(train_dataset, True, rng_generator, cfg["loader"]["batch_size"],
                                    cfg["loader"]["num_workers"], sampler=sampler)
    iters_per_epoch = len(train_loader)
    if iters_per_epoch == 0:
        raise ConfigError(f"{args.config}: loader.batch_size {cfg['loader']['batch_size']} x {world_size} "
                          f"process(es) exceeds the {len(train_dataset)} training videos: no full batch")
    if du.is_main_process():
        save_config(cfg, ckpt_folder)

    # 3. model, EMA, optimiser, schedule
    model = make_meta_arch(cfg["model_name"], **cfg["model"]).to(device)
    opt_cfg = dict(cfg["opt"], learning_rate=cfg["opt"]["learning_rate"] * world_size)
    optimizer = make_optimizer(model, opt_cfg)
    scheduler = make_scheduler(optimizer, cfg["opt"], iters_per_epoch)
    ema_decay = args.ema_decay if args.ema_decay is not None else cfg.get("ema_decay", 0.999)
    model_ema = ModelEma(model, decay=ema_decay)
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.get("amp") == "fp16")
    start_epoch, best_map = 0, None
    if args.resume:
        start_epoch, best_map = _resume(args.resume, model, model_ema, optimizer, scheduler, scaler)
    elif rank > 0:
        # ranks draw different dropout / crop randomness; the sampler keeps its own common seed
        fix_random_seed(cfg["init_rand_seed"] + rank, include_cuda=True)
    train_model = model
    if du.is_dist():
        model.num_pos_reducer = du.all_reduce_sum   # positives summed over ranks (loss normaliser)
        train_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)

    # optional validation (rank 0, EMA weights, private generator: training randomness unchanged)
    evaluator = val_loader = None
    if args.eval_freq > 0 and du.is_main_process():
        from libs.utils import ANETdetection
        val_dataset = make_dataset(cfg["dataset_name"], False, cfg["val_split"], **cfg["dataset"])
        val_loader = make_data_loader(val_dataset, False, torch.Generator().manual_seed(0), 1,
                                      cfg["loader"]["num_workers"])
        evaluator = ANETdetection(val_dataset.json_file, val_dataset.split[0],
                                  tiou_thresholds=val_dataset.get_attributes()["tiou_thresholds"])

    # 4. loop
    max_epochs = cfg["opt"].get("early_stop_epochs", cfg["opt"]["epochs"] + cfg["opt"]["warmup_epochs"])
    if du.is_main_process():
        print(f"Training {cfg['model_name']} on {device} ({world_size} process(es), lr "
              f"{opt_cfg['learning_rate']:g}, {iters_per_epoch} iterations/epoch), epochs "
              f"{start_epoch + 1}..{max_epochs} -> {ckpt_folder}", flush=True)
    history: List[Dict[str, float]] = []
    start = time.time()
    for epoch in range(start_epoch, max_epochs):
        if sampler is not None:
            sampler.set_epoch(epoch)
        history += train_one_epoch(train_loader, train_model, optimizer, scheduler, epoch, model_ema=model_ema,
                                   clip_grad_l2norm=cfg["train_cfg"]["clip_grad_l2norm"], tb_writer=tb_writer,
                                   print_freq=args.print_freq, amp=cfg.get("amp"), scaler=scaler,
                                   max_epochs=max_epochs)
        last = epoch + 1 == max_epochs
        is_best = False
        if evaluator is not None and ((epoch + 1) % args.eval_freq == 0 or last):
            mAP = valid_one_epoch(val_loader, model_ema.module, epoch, cfg["test_cfg"]["ext_score_file"],
                                  evaluator, tb_writer=tb_writer, amp=cfg.get("amp"))
            is_best = best_map is None or mAP > best_map
            best_map = mAP if is_best else best_map
        state = _training_state(epoch + 1, model, model_ema, optimizer, scheduler, scaler,
                                iters_per_epoch, best_map)
        if du.is_main_process():
            save_checkpoint(state, is_best, ckpt_folder, RESUME_FILE)
            if last or (args.ckpt_freq > 0 and (epoch + 1) % args.ckpt_freq == 0):
                save_checkpoint(state, False, ckpt_folder, f"epoch_{epoch + 1:03d}.pth.tar")
        du.barrier()
    if du.is_main_process():
        tb_writer.close()
        print(f"All done! {max_epochs - start_epoch} epoch(s) in {time.time() - start:.1f} s; "
              f"checkpoints in {ckpt_folder}", flush=True)
    du.cleanup_distributed()
    return {"ckpt_folder": ckpt_folder, "history": history}


if __name__ == "__main__":
    run_main(main, "train.py")
