"""Metrics: hand-computed values on tiny tensors, whole-set (not per-batch) accumulation, DDP all-reduce."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from multimae_cli.errors import InputError
from multimae_cli.metrics import ClassificationMetrics, DepthMetrics, NormalsMetrics, SegmentationMetrics

NAN = math.nan


def assert_metrics(actual: dict[str, float], expected: dict[str, float], rel: float = 1e-6,
                   abs: float = 1e-9) -> None:
    assert set(actual) == set(expected)
    for key, value in expected.items():
        if math.isnan(value):
            assert math.isnan(actual[key]), key
        else:
            assert actual[key] == pytest.approx(value, rel=rel, abs=abs), key


# ---------------------------------------------------------------- classification


def test_classification_top1_top5_by_hand():
    metric = ClassificationMetrics(6)
    logits = torch.tensor([
        [0.1, 0.9, 0.2, 0.3, 0.0, 0.05],  # label 1: top-1 hit
        [0.9, 0.1, 0.2, 0.3, 0.4, 0.5],  # label 2: ranks 5th (0, 5, 4, 3, 2): top-5 hit only
        [0.9, 0.1, 0.2, 0.3, 0.4, 0.5],  # label 1: ranks last: miss
        [0.0, 0.1, 0.2, 0.3, 0.9, 0.4],  # label 4: top-1 hit
    ])
    metric.update(logits, torch.tensor([1, 2, 1, 4]))
    assert metric.compute() == {"top1": 50.0, "top5": 75.0}  # 2/4, 3/4
    assert (metric.main, metric.higher_is_better) == ("top1", True)
    metric.reset()
    assert all(math.isnan(v) for v in metric.compute().values())


def test_classification_fewer_than_five_classes_and_bad_shapes():
    metric = ClassificationMetrics(3)
    metric.update(torch.tensor([[0.0, 1.0, 2.0], [2.0, 1.0, 0.0]]), torch.tensor([0, 0]))
    assert metric.compute() == {"top1": 50.0, "top5": 100.0}  # k = 3 covers every class
    with pytest.raises(InputError, match=r"\(B, 3\)"):
        metric.update(torch.zeros(2, 4), torch.tensor([0, 0]))
    with pytest.raises(InputError, match="integer"):
        metric.update(torch.zeros(2, 3), torch.zeros(2))


# ---------------------------------------------------------------- segmentation


def test_segmentation_by_hand_with_ignore_and_an_empty_class():
    metric = SegmentationMetrics(3)
    target = torch.tensor([[[0, 0, 1], [1, 255, 0]]])
    pred = torch.tensor([[[0, 1, 1], [0, 2, 0]]])  # the 2 sits on an ignored pixel: class 2 is nowhere
    metric.update(pred, target)
    # confusion (rows label, cols prediction): [[2, 1, 0], [1, 1, 0], [0, 0, 0]]
    # IoU: 2/(3+3-2) = 0.5, 1/(2+2-1) = 1/3, NaN (union 0) -> mIoU = (0.5 + 1/3)/2 = 41.6667 %
    # Acc: 2/3, 1/2, NaN -> mAcc = 58.3333 %; aAcc = 3/5 = 60 %
    assert_metrics(metric.compute(), {"mIoU": 41.666667, "mAcc": 58.333333, "aAcc": 60.0})
    iou = metric.per_class_iou()
    assert iou[:2] == pytest.approx([50.0, 33.333333]) and math.isnan(iou[2])
    assert metric.per_class_acc()[:2] == pytest.approx([66.666667, 50.0])
    assert (metric.main, metric.higher_is_better) == ("mIoU", True)


def test_segmentation_false_positive_class_counts_as_zero_iou():
    metric = SegmentationMetrics(3)
    metric.update(torch.tensor([[[0, 2], [1, 1]]]), torch.tensor([[[0, 0], [1, 1]]]))
    # confusion: [[1, 0, 1], [0, 2, 0], [0, 0, 0]]; IoU: 1/(2+1-1) = 0.5, 2/2 = 1, 0/(0+1-0) = 0
    # mIoU = 1.5/3 = 50 %; Acc: 1/2, 1, NaN (no label 2) -> mAcc = 75 %; aAcc = 3/4 = 75 %
    assert_metrics(metric.compute(), {"mIoU": 50.0, "mAcc": 75.0, "aAcc": 75.0})


def test_segmentation_logits_resized_to_labels_and_void_channel_skipped():
    logits = torch.zeros(1, 4, 1, 2)
    logits[0, 0, 0, 0] = logits[0, 2, 0, 1] = 1.0
    logits[0, 3] = 10.0  # a void channel beyond num_classes is never predicted
    # bilinear 1x2 -> 2x4 (align_corners=False) samples columns 0, 0.25, 0.75, 1:
    # class 0 scores 1, 0.75, 0.25, 0 and class 2 scores 0, 0.25, 0.75, 1 -> argmax [0, 0, 2, 2]
    metric = SegmentationMetrics(3)
    metric.update(logits, torch.tensor([[[0, 0, 2, 2], [0, 0, 2, 1]]]).unsqueeze(1))
    # confusion: [[4, 0, 0], [0, 0, 1], [0, 0, 3]]; IoU 1, 0/(1+0-0) = 0, 3/(3+4-3) = 0.75 -> 58.3333 %
    assert_metrics(metric.compute(), {"mIoU": 58.333333, "mAcc": 200 / 3, "aAcc": 87.5})


def test_segmentation_out_of_range_labels_raise():
    metric = SegmentationMetrics(3)
    with pytest.raises(InputError, match=r"\[0, 2\] or be 255.*got -1, 3, 7$"):
        metric.update(torch.zeros(1, 2, 3, dtype=torch.long), torch.tensor([[[0, 3, 7], [-1, 255, 1]]]))
    with pytest.raises(InputError, match=r"predicted class.*got 5"):
        metric.update(torch.tensor([[[5]]]), torch.tensor([[[0]]]))
    assert math.isnan(metric.compute()["mIoU"])  # nothing was accumulated


def test_segmentation_batch_split_invariance():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 5, 4, 6, generator=gen)
    target = torch.randint(0, 5, (6, 8, 12), generator=gen)
    target[0, :4] = 255
    whole, halves = SegmentationMetrics(5), SegmentationMetrics(5)
    whole.update(logits, target)
    halves.update(logits[:1], target[:1])
    halves.update(logits[1:], target[1:])
    assert whole.compute() == halves.compute()


# ---------------------------------------------------------------- depth


def test_depth_by_hand_with_invalid_pixels():
    target = torch.tensor([[[1.0, 2.0, 4.0], [0.0, NAN, 8.0]]])  # 0 and NaN are invalid
    pred = torch.tensor([[[1.0, 1.0, 5.0], [3.0, 3.0, 4.0]]]).unsqueeze(1)
    metric = DepthMetrics()
    metric.update(pred, target)
    # valid t = [1, 2, 4, 8], p = [1, 1, 5, 4], d = p - t = [0, -1, 1, -4]
    # abs_rel = (0 + 1/2 + 1/4 + 4/8)/4 = 0.3125; sq_rel = (0 + 1/2 + 1/4 + 16/8)/4 = 0.6875
    # rmse = sqrt((0 + 1 + 1 + 16)/4) = sqrt(4.5) = 2.1213203
    # rmse_log = sqrt((0 + ln(2)^2 + ln(1.25)^2 + ln(2)^2)/4) = sqrt((2*0.480453 + 0.0497929)/4) = 0.5026676
    # max(p/t, t/p) = [1, 2, 1.25, 2]: < 1.25 -> 1/4; < 1.5625 -> 2/4; < 1.953125 -> 2/4
    assert_metrics(metric.compute(), {"delta1": 0.25, "delta2": 0.5, "delta3": 0.5, "abs_rel": 0.3125,
                                      "sq_rel": 0.6875, "rmse": 2.1213203, "rmse_log": 0.5026676})
    assert (metric.main, metric.higher_is_better) == ("delta1", True)


def test_depth_mask_max_depth_and_clamped_predictions():
    target = torch.tensor([[[2.0, 4.0, 8.0, 1.0]]])
    pred = torch.tensor([[[-1.0, 4.0, 8.0, 1.0]]])
    mask = torch.tensor([[[True, True, True, False]]])
    metric = DepthMetrics(min_depth=0.5, max_depth=6.0)
    metric.update(pred, target, mask)
    # valid: t = [2, 4] (8 >= max_depth, 1 masked); p = [-1 -> clamped to 0.5, 4]
    # d = [-1.5, 0]: abs_rel = 0.75/2 = 0.375, sq_rel = (2.25/2)/2 = 0.5625, rmse = sqrt(2.25/2) = 1.0606602
    # rmse_log = sqrt(ln(4)^2/2) = 1.3862944/sqrt(2) = 0.9802581; ratios [4, 1]: every delta = 1/2
    assert_metrics(metric.compute(), {"delta1": 0.5, "delta2": 0.5, "delta3": 0.5, "abs_rel": 0.375,
                                      "sq_rel": 0.5625, "rmse": 1.0606602, "rmse_log": 0.9802581})


def test_depth_prediction_resized_to_target():
    metric = DepthMetrics()
    # bilinear 1x2 -> 2x4 (align_corners=False): [2, 4] -> [2, 2.5, 3.5, 4] on each row
    metric.update(torch.tensor([[[[2.0, 4.0]]]]), torch.tensor([[2.0, 2.5, 3.5, 4.0]]).expand(1, 2, 4))
    result = metric.compute()
    assert result["rmse"] == pytest.approx(0.0, abs=1e-6) and result["delta1"] == 1.0


def test_depth_whole_set_not_per_batch_average():
    target = torch.ones(2, 1, 2, 2)
    pred = torch.ones(2, 1, 2, 2)
    target[0, 0, 0, 1:] = target[0, 0, 1] = 0  # first image: one valid pixel ...
    pred[0, 0, 0, 0] = 3.0  # ... badly predicted; second image: four perfect pixels
    whole, halves = DepthMetrics(), DepthMetrics()
    whole.update(pred, target)
    halves.update(pred[:1], target[:1])
    halves.update(pred[1:], target[1:])
    a, b = whole.compute(), halves.compute()
    assert a == pytest.approx(b, rel=1e-12)
    # over the 5 valid pixels: abs_rel = 2/5 and delta1 = 4/5; a per-batch average would say 1 and 1/2
    assert a["abs_rel"] == pytest.approx(0.4) and a["delta1"] == pytest.approx(0.8)


# ---------------------------------------------------------------- normals


def normals_batch() -> tuple[torch.Tensor, torch.Tensor]:
    target = torch.zeros(1, 3, 1, 5)
    target[0, 2, 0, :4] = 1.0  # (0, 0, 1) at 4 pixels; the 5th is zero (no ground truth)
    pred = torch.tensor([[0.0, 0.0, 2.0], [3.0, 0.0, 3.0], [0.0, 0.5, 0.0], [0.0, 0.0, -1.0], [1.0, 0.0, 0.0]])
    return pred.T.reshape(1, 3, 1, 5), target  # angles 0, 45, 90, 180 degrees, then an invalid pixel


def test_normals_by_hand():
    metric = NormalsMetrics()
    metric.update(*normals_batch())
    # mean = (0 + 45 + 90 + 180)/4 = 78.75; rmse = sqrt((0 + 2025 + 8100 + 32400)/4) = sqrt(10631.25) = 103.10795
    # median = (45 + 90)/2 = 67.5 (histogram: bin centres, within 0.005 degree); one of four under each threshold
    assert_metrics(metric.compute(), {"mean": 78.75, "median": 67.5, "rmse": 103.10795, "pct_11.25": 25.0,
                                      "pct_22.5": 25.0, "pct_30": 25.0}, abs=0.01)
    assert (metric.main, metric.higher_is_better) == ("mean", False)


def test_normals_mask_and_histogram_median():
    pred, target = normals_batch()
    metric = NormalsMetrics()
    metric.update(pred, target, mask=torch.tensor([[[True, True, True, False, True]]]))
    # angles 0, 45, 90: median 45, mean 45
    result = metric.compute()
    assert result["median"] == pytest.approx(45.0, abs=0.01) and result["mean"] == pytest.approx(45.0)
    # many random angles: the histogram median is within a bin of the exact one
    gen = torch.Generator().manual_seed(0)
    pred, target = torch.randn(2, 3, 16, 16, generator=gen), torch.randn(2, 3, 16, 16, generator=gen)
    target = torch.nn.functional.normalize(target, dim=1)  # every pixel valid
    metric = NormalsMetrics()
    metric.update(pred, target)
    p, t = torch.nn.functional.normalize(pred.double(), dim=1), target.double()
    angles = torch.rad2deg(torch.acos((p * t).sum(1).clamp(-1, 1))).flatten().sort().values
    exact = (angles[255] + angles[256]).item() / 2  # 512 angles: mean of the middle two
    assert metric.compute()["median"] == pytest.approx(exact, abs=0.01)
    assert metric.compute()["mean"] == pytest.approx(angles.mean().item(), rel=1e-7)


def test_normals_batch_split_invariance():
    gen = torch.Generator().manual_seed(1)
    pred, target = torch.randn(4, 3, 8, 8, generator=gen), torch.randn(4, 3, 8, 8, generator=gen)
    whole, halves = NormalsMetrics(), NormalsMetrics()
    whole.update(pred, target)
    halves.update(pred[:2], target[:2])
    halves.update(pred[2:], target[2:])
    assert whole.compute() == pytest.approx(halves.compute(), rel=1e-12)


# ---------------------------------------------------------------- DDP


def ddp_data() -> list[tuple[str, tuple[torch.Tensor, ...]]]:
    """Four samples per metric; rank r of 2 takes samples [2r, 2r+2)."""
    gen = torch.Generator().manual_seed(7)
    depth_target = torch.rand(4, 1, 6, 6, generator=gen) * 5
    depth_target[0] = 0  # one rank's half is mostly invalid: per-rank averaging would be wrong
    depth_target[0, 0, 0, 0] = 2.0
    seg_target = torch.randint(0, 4, (4, 6, 6), generator=gen)
    seg_target[1] = 255
    return [
        ("cls", (torch.randn(4, 7, generator=gen), torch.randint(0, 7, (4,), generator=gen))),
        ("seg", (torch.randn(4, 4, 3, 3, generator=gen), seg_target)),
        ("depth", (torch.rand(4, 1, 6, 6, generator=gen) * 5, depth_target)),
        ("normals", (torch.randn(4, 3, 6, 6, generator=gen), torch.randn(4, 3, 6, 6, generator=gen))),
    ]


def new_metrics() -> dict:
    return {"cls": ClassificationMetrics(7), "seg": SegmentationMetrics(4), "depth": DepthMetrics(),
            "normals": NormalsMetrics()}


def ddp_worker(rank: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        metrics = new_metrics()
        for name, tensors in ddp_data():
            metrics[name].update(*(t[2 * rank: 2 * rank + 2] for t in tensors))
        results = {"local depth": metrics["depth"].compute()}
        for metric in metrics.values():
            metric.sync()
            metric.sync()  # a second sync must not double-count
        results |= {name: metric.compute() for name, metric in metrics.items()}
        with open(f"{out_dir}/rank{rank}.json", "w") as f:
            json.dump(results, f)
    finally:
        dist.destroy_process_group()


def test_ddp_sync_matches_one_process(tmp_path):
    metrics = new_metrics()
    for name, tensors in ddp_data():
        metrics[name].update(*tensors)
    for metric in metrics.values():
        metric.sync()  # no process group: a no-op
    expected = {name: metric.compute() for name, metric in metrics.items()}
    mp.spawn(ddp_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    for rank in range(2):
        results = json.loads((tmp_path / f"rank{rank}.json").read_text())
        for name, values in expected.items():
            assert_metrics(results[name], values, rel=1e-9, abs=1e-12)
        assert results["local depth"]["rmse"] != pytest.approx(expected["depth"]["rmse"])  # sync did the work
