"""Shard folders (`multimae data shard`): the folder's samples bit for bit, a streaming order that is a function of
(seed, epoch), exact resume, the same run as the folder with global order, checks and refusals."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import interrupt_after_step, run_cli
from test_pretrain import metrics, tiny, weights

from multimae_cli.data.datasets import open_dataset
from multimae_cli.data.folder import FolderDataset
from multimae_cli.data.shard_writer import write_shards
from multimae_cli.data.shards import ShardDataset, ShardSampler, check_shards
from multimae_cli.data.synthetic.io import write_synthetic
from multimae_cli.data.transforms import MultiModalTransform
from multimae_cli.errors import InputError, TrainingStopped
from multimae_cli.plugin.registry import get_registry
from multimae_cli.train.pretrain import pretrain

NAMES = ("rgb", "depth", "semseg")


@pytest.fixture(scope="module")
def modalities():
    registry = get_registry()
    return {name: registry.modality(name) for name in NAMES}


@pytest.fixture(scope="module")
def folder(tmp_path_factory, modalities) -> Path:
    root = tmp_path_factory.mktemp("data") / "scenes"
    rendered = {**modalities, "normals": get_registry().modality("normals")}  # the generator writes all four
    write_synthetic(root, 24, (32, 32), rendered, split="train", seed=0)
    write_synthetic(root, 8, (32, 32), rendered, split="val", seed=0)
    return root


@pytest.fixture(scope="module")
def shards(folder, modalities) -> Path:
    out = folder.parent / "shards"
    summary = write_shards(folder, out, modalities, shard_bytes=12_000)
    assert summary["splits"]["train"]["samples"] == 24 and summary["splits"]["train"]["shards"] >= 3
    return out


def test_shards_hold_the_folder_samples_bit_for_bit(folder, shards, modalities):
    transform = MultiModalTransform(modalities, (32, 32), scale=(0.2, 1.0), hflip=0.5)
    on_disk = FolderDataset(folder, modalities, transform=transform, seed=3)
    packed = open_dataset(shards, modalities, transform=transform, seed=3)
    assert isinstance(packed, ShardDataset) and len(packed) == len(on_disk) == 24
    assert [packed.key(i) for i in range(24)] == on_disk.index.keys
    for item in [(0, 0), (0, 23), (2, 5), (7, 11)]:  # the same augmentation: a function of (seed, epoch, index)
        a, b = on_disk[item], packed[item]
        assert all(torch.equal(a[name], b[name]) for name in NAMES), item
    # standard tar in the webdataset layout: <index>.<modality><suffix>, the original bytes
    with tarfile.open(shards / "train-000000.tar") as tar:
        names = tar.getnames()
        assert names[:3] == ["000000000.rgb.png", "000000000.depth.png", "000000000.semseg.png"]
        stored = tar.extractfile(names[1]).read()
    assert stored == on_disk.index.files["depth"][on_disk.index.keys[0]].read_bytes()
    assert json.loads((shards / "dataset.json").read_text()) == json.loads((folder / "dataset.json").read_text())
    tars = list(shards.glob("train-*.tar"))
    files = [p.stat().st_size for name in NAMES for p in (folder / "train" / name).rglob("*.png")]
    # the bytes stored: each file as it is, plus its 512-byte header and padding to 512, and an end per shard
    assert sum(p.stat().st_size for p in tars) == sum(512 + -(-size // 512) * 512 for size in files) + 1024 * len(tars)


def test_streaming_order_is_a_function_of_seed_and_epoch(shards, modalities):
    dataset = ShardDataset(shards, modalities)
    sampler = ShardSampler(dataset, batch_size=4, rank=0, world=1, seed=5, buffer=6)
    assert sampler.batches_per_epoch == 6
    first, second = sampler.epoch_order(0), sampler.epoch_order(1)
    assert sorted(first) == sorted(second) == list(range(24)) and first != second
    assert first == ShardSampler(dataset, 4, 0, 1, seed=5, buffer=6).epoch_order(0)
    assert first != ShardSampler(dataset, 4, 0, 1, seed=6, buffer=6).epoch_order(0)
    shard_of = [dataset.locate(i)[0] for i in range(24)]
    opened = np.random.default_rng([5, 0]).permutation(len(dataset.shards)).tolist()
    assert shard_of[first[0]] in opened[:2]  # reads start in the epoch's first shards, within the buffer's window
    stream = iter(sampler)
    whole = [next(stream) for _ in range(3 * 24)]
    assert [index for epoch, index in whole[:24]] == first and {epoch for epoch, _ in whole[24:48]} == {1}
    for position in (0, 5, 6, 13):  # resume at any batch: the rest of the same stream, nothing read before it
        sampler.start_at(position)
        resumed = iter(sampler)
        assert [next(resumed) for _ in range(20)] == whole[position * 4:position * 4 + 20]
    for world, batch in ((2, 2), (3, 4), (5, 1)):  # more ranks than some shards hold samples, too
        orders = [ShardSampler(dataset, batch, rank, world, seed=5, buffer=6).epoch_order(0) for rank in range(world)]
        every = [index for order in orders for index in order]
        assert len({len(order) for order in orders}) == 1 and len(every) == len(set(every))  # equal, disjoint
        assert len(every) == 24 // (batch * world) * batch * world


def test_sharded_run_resumes_exactly_and_equals_the_folder_run_in_global_order(tmp_path, shards, folder,
                                                                               monkeypatch):
    settings = {"steps": 8, "checkpoint_every": 100, "log_every": 1,
                "data": {"source": "folder", "path": str(shards), "workers": 2, "shuffle_buffer": 8}}
    pretrain(tiny(tmp_path, name="whole", **settings), quiet=True)
    undo = interrupt_after_step(monkeypatch, 5)
    with pytest.raises(TrainingStopped, match="interrupted at step 5"):
        pretrain(tiny(tmp_path, name="resumed", **settings), quiet=True)
    undo()
    pretrain(tiny(tmp_path, name="resumed", **settings), resume=tmp_path / "runs" / "resumed", quiet=True)
    runs = tmp_path / "runs"
    whole, resumed = weights(runs / "whole"), weights(runs / "resumed")
    assert [k for k in whole if not torch.equal(whole[k], resumed[k])] == []
    assert [r["loss"] for r in metrics(runs / "whole")] == [r["loss"] for r in metrics(runs / "resumed")]
    global_order = {"steps": 4, "log_every": 1, "data": {"source": "folder", "workers": 0, "shuffle_buffer": 0}}
    for name, path in (("folder", folder), ("global", shards)):
        pretrain(tiny(tmp_path, name=name, **{**global_order, "data": {**global_order["data"], "path": str(path)}}),
                 quiet=True)
    assert [r["loss"] for r in metrics(runs / "folder")] == [r["loss"] for r in metrics(runs / "global")]
    assert [r["loss"] for r in metrics(runs / "global")] != [r["loss"] for r in metrics(runs / "whole")][:4]


def test_data_check_finds_damaged_shards(tmp_path, folder, modalities):
    out = tmp_path / "shards"
    write_shards(folder, out, modalities, shard_bytes=12_000, splits=["train"])
    assert check_shards(out, modalities)["clean"]
    tar = out / "train-000001.tar"
    data = bytearray(tar.read_bytes())
    data[600:700] = bytes(100)  # inside the first member's PNG data
    tar.write_bytes(bytes(data))
    report = run_cli("data", "check", str(out), "--json")
    assert report.returncode == 1
    problems = json.loads(report.stdout)["splits"]["train"]["problems"]
    assert len(problems) == 1 and problems[0].startswith(f"{tar}: ") and "rgb.png: not a readable image" in problems[0]
    (out / "train-000002.tar").write_bytes(b"short")
    problems = check_shards(out, modalities)["splits"]["train"]["problems"]
    assert problems == [f"{out / 'train-000002.tar'}: 5 bytes, the index says "
                        f"{json.loads((out / 'index.json').read_text())['splits']['train']['shards'][2]['bytes']}"]


def test_shard_command_refuses_and_skips_bad_files(tmp_path, folder):
    result = run_cli("data", "shard", str(folder), "--out", str(folder), "--json")
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: --out {folder}: already exists; give a new folder"
    result = run_cli("data", "shard", str(folder), "--out", str(tmp_path / "s"), "--shard-size", "lots")
    assert result.returncode == 2 and "--shard-size: expected a size such as 256MB" in result.stderr
    broken = tmp_path / "broken"
    broken.mkdir()
    import shutil

    shutil.copytree(folder / "train", broken / "train")
    bad = sorted((broken / "train" / "depth").rglob("*.png"))[3]
    bad.write_bytes(b"not a png")
    result = run_cli("data", "shard", str(broken), "--out", str(tmp_path / "s"))
    assert result.returncode == 2 and result.stderr.startswith(f"error: {bad}: not a readable image")
    assert not (tmp_path / "s").exists() and [p.name for p in tmp_path.iterdir()] == ["broken"]  # nothing half-made
    result = run_cli("data", "shard", str(broken), "--out", str(tmp_path / "s"), "--skip-bad", "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["splits"]["train"]["samples"] == 23 and summary["skipped"] == 1
    with pytest.raises(InputError, match="the shards hold no normals"):
        ShardDataset(tmp_path / "s", {"normals": get_registry().modality("normals")})
    with pytest.raises(InputError, match="no split 'val'"):
        ShardDataset(tmp_path / "s", {"rgb": get_registry().modality("rgb")}, split="val")


def test_fine_tuned_evaluation_on_shards_equals_the_folder(tmp_path, folder, shards):
    """`multimae eval --data SHARDS/` reads the same samples in the same order as on the folder."""
    from multimae_cli import ModelConfig, create_model, save_model
    from multimae_cli.plugin.factory import build_task_model
    from multimae_cli.train.evaluate import evaluate_checkpoint

    torch.manual_seed(0)
    config = ModelConfig(inputs=("rgb",), outputs=(), image_size=(32, 32), patch_size=8, dim=32, depth=2,
                         num_heads=2, num_encoded_tokens=4)
    model = build_task_model(create_model(config), get_registry().task("semseg"), "linear", 6, {})
    model.task_info = {"task": "semseg", "head": "linear", "head_options": {}, "num_outputs": 6,
                       "reduce_zero_label": False, "depth_scale": 1.0}
    save_model(model, tmp_path / "semseg.safetensors")
    scores = [evaluate_checkpoint(tmp_path / "semseg.safetensors", data, "val", batch_size=3, device="cpu",
                                  workers=0) for data in (folder, shards)]
    assert scores[0]["samples"] == scores[1]["samples"] == 8 and scores[0]["metrics"] == scores[1]["metrics"]


def test_a_plugin_without_decode_reads_members_from_scratch_files(shards, modalities):
    """Third-party modalities that only `read` files work on shards too, with the same arrays."""
    from dataclasses import replace

    plain = {name: replace(modality, decode=None) for name, modality in modalities.items()}
    with_decode, without = ShardDataset(shards, modalities), ShardDataset(shards, plain)
    for index in (0, 9, 23):
        a, b = with_decode.read(index), without.read(index)
        assert all(np.array_equal(a[name], b[name]) and a[name].dtype == b[name].dtype for name in NAMES)


def test_two_torchrun_ranks_stream_their_own_shards(tmp_path, shards, modalities):
    """Under torchrun each rank reads the shards dealt to it (2 gloo processes, streaming order)."""
    import os
    import subprocess
    import sys

    from test_pretrain import TINY

    data = {**TINY["data"], "source": "folder", "path": str(shards), "shuffle_buffer": 4}
    args = ["--set", f"model={json.dumps(TINY['model'])}", "--set", f"data={json.dumps(data)}",
            "--set", f"optim={json.dumps(TINY['optim'])}", "--set", "batch_size=2", "--set", "log_every=1",
            "--set", "checkpoint_every=100", "--set", "preview_every=0", "--steps", "3", "--device", "cpu"]
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29531",
         "-m", "multimae_cli", "pretrain", "--quiet", "--name", "ddp", "--out", str(tmp_path / "runs"), *args],
        capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert [r["step"] for r in metrics(tmp_path / "runs" / "ddp")] == [1, 2, 3]
    dataset = ShardDataset(shards, modalities)
    stream = [dataset.firsts[s] + i for s in np.random.default_rng([0, 0]).permutation(len(dataset.shards))
              for i in range(dataset.shards[s]["samples"])]
    for rank in (0, 1):  # each rank reads its own half of the epoch's shard stream
        order = ShardSampler(dataset, 2, rank, 2, seed=0, buffer=4).epoch_order(0)
        assert sorted(order) == sorted(stream[rank * 12:(rank + 1) * 12])


def test_fine_tuning_streams_shards_evaluates_on_their_val_split_and_resumes(tmp_path, shards, encoder,
                                                                            monkeypatch):
    """Fine-tuning reads shards in streaming order (the sampler it gets), validates on the shards' val split,
    and a stopped run resumes exactly."""
    from test_finetune import SMALL_DPT, settings

    from multimae_cli.data import shards as shards_module
    from multimae_cli.formats.load import load_task_model
    from multimae_cli.train.finetune import finetune

    used = []
    monkeypatch.setattr(shards_module.ShardSampler, "__iter__", _recording(shards_module.ShardSampler.__iter__, used))
    common = {"task": "depth", "checkpoint": str(encoder), "inputs": ["rgb"], "head_options": SMALL_DPT,
              "steps": 4, "data": {"source": "folder", "path": str(shards), "workers": 0, "shuffle_buffer": 5}}
    straight = finetune(settings(tmp_path, name="straight", **common), quiet=True)
    assert used and "delta1" in straight["metrics"]  # evaluated on the shards' val split
    undo = interrupt_after_step(monkeypatch, 2)
    with pytest.raises(TrainingStopped, match="interrupted at step 2"):
        finetune(settings(tmp_path, name="resumed", **common), quiet=True)
    undo()
    finetune(settings(tmp_path, name="resumed", **common), resume=tmp_path / "runs" / "resumed", quiet=True)
    a, b = (load_task_model(tmp_path / "runs" / name / "last" / "model.safetensors").state_dict()
            for name in ("straight", "resumed"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def _recording(method, calls: list):
    def wrapper(self):
        calls.append(self)
        return method(self)
    return wrapper
