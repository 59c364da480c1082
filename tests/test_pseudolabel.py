"""`multimae pseudolabel`: teachers that need no download (tiny transformers models built from configs, a tiny
multimae checkpoint, the analytic ones), the dataset it writes, resuming, and one-line errors."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
from conftest import run_cli

from multimae_cli import Teacher
from multimae_cli.data.check import check_dataset
from multimae_cli.data.synthetic.scenes import DEPTH_SCALE, FLOOR, WALL, render_scene
from multimae_cli.errors import ConfigError, InputError, UnknownModalityError
from multimae_cli.infer.pseudolabel import parse_teacher_options, pseudolabel
from multimae_cli.plugin.registry import get_registry
from multimae_cli.plugin.teacher import TeacherSpec

SIZE = (48, 64)


def modalities(*names: str) -> dict:
    return {name: get_registry().modality(name) for name in names}


@pytest.fixture(scope="module")
def rgb_dir(tmp_path_factory) -> Path:
    """Six synthetic-scene photographs in two subfolders, one of them a JPEG."""
    root = tmp_path_factory.mktemp("photos")
    write = get_registry().modality("rgb").write
    for index in range(6):
        path = root / ("kitchen" if index < 3 else "hall") / f"{index:03d}{'.jpg' if index == 5 else '.png'}"
        path.parent.mkdir(exist_ok=True)
        write(path, render_scene(5, index, SIZE)["rgb"])
    return root


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory) -> dict[str, Path]:
    """A tiny random DPT depth model (with its image processor) and a tiny SegFormer, saved like any hub model."""
    pytest.importorskip("transformers")
    import torch
    from transformers import (
        DPTConfig,
        DPTForDepthEstimation,
        DPTImageProcessor,
        SegformerConfig,
        SegformerForSemanticSegmentation,
    )

    root = tmp_path_factory.mktemp("hf")
    torch.manual_seed(0)
    dpt = DPTForDepthEstimation(DPTConfig(
        hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64, image_size=64, patch_size=16,
        backbone_out_indices=[0, 1, 2, 3], neck_hidden_sizes=[8, 16, 16, 32], fusion_hidden_size=16))
    dpt.save_pretrained(root / "dpt")
    DPTImageProcessor(size={"height": 64, "width": 64}, keep_aspect_ratio=False).save_pretrained(root / "dpt")
    labels = ["floor", "wall", "ceiling", "thing", "stuff"]
    segformer = SegformerForSemanticSegmentation(SegformerConfig(
        num_encoder_blocks=2, depths=[1, 1], sr_ratios=[2, 1], hidden_sizes=[8, 16], patch_sizes=[7, 3],
        strides=[4, 2], num_attention_heads=[1, 2], mlp_ratios=[2, 2], decoder_hidden_size=16, num_labels=5,
        id2label=dict(enumerate(labels)), label2id={name: i for i, name in enumerate(labels)}))
    segformer.save_pretrained(root / "segformer")
    return {"dpt": root / "dpt", "segformer": root / "segformer"}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    import torch

    from multimae_cli import ModelConfig, create_model, save_model

    torch.manual_seed(0)
    config = ModelConfig(inputs=("rgb",), outputs=("depth", "semseg"), image_size=(32, 32), patch_size=16, dim=32,
                         depth=1, num_heads=2, decoder_dim=16, decoder_depth=1, decoder_num_heads=2,
                         num_encoded_tokens=4)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.safetensors"
    save_model(create_model(config), path)
    return path


def files(root: Path) -> dict[str, float]:
    return {p.relative_to(root).as_posix(): p.stat().st_mtime_ns for p in sorted(root.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------- the record and the built-ins


def test_teacher_specs_parse():
    assert TeacherSpec.parse("hf:models/dpt,output=depth") == TeacherSpec("hf", "models/dpt", {"output": "depth"})
    assert TeacherSpec.parse("edges") == TeacherSpec("edges")
    assert TeacherSpec.parse("normals-from-depth,fov=70").options == {"fov": "70"}
    assert str(TeacherSpec.parse(" hf:C:/models/dpt ")) == "hf:C:/models/dpt"
    with pytest.raises(ConfigError, match="expected NAME"):
        TeacherSpec.parse("edges,sobel")
    assert parse_teacher_options(["depth=hf:d,output=depth"]) == {"depth": "hf:d,output=depth"}
    with pytest.raises(ConfigError, match="--teacher depth: expected MODALITY=TEACHER"):
        parse_teacher_options(["depth"])


def test_builtin_teachers_and_the_edges_modality(tmp_path):
    teachers = get_registry().teachers()
    assert {"multimae", "hf", "normals-from-depth", "edges"} <= set(teachers)
    assert all(isinstance(t, Teacher) for t in teachers.values())
    normals = teachers["normals-from-depth"]
    assert normals.needs == ("depth",) and normals.default_for == ("normals",)
    edges = get_registry().modality("edges")
    strength = np.zeros(SIZE, np.float32)
    strength[10:12] = 1.0
    edges.write(tmp_path / "e.png", strength)
    assert np.array_equal(edges.read(tmp_path / "e.png"), strength)
    import torch

    picture = edges.colorize(edges.normalize(torch.from_numpy(strength)[None]))
    assert picture.shape == (*SIZE, 3) and picture[10, 0].tolist() == [255, 255, 255]


# ---------------------------------------------------------------- normals from depth


@pytest.mark.parametrize("index", range(3))
def test_normals_from_rendered_depth_match_rendered_normals(tmp_path, index):
    """Normals from the 16-bit depth PNG of a synthetic scene (its focal length given) against the rendered
    normals on floor and walls, read back from the 8-bit normals PNG: median under 0.75 and 95th percentile
    under 2 degrees. Measured on 12 scenes: median at most 0.51, p95 at most 1.72 (the PNGs' rounding is most
    of it); with an assumed 60 degree field of view instead of the true 55-80, medians reach 8.7 degrees."""
    scene = render_scene(11, index, (96, 128))
    registry = get_registry()
    registry.modality("rgb").write((tmp_path / "rgb").with_suffix(".png"), scene["rgb"])
    data = tmp_path / "data" / "train"
    for name, array in (("rgb", scene["rgb"]), ("depth", scene["depth"] * DEPTH_SCALE)):
        (data / name).mkdir(parents=True)
        registry.modality(name).write(data / name / "scene.png", array)
    pseudolabel(data / "rgb", tmp_path / "data", ["normals"], {"normals": f"normals-from-depth,focal={scene['focal']}"})
    normals = registry.modality("normals").read(data / "normals" / "scene.png")

    labels, kernel = scene["semseg"], np.ones((5, 5), np.uint8)
    one_plane = np.all([cv2.dilate(c, kernel) - cv2.erode(c, kernel) < 1e-4
                        for c in np.moveaxis(scene["normals"], -1, 0)], axis=0)
    inside = cv2.erode(np.isin(labels, [FLOOR, WALL]).astype(np.uint8), kernel).astype(bool)
    unit = normals / np.linalg.norm(normals, axis=-1, keepdims=True)
    angles = np.degrees(np.arccos(np.clip((unit * scene["normals"]).sum(-1), -1, 1)))[inside & one_plane]
    assert angles.size > 1000
    assert np.median(angles) < 0.75 and np.percentile(angles, 95) < 2.0, (np.median(angles),
                                                                          np.percentile(angles, 95))


# ---------------------------------------------------------------- whole runs


def test_hf_teachers_write_a_dataset_that_checks_clean_and_trains(tmp_path, rgb_dir, hf_dirs):
    out = tmp_path / "dataset"
    seen = []
    summary = pseudolabel(rgb_dir, out, ["depth", "semseg", "normals", "edges"],
                          {"depth": f"hf:{hf_dirs['dpt']}", "semseg": f"hf:{hf_dirs['segformer']}"},
                          batch_size=4, workers=2, device="cpu", progress=lambda *args: seen.append(args))
    assert summary["labelled"] == 6 and summary["skipped"] == 0 and summary["files_written"] == 30
    assert summary["teachers"] == {"depth": f"hf:{hf_dirs['dpt']}", "semseg": f"hf:{hf_dirs['segformer']}",
                                   "normals": "normals-from-depth", "edges": "edges"}
    assert [done for done, _, _ in seen] == [4, 6] and all(rate > 0 for _, _, rate in seen)
    assert (out / "train" / "rgb" / "hall" / "005.jpg").read_bytes() == (rgb_dir / "hall" / "005.jpg").read_bytes()
    assert (out / "train" / "depth" / "kitchen" / "000.png").is_file()

    manifest = json.loads((out / "pseudolabel.json").read_text())
    teachers = manifest["splits"]["train"]["teachers"]
    assert teachers["semseg"]["classes"] == ["floor", "wall", "ceiling", "thing", "stuff"]
    depth = teachers["depth"]
    assert depth["model_type"] == "dpt" and depth["output"] == "disparity" and depth["spec"] == f"hf:{hf_dirs['dpt']}"
    assert teachers["normals"]["plugin"] == "teachers" and "transformers" in manifest["versions"]
    assert manifest["splits"]["train"]["complete"]

    report = check_dataset(out, modalities("rgb", "depth", "semseg", "normals", "edges"))
    assert report["clean"], report
    assert report["splits"]["train"]["samples"] == 6
    result = run_cli("pretrain", "--data", str(out), "--modalities", "rgb,depth", "--steps", "2", "--batch-size", "2",
                     "--image-size", "32", "--device", "cpu", "--out", str(tmp_path / "runs"), "--name", "p",
                     "--set", "preview_every=0", "--set", "data.workers=0", "--set", "model.depth=1",
                     "--set", "model.dim=32", "--set", "model.num_heads=2", "--set", "model.decoder_dim=16",
                     "--set", "model.decoder_num_heads=2", "--set", "model.decoder_depth=1", "--quiet")
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "runs" / "p" / "last" / "model.safetensors").is_file()


def test_multimae_checkpoint_teacher_through_the_cli(tmp_path, rgb_dir, checkpoint):
    out = tmp_path / "dataset"
    result = run_cli("pseudolabel", str(rgb_dir), "--out", str(out), "--modalities", "depth,semseg",
                     "--teacher", f"depth=multimae:{checkpoint}", "--teacher", f"semseg=multimae:{checkpoint}",
                     "--device", "cpu", "--rgb", "symlink", "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["labelled"] == 6 and summary["modalities"] == ["rgb", "depth", "semseg"]
    assert (out / "train" / "rgb" / "kitchen" / "000.png").is_symlink()
    assert check_dataset(out, modalities("rgb", "depth", "semseg"))["clean"]
    teachers = json.loads((out / "pseudolabel.json").read_text())["splits"]["train"]["teachers"]
    assert teachers["semseg"]["checkpoint"] == str(checkpoint) and teachers["semseg"]["num_classes"] == 133


def test_an_interrupted_run_finishes_only_the_rest(tmp_path, rgb_dir):
    out = tmp_path / "dataset"

    def stop_after_first_batch(done, total, rate):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        pseudolabel(rgb_dir, out, ["edges"], batch_size=2, progress=stop_after_first_batch)
    first = files(out / "train")
    assert len(first) == 4  # two images, each rgb + edges
    summary = pseudolabel(rgb_dir, out, ["edges"], batch_size=2)
    assert (summary["labelled"], summary["already_done"], summary["files_written"]) == (4, 2, 8)
    after = files(out / "train")
    assert len(after) == 12 and all(after[name] == stamp for name, stamp in first.items())

    (out / "train" / "edges" / "hall" / "004.png").unlink()  # one output lost: only it is made again
    summary = pseudolabel(rgb_dir, out, ["edges"], batch_size=2)
    assert (summary["labelled"], summary["already_done"], summary["files_written"]) == (1, 5, 1)
    assert pseudolabel(rgb_dir, out, ["edges"])["labelled"] == 0
    assert pseudolabel(rgb_dir, out, ["edges"], overwrite=True)["files_written"] == 12


def test_unreadable_images_stop_the_run_unless_skipped(tmp_path, rgb_dir):
    """As in `predict`: the first unreadable image is a one-line error naming it (what came before is kept, and
    a rerun goes on from there); with `skip_bad` unreadable images are skipped and counted."""
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("000.png", "001.png"):
        (photos / name).write_bytes((rgb_dir / "kitchen" / name).read_bytes())
    (photos / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (photos / "cut.jpg").write_bytes((rgb_dir / "hall" / "005.jpg").read_bytes()[:500])
    with pytest.raises(InputError, match=r"broken.png: not a readable image .*--skip-bad"):
        pseudolabel(photos, tmp_path / "dataset", ["edges"], batch_size=2)
    assert sorted(p.name for p in (tmp_path / "dataset" / "train" / "edges").iterdir()) == ["000.png", "001.png"]
    summary = pseudolabel(photos, tmp_path / "dataset", ["edges"], skip_bad=True)
    assert summary["already_done"] == 2
    summary = pseudolabel(photos, tmp_path / "dataset2", ["edges"], skip_bad=True)
    assert (summary["labelled"], summary["skipped"]) == (2, 2)
    assert any("broken.png" in line and "not a readable image" in line for line in summary["skipped_files"])
    assert any("cut.jpg" in line and "truncated" in line for line in summary["skipped_files"])
    assert check_dataset(tmp_path / "dataset", modalities("rgb", "edges"))["clean"]
    manifest = json.loads((tmp_path / "dataset" / "pseudolabel.json").read_text())
    assert manifest["splits"]["train"]["skipped"] == 2 and not manifest["splits"]["train"]["complete"]


def test_bad_requests_fail_before_anything_is_written(tmp_path, rgb_dir, hf_dirs):
    import torch

    from multimae_cli import ModelConfig, create_model, save_model
    from multimae_cli.plugin.factory import build_task_model
    from multimae_cli.plugin.registry import get_registry

    out = tmp_path / "dataset"
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{")
    config = ModelConfig(inputs=("rgb", "depth"), outputs=(), image_size=(32, 32), patch_size=16, dim=32, depth=4,
                         num_heads=2, num_encoded_tokens=4)
    torch.manual_seed(0)
    tuned = build_task_model(create_model(config), get_registry().task("semseg"), "convnext", 5, {"embed_dim": 16})
    tuned.task_info = {"task": "semseg", "head": "convnext", "head_options": {"embed_dim": 16}, "num_outputs": 5,
                       "classes": None, "depth_scale": 1.0, "reduce_zero_label": False}
    save_model(tuned, tmp_path / "rgbd-semseg.safetensors")  # its head reads depth too, which a teacher lacks
    cases = [
        (["depth"], {}, ConfigError, "--modalities depth: no teacher makes depth by default; name one with --teacher"),
        (["normals"], {}, ConfigError, "teacher normals-from-depth needs depth; add depth to --modalities"),
        (["depth"], {"depth": "nope:x"}, ConfigError, "--teacher depth=nope:x: no teacher named 'nope'"),
        (["edges"], {"edges": "normals-from-depth"}, ConfigError, "makes normals, not edges"),
        (["edges"], {"depth": "hf:x"}, ConfigError, "depth is not among --modalities"),
        (["edges"], {"edges": "edges:prewitt"}, ConfigError, "expected edges:canny or edges:sobel"),
        (["edges"], {"edges": "edges,size=3"}, ConfigError, "teacher option 'size' is unknown"),
        (["depth"], {"depth": f"hf:{tmp_path}"}, ConfigError, "not a Hugging Face model folder"),
        (["depth"], {"depth": f"hf:{hf_dirs['segformer']}"}, ConfigError, "'segformer' model is not a depth-est"),
        (["depth"], {"depth": f"hf:{tmp_path / 'broken'}"}, ConfigError, "broken: not a loadable transformers model"),
        (["depth"], {"depth": f"hf:{hf_dirs['dpt']},output=metres"}, ConfigError, "output=metres: expected depth or"),
        (["normals"], {"normals": "hf:x"}, ConfigError, "teacher hf makes depth maps or label maps, not 'normals'"),
        (["lidar"], {}, UnknownModalityError, "unknown modality 'lidar'"),
        (["semseg"], {"semseg": f"multimae:{tmp_path / 'rgbd-semseg.safetensors'}"}, ConfigError,
         "this fine-tuned checkpoint reads rgb, depth; a teacher gets rgb only"),  # was a failure mid-run
    ]
    for names, specs, error, message in cases:
        with pytest.raises(error) as caught:
            pseudolabel(rgb_dir, out, names, specs)
        assert message in str(caught.value) and "\n" not in str(caught.value)
    with pytest.raises(InputError, match="no such folder"):
        pseudolabel(tmp_path / "missing", out, ["edges"])
    with pytest.raises(ConfigError, match="would lie inside"):
        pseudolabel(rgb_dir, rgb_dir / "out", ["edges"])
    assert not out.exists()


def test_a_modality_made_by_another_teacher_is_not_replaced(tmp_path, rgb_dir):
    out = tmp_path / "dataset"
    pseudolabel(rgb_dir, out, ["edges"])
    before = files(out)
    with pytest.raises(ConfigError, match=r"edges was made by edges, not edges:sobel \(pass --overwrite"):
        pseudolabel(rgb_dir, out, ["edges"], {"edges": "edges:sobel"})
    assert files(out) == before
    assert pseudolabel(rgb_dir, out, ["edges"], {"edges": "edges:sobel"}, overwrite=True)["files_written"] == 12


def test_cli_errors_are_one_line_with_exit_code_2(tmp_path, rgb_dir):
    env = {"PYTHONWARNINGS": "ignore"}
    result = run_cli("pseudolabel", str(rgb_dir), "--out", str(tmp_path / "d"), "--modalities", "depth", env=env)
    assert result.returncode == 2
    assert result.stderr.startswith("error: --modalities depth: no teacher makes depth")
    assert result.stderr.count("\n") == 1
    result = run_cli("pseudolabel", str(rgb_dir), "--out", str(tmp_path / "d"), "--modalities", "edges",
                     "--teacher", "edges", env=env)
    assert result.returncode == 2 and result.stderr.startswith("error: --teacher edges: expected MODALITY=TEACHER")
    result = run_cli("pseudolabel", str(rgb_dir), "--out", str(tmp_path / "d"), "--modalities", "edges", "--quiet")
    assert result.returncode == 0 and result.stdout == "" and result.stderr == ""
    assert os.path.isfile(tmp_path / "d" / "train" / "edges" / "hall" / "005.png")


def test_mask_classification_outputs_become_label_maps():
    """Mask2Former-style outputs (needs scipy to build in transformers, so faked here): each pixel takes the
    class whose queries' masks cover it, weighted by the queries' class probabilities."""
    import torch

    from multimae_plugins.teachers import semantic_scores

    classes = torch.full((1, 2, 4), -9.0)  # two queries, three classes + "no object"
    classes[0, 0, 2] = classes[0, 1, 0] = 9.0
    masks = torch.full((1, 2, 4, 4), -9.0)
    masks[0, 0, :, :2] = masks[0, 1, :, 2:] = 9.0
    outputs = SimpleNamespace(class_queries_logits=classes, masks_queries_logits=masks)
    ids = semantic_scores(outputs, 0, (8, 8)).argmax(0)
    assert ids.shape == (8, 8) and (ids[:, :3] == 2).all() and (ids[:, 5:] == 0).all()


def test_hf_teacher_without_transformers_says_how_to_install(tmp_path, rgb_dir, hf_dirs, monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(ConfigError, match=r"teacher hf needs the transformers package: pip install 'multimae\[hf\]'"):
        pseudolabel(rgb_dir, tmp_path / "dataset", ["depth"], {"depth": f"hf:{hf_dirs['dpt']}"})


def test_hf_teacher_takes_hub_ids_through_the_hub_cache(tmp_path, rgb_dir, hf_dirs):
    """`hf:ORG/NAME` goes through huggingface_hub's own cache and honours HF_HUB_OFFLINE: a cached id labels like
    its folder; an id that is neither a folder nor cached is one line (nothing is downloaded in tests)."""
    import shutil

    revision = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--lab--tiny-dpt"
    shutil.copytree(hf_dirs["dpt"], repo / "snapshots" / revision)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    env = {"HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1"}
    by_id = run_cli("pseudolabel", str(rgb_dir), "--out", str(tmp_path / "by-id"), "--modalities", "depth",
                    "--teacher", "depth=hf:lab/tiny-dpt", "--device", "cpu", "--quiet", env=env)
    assert by_id.returncode == 0, by_id.stderr
    by_folder = run_cli("pseudolabel", str(rgb_dir), "--out", str(tmp_path / "by-folder"), "--modalities", "depth",
                        "--teacher", f"depth=hf:{hf_dirs['dpt']}", "--device", "cpu", "--quiet", env=env)
    assert by_folder.returncode == 0, by_folder.stderr
    for path in sorted((tmp_path / "by-folder" / "train" / "depth").rglob("*.png")):
        twin = tmp_path / "by-id" / path.relative_to(tmp_path / "by-folder")
        assert twin.read_bytes() == path.read_bytes(), path
    missing = run_cli("pseudolabel", str(rgb_dir), "--out", str(tmp_path / "none"), "--modalities", "depth",
                      "--teacher", "depth=hf:lab/not-cached", "--device", "cpu", "--quiet", env=env)
    assert missing.returncode == 2 and len(missing.stderr.strip().splitlines()) == 1
    assert missing.stderr.startswith("error: hf:lab/not-cached: no such folder here, and the Hugging Face hub did "
                                     "not give it ("), missing.stderr


def test_two_torchrun_processes_write_what_one_process_writes(tmp_path, rgb_dir):
    """`multimae pseudolabel` under torchrun (2 gloo processes): each labels its own slice; the files are
    byte-identical to one process's, and the one manifest counts every image."""
    import os
    import subprocess
    import sys

    one = pseudolabel(rgb_dir, tmp_path / "one", ["edges"], batch_size=2)
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29533", "-m",
         "multimae_cli", "pseudolabel", str(rgb_dir), "--out", str(tmp_path / "two"), "--modalities", "edges",
         "--batch-size", "2", "--json"],
        capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout)
    assert (summary["labelled"], summary["processes"], summary["files_written"]) == (6, 2, 12)
    files = {p.relative_to(tmp_path / "one"): p.read_bytes() for p in (tmp_path / "one").rglob("*.*")
             if p.name != "pseudolabel.json"}
    assert files and files == {p.relative_to(tmp_path / "two"): p.read_bytes() for p in (tmp_path / "two").rglob("*.*")
                               if p.name != "pseudolabel.json"}
    manifest = json.loads((tmp_path / "two" / "pseudolabel.json").read_text())["splits"]["train"]
    assert manifest["images"] == 6 and manifest["complete"] and one["labelled"] == 6
