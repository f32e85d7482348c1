"""The TriDet detector (Shi et al., CVPR 2023), as TriDet's code behaves (docs/tridet.md).

ActionFormer's pipeline with an SGP backbone (:mod:`.sgp`), the Trident head (:mod:`.trident`:
start / end boundary heads on detached features, bin logits from the regression head) and a
focal loss weighted by the IoU of the decoded segment. Input checks and padding are
ActionFormer's (inherited), except TriDet's ``max_div_factor`` and the training input noise.
Inference runs one video per network pass: SGP is not masked inside, so a video's outputs
depend on the length it is padded to, which must be its own (``max_seq_len`` or the next
multiple of ``max_div_factor``), as in TriDet.
"""
from __future__ import annotations

from functools import partial
from typing import Any, Dict, List, Mapping, NamedTuple, Optional, Sequence, Union

import torch
from torch import Tensor, nn

from .decoding import decode_candidates, postprocess_video
from .heads import ClsHead, RegHead
from .losses import ctr_diou_loss_1d, ctr_iou_loss_1d, sigmoid_focal_loss
from .meta_archs import LocPointTransformer
from .models import make_backbone, make_generator, make_neck, register_meta_arch
from .trident import boundary_windows, trident_offsets

__all__ = ["TriDet", "tridet_max_div_factor"]

def tridet_max_div_factor(scale_factor: int, num_levels: int, win_sizes: Sequence[int]) -> int:
    """Multiple TriDet pads long inference inputs to: max over levels of ``stride · w``
    (``w > 1``) or ``stride`` (ActionFormer: ``stride · 2·(w // 2)``)."""
    return max(scale_factor ** l * (w if w > 1 else 1) for l, w in zip(range(num_levels), win_sizes))


class LevelOutputs(NamedTuple):
    """Per-level network outputs (``T_l`` steps at level l): points ``T_l×4``, masks ``B×T_l``,
    class logits ``B×T_l×C``, regression outputs ``B×T_l×2(n+1)`` (``B×T_l×2`` without the
    Trident head), start / end boundary logits ``B×C×T_l`` (None without the Trident head)."""

    points: List[Tensor]
    masks: List[Tensor]
    cls_logits: List[Tensor]
    offsets: List[Tensor]
    starts: Optional[List[Tensor]]
    ends: Optional[List[Tensor]]


def _gather_windows(level_logits: Sequence[Tensor], num_bins: int, side: str, batch: Tensor,
                    point: Tensor, label: Tensor) -> Tensor:
    """Boundary windows (:func:`boundary_windows`, each level on its own) at the given
    (video, point over all levels, class) triples -> ``N×(num_bins+1)``.

    Levels are padded by ``num_bins`` zeros each and concatenated; the window of global point
    ``p`` on level ``l`` then starts at ``p + l·num_bins`` in that tensor.
    """
    pad = (num_bins, 0) if side == "start" else (0, num_bins)
    joined = torch.cat([nn.functional.pad(x, pad) for x in level_logits], dim=-1)
    sizes = torch.tensor([x.shape[-1] for x in level_logits], device=point.device)
    level = torch.searchsorted(torch.cumsum(sizes, 0), point, right=True)
    return joined.unfold(-1, num_bins + 1, 1)[batch, label, point + level * num_bins]


def _class_offsets(num_bins: int, rel: Tensor, starts: Tensor, ends: Tensor, point: Tensor,
                   label: Tensor) -> Tensor:
    """Trident offsets ``N×2`` of one level of one video at (point, class) pairs.
    rel ``T×2(n+1)``; starts / ends ``C×T``."""
    start_w = boundary_windows(starts, num_bins, "start")[label, point]
    end_w = boundary_windows(ends, num_bins, "end")[label, point]
    return trident_offsets(start_w, end_w, rel[point].unflatten(-1, (2, num_bins + 1)))


@register_meta_arch("TriDet")
class TriDet(LocPointTransformer):
    """TriDet, constructed with the keys of a TriDet ``cfg['model']`` (TriDet's names,
    ``boudary_kernel_size`` included). Same call convention and outputs as
    :class:`LocPointTransformer`; the checkpoint layout is TriDet's."""

    def __init__(self, backbone_type: str, fpn_type: str, backbone_arch: Sequence[int],
                 scale_factor: int, input_dim: int, max_seq_len: int,
                 max_buffer_len_factor: float, n_sgp_win_size: Union[int, Sequence[int]],
                 embd_kernel_size: int, embd_dim: int, embd_with_ln: bool, fpn_dim: int,
                 sgp_mlp_dim: Optional[int], fpn_with_ln: bool, head_dim: int,
                 regression_range: Sequence[Sequence[float]], head_num_layers: int,
                 head_kernel_size: int, boudary_kernel_size: int, head_with_ln: bool,
                 use_abs_pe: bool, num_bins: int, iou_weight_power: float, downsample_type: str,
                 input_noise: float, k: float, init_conv_vars: float, use_trident_head: bool,
                 sgp_masked: bool, num_classes: int, train_cfg: Mapping[str, Any],
                 test_cfg: Mapping[str, Any]) -> None:
        nn.Module.__init__(self)   # the parts differ; methods for input checks are shared
        # the config module has merged TriDet's defaults and validated every value
        self.train_cfg = dict(train_cfg)
        self.test_cfg = dict(test_cfg)
        num_levels = backbone_arch[-1] + 1
        self.fpn_strides = [scale_factor ** l for l in range(num_levels)]
        if len(regression_range) != num_levels:
            raise ValueError(f"regression_range has {len(regression_range)} entries for "
                             f"{num_levels} pyramid levels")
        wins = [n_sgp_win_size] * num_levels if isinstance(n_sgp_win_size, int) \
            else list(n_sgp_win_size)
        if len(wins) != num_levels:
            raise ValueError(f"n_sgp_win_size has {len(wins)} entries for {num_levels} levels")
        self.sgp_win_size = wins
        self.max_div_factor = tridet_max_div_factor(scale_factor, num_levels, wins)
        self.num_classes, self.input_dim, self.max_seq_len = num_classes, input_dim, max_seq_len
        self.num_bins = num_bins
        self.use_trident_head = use_trident_head
        self.iou_weight_power = iou_weight_power
        self.input_noise = input_noise

        if backbone_type == "SGP":
            self.backbone = make_backbone(
                "SGP", n_in=input_dim, n_embd=embd_dim, sgp_mlp_dim=sgp_mlp_dim,
                n_embd_ks=embd_kernel_size, max_len=max_seq_len, arch=backbone_arch,
                scale_factor=scale_factor, with_ln=embd_with_ln,
                path_pdrop=self.train_cfg["droppath"], downsample_type=downsample_type,
                sgp_win_size=wins, k=k, init_conv_vars=init_conv_vars, use_abs_pe=use_abs_pe,
                masked=sgp_masked)
        else:
            self.backbone = make_backbone(
                backbone_type, n_in=input_dim, n_embd=embd_dim, n_embd_ks=embd_kernel_size,
                arch=backbone_arch, scale_factor=scale_factor, with_ln=embd_with_ln)
        self.neck = make_neck(fpn_type, in_channels=[embd_dim] * num_levels, out_channel=fpn_dim,
                              scale_factor=scale_factor, with_ln=fpn_with_ln)
        self.point_generator = make_generator(
            "point", max_seq_len=max_seq_len * max_buffer_len_factor, fpn_strides=self.fpn_strides,
            regression_range=regression_range)
        head = partial(ClsHead, fpn_dim, head_dim, num_classes,
                       prior_prob=self.train_cfg["cls_prior_prob"], num_layers=head_num_layers,
                       with_ln=head_with_ln, empty_cls=self.train_cfg["head_empty_cls"])
        self.cls_head = head(kernel_size=head_kernel_size)
        if use_trident_head:
            self.start_head = head(kernel_size=boudary_kernel_size)
            self.end_head = head(kernel_size=boudary_kernel_size)
        self.reg_head = RegHead(fpn_dim, head_dim, num_levels, num_layers=head_num_layers,
                                kernel_size=head_kernel_size, with_ln=head_with_ln,
                                out_dim=2 * (num_bins + 1) if use_trident_head else 2)

        self.loss_normalizer = float(self.train_cfg["init_loss_norm"])
        self.loss_normalizer_momentum = 0.9
        self.num_pos_reducer = None

    # ----------------------------------------------------------------------------------------
    def forward(self, video_list: Sequence[Mapping[str, Any]]
                ) -> Union[Dict[str, Tensor], List[Dict[str, Any]]]:
        if self.training:
            x, mask, _ = self.preprocessing(video_list)
            if self.input_noise > 0:   # drawn on the CPU generator, as TriDet
                x += (torch.randn(x.shape, dtype=x.dtype) * self.input_noise).to(x.device)
            return self.losses(video_list, self.network(x, mask))
        return [self.inference_one(item) for item in video_list]

    def forward_levels(self, video_list):
        raise NotImplementedError("TriDet decodes class-dependent offsets: windowed inference "
                                  "is not available for it; use whole-video inference")

    def network(self, x: Tensor, mask: Tensor) -> LevelOutputs:
        """Padded features ``B×D×T`` and mask ``B×1×T`` -> :class:`LevelOutputs`."""
        x = self.backbone.embed(x, mask)
        feats, masks = self.backbone.pyramid(x, mask)
        del x
        fpn_feats, fpn_masks = self.neck(feats, masks)
        del feats
        points = self.point_generator(fpn_feats)
        cls_logits = [t.permute(0, 2, 1) for t in self.cls_head(fpn_feats, fpn_masks)]
        starts = ends = None
        if self.use_trident_head:
            detached = [f.detach() for f in fpn_feats]
            starts = self.start_head(detached, fpn_masks)
            ends = self.end_head(detached, fpn_masks)
        offsets = [t.permute(0, 2, 1) for t in self.reg_head(fpn_feats, fpn_masks)]
        return LevelOutputs(points, [m.squeeze(1) for m in fpn_masks], cls_logits, offsets,
                            starts, ends)

    # ----------------------------------------------------------------------------------------
    def _positive_offsets(self, out: LevelOutputs, gt_cls: Tensor, gt_offsets: Tensor,
                          pos: Tensor):
        """Predicted and target offsets of the positives: one row per positive point, or with
        the Trident head one row per (positive point, target class) pair, in (video, point,
        class) order."""
        offsets = torch.cat(out.offsets, dim=1)
        if not self.use_trident_head:
            return offsets[pos], gt_offsets[pos]
        batch, point, label = (gt_cls.bool() & pos[..., None]).nonzero(as_tuple=True)
        n = self.num_bins
        start_w = _gather_windows(out.starts, n, "start", batch, point, label)
        end_w = _gather_windows(out.ends, n, "end", batch, point, label)
        rel = offsets[batch, point].unflatten(-1, (2, n + 1))
        return trident_offsets(start_w, end_w, rel), gt_offsets[batch, point]

    def losses(self, video_list: Sequence[Mapping[str, Any]], out: LevelOutputs
               ) -> Dict[str, Tensor]:
        """IoU-weighted focal loss + DIoU loss (docs/tridet.md); updates the loss normaliser."""
        gt_cls, gt_offsets = self.assign_targets(video_list, out.points)    # B×P×C, B×P×2
        valid = torch.cat(out.masks, dim=1)                                 # B×P
        pos = (gt_cls.sum(-1) > 0) & valid
        pred, target = self._positive_offsets(out, gt_cls, gt_offsets, pos)
        num_pos = self.update_loss_normalizer(pos)

        smoothing = self.train_cfg["label_smoothing"]
        negative_target = smoothing / (self.num_classes + 1)
        gt_target = gt_cls[valid] * (1 - smoothing) + negative_target
        cls_loss = sigmoid_focal_loss(torch.cat(out.cls_logits, dim=1)[valid], gt_target)
        if self.use_trident_head:
            iou_loss = ctr_iou_loss_1d(pred, target)
            cls_loss[gt_target > negative_target] *= (1 - iou_loss) ** self.iou_weight_power
        cls_loss = cls_loss.sum() / self.loss_normalizer
        if num_pos == 0:
            reg_loss = 0 * pred.sum()
        else:
            reg_loss = ctr_diou_loss_1d(pred, target, reduction="sum") / self.loss_normalizer
        weight = self.train_cfg["loss_weight"]
        if weight <= 0:
            weight = cls_loss.detach() / max(reg_loss.item(), 0.01)
        return {"cls_loss": cls_loss, "reg_loss": reg_loss,
                "final_loss": cls_loss + reg_loss * weight}

    # ----------------------------------------------------------------------------------------
    @torch.no_grad()
    def inference_one(self, item: Mapping[str, Any]) -> Dict[str, Any]:
        """Detections of one video (padded alone, as TriDet): NMS, seconds."""
        x, mask, _ = self.preprocessing([item])
        out = self.network(x, mask)
        del x
        if self.use_trident_head:
            offsets = [partial(_class_offsets, self.num_bins, o[0], s[0], e[0])
                       for o, s, e in zip(out.offsets, out.starts, out.ends)]
        else:
            offsets = [o[0] for o in out.offsets]
        cfg = self.test_cfg
        segs, scores, labels = decode_candidates(
            out.points, [m[0] for m in out.masks], [c[0] for c in out.cls_logits], offsets,
            cfg["pre_nms_thresh"], cfg["pre_nms_topk"], cfg["duration_thresh"])
        return postprocess_video(segs, scores, labels, item, cfg, voting_iou_weighted=False)
