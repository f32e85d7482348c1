"""Train an ActionFormer model.

    python train.py CONFIG [--output NAME] [--resume CKPT] [--force] [-p PRINT_FREQ] [-c CKPT_FREQ]
                    [--eval-freq N] [--device DEV] [--amp bf16|fp16] [--seed N]
                    [--check-data headers|full] [--dry-run] [--debug] [--opts KEY=VALUE ...]
    torchrun --nproc_per_node=N train.py CONFIG ...        # DistributedDataParallel

Writes ``<output_folder>/<config name>_<NAME>/``: ``config.yaml`` / ``config.txt`` (the resolved
config; ``config.txt`` after the learning-rate / worker scaling, as the reference), ``logs/``
(TensorBoard), ``train.log`` (the console output), ``epoch_XXX.pth.tar`` every ``ckpt_freq``
epochs and at the last one, ``last.pth.tar`` (resume file, every epoch) and, with
``--eval-freq``, ``model_best.pth.tar``. The folder is created only once the config, the data and
the model have been checked. A folder that already holds checkpoints is not reused unless
``--resume`` (continue) or ``--force`` (start over: the old checkpoints and logs are removed).

Devices: a config listing several ``devices`` (e.g. ``['cuda:0', 'cuda:1']``) run as
``python train.py`` starts one DistributedDataParallel process per device; as in the reference
(DataParallel over the devices) the global batch is ``loader.batch_size`` (split across the
devices), and the learning rate and loader workers are multiplied by the number of devices.
Under ``torchrun`` each of the N processes loads ``loader.batch_size`` videos and the optimiser
uses ``N x opt.learning_rate``. See ``libs/utils/train_utils.py`` for the loop itself.
"""
from __future__ import annotations

import argparse
import datetime
import glob
import os
import pprint
import shutil
import sys
import time
from typing import Any, Dict, List, Optional

import torch
from torch.utils.data.distributed import DistributedSampler

from libs.core import ConfigError, load_config, save_config
from libs.core.cli import Interrupted, RunError, os_error_message, run_main
from libs.datasets import make_data_loader, make_dataset, training_lengths
from libs.datasets.data_check import check_split_features
from libs.engine import resolve_device
from libs.engine.checkpoints import load_training_checkpoint
from libs.engine.launch import launch_per_device, per_device_batch
from libs.modeling import make_meta_arch
from libs.utils import distributed as du
from libs.utils.cpu_memory import reuse_freed_memory
from libs.utils.io import atomic_open
from libs.utils.lr_schedulers import make_scheduler
from libs.utils.run_log import RunLog, log_only
from libs.utils.train_utils import (ModelEma, add_module_prefix, fix_random_seed, get_rng_state,
                                    make_optimizer, save_checkpoint, set_rng_state, train_one_epoch,
                                    valid_one_epoch)

RESUME_FILE = "last.pth.tar"


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Train a point-based transformer for action localization")
    parser.add_argument("config", metavar="CONFIG", help="path to a config file")
    parser.add_argument("-p", "--print-freq", default=10, type=int, help="log every N iterations (default 10)")
    parser.add_argument("-c", "--ckpt-freq", default=5, type=int, help="checkpoint every N epochs (default 5)")
    parser.add_argument("--output", default="", type=str,
                        help="experiment name (default: the start time, YYYY-MM-DD_HH-MM-SS)")
    parser.add_argument("--resume", default="", type=str, metavar="PATH",
                        help="checkpoint to resume from, e.g. ckpt/X/last.pth.tar; training continues "
                             "in that folder unless --output is given (default: none)")
    parser.add_argument("--force", action="store_true",
                        help="start over in a folder that holds checkpoints, removing them first (default: refuse)")
    parser.add_argument("--eval-freq", default=0, type=int,
                        help="validate the EMA model every N epochs and at the last one (default 0: never)")
    parser.add_argument("--device", default=None,
                        help="device, e.g. cpu or cuda:0 (default: the config's devices)")
    parser.add_argument("--amp", default=None, choices=["bf16", "fp16"],
                        help="mixed precision (config key amp; default: the config's, null = fp32)")
    parser.add_argument("--ema-decay", default=None, type=float,
                        help="model EMA decay (config key ema_decay; default 0.999 as the reference). "
                             "Short runs need less, e.g. 0.99: the EMA keeps 0.999**N of the initial weights")
    parser.add_argument("--seed", default=None, type=int,
                        help="random seed (same as --opts init_rand_seed=N; default: the config's)")
    parser.add_argument("--check-data", default="headers", choices=["headers", "full"],
                        help="before training, check every feature file's header and shape (headers, "
                             "default) or also read it all and scan for NaN/Inf (full)")
    parser.add_argument("--dry-run", action="store_true",
                        help="check the config and the data, then exit without training or writing")
    parser.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    parser.add_argument("--opts", nargs="+", default=[], metavar="KEY=VALUE",
                        help="config overrides, e.g. opt.epochs=10 loader.batch_size=4")
    return parser.parse_args(argv)


# ------------------------------------------------------------------------------------------ folders
def experiment_folder(cfg: Dict[str, Any], config_path: str, output: str) -> str:
    """``<output_folder>/<config basename>_<output>``; without ``output`` the suffix is the start
    time ``YYYY-MM-DD_HH-MM-SS`` (the reference uses ``str(datetime)``, whose colons and space
    many tools mishandle)."""
    name = os.path.basename(config_path).replace(".yaml", "")
    suffix = output or datetime.datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    return os.path.join(cfg.get("output_folder", "./ckpt/"), f"{name}_{suffix}")


def run_folder(cfg: Dict[str, Any], args: argparse.Namespace) -> str:
    """The folder this run writes to; refuses one holding checkpoints unless --resume / --force."""
    if args.resume and not args.output:
        return os.path.dirname(os.path.abspath(args.resume))
    folder = experiment_folder(cfg, args.config, args.output)
    old = sorted(glob.glob(os.path.join(folder, "*.pth.tar")))
    if old and not args.resume and not args.force:
        shown = ", ".join(os.path.basename(f) for f in old[:3]) + (", ..." if len(old) > 3 else "")
        raise RunError(f"{folder} already holds checkpoints ({shown}): use --resume "
                       f"{os.path.join(folder, RESUME_FILE)} to continue, or --force to start over "
                       f"(removes them first)")
    return folder


def clear_previous_run(folder: str) -> None:
    """``--force``: remove an earlier run's checkpoints, TensorBoard logs, train.log and eval outputs."""
    patterns = ("*.pth.tar", "eval_metrics*.json", "eval_results*", "train.log", "config.txt", "config.yaml")
    for pattern in patterns:
        for path in glob.glob(os.path.join(folder, pattern)):
            os.remove(path)
    shutil.rmtree(os.path.join(folder, "logs"), ignore_errors=True)


# ------------------------------------------------------------------------------------------ setup
def build_config(args: argparse.Namespace) -> Dict[str, Any]:
    cfg = load_config(args.config, args.opts)
    if args.amp is not None:
        cfg["amp"] = args.amp
    if args.seed is not None:
        cfg["init_rand_seed"] = args.seed
    if args.ema_decay is not None:
        cfg["ema_decay"] = args.ema_decay
    return cfg


def check_amp(cfg: Dict[str, Any], device: torch.device) -> None:
    if cfg.get("amp") == "fp16" and device.type == "cpu":
        raise ConfigError("amp fp16 on the CPU: float16 autocast is emulated there and runs many times "
                          "slower than float32; use --amp bf16 or no --amp on the CPU")


def build_train_data(cfg: Dict[str, Any], args: argparse.Namespace, rng_generator: torch.Generator):
    """Training data set, loader and (under DDP) sampler; checks every feature file first."""
    dataset = make_dataset(cfg["dataset_name"], True, cfg["train_split"], **cfg["dataset"])
    if du.is_main_process():
        check_split_features(dataset, full=args.check_data == "full")
    cfg["model"]["train_cfg"]["head_empty_cls"] = dataset.get_attributes()["empty_label_ids"]
    sampler = None
    if du.is_dist():
        sampler = DistributedSampler(dataset, num_replicas=du.get_world_size(), rank=du.get_rank(),
                                     shuffle=True, seed=cfg["init_rand_seed"], drop_last=True)
    batch_size = per_device_batch(cfg, args.config)
    lengths = training_lengths(dataset) if cfg["loader"]["length_bucketing"] else None
    loader = make_data_loader(dataset, True, rng_generator, batch_size, cfg["loader"]["num_workers"],
                              sampler=sampler, lengths=lengths)
    if len(loader) == 0:
        raise ConfigError(f"{args.config}: loader.batch_size {batch_size} x {du.get_world_size()} "
                          f"process(es) exceeds the {len(dataset)} training videos: no full batch")
    return dataset, loader, sampler


def build_validation(cfg: Dict[str, Any], args: argparse.Namespace):
    """(loader, evaluator) of the validation split for --eval-freq on rank 0, else (None, None)."""
    if args.eval_freq <= 0 or not du.is_main_process():
        return None, None
    from libs.utils import ANETdetection
    dataset = make_dataset(cfg["dataset_name"], False, cfg["val_split"], **cfg["dataset"])
    check_split_features(dataset, full=args.check_data == "full")
    loader = make_data_loader(dataset, False, torch.Generator().manual_seed(0), 1, cfg["loader"]["num_workers"])
    evaluator = ANETdetection(dataset.json_file, dataset.split[0],
                              tiou_thresholds=dataset.get_attributes()["tiou_thresholds"],
                              exclude_videos=dataset.exclude_videos)
    return loader, evaluator


class Trainer:
    """Model, EMA, optimiser, schedule and scaler of one run, and what a checkpoint holds of them."""

    def __init__(self, cfg: Dict[str, Any], device: torch.device, iters_per_epoch: int) -> None:
        self.cfg, self.iters_per_epoch = cfg, iters_per_epoch
        self.model = make_meta_arch(cfg["model_name"], **cfg["model"]).to(device)
        # the reference's rule: learning rate x number of devices (processes)
        self.learning_rate = cfg["opt"]["learning_rate"] * du.get_world_size()
        self.optimizer = make_optimizer(self.model, dict(cfg["opt"], learning_rate=self.learning_rate))
        self.scheduler = make_scheduler(self.optimizer, cfg["opt"], iters_per_epoch)
        self.model_ema = ModelEma(self.model, decay=cfg.get("ema_decay", 0.999))
        self.scaler = torch.amp.GradScaler(device.type, enabled=cfg.get("amp") == "fp16")
        self.train_model = self.model
        if du.is_dist():
            self.model.num_pos_reducer = du.all_reduce_sum   # positives summed over ranks
            self.train_model = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[device.index] if device.type == "cuda" else None)

    def state(self, epoch: int, best_map: Optional[float]) -> Dict[str, Any]:
        """The reference's checkpoint keys (``module.``-prefixed weights) plus the exact-resume
        state. Collective under DDP (gathers every rank's RNG state); call it on all ranks."""
        rng_states = [get_rng_state()]
        if du.is_dist():
            rng_states = [None] * du.get_world_size()
            torch.distributed.all_gather_object(rng_states, get_rng_state())
        state = {"epoch": epoch,
                 "state_dict": add_module_prefix(self.model.state_dict()),
                 "scheduler": self.scheduler.state_dict(),
                 "optimizer": self.optimizer.state_dict(),
                 "state_dict_ema": add_module_prefix(self.model_ema.module.state_dict()),
                 # exact-resume extras (ignored by the reference's scripts)
                 "loss_normalizer": float(getattr(self.model, "loss_normalizer", 0.0)),
                 "rng_state": rng_states,
                 "global_step": epoch * self.iters_per_epoch,
                 "best_mAP": best_map}
        if self.scaler.is_enabled():
            state["scaler"] = self.scaler.state_dict()
        return state

    def resume(self, path: str) -> tuple:
        """Restore a checkpoint (ours or the reference's); returns (start epoch, best mAP)."""
        ckpt = load_training_checkpoint(path, self.model, self.model_ema.module)
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        if "scaler" in ckpt and self.scaler.is_enabled():
            self.scaler.load_state_dict(ckpt["scaler"])
        exact = "rng_state" in ckpt and "loss_normalizer" in ckpt
        if exact:
            self.model.loss_normalizer = ckpt["loss_normalizer"]
            states = ckpt["rng_state"]
            set_rng_state(states[du.get_rank()] if len(states) == du.get_world_size() else states[0])
        if du.is_main_process():
            note = "" if exact else " (no loss normaliser / RNG state in this file: continuing approximately)"
            print(f"=> resumed from {path} at epoch {ckpt['epoch']}{note}", flush=True)
        return int(ckpt["epoch"]), ckpt.get("best_mAP")


# ------------------------------------------------------------------------------------------ outputs
def open_run_folder(folder: str, cfg: Dict[str, Any], args: argparse.Namespace):
    """Create the folder (rank 0), write the configs, start train.log; returns (writer, log)."""
    try:
        if args.force and not args.resume:
            clear_previous_run(folder)
        os.makedirs(folder, exist_ok=True)
        save_config(cfg, folder)
        # config.txt as the reference writes it: after the learning-rate / worker scaling
        scaled = dict(cfg, opt=dict(cfg["opt"], learning_rate=cfg["opt"]["learning_rate"] * du.get_world_size()),
                      loader=dict(cfg["loader"], num_workers=cfg["loader"]["num_workers"] * du.get_world_size()))
        with atomic_open(os.path.join(folder, "config.txt"), "w") as fd:
            pprint.pprint(scaled, stream=fd)
        log = RunLog(os.path.join(folder, "train.log"))
    except OSError as exc:
        raise RunError(f"cannot write the run folder: {os_error_message(exc)}") from None
    from torch.utils.tensorboard import SummaryWriter
    return SummaryWriter(os.path.join(folder, "logs")), log


def save_epoch(state: Dict[str, Any], is_best: bool, folder: str, epoch: int, keep_epoch: bool) -> None:
    """Write last.pth.tar (and model_best / epoch_XXX); a failed write keeps the previous files."""
    try:
        save_checkpoint(state, is_best, folder, RESUME_FILE)
        if keep_epoch:
            save_checkpoint(state, False, folder, f"epoch_{epoch:03d}.pth.tar")
    except OSError as exc:
        raise RunError(f"saving the epoch {epoch} checkpoint failed: {os_error_message(exc)}; the "
                       f"previous checkpoint in {folder} is kept") from None


def startup_line(cfg: Dict[str, Any], trainer: Trainer, device, start_epoch: int, max_epochs: int,
                 folder: str) -> str:
    opt = cfg["opt"]
    warm = opt["warmup_epochs"] if opt.get("warmup", True) else 0
    span = f"{opt['epochs']} epochs + {warm:g} warm-up" if warm else f"{opt['epochs']} epochs"
    stop = f", stopping after epoch {max_epochs}" if "early_stop_epochs" in opt else ""
    return (f"Training {cfg['model_name']} on {device} ({du.get_world_size()} process(es), lr "
            f"{trainer.learning_rate:g}, {trainer.iters_per_epoch} iterations/epoch): {span}{stop}; "
            f"epochs {start_epoch + 1}..{max_epochs} -> {folder}")


# ------------------------------------------------------------------------------------------ main
def train_epochs(cfg, args, trainer: Trainer, loader, sampler, validation, tb_writer, folder: str,
                 start_epoch: int, best_map: Optional[float], max_epochs: int) -> List[Dict[str, float]]:
    """The epoch loop: train, optionally validate, checkpoint. Ctrl-C -> :class:`Interrupted`."""
    val_loader, evaluator = validation
    history: List[Dict[str, float]] = []
    position = [start_epoch, 0]
    try:
        for epoch in range(start_epoch, max_epochs):
            if sampler is not None:
                sampler.set_epoch(epoch)
            history += train_one_epoch(loader, trainer.train_model, trainer.optimizer, trainer.scheduler, epoch,
                                       model_ema=trainer.model_ema, tb_writer=tb_writer,
                                       clip_grad_l2norm=cfg["train_cfg"]["clip_grad_l2norm"],
                                       print_freq=args.print_freq, amp=cfg.get("amp"), scaler=trainer.scaler,
                                       max_epochs=max_epochs, position=position)
            last = epoch + 1 == max_epochs
            is_best = False
            if evaluator is not None and ((epoch + 1) % args.eval_freq == 0 or last):
                mAP = valid_one_epoch(val_loader, trainer.model_ema.module, epoch, cfg["test_cfg"]["ext_score_file"],
                                      evaluator, tb_writer=tb_writer, amp=cfg.get("amp"),
                                      global_step=(epoch + 1) * trainer.iters_per_epoch)
                is_best = best_map is None or mAP > best_map
                best_map = mAP if is_best else best_map
            state = trainer.state(epoch + 1, best_map)
            if du.is_main_process():
                save_epoch(state, is_best, folder, epoch + 1,
                           last or (args.ckpt_freq > 0 and (epoch + 1) % args.ckpt_freq == 0))
            du.barrier()
    except KeyboardInterrupt:
        resume = os.path.join(folder, RESUME_FILE)
        hint = (f"resume with --resume {resume}" if os.path.isfile(resume)
                else "no checkpoint was saved yet (the first epoch did not finish)")
        raise Interrupted(f"interrupted at epoch {position[0] + 1}, iteration {position[1] + 1}; {hint}") from None
    return history


def main(argv: Optional[List[str]] = None) -> Dict[str, Any]:
    """Run the training; returns ``{'ckpt_folder', 'history' (per-iteration losses)}``."""
    args = parse_args(argv)
    cfg = build_config(args)
    if args.device is None and len(cfg["devices"]) > 1 and not du.launched_by_torchrun():
        return launch_per_device(main, argv if argv is not None else sys.argv[1:], cfg, args.config,
                                 args.dry_run, run_folder(cfg, args))
    requested = args.device or du.device_of_this_process(cfg["devices"])
    device = resolve_device(requested, None)
    local_rank = du.init_distributed(device)
    if local_rank is not None and device.type == "cuda" and not du.launched_per_device():
        device = resolve_device(requested, local_rank)      # torchrun: cuda -> cuda:<local rank>
    check_amp(cfg, device)
    folder = run_folder(cfg, args)

    # 1. seeds (the global torch generator also shuffles the training data), data, model
    reuse_freed_memory()
    rng_generator = fix_random_seed(cfg["init_rand_seed"], include_cuda=True)
    _, loader, sampler = build_train_data(cfg, args, rng_generator)
    validation = build_validation(cfg, args)
    trainer = Trainer(cfg, device, len(loader))
    if args.dry_run:
        if du.is_main_process():
            print(f"dry run: config, data and model are fine ({len(loader)} iterations/epoch); nothing written")
        du.cleanup_distributed()
        return {"ckpt_folder": None, "history": []}
    start_epoch, best_map = 0, None
    if args.resume:
        start_epoch, best_map = trainer.resume(args.resume)
    elif du.get_rank() > 0:
        # ranks draw different dropout / crop randomness; the sampler keeps its own common seed
        fix_random_seed(cfg["init_rand_seed"] + du.get_rank(), include_cuda=True)

    # 2. outputs, only now that everything checked out; 3. the loop
    tb_writer = log = None
    if du.is_main_process():
        tb_writer, log = open_run_folder(folder, cfg, args)
    max_epochs = cfg["opt"].get("early_stop_epochs", cfg["opt"]["epochs"] + cfg["opt"]["warmup_epochs"])
    try:
        if du.is_main_process():
            print(startup_line(cfg, trainer, device, start_epoch, max_epochs, folder), flush=True)
        start = time.time()
        history = train_epochs(cfg, args, trainer, loader, sampler, validation, tb_writer, folder,
                               start_epoch, best_map, max_epochs)
        if du.is_main_process():
            print(f"All done! {max_epochs - start_epoch} epoch(s) in {time.time() - start:.1f} s; "
                  f"checkpoints in {folder}", flush=True)
    except BaseException as exc:        # the reason goes into train.log too (printed by run_main)
        log_only(f"stopped: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}")
        raise
    finally:
        if tb_writer is not None:
            tb_writer.close()
            log.close()
    du.cleanup_distributed()
    return {"ckpt_folder": folder, "history": history}


if __name__ == "__main__":
    run_main(main, "train.py")
