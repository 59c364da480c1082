"""Synthetic scenes, folder datasets, shared transforms and `multimae data`."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch
from conftest import run_cli

from multimae_cli.data.check import check_dataset
from multimae_cli.data.datasets import SyntheticDataset, collate, make_loader
from multimae_cli.data.folder import FolderDataset
from multimae_cli.data.synthetic.io import write_synthetic
from multimae_cli.data.synthetic.scenes import CLASSES, DEPTH_SCALE, FLOOR, WALL, render_scene
from multimae_cli.data.transforms import MultiModalTransform, normalize_sample, sample_crop, to_device
from multimae_cli.errors import InputError
from multimae_cli.plugin.registry import get_registry

NAMES = ("rgb", "depth", "normals", "semseg")


@pytest.fixture(scope="module")
def modalities():
    registry = get_registry()
    return {name: registry.modality(name) for name in NAMES}


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory, modalities):
    root = tmp_path_factory.mktemp("synth")
    write_synthetic(root, 6, (48, 64), modalities, split="train", seed=3)
    return root


# ---------------------------------------------------------------- synthetic scenes


def test_renders_are_deterministic_and_varied():
    a, b = render_scene(7, 2, (40, 56)), render_scene(7, 2, (40, 56))
    for name in NAMES:
        assert np.array_equal(a[name], b[name])
    assert not np.array_equal(a["rgb"], render_scene(7, 3, (40, 56))["rgb"])
    assert a["rgb"].shape == (40, 56, 3) and a["depth"].dtype == np.float32 and a["semseg"].dtype == np.int64
    assert np.allclose(np.linalg.norm(a["normals"], axis=-1), 1, atol=1e-4)


def camera_points(scene):
    """Back-project z-depth to camera coordinates (x right, y up, z towards the camera)."""
    depth, focal = scene["depth"], float(scene["focal"])
    h, w = depth.shape
    x = (np.arange(w) + 0.5 - w / 2) / focal
    y = (h / 2 - np.arange(h) - 0.5) / focal
    return np.stack([depth * x[None, :], depth * y[:, None], -depth], -1)


def interior(mask, margin=2):
    return cv2.erode(mask.astype(np.uint8), np.ones((2 * margin + 1,) * 2, np.uint8)).astype(bool)


@pytest.mark.parametrize("index", range(4))
def test_depth_normals_agree_on_planes(index):
    """Finite-difference normals of the rendered depth match the rendered normals on floor and walls:
    median angle under 0.5 degrees, 99th percentile under 2 degrees."""
    scene = render_scene(11, index, (96, 128))
    points = camera_points(scene)
    du = points[1:-1, 2:] - points[1:-1, :-2]
    dv = points[:-2, 1:-1] - points[2:, 1:-1]
    normals = np.cross(du, dv)
    normals /= np.linalg.norm(normals, axis=-1, keepdims=True)
    rendered = scene["normals"][1:-1, 1:-1]
    labels = scene["semseg"]
    kernel = np.ones((5, 5), np.uint8)  # away from edges and from corners where two walls meet
    same_normal = np.all([cv2.dilate(c, kernel) - cv2.erode(c, kernel) < 1e-4
                          for c in np.moveaxis(scene["normals"], -1, 0)], axis=0)
    planar = (interior(np.isin(labels, [FLOOR, WALL]), 2) & same_normal)[1:-1, 1:-1]
    angles = np.degrees(np.arccos(np.clip((normals * rendered).sum(-1), -1, 1)))[planar]
    assert planar.sum() > 1000
    assert np.median(angles) < 0.5 and np.percentile(angles, 99) < 2.0


@pytest.mark.parametrize("index", range(4))
def test_floor_labels_lie_on_the_floor_plane(index):
    scene = render_scene(5, index, (96, 128))
    floor = interior(scene["semseg"] == FLOOR, 1)
    assert floor.sum() > 200
    points = camera_points(scene)[floor]
    normal = scene["normals"][floor]
    assert np.allclose(normal, normal[0], atol=1e-4)  # one plane
    offsets = points @ normal[0]
    camera_height = -offsets.mean()
    assert np.abs(offsets + camera_height).max() < 1e-3 * camera_height * 10
    assert 1.0 - 1e-3 <= camera_height <= 1.8 + 1e-3  # the renderer's camera heights


def test_synth_disk_folder_round_trip(dataset_dir, modalities):
    info = json.loads((dataset_dir / "dataset.json").read_text())
    assert info["classes"] == list(CLASSES) and info["depth_scale"] == DEPTH_SCALE
    dataset = FolderDataset(dataset_dir, modalities, split="train")
    assert len(dataset) == 6 and dataset.index.keys[0] == "scenes/000000"
    for index in (0, 5):
        stored, original = dataset.read(index), render_scene(3, index, (48, 64))
        assert np.array_equal(stored["rgb"], original["rgb"])
        assert np.array_equal(stored["semseg"], original["semseg"])
        assert np.abs(stored["depth"] / DEPTH_SCALE - original["depth"]).max() <= 0.5 / DEPTH_SCALE + 1e-6
        assert np.abs(stored["normals"] - original["normals"]).max() <= 1 / 255 + 1e-6


def test_folder_loader_batches(dataset_dir, modalities):
    transform = MultiModalTransform(modalities, 32)
    dataset = FolderDataset(dataset_dir, modalities, transform=transform)
    files = next(iter(make_loader(dataset, batch_size=3, workers=0)))
    assert files["rgb"].dtype == torch.uint8  # workers yield file space: a quarter of the bytes to move
    batch = to_device(files, modalities, "cpu")
    assert batch["rgb"].shape == (3, 3, 32, 32) and batch["rgb"].dtype == torch.float32
    assert batch["depth"].shape == (3, 1, 32, 32) and batch["semseg"].shape == (3, 8, 8)
    assert batch["semseg"].dtype == torch.int64 and batch["normals"].shape == (3, 3, 32, 32)
    for name in files:  # a batch is normalised as its samples one by one
        alone = normalize_sample({name: files[name][1]}, modalities)[name]
        assert torch.allclose(batch[name][1], alone)
    depth = batch["depth"].flatten(1)
    assert torch.allclose(depth.median(1).values, torch.zeros(3), atol=0.5)  # robustly standardised


def test_synthetic_dataset_matches_render(modalities):
    dataset = SyntheticDataset({n: modalities[n] for n in ("rgb", "semseg")}, 4, (32, 32), seed=3)
    assert np.array_equal(dataset.read(1)["rgb"], render_scene(3, 1, (32, 32))["rgb"])
    transformed = SyntheticDataset(modalities, 4, 64, MultiModalTransform(modalities, 32), seed=3)
    a, b = transformed[2], transformed[2]
    assert all(torch.equal(a[n], b[n]) for n in NAMES)  # augmentation is a function of (seed, epoch, index)
    assert torch.equal(transformed[(0, 2)]["rgb"], a["rgb"])  # a plain index is epoch 0
    assert not torch.equal(transformed[(1, 2)]["rgb"], a["rgb"])
    assert set(collate([a, b])) == set(NAMES)


# ---------------------------------------------------------------- transforms


def ramp_sample(height=60, width=80):
    """Every modality encodes the column: a flip or crop applied to one modality alone breaks alignment."""
    x = np.tile(np.arange(width, dtype=np.float32), (height, 1))
    rgb = np.repeat((x / width * 255).astype(np.uint8)[..., None], 3, -1)
    normals = np.zeros((height, width, 3), np.float32)
    normals[..., 0], normals[..., 2] = 0.6, 0.8
    return {"rgb": rgb, "depth": x + 10, "semseg": x.astype(np.int64), "normals": normals}


def test_crop_and_flip_keep_modalities_aligned(modalities):
    transform = MultiModalTransform(modalities, 48, hflip=0.5)
    flips = 0
    for seed in range(40):
        out = normalize_sample(transform(ramp_sample(), np.random.default_rng(seed)), modalities)
        rgb = out["rgb"][0].numpy()
        depth = out["depth"][0].numpy()
        assert np.corrcoef(rgb.ravel(), depth.ravel())[0, 1] > 0.99
        increasing = rgb[:, -1].mean() > rgb[:, 0].mean()
        flips += not increasing
        # labels at 1/4 resolution follow the same columns
        labels = out["semseg"].numpy().astype(np.float32)
        small_depth = cv2.resize(depth, (12, 12), interpolation=cv2.INTER_AREA)
        assert np.corrcoef(labels.ravel(), small_depth.ravel())[0, 1] > 0.99
        # a flipped normal map points the other way in x, and stays unit length
        normal_x = out["normals"][0].numpy()
        assert np.allclose(normal_x, 0.6 if increasing else -0.6, atol=1e-5)
        assert torch.allclose(out["normals"].norm(dim=0), torch.ones(48, 48), atol=1e-5)
    assert 8 < flips < 32


def test_modalities_at_other_resolution_are_brought_to_the_reference(modalities):
    sample = ramp_sample()
    sample["semseg"] = sample["semseg"][::4, ::4]  # stored at 1/4 resolution
    out = MultiModalTransform(modalities, 32, train=False)(sample, np.random.default_rng(0))
    # output column j samples reference column 10j+5, i.e. stored column (10j+5)//4, whose label is 4x that
    assert out["semseg"].shape == (8, 8) and out["semseg"][0].tolist() == [4, 12, 24, 32, 44, 52, 64, 72]
    sample["depth"] = sample["depth"][:30]  # another aspect ratio: refused
    with pytest.raises(InputError, match="depth: size 30x80 does not have the aspect of rgb"):
        MultiModalTransform(modalities, 32, train=False)(sample, np.random.default_rng(0))


def test_crop_statistics():
    rng = np.random.default_rng(0)
    areas, ratios = [], []
    for _ in range(2000):
        crop = sample_crop(rng, 200, 300, (0.2, 1.0), (3 / 4, 4 / 3))
        assert crop.top >= 0 and crop.top + crop.height <= 200 and crop.left + crop.width <= 300
        areas.append(crop.height * crop.width / 60000)
        ratios.append(crop.width / crop.height)
    assert min(areas) > 0.18 and max(areas) <= 1.0 and min(ratios) > 0.7 and max(ratios) < 1.4


# ---------------------------------------------------------------- bad inputs


@pytest.fixture()
def broken_dir(tmp_path, modalities):
    write_synthetic(tmp_path, 3, (32, 32), modalities, seed=1)
    return tmp_path


def only(modalities, *names):
    return {n: modalities[n] for n in names}


@pytest.mark.parametrize("case", ["missing", "corrupt_png", "truncated_jpeg", "depth_8bit", "label_range",
                                  "nan_npy"])
def test_bad_files_are_named_or_skipped(broken_dir, modalities, case):
    train = broken_dir / "train"
    target = None
    if case == "missing":
        (train / "depth/scenes/000001.png").unlink()
        message = r"depth: no file for 'scenes/000001'"
    elif case == "corrupt_png":
        target = train / "depth/scenes/000001.png"
        target.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
        message = r"000001\.png: not a readable image"
    elif case == "truncated_jpeg":
        (train / "rgb/scenes/000001.png").unlink()
        target = train / "rgb/scenes/000001.jpg"
        _, jpeg = cv2.imencode(".jpg", np.zeros((32, 32, 3), np.uint8))
        target.write_bytes(jpeg.tobytes()[:-40])
        message = r"000001\.jpg: truncated JPEG"
    elif case == "depth_8bit":
        target = train / "depth/scenes/000001.png"
        cv2.imwrite(str(target), np.zeros((32, 32), np.uint8))
        message = r"000001\.png: 8-bit depth map"
    elif case == "label_range":
        target = train / "semseg/scenes/000001.png"
        cv2.imwrite(str(target), np.full((32, 32), 200, np.uint8))
        message = r"000001\.png: label values \[200, 200\] outside the 6 classes dataset.json declares"
    else:
        (train / "depth/scenes/000001.png").unlink()
        target = train / "depth/scenes/000001.npy"
        depth = np.ones((32, 32), np.float32)
        depth[3, 3] = np.nan
        np.save(target, depth)
        message = r"000001\.npy: contains NaN"
    chosen = only(modalities, "rgb", "depth", "semseg")
    report = check_dataset(broken_dir, chosen)
    assert not report["clean"]
    assert any(re.search(message, p) for p in report["splits"]["train"]["problems"]), report
    if case == "missing":
        with pytest.raises(InputError, match=message):
            FolderDataset(broken_dir, chosen)
        assert len(FolderDataset(broken_dir, chosen, skip_bad=True)) == 2
    else:
        with pytest.raises(InputError, match=message):
            FolderDataset(broken_dir, chosen)[1]
        skipping = FolderDataset(broken_dir, chosen, skip_bad=True)
        assert np.array_equal(skipping[1]["rgb"], skipping[2]["rgb"]) and skipping.skipped == 1
    result = run_cli("data", "check", str(broken_dir), "--modalities", "rgb,depth,semseg")
    assert result.returncode == 1 and "problems found" in result.stdout


def test_empty_folder_and_unknown_modality(tmp_path, modalities):
    with pytest.raises(InputError, match="no split folder"):
        check_dataset(tmp_path, only(modalities, "rgb"))
    (tmp_path / "train/rgb").mkdir(parents=True)
    with pytest.raises(InputError, match="no samples found"):
        FolderDataset(tmp_path, only(modalities, "rgb"))
    result = run_cli("data", "check", str(tmp_path), "--modalities", "rgb,lidar")
    assert result.returncode == 2 and result.stderr.startswith("error: unknown modality 'lidar'")
    assert len(result.stderr.strip().splitlines()) == 1


def test_cli_synth_check_and_refuse_overwrite(tmp_path):
    out = tmp_path / "ds"
    result = run_cli("data", "synth", "--out", str(out), "--n", "3", "--size", "32x48", "--split", "val",
                     "--preview", str(out / "grid.png"), "--quiet")  # inside the folder it makes
    assert result.returncode == 0, result.stderr
    assert len(list((out / "val/normals/scenes").glob("*.png"))) == 3
    grid = cv2.imread(str(out / "grid.png"))
    assert grid.shape[0] == 3 * 32 + 2 * 2 and grid.shape[1] == 4 * 48 + 3 * 2
    piped = run_cli("data", "synth", "--out", str(out), "--n", "2", "--size", "32", "--json")  # no bar in a pipe
    assert piped.returncode == 0 and piped.stderr == "", piped.stderr
    assert json.loads(piped.stdout)["out"] == str(out / "train") and json.loads(piped.stdout)["scenes"] == 2
    check = run_cli("data", "check", str(out), "--modalities", "rgb,depth,normals,semseg", "--split", "val", "--json")
    assert check.returncode == 0 and json.loads(check.stdout)["splits"]["val"]["samples"] == 3
    again = run_cli("data", "synth", "--out", str(out), "--n", "3", "--size", "32", "--split", "val", "--quiet")
    assert again.returncode == 2 and "already holds files" in again.stderr
    bad = run_cli("data", "synth", "--out", str(out), "--size", "12x", "--quiet")
    assert bad.returncode == 2 and "--size" in bad.stderr
    bad = run_cli("data", "synth", "--out", str(out), "--rgb-format", "gif", "--quiet")
    assert bad.returncode == 2 and "--rgb-format must be one of png, jpg, got 'gif'" in bad.stderr


def test_synth_rgb_as_jpeg_and_overwrite_replaces_the_split(tmp_path, modalities):
    """JPEG rgb pairs with PNG labels and reads back close to the render; an overwrite with fewer scenes and
    another rgb format leaves exactly the new split (no stale scenes, no key twice), other files untouched."""
    write_synthetic(tmp_path, 4, (32, 32), modalities, seed=1)
    (tmp_path / "train/rgb/scenes/notes.txt").write_text("mine")
    info = write_synthetic(tmp_path, 3, (32, 32), modalities, seed=1, overwrite=True, rgb_format="jpg")
    assert info["splits"]["train"]["rgb"].startswith("JPEG, quality 95")
    assert sorted(p.name for p in (tmp_path / "train/rgb/scenes").iterdir()) == [
        "000000.jpg", "000001.jpg", "000002.jpg", "notes.txt"]
    assert len(list((tmp_path / "train/depth/scenes").iterdir())) == 3
    dataset = FolderDataset(tmp_path, only(modalities, "rgb", "depth", "semseg"))
    assert len(dataset) == 3 and not dataset.index.duplicates
    rendered = render_scene(1, 2, (32, 32))["rgb"].astype(np.float32)
    assert np.abs(dataset.read(2)["rgb"].astype(np.float32) - rendered).mean() < 4.0


def _png_row_filters(path, row_bytes: int) -> set[int]:
    import zlib

    from multimae_cli.io import _png_chunks

    data = path.read_bytes()
    raw = zlib.decompress(b"".join(payload for kind, payload in _png_chunks(data) if kind == b"IDAT"))
    return set(np.frombuffer(raw, np.uint8).reshape(-1, row_bytes + 1)[:, 0].tolist())


def test_written_pngs_read_back_exactly_and_labels_stay_small_until_resized(tmp_path):
    """What multimae writes reads back bit for bit: 8-bit rgb unfiltered, 16-bit depth with the Up filter (the
    fastest to decode); semseg ids come back in their 8-bit file dtype and only become int64 after the resize."""
    registry = get_registry()
    modalities = {name: registry.modality(name) for name in ("rgb", "depth", "semseg")}
    rng = np.random.default_rng(0)
    arrays = {"rgb": rng.integers(0, 256, (32, 48, 3), dtype=np.uint8),
              "depth": rng.integers(1, 60000, (32, 48)).astype(np.float32),
              "semseg": rng.integers(0, 133, (32, 48))}
    for name, array in arrays.items():
        (tmp_path / "train" / name).mkdir(parents=True)
        modalities[name].write(tmp_path / "train" / name / "a.png", array)
    read = {name: modalities[name].read(tmp_path / "train" / name / "a.png") for name in arrays}
    np.testing.assert_array_equal(read["rgb"], arrays["rgb"])
    np.testing.assert_array_equal(read["depth"], arrays["depth"])
    np.testing.assert_array_equal(read["semseg"], arrays["semseg"])
    assert read["semseg"].dtype == np.uint8
    if hasattr(cv2, "IMWRITE_PNG_FILTER"):
        assert _png_row_filters(tmp_path / "train" / "rgb" / "a.png", 48 * 3) == {0}
        assert _png_row_filters(tmp_path / "train" / "depth" / "a.png", 48 * 2) == {2}
    sample = FolderDataset(tmp_path, modalities, transform=MultiModalTransform(modalities, (32, 48), train=False))[0]
    assert sample["semseg"].dtype == torch.int64
    assert torch.equal(sample["semseg"], torch.from_numpy(arrays["semseg"][2::4, 2::4]))


def test_auto_workers_follow_the_cpus_this_process_may_use(monkeypatch):
    """`data.workers: auto` (the default): the process's CPUs shared among the local torchrun processes, less one
    for the loop, within [2, 16]; numbers pass through, anything else is a config error naming the key."""
    from multimae_cli.config import PretrainConfig, load_pretrain_config
    from multimae_cli.data.datasets import loader_workers
    from multimae_cli.errors import ConfigError

    assert PretrainConfig().data.workers == "auto"
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    for cpus, expected in ((2, 2), (16, 15), (64, 16)):
        monkeypatch.setattr("os.sched_getaffinity", lambda _pid, n=cpus: set(range(n)))
        assert loader_workers("auto") == expected
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    monkeypatch.setattr("os.sched_getaffinity", lambda _pid: set(range(16)))
    assert loader_workers("auto") == 3
    assert loader_workers(0) == 0 and load_pretrain_config(assignments=["data.workers=5"]).data.workers == 5
    with pytest.raises(ConfigError) as error:
        load_pretrain_config(assignments=["data.workers=many"])
    assert str(error.value) == "data.workers: expected 'auto' or a number of loader processes >= 0, got 'many'"


LOADER_THREADS = """
import sys
import cv2, numpy as np, torch
from multimae_cli.data.datasets import Loader, collate


class Threads:
    def __len__(self):
        return 4

    def __getitem__(self, i):
        return {"threads": torch.tensor(cv2.getNumThreads())}


if __name__ == "__main__":
    cv2.setNumThreads(2)
    cv2.resize(np.zeros((1500, 1500, 3), np.uint8), (700, 700), interpolation=cv2.INTER_CUBIC)  # starts the pool
    loader = Loader(Threads(), batch_size=2, num_workers=2, collate_fn=collate, multiprocessing_context=sys.argv[1])
    print([b["threads"].tolist() for b in loader], cv2.getNumThreads())
"""


@pytest.mark.parametrize("start", ["fork", "spawn"])
def test_loader_workers_run_opencv_on_one_thread_even_after_the_parent_used_its_pool(tmp_path, start):
    """A forked worker calling cv2.setNumThreads, when the parent had run OpenCV's thread pool, hung for ever; now
    forked workers inherit the setting from around their start, spawned ones (macOS) set it. In a subprocess: a
    hang fails here by timeout instead of stalling the suite."""
    script = tmp_path / "loader_threads.py"
    script.write_text(LOADER_THREADS)
    result = subprocess.run([sys.executable, str(script), start], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["[[1,", "1],", "[1,", "1]]", "2"]
