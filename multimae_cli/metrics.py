"""Evaluation metrics that are exact over a whole data set and under DDP.

Each metric accumulates sums and counts (float64 / int64, on the device of the data it is given), never
per-batch averages: the result over many batches equals the result on the concatenated set, whatever the
batching (the official depth metrics average per batch, which this fixes). Under torch.distributed, call
`sync()` once after the last `update()`: it all-reduces the sums, and `compute()` then reports the global
values on every rank. Without an initialised process group `sync()` does nothing.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
import torch.distributed as dist
import torch.nn.functional as F

from .errors import InputError


class Metric:
    """Sum-based accumulator, the base of every metric (`plugin.protocols.Metric`).

    A subclass sets `main` (the entry of `compute()` that chooses `best/`) and `higher_is_better`, names its sums
    in `initial_state()` (zero tensors), adds each batch's in `update()` through `add(name=value, ...)`, and
    reads them in `compute()` through `totals()`, which are global after `sync()`. Sums, never averages, so the
    result does not depend on the batching.
    """

    main: ClassVar[str]
    higher_is_better: ClassVar[bool]

    def __init__(self) -> None:
        self.reset()

    def initial_state(self) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def reset(self) -> None:
        self._state = self.initial_state()
        self._reduced: dict[str, torch.Tensor] | None = None

    def add(self, **parts: torch.Tensor) -> None:
        for name, value in parts.items():
            total = self._state[name]
            if total.device != value.device:
                total = self._state[name] = total.to(value.device)
            total += value
        self._reduced = None  # a later sync() reduces the new local totals again

    def sync(self) -> None:
        """All-reduce (sum) the local totals over the process group; `compute()` then reports global values.

        A collective: every rank calls it, for the same metrics in the same order. The local totals are kept,
        so calling it twice (or again after more updates) never double-counts.
        """
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return
        device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
        reduced = {}
        for name, value in self._state.items():
            total = value.to(device, copy=True)
            dist.all_reduce(total)
            reduced[name] = total
        self._reduced = reduced

    def totals(self) -> dict[str, torch.Tensor]:
        return self._reduced if self._reduced is not None else self._state

    def compute(self) -> dict[str, float]:
        raise NotImplementedError


def _ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator else math.nan


def _squeeze_channel(x: torch.Tensor, name: str) -> torch.Tensor:
    """(B, 1, H, W) or (B, H, W) -> (B, H, W)."""
    if x.ndim == 4 and x.shape[1] == 1:
        x = x[:, 0]
    if x.ndim != 3:
        raise InputError(f"{name}: expected shape (B, H, W) or (B, 1, H, W), got {tuple(x.shape)}")
    return x


def _resize_to(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear (align_corners=False) resize of (B, C, H, W) to `size`, when it differs."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x.float(), size=size, mode="bilinear", align_corners=False)


def _float64_device(*tensors: torch.Tensor) -> list[torch.Tensor]:
    """The tensors, moved to the CPU from devices without float64 (MPS), where the sums are kept instead."""
    return [x.cpu() if x.device.type == "mps" else x for x in tensors]


def _check_batch(pred: torch.Tensor, target: torch.Tensor) -> None:
    if pred.shape[0] != target.shape[0]:
        raise InputError(f"prediction and target batch sizes differ: {pred.shape[0]} vs {target.shape[0]}")


# ---------------------------------------------------------------- classification


class ClassificationMetrics(Metric):
    """Top-1 and top-5 accuracy in percent (top-k with k = min(5, num_classes), still named `top5`)."""

    main = "top1"
    higher_is_better = True

    def __init__(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.k = min(5, num_classes)
        super().__init__()

    def initial_state(self) -> dict[str, torch.Tensor]:
        return {"correct": torch.zeros(2, dtype=torch.int64), "count": torch.zeros((), dtype=torch.int64)}

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """`pred`: logits (B, num_classes); `target`: class ids (B,)."""
        if pred.ndim != 2 or pred.shape[1] != self.num_classes:
            raise InputError(f"expected logits (B, {self.num_classes}), got shape {tuple(pred.shape)}")
        if target.ndim != 1 or target.is_floating_point():
            raise InputError(f"expected integer class ids (B,), got {target.dtype} of shape {tuple(target.shape)}")
        _check_batch(pred, target)
        hits = pred.topk(self.k, dim=1).indices == target[:, None].to(pred.device)  # (B, k)
        correct = torch.stack([hits[:, 0].sum(), hits.any(dim=1).sum()])
        self.add(correct=correct, count=torch.tensor(target.shape[0], device=pred.device))

    def compute(self) -> dict[str, float]:
        totals = self.totals()
        (top1, topk), count = totals["correct"].tolist(), int(totals["count"])
        return {"top1": 100 * _ratio(top1, count), "top5": 100 * _ratio(topk, count)}


# ---------------------------------------------------------------- semantic segmentation


class SegmentationMetrics(Metric):
    """mIoU, mAcc and aAcc in percent from a confusion matrix over the whole set (the mmseg convention).

    A class's IoU is NaN when it is in neither the labels nor the predictions (union 0) and its accuracy
    NaN when it is absent from the labels; the means skip NaNs. Pixels labelled `ignore_index` are skipped.
    Metrics are taken at the labels' resolution: logits of another size are resized bilinearly first.
    """

    main = "mIoU"
    higher_is_better = True

    def __init__(self, num_classes: int, ignore_index: int = 255) -> None:
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        super().__init__()

    def initial_state(self) -> dict[str, torch.Tensor]:
        return {"confusion": torch.zeros(self.num_classes, self.num_classes, dtype=torch.int64)}

    def _check_range(self, labels: torch.Tensor, name: str, allowed: str = "") -> None:
        bad = (labels < 0) | (labels >= self.num_classes)
        if bad.any():
            values = labels[bad].unique()
            shown = ", ".join(str(v) for v in values[:10].tolist()) + (", ..." if values.numel() > 10 else "")
            raise InputError(f"{name} values must lie in [0, {self.num_classes - 1}]{allowed}, got {shown}")

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """`pred`: logits (B, C', h, w) with C' >= num_classes (extra channels, e.g. void, are not argmaxed),
        or class ids (B, H, W); `target`: class ids (B, H, W) or (B, 1, H, W)."""
        target = _squeeze_channel(target, "segmentation target")
        if target.is_floating_point():
            raise InputError(f"segmentation target: expected integer class ids, got {target.dtype}")
        _check_batch(pred, target)
        from_logits = pred.ndim == 4
        if from_logits:
            if pred.shape[1] < self.num_classes:
                raise InputError(f"expected logits with at least {self.num_classes} channels, "
                                 f"got shape {tuple(pred.shape)}")
            pred = _resize_to(pred[:, : self.num_classes], target.shape[-2:]).argmax(dim=1)
        elif pred.ndim != 3 or pred.is_floating_point() or pred.shape != target.shape:
            raise InputError(f"expected logits (B, C, h, w) or integer class ids shaped like the target "
                             f"{tuple(target.shape)}, got {pred.dtype} of shape {tuple(pred.shape)}")
        target = target.to(pred.device).long()
        valid = target != self.ignore_index
        target = target[valid]
        self._check_range(target, "segmentation target", f" or be {self.ignore_index} (ignored)")
        pred = pred.long()[valid]
        if not from_logits:  # an argmax is in range by construction
            self._check_range(pred, "predicted class")
        n = self.num_classes
        confusion = torch.bincount(target * n + pred, minlength=n * n).view(n, n)  # rows: label, cols: prediction
        self.add(confusion=confusion)

    def _per_class(self) -> tuple[torch.Tensor, torch.Tensor]:
        confusion = self.totals()["confusion"].cpu().double()
        hits, labelled, predicted = confusion.diag(), confusion.sum(1), confusion.sum(0)
        return hits / (labelled + predicted - hits), hits / labelled  # 0 / 0 -> NaN

    def per_class_iou(self) -> list[float]:
        """IoU of every class in percent, NaN for classes in neither labels nor predictions."""
        return (100 * self._per_class()[0]).tolist()

    def per_class_acc(self) -> list[float]:
        """Accuracy of every class in percent, NaN for classes absent from the labels."""
        return (100 * self._per_class()[1]).tolist()

    def compute(self) -> dict[str, float]:
        confusion = self.totals()["confusion"]
        iou, acc = self._per_class()
        return {
            "mIoU": 100 * iou.nanmean().item(),
            "mAcc": 100 * acc.nanmean().item(),
            "aAcc": 100 * _ratio(int(confusion.diag().sum()), int(confusion.sum())),
        }


# ---------------------------------------------------------------- depth


class DepthMetrics(Metric):
    """The standard depth metrics over every valid pixel of the set (Eigen et al.).

    Valid pixels have a finite target in (min_depth, max_depth) and, when given, a true `mask`. Predictions
    are clamped to [min_depth, max_depth] first, so ratios and logs stay defined. delta_k is the fraction
    of pixels with max(p/t, t/p) < 1.25^k; rmse_log uses the natural log. Metrics are taken at the target's
    resolution: predictions of another size are resized bilinearly first.
    """

    main = "delta1"
    higher_is_better = True

    def __init__(self, min_depth: float = 1e-3, max_depth: float | None = None) -> None:
        self.min_depth = min_depth
        self.max_depth = max_depth
        super().__init__()

    def initial_state(self) -> dict[str, torch.Tensor]:
        return {"count": torch.zeros((), dtype=torch.int64), "deltas": torch.zeros(3, dtype=torch.int64),
                "sums": torch.zeros(4, dtype=torch.float64)}  # |d|/t, d^2/t, d^2, (log p - log t)^2

    def update(self, pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> None:
        """`pred`, `target`: depth (B, 1, H, W) or (B, H, W), in the same unit; `mask`: (B, [1,] H, W) bool."""
        pred, target = _float64_device(_squeeze_channel(pred, "depth prediction"),
                                       _squeeze_channel(target, "depth target"))
        _check_batch(pred, target)
        pred = _resize_to(pred[:, None], target.shape[-2:])[:, 0].to(target.device)
        valid = target.isfinite() & (target > self.min_depth)
        if self.max_depth is not None:
            valid &= target < self.max_depth
        if mask is not None:
            valid &= _squeeze_channel(mask, "depth mask").to(target.device).bool()
        t = target[valid].double()
        p = pred[valid].double().clamp(self.min_depth, self.max_depth)
        diff, ratio = p - t, torch.maximum(p / t, t / p)
        thresholds = torch.tensor([1.25, 1.25**2, 1.25**3], dtype=torch.float64, device=t.device)
        sums = torch.stack([(diff.abs() / t).sum(), (diff**2 / t).sum(), (diff**2).sum(),
                            ((p.log() - t.log()) ** 2).sum()])
        self.add(count=torch.tensor(t.numel(), device=t.device), deltas=(ratio[:, None] < thresholds).sum(0),
                  sums=sums)

    def compute(self) -> dict[str, float]:
        totals = self.totals()
        count = int(totals["count"])
        d1, d2, d3 = (_ratio(v, count) for v in totals["deltas"].tolist())
        abs_rel, sq_rel, sq, sq_log = (_ratio(v, count) for v in totals["sums"].tolist())
        return {"delta1": d1, "delta2": d2, "delta3": d3, "abs_rel": abs_rel, "sq_rel": sq_rel,
                "rmse": math.sqrt(sq), "rmse_log": math.sqrt(sq_log)}


# ---------------------------------------------------------------- surface normals


class NormalsMetrics(Metric):
    """Angular error in degrees between predicted and ground-truth normals: mean, median, rmse and the
    percentage of pixels under 11.25, 22.5 and 30 degrees.

    The prediction (and the ground truth) are renormalised. Valid pixels have a finite ground truth of
    norm > 0.5 and, when given, a true `mask`. The median comes from a histogram of 0.01 degree bins over
    [0, 180] (each middle angle read as its bin's centre: within 0.005 degree of the exact median, up to
    rounding at bin edges), so it sums across batches and ranks like everything else.
    """

    main = "mean"
    higher_is_better = False
    bin_width: ClassVar[float] = 0.01
    num_bins: ClassVar[int] = 18000
    thresholds: ClassVar[tuple[float, ...]] = (11.25, 22.5, 30.0)

    def initial_state(self) -> dict[str, torch.Tensor]:
        return {"count": torch.zeros((), dtype=torch.int64), "under": torch.zeros(3, dtype=torch.int64),
                "sums": torch.zeros(2, dtype=torch.float64),  # angle, angle^2
                "histogram": torch.zeros(self.num_bins, dtype=torch.int64)}

    def update(self, pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> None:
        """`pred`, `target`: normals (B, 3, H, W); `mask`: (B, [1,] H, W) bool."""
        if target.ndim != 4 or target.shape[1] != 3:
            raise InputError(f"normals target: expected shape (B, 3, H, W), got {tuple(target.shape)}")
        if pred.ndim != 4 or pred.shape[1] != 3:
            raise InputError(f"normals prediction: expected shape (B, 3, H, W), got {tuple(pred.shape)}")
        _check_batch(pred, target)
        pred, target = _float64_device(pred, target)
        pred = _resize_to(pred, target.shape[-2:]).to(target.device)
        t, p = target.double().permute(0, 2, 3, 1), pred.double().permute(0, 2, 3, 1)  # (B, H, W, 3)
        valid = t.isfinite().all(-1) & (t.norm(dim=-1) > 0.5)
        if mask is not None:
            valid &= _squeeze_channel(mask, "normals mask").to(target.device).bool()
        t, p = F.normalize(t[valid], dim=-1), F.normalize(p[valid], dim=-1)
        # atan2(|p x t|, p . t) is accurate at every angle, unlike acos near 0 and 180 degrees
        angle = torch.rad2deg(torch.atan2(torch.linalg.cross(p, t).norm(dim=-1), (p * t).sum(-1)))
        bins = (angle / self.bin_width).long().clamp(0, self.num_bins - 1)
        thresholds = torch.tensor(self.thresholds, dtype=torch.float64, device=angle.device)
        self.add(count=torch.tensor(angle.numel(), device=angle.device),
                  under=(angle[:, None] < thresholds).sum(0),
                  sums=torch.stack([angle.sum(), (angle**2).sum()]),
                  histogram=torch.bincount(bins, minlength=self.num_bins))

    def _median(self, histogram: torch.Tensor, count: int) -> float:
        """Mean of the two middle angles (the middle one for odd counts), each read as its bin's centre."""
        if not count:
            return math.nan
        ranks = torch.tensor([(count + 1) // 2, count // 2 + 1])  # 1-based ranks of the middle angles
        bins = torch.searchsorted(histogram.cumsum(0), ranks)  # first bin holding that many angles
        return (bins.double().mean().item() + 0.5) * self.bin_width

    def compute(self) -> dict[str, float]:
        totals = self.totals()
        count = int(totals["count"])
        mean, mean_sq = (_ratio(v, count) for v in totals["sums"].tolist())
        u1, u2, u3 = (100 * _ratio(v, count) for v in totals["under"].tolist())
        return {"mean": mean, "median": self._median(totals["histogram"].cpu(), count),
                "rmse": math.sqrt(mean_sq), "pct_11.25": u1, "pct_22.5": u2, "pct_30": u3}
