"""The single-stage detector ``LocPointTransformer``.

Data flow: list of item dicts -> pad + mask -> backbone -> neck -> points + cls / reg heads ->
training: label assignment + focal / DIoU losses; inference: decoding + NMS + seconds.
Everything inside is in feature-grid steps; seconds appear only in the inference output.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from libs.core.config import max_div_factor

from .assigner import SIMOTA_DEFAULTS, assign_points, simota_assign
from .blocks import downsample_mask
from .decoding import decode_candidates, postprocess_video
from .heads import ClsHead, RegHead
from .losses import ctr_diou_loss_1d, sigmoid_focal_loss
from .models import make_backbone, make_generator, make_neck, register_meta_arch

__all__ = ["LocPointTransformer"]

def _length_mask(lengths: Sequence[int], T: int, device: torch.device) -> Tensor:
    """``B×1×T`` bool mask, True on the first ``lengths[b]`` steps of row b."""
    return (torch.arange(T, device=device)[None, :]
            < torch.as_tensor(lengths, device=device)[:, None])[:, None, :]


def _simota_settings(assigner: Optional[Mapping[str, float]]) -> Optional[Dict[str, float]]:
    """``model.assigner`` (TemporalMaxer's key) over TemporalMaxer's SimOTA defaults."""
    if assigner is None:
        return None
    unknown = sorted(set(assigner) - set(SIMOTA_DEFAULTS))
    if unknown:
        raise ValueError(f"model.assigner: unknown key(s) {unknown}; SimOTA takes "
                         f"{sorted(SIMOTA_DEFAULTS)}")
    return {**SIMOTA_DEFAULTS, **assigner}


def _all_finite(x: Tensor) -> bool:
    """No NaN or ±Inf in ``x``, without a temporary of its size (min and max propagate NaN)."""
    low, high = torch.aminmax(x)
    return bool(torch.isfinite(low) & torch.isfinite(high))


@register_meta_arch("LocPointTransformer")
class LocPointTransformer(nn.Module):
    """ActionFormer: a Transformer feature pyramid with per-point classification and regression.

    Constructed with the keys of a config made by :func:`libs.core.load_config` (or
    ``config_from_dict``): ``make_meta_arch(cfg['model_name'], **cfg['model'])``. The config
    module is the single source of defaults and checks; the model takes the values as they are.

    Calling the model on a list of items (``video_id``, ``feats`` ``D×T`` float32,
    ``segments`` ``N×2`` grid units, ``labels`` ``N``, ``fps``, ``duration``, ``feat_stride``,
    ``feat_num_frames``) returns ``{'cls_loss', 'reg_loss', 'final_loss'}`` in training mode and,
    in eval mode, one ``{'video_id', 'segments' (N×2 seconds), 'scores', 'labels'}`` per video.
    Inference accepts batches of any size and any length; every video gives what it gives alone,
    to float32 rounding (it keeps its own reference padding, positions beyond it act as the
    tensor border).

    State beyond parameters: ``loss_normalizer`` (float, the EMA of the positive count;
    save / restore it for an exact resume) and ``num_pos_reducer`` (None, or a callable applied
    to the batch's positive count tensor before the EMA update, e.g. an all-reduce sum for DDP).
    """

    def __init__(self, backbone_type: str, fpn_type: str, backbone_arch: Sequence[int],
                 scale_factor: int, input_dim: Union[int, Sequence[int]], max_seq_len: int,
                 max_buffer_len_factor: float, n_head: int,
                 n_mha_win_size: Union[int, Sequence[int]], embd_kernel_size: int,
                 embd_dim: Union[int, Sequence[int]], embd_with_ln: bool, fpn_dim: int,
                 fpn_with_ln: bool, fpn_start_level: int, head_dim: int,
                 regression_range: Sequence[Sequence[float]], head_num_layers: int,
                 head_kernel_size: int, head_with_ln: bool, use_abs_pe: bool, use_rel_pe: bool,
                 num_classes: int, train_cfg: Mapping[str, Any],
                 test_cfg: Mapping[str, Any],
                 assigner: Optional[Mapping[str, float]] = None) -> None:
        super().__init__()
        # label assignment switch: None = ActionFormer's centre sampling (assign_points);
        # TemporalMaxer's SimOTA (simota_assign) with these settings otherwise
        self.simota_cfg = _simota_settings(assigner)
        # the config module has merged the defaults and validated every value
        self.train_cfg = dict(train_cfg)
        self.test_cfg = dict(test_cfg)
        num_backbone_levels = backbone_arch[-1] + 1
        self.fpn_strides = [scale_factor ** l for l in range(fpn_start_level, num_backbone_levels)]
        self.fpn_start_level = fpn_start_level
        self.num_classes = num_classes
        self.input_dim = input_dim
        self.max_seq_len = max_seq_len
        self.mha_win_size = [n_mha_win_size] * num_backbone_levels \
            if isinstance(n_mha_win_size, int) else list(n_mha_win_size)
        self.max_div_factor = max_div_factor(scale_factor, num_backbone_levels, self.mha_win_size)

        self.backbone = self._build_backbone(
            backbone_type, input_dim=input_dim, embd_dim=embd_dim, n_head=n_head,
            embd_kernel_size=embd_kernel_size, backbone_arch=backbone_arch,
            scale_factor=scale_factor, embd_with_ln=embd_with_ln, use_abs_pe=use_abs_pe,
            use_rel_pe=use_rel_pe)
        width = sum(embd_dim) if isinstance(embd_dim, (list, tuple)) else embd_dim
        self.neck = make_neck(fpn_type, in_channels=[width] * num_backbone_levels,
                              out_channel=fpn_dim, scale_factor=scale_factor,
                              start_level=fpn_start_level, with_ln=fpn_with_ln)
        # max_seq_len × max_buffer_len_factor: the reference's point buffer (a warning only)
        self.point_generator = make_generator(
            "point", max_seq_len=max_seq_len * max_buffer_len_factor,
            fpn_strides=self.fpn_strides, regression_range=regression_range)
        self._build_heads(fpn_dim, head_dim, head_num_layers, head_kernel_size, head_with_ln)

        self.loss_normalizer = float(self.train_cfg["init_loss_norm"])
        self.loss_normalizer_momentum = 0.9
        self.num_pos_reducer: Optional[Callable[[Tensor], Tensor]] = None

    def _build_backbone(self, backbone_type: str, input_dim: Union[int, Sequence[int]],
                        embd_dim: Union[int, Sequence[int]], n_head: int,
                        embd_kernel_size: int, backbone_arch: Sequence[int],
                        scale_factor: int, embd_with_ln: bool, use_abs_pe: bool,
                        use_rel_pe: bool) -> nn.Module:
        """The registered backbone with the reference's arguments (attention-map dropout 0,
        dropout and drop-path from ``train_cfg``)."""
        if backbone_type == "convTransformer":
            return make_backbone(
                "convTransformer", n_in=input_dim, n_embd=embd_dim, n_head=n_head,
                n_embd_ks=embd_kernel_size, max_len=self.max_seq_len, arch=backbone_arch,
                mha_win_size=self.mha_win_size, scale_factor=scale_factor, with_ln=embd_with_ln,
                attn_pdrop=0.0, proj_pdrop=self.train_cfg["dropout"],
                path_pdrop=self.train_cfg["droppath"], use_abs_pe=use_abs_pe,
                use_rel_pe=use_rel_pe)
        return make_backbone(backbone_type, n_in=input_dim, n_embd=embd_dim,
                             n_embd_ks=embd_kernel_size, arch=backbone_arch,
                             scale_factor=scale_factor, with_ln=embd_with_ln)

    def _build_heads(self, fpn_dim: int, head_dim: int, num_layers: int, kernel_size: int,
                     with_ln: bool) -> None:
        """Classification head (prior and empty-class biases from ``train_cfg``) and
        regression head (one scale per pyramid level)."""
        self.cls_head = ClsHead(fpn_dim, head_dim, self.num_classes,
                                prior_prob=self.train_cfg["cls_prior_prob"],
                                num_layers=num_layers, kernel_size=kernel_size,
                                with_ln=with_ln, empty_cls=self.train_cfg["head_empty_cls"])
        self.reg_head = RegHead(fpn_dim, head_dim, len(self.fpn_strides),
                                num_layers=num_layers, kernel_size=kernel_size,
                                with_ln=with_ln)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    # ----------------------------------------------------------------------------------------
    def forward(self, video_list: Sequence[Mapping[str, Any]]
                ) -> Union[Dict[str, Tensor], List[Dict[str, Any]]]:
        extents, points, fpn_masks, cls_logits, offsets = self.forward_levels(video_list)
        if self.training:
            return self.losses(video_list, points, fpn_masks, cls_logits, offsets)
        return self.inference(video_list, extents, points, fpn_masks, cls_logits, offsets)

    def forward_levels(self, video_list: Sequence[Mapping[str, Any]]
                       ) -> Tuple[List[int], List[Tensor], List[Tensor], List[Tensor], List[Tensor]]:
        """The network pass, before losses or decoding.

        Returns per-video padded extents and, per pyramid level l (``T_l`` = padded length /
        stride): points ``T_l×4`` (grid units), masks ``B×T_l`` (bool), class logits
        ``B×T_l×C`` and offsets ``B×T_l×2`` (in units of the level stride).
        """
        x, mask, extents = self.preprocessing(video_list)
        extent_mask = self._extent_mask(extents, x.shape[-1], x.device)
        # the backbone in two halves: the padded input (4x the embedding's size for THUMOS) is
        # freed once embedded; the embedding and the backbone features before the heads run
        x = self.backbone.embed(x, mask, extent_mask)
        feats, masks = self.backbone.pyramid(x, mask, extent_mask)
        del x
        fpn_feats, fpn_masks = self._neck(feats, masks, extent_mask)
        del feats
        level_extents = [downsample_mask(extent_mask, s) for s in self.fpn_strides]
        points = self.point_generator(fpn_feats)
        # per level: B×C×T_l -> B×T_l×C, B×2×T_l -> B×T_l×2, B×1×T_l -> B×T_l
        cls_logits = [t.permute(0, 2, 1)
                      for t in self.cls_head(fpn_feats, fpn_masks, level_extents)]
        offsets = [t.permute(0, 2, 1) for t in self.reg_head(fpn_feats, fpn_masks, level_extents)]
        fpn_masks = [m.squeeze(1) for m in fpn_masks]
        return extents, points, fpn_masks, cls_logits, offsets

    def _neck(self, feats: List[Tensor], masks: List[Tensor], extent_mask: Optional[Tensor]
              ) -> Tuple[List[Tensor], List[Tensor]]:
        """The neck; a hook for necks that need each video's padded extent (``B×1×T`` or None)."""
        return self.neck(feats, masks)

    # ----------------------------------------------------------------------------------------
    def padded_length(self, length: int) -> int:
        """Length a single video of ``length`` steps is padded to at inference."""
        div = self.max_div_factor
        padded = (length + div - 1) // div * div
        if self.test_cfg["tight_padding"]:
            return padded
        return self.max_seq_len if length <= self.max_seq_len else padded

    @torch.no_grad()
    def preprocessing(self, video_list: Sequence[Mapping[str, Any]]
                      ) -> Tuple[Tensor, Tensor, List[int]]:
        """Pad the items' features into ``B×D×T`` (zeros), mask ``B×1×T`` on the model's device.

        Training pads every video to ``max_seq_len`` (with ``train_cfg.pad_to_batch_max``: to
        the batch's longest video rounded up to ``max_div_factor``); inference pads each video
        to its own reference length (:meth:`padded_length`) and the batch to the longest of
        those. Returns (features, mask, per-video padded extents).
        """
        self._check_items(video_list)
        lengths = [item["feats"].shape[-1] for item in video_list]
        if self.training:
            extents = [self._training_length(lengths)] * len(lengths)
        else:
            extents = [self.padded_length(n) for n in lengths]
        T = max(extents)
        device = self.device
        x = torch.zeros(len(video_list), video_list[0]["feats"].shape[0], T, device=device,
                        dtype=torch.float32)
        for row, item, n in zip(x, video_list, lengths):
            row[:, :n] = item["feats"]
        mask = _length_mask(lengths, T, device)
        if not _all_finite(x):
            bad = [item["video_id"] for item in video_list if not _all_finite(item["feats"])]
            raise ValueError(f"video {', '.join(map(repr, bad))}: field 'feats' contains NaN or "
                             f"Inf values")
        return x, mask, extents

    def _training_length(self, lengths: Sequence[int]) -> int:
        """Padded length of a training batch whose videos have ``lengths`` (<= max_seq_len)."""
        if not self.train_cfg["pad_to_batch_max"]:
            return self.max_seq_len
        div = self.max_div_factor
        return min(self.max_seq_len, (max(lengths) + div - 1) // div * div)

    def _check_items(self, video_list: Sequence[Mapping[str, Any]]) -> None:
        if len(video_list) == 0:
            raise ValueError("the model was called on an empty list of videos")
        expected = sum(self.input_dim) if isinstance(self.input_dim, (list, tuple)) \
            else self.input_dim
        for item in video_list:
            vid, feats = item.get("video_id", "?"), item["feats"]
            if feats.dim() != 2 or feats.shape[0] != expected:
                raise ValueError(f"video {vid!r}: field 'feats' has shape {tuple(feats.shape)}, "
                                 f"expected {expected}×T (input_dim {self.input_dim})")
            if feats.shape[1] == 0:
                raise ValueError(f"video {vid!r}: field 'feats' has no time steps")
            if not self.training:
                continue
            if feats.shape[1] > self.max_seq_len:
                raise ValueError(f"video {vid!r}: field 'feats' has {feats.shape[1]} steps, more "
                                 f"than max_seq_len {self.max_seq_len} allowed in training "
                                 f"(truncate it in the dataset)")
            for key in ("segments", "labels"):
                if item.get(key) is None:
                    raise ValueError(f"video {vid!r}: field '{key}' is missing; training needs "
                                     f"ground-truth actions")

    @staticmethod
    def _extent_mask(extents: Sequence[int], T: int, device: torch.device) -> Optional[Tensor]:
        """``B×1×T`` bool mask of each video's padded extent, or None if all fill the tensor."""
        if all(e == T for e in extents):
            return None
        return _length_mask(extents, T, device)

    # ----------------------------------------------------------------------------------------
    def losses(self, video_list: Sequence[Mapping[str, Any]], points: List[Tensor],
               fpn_masks: List[Tensor], cls_logits: List[Tensor], offsets: List[Tensor]
               ) -> Dict[str, Tensor]:
        """Focal + DIoU losses of a batch; updates :attr:`loss_normalizer`.

        fpn_masks: per level ``B×T_l``; cls_logits ``B×T_l×C``; offsets ``B×T_l×2``.
        """
        valid = torch.cat(fpn_masks, dim=1)                                 # B×P
        gt_cls, gt_offsets, weights = self._targets(video_list, points, valid, cls_logits,
                                                    offsets)
        pos = (gt_cls.sum(-1) > 0) & valid
        pos_weights = None if weights is None else weights[pos]
        num_pos = self.update_loss_normalizer(pos, pos_weights)

        smoothing = self.train_cfg["label_smoothing"]
        gt_target = gt_cls[valid] * (1 - smoothing) + smoothing / (self.num_classes + 1)
        logits = torch.cat(cls_logits, dim=1)[valid]
        if weights is None:
            cls_loss = sigmoid_focal_loss(logits, gt_target, reduction="sum")
        else:   # TemporalMaxer: positives weighted, all other valid points 1
            point_weights = torch.where(pos, weights, torch.ones_like(weights))[valid]
            cls_loss = (sigmoid_focal_loss(logits, gt_target) * point_weights[:, None]).sum()
        cls_loss = cls_loss / self.loss_normalizer
        pred_offsets = torch.cat(offsets, dim=1)[pos]
        if num_pos == 0:
            reg_loss = 0 * pred_offsets.sum()
        elif weights is None:
            reg_loss = ctr_diou_loss_1d(pred_offsets, gt_offsets[pos],
                                        reduction="sum") / self.loss_normalizer
        else:
            reg_loss = (ctr_diou_loss_1d(pred_offsets, gt_offsets[pos])
                        * pos_weights).sum() / self.loss_normalizer
        weight = self.train_cfg["loss_weight"]
        if weight <= 0:
            weight = cls_loss.detach() / max(reg_loss.item(), 0.01)
        return {"cls_loss": cls_loss, "reg_loss": reg_loss,
                "final_loss": cls_loss + reg_loss * weight}

    def assign_targets(self, video_list: Sequence[Mapping[str, Any]], points: List[Tensor]
                       ) -> Tuple[Tensor, Tensor]:
        """Targets of every video for the points of all levels: classes ``B×P×C``
        and offsets ``B×P×2`` (in strides)."""
        device = self.device
        all_points = torch.cat(points, dim=0)
        targets = [assign_points(all_points, item["segments"].to(device),
                                 item["labels"].to(device), self.num_classes,
                                 self.train_cfg["center_sample"],
                                 self.train_cfg["center_sample_radius"])
                   for item in video_list]
        return torch.stack([t[0] for t in targets]), torch.stack([t[1] for t in targets])

    def update_loss_normalizer(self, pos: Tensor, pos_weights: Optional[Tensor] = None) -> float:
        """Count the positives (``B×P`` bool, or the sum of their SimOTA weights; all processes'
        with ``num_pos_reducer``), move :attr:`loss_normalizer` towards the count (momentum 0.9,
        at least 1); return the count."""
        num_pos = pos.sum() if pos_weights is None else pos_weights.sum()
        if self.num_pos_reducer is not None:
            num_pos = self.num_pos_reducer(num_pos)
        num_pos = num_pos.item()
        momentum = self.loss_normalizer_momentum
        self.loss_normalizer = momentum * self.loss_normalizer + (1 - momentum) * max(num_pos, 1)
        return num_pos

    @torch.no_grad()
    def _targets(self, video_list: Sequence[Mapping[str, Any]], points: List[Tensor],
                 valid: Tensor, cls_logits: List[Tensor], offsets: List[Tensor]
                 ) -> Tuple[Tensor, Tensor, Optional[Tensor]]:
        """Label assignment of a batch: class targets ``B×P×C``, regression targets ``B×P×2``
        and, with SimOTA, per-point loss weights ``B×P`` (None with centre sampling)."""
        if self.simota_cfg is None:
            return (*self.assign_targets(video_list, points), None)
        all_points = torch.cat(points, dim=0)
        device = self.device
        all_logits, all_offsets = torch.cat(cls_logits, dim=1), torch.cat(offsets, dim=1)
        targets = [simota_assign(all_points, valid[b], all_logits[b], all_offsets[b],
                                 item["segments"].to(device), item["labels"].to(device),
                                 self.num_classes, **self.simota_cfg)
                   for b, item in enumerate(video_list)]
        weights = torch.stack([t[2] for t in targets])
        return (torch.stack([t[0] for t in targets]), torch.stack([t[1] for t in targets]),
                weights)

    @torch.no_grad()
    def inference(self, video_list: Sequence[Mapping[str, Any]], extents: Sequence[int],
                  points: List[Tensor], fpn_masks: List[Tensor], cls_logits: List[Tensor],
                  offsets: List[Tensor]) -> List[Dict[str, Any]]:
        """Decode every video from its own padded extent, then NMS and convert to seconds."""
        cfg = self.test_cfg
        results = []
        for b, (item, extent) in enumerate(zip(video_list, extents)):
            lens = [extent // s for s in self.fpn_strides]
            segs, scores, labels = decode_candidates(
                [p[:n] for p, n in zip(points, lens)],
                [m[b, :n] for m, n in zip(fpn_masks, lens)],
                [c[b, :n] for c, n in zip(cls_logits, lens)],
                [o[b, :n] for o, n in zip(offsets, lens)],
                cfg["pre_nms_thresh"], cfg["pre_nms_topk"], cfg["duration_thresh"])
            results.append(postprocess_video(segs, scores, labels, item, cfg))
        return results
