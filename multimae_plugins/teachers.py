"""Built-in pseudo-labelling teachers, and `edges`, the Taskonomy-style modality one of them makes.

- `multimae:CKPT`: a multimae checkpoint predicts the modality from rgb (cross-modal prediction).
- `hf:DIR` or `hf:ORG/NAME`: a Hugging Face `transformers` depth-estimation or segmentation model, saved in a
  local folder or a hub id fetched through huggingface_hub's own cache (which honours `HF_HUB_OFFLINE`)
  (`pip install 'multimae[hf]'`). The paper's teachers map as: depth from DPT trained on Omnidata (a
  `DPTForDepthEstimation` folder; it predicts depth, so pass `output=depth`; the Intel DPT / Depth Anything
  relative models predict inverse depth, the default for `dpt` and `depth_anything`), semseg from
  Mask2Former with the 133 COCO panoptic classes (`Mask2FormerForUniversalSegmentation`, e.g. a Swin
  COCO-panoptic checkpoint; its class names go to the manifest). SegFormer / UperNet / BEiT work alike.
- `normals-from-depth`: analytic camera-frame normals from a depth map, with a horizontal field of view
  (`fov=DEG`, default 60) or a focal length in pixels (`focal=PX`).
- `edges` (`edges:canny`, the default, or `edges:sobel`): OpenCV edges of the rgb image.
"""

from __future__ import annotations

import json
import math
import re
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from multimae_cli import (
    ConfigError,
    InputError,
    Labeler,
    MaskedL1,
    Modality,
    PatchInput,
    SpatialOutput,
    Teacher,
    TeacherRequest,
    by_size,
    hookimpl,
    read_array,
    read_image,
    write_array,
    write_image,
)

if TYPE_CHECKING:
    import numpy as np
    import torch

DEPTH_SCALE = 1000.0  # metric depth is written in millimetres, as the synthetic scenes are


def _device(name: str) -> str:
    import torch

    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device: cuda requested but no CUDA GPU is available")
    return "cuda" if name == "cuda" or (name == "auto" and torch.cuda.is_available()) else "cpu"


# ---------------------------------------------------------------- multimae:CKPT


@lru_cache(maxsize=4)
def _predictor(path: str, device: str):
    """One loaded model per checkpoint, shared by the modalities it makes in a run."""
    from multimae_cli import Predictor

    return Predictor.from_checkpoint(path, device)


def load_multimae(request: TeacherRequest) -> Labeler:
    from multimae_cli import find_checkpoint

    request.check_options([])
    if not request.arg:
        raise ConfigError("teacher multimae needs a checkpoint: multimae:CKPT (a file or run folder)")
    weights = find_checkpoint(request.arg)
    predictor = _predictor(str(weights), request.device)
    name = request.modality.name
    if "rgb" not in predictor.config.inputs:
        raise ConfigError(f"{weights}: this checkpoint does not take rgb "
                          f"(inputs: {', '.join(predictor.config.inputs)})")
    if predictor.task is not None and list(predictor.config.inputs) != ["rgb"]:  # its head reads every input
        raise ConfigError(f"{weights}: this fine-tuned checkpoint reads {', '.join(predictor.config.inputs)}; "
                          "a teacher gets rgb only (fine-tune one with --inputs rgb)")
    if name not in predictor.tasks:
        raise ConfigError(f"{weights}: this checkpoint cannot predict {name} (it predicts: "
                          f"{', '.join(predictor.tasks) or 'nothing'})")

    def label(samples):
        arrays = [None] * len(samples)
        for group in by_size(samples):
            batch = [(str(i), {"rgb": samples[i]["rgb"]}) for i in group]
            for i, result in zip(group, predictor(batch, [name]), strict=True):
                arrays[i] = predictor.file_array(name, result.outputs[name])
        return arrays

    info = {"checkpoint": str(weights), "inputs": ["rgb"], "image_size": list(predictor.config.image_size)}
    if predictor.modalities[name].kind == "labels":
        info["num_classes"] = predictor.modalities[name].channels
    return Labeler(label, info)


# ---------------------------------------------------------------- hf:DIR


def _hf_model(folder: Path, kind: str):
    """The transformers model in `folder` for `kind` (`depth` or `labels`), loaded from local files only."""
    try:
        import transformers
        from transformers.models.auto import modeling_auto as auto
    except ImportError:
        raise ConfigError("teacher hf needs the transformers package: pip install 'multimae[hf]'") from None
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    try:
        config = transformers.AutoConfig.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{folder}: not a loadable transformers model ({str(exc).splitlines()[0]})") from None
    if kind == "depth":
        classes = [(auto.MODEL_FOR_DEPTH_ESTIMATION_MAPPING_NAMES, transformers.AutoModelForDepthEstimation)]
    else:
        classes = [
            (auto.MODEL_FOR_SEMANTIC_SEGMENTATION_MAPPING_NAMES, transformers.AutoModelForSemanticSegmentation),
            (auto.MODEL_FOR_UNIVERSAL_SEGMENTATION_MAPPING_NAMES, transformers.AutoModelForUniversalSegmentation),
        ]
    for names, auto_class in classes:
        if config.model_type in names:
            try:
                return auto_class.from_pretrained(folder, local_files_only=True), transformers.__version__
            except (OSError, ValueError) as exc:
                raise ConfigError(f"{folder}: weights not loadable ({str(exc).splitlines()[0]})") from None
    task = "depth-estimation" if kind == "depth" else "segmentation"
    raise ConfigError(f"{folder}: a {config.model_type!r} model is not a {task} model transformers knows")


def _hf_preprocessing(folder: Path, config) -> dict:
    """Mean, std and sizing from the folder's `preprocessor_config.json` (read as JSON: no PIL on the way),
    else ImageNet statistics at the model's own square size (plain ViTs need it) or about 512^2 pixels."""
    path = folder / "preprocessor_config.json"
    try:
        saved = json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: not readable JSON ({exc})") from None
    size = saved.get("size") or {}
    image_size = getattr(config, "image_size", None)
    if isinstance(size, int):
        size = {"shortest_edge": size}
    if "height" in size and "width" in size:
        fixed = None if saved.get("keep_aspect_ratio") else (size["height"], size["width"])
        pixels = size["height"] * size["width"]
    elif "shortest_edge" in size:
        fixed, pixels = None, size["shortest_edge"] ** 2
    elif isinstance(image_size, int) and config.model_type in ("dpt", "beit", "data2vec-vision"):
        fixed, pixels = (image_size, image_size), image_size**2
    else:
        fixed, pixels = None, 512**2
    return {
        "mean": saved.get("image_mean", [0.485, 0.456, 0.406]) if saved.get("do_normalize", True) else [0, 0, 0],
        "std": saved.get("image_std", [0.229, 0.224, 0.225]) if saved.get("do_normalize", True) else [1, 1, 1],
        "fixed": fixed, "pixels": pixels,
        "multiple": saved.get("ensure_multiple_of") or saved.get("size_divisor") or 32,
    }


def _hf_input(images: np.ndarray, prep: dict, device: str) -> torch.Tensor:
    """(B, H, W, 3) uint8 -> normalised (B, 3, h, w) at the size the model wants."""
    import torch
    import torch.nn.functional as F

    from multimae_cli import working_size

    height, width = images.shape[1:3]
    size = prep["fixed"] or working_size(height, width, (round(math.sqrt(prep["pixels"])),) * 2, prep["multiple"])
    x = torch.from_numpy(images).to(device).permute(0, 3, 1, 2).float() / 255.0
    x = F.interpolate(x, size=size, mode="bicubic", align_corners=False) if tuple(size) != (height, width) else x
    mean = torch.tensor(prep["mean"], device=device).view(1, 3, 1, 1)
    std = torch.tensor(prep["std"], device=device).view(1, 3, 1, 1)
    return (x - mean) / std


def semantic_scores(outputs, index: int, size: tuple[int, int]) -> torch.Tensor:
    """(K, H, W) class scores of image `index` at `size` (one image at a time: K full-size maps are large) from
    a per-pixel head (`logits`) or a mask classifier (Mask2Former: class-weighted mask probabilities, as
    transformers' semantic post-processing)."""
    import torch.nn.functional as F

    def upsample(maps: torch.Tensor) -> torch.Tensor:
        return F.interpolate(maps[index:index + 1], size=size, mode="bilinear", align_corners=False)[0]

    if getattr(outputs, "class_queries_logits", None) is not None:
        classes = outputs.class_queries_logits[index].softmax(-1)[:, :-1]  # the last class means "no object"
        return (classes[:, :, None, None] * upsample(outputs.masks_queries_logits).sigmoid()[:, None]).sum(0)
    return upsample(outputs.logits)


def _hub_snapshot(repo_id: str) -> Path:
    """A hub id's files through huggingface_hub's own cache (`HF_HOME`), which honours `HF_HUB_OFFLINE`."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise ConfigError("teacher hf needs the transformers package: pip install 'multimae[hf]'") from None
    try:
        return Path(snapshot_download(repo_id))
    except Exception as exc:  # offline and not cached, no network, no such repository: all one line
        detail = str(exc).splitlines()[0] if str(exc) else ""
        raise ConfigError(f"hf:{repo_id}: no such folder here, and the Hugging Face hub did not give it "
                          f"({type(exc).__name__}{': ' + detail[:160] if detail else ''})") from None


def load_hf(request: TeacherRequest) -> Labeler:
    import numpy as np
    import torch
    import torch.nn.functional as F

    modality = request.modality
    kind = "labels" if modality.kind == "labels" else "depth" if modality.channels == 1 else None
    if kind is None:
        raise ConfigError(f"teacher hf makes depth maps or label maps, not {modality.name!r} "
                          f"({modality.channels} channels)")
    request.check_options(["output"] if kind == "depth" else [])
    if not request.arg:
        raise ConfigError("teacher hf needs a model folder or hub id: hf:DIR or hf:ORG/NAME")
    folder = Path(request.arg)
    if not folder.exists() and re.fullmatch(r"[\w.-]+/[\w.-]+", request.arg):
        folder = _hub_snapshot(request.arg)
    if not (folder / "config.json").is_file():
        raise ConfigError(f"{folder}: not a Hugging Face model folder (no config.json)")
    device = _device(request.device)
    model, version = _hf_model(folder, kind)
    model = model.to(device).eval()
    config = model.config
    prep = _hf_preprocessing(folder, config)
    info = {"model": str(folder), "model_type": config.model_type, "architectures": config.architectures,
            "transformers": version, "input": {"mean": prep["mean"], "std": prep["std"],
                                               "size": prep["fixed"] or f"about {prep['pixels']} pixels"}}
    if kind == "labels":
        names = {int(k): v for k, v in (config.id2label or {}).items()}
        info["classes"] = [names.get(i, str(i)) for i in range(config.num_labels)]
    else:
        metric = getattr(config, "depth_estimation_type", None) == "metric" or config.model_type in (
            "glpn", "zoedepth", "depth_pro")
        relative_inverse = config.model_type in ("dpt", "depth_anything", "prompt_depth_anything") and not metric
        output = request.option("output", "disparity" if relative_inverse else "depth")
        if output not in ("depth", "disparity"):
            raise ConfigError(f"teacher option output={output}: expected depth or disparity")
        info["output"] = output
        info["units"] = "millimetres" if metric and output == "depth" else "relative: each map scaled to max 65535"

    def to_depth(predicted: torch.Tensor) -> np.ndarray:
        value = predicted.float().clamp_min(0)
        if info["output"] == "disparity":  # inverse depth, floored so far-away pixels stay finite
            value = 1.0 / value.clamp_min(value.max() * 1e-3 + 1e-12)
        if info["units"] == "millimetres":
            return (value * DEPTH_SCALE).cpu().numpy()
        return (value / value.max().clamp_min(1e-12) * 65535.0).clamp_min(1).cpu().numpy()  # 0 would mean "none"

    @torch.inference_mode()
    def label(samples):
        arrays = [None] * len(samples)
        for group in by_size(samples):
            images = np.stack([samples[i]["rgb"] for i in group])
            size = images.shape[1:3]
            outputs = model(pixel_values=_hf_input(images, prep, device))
            if kind == "labels":
                for j, i in enumerate(group):
                    arrays[i] = semantic_scores(outputs, j, size).argmax(0).cpu().numpy()
            else:
                depth = F.interpolate(outputs.predicted_depth[:, None], size=size, mode="bilinear",
                                      align_corners=False)[:, 0]
                for j, i in enumerate(group):
                    arrays[i] = to_depth(depth[j])
        return arrays

    return Labeler(label, info)


# ---------------------------------------------------------------- normals-from-depth


def normals_from_depth(depth: np.ndarray, focal: float) -> np.ndarray:
    """Camera-frame unit normals (x right, y up, z towards the camera) of a z-depth map (any unit) seen by a
    pinhole camera with `focal` pixels and the principal point at the image centre.

    Each pixel is back-projected; its tangents are differences to its neighbours. Any two points of a plane
    span it, so planes come out exact; at a depth step the side with less depth change is used, so normals at
    an object's silhouette are not bent towards the background.
    Pixels without depth (<= 0) face the camera.
    """
    import numpy as np

    depth = depth.astype(np.float64)
    height, width = depth.shape
    x = (np.arange(width) + 0.5 - width / 2) / focal
    y = (height / 2 - np.arange(height) - 0.5) / focal
    points = np.stack([depth * x[None, :], depth * y[:, None], -depth], -1)
    padded = np.pad(points, ((1, 1), (1, 1), (0, 0)), mode="edge")

    def tangent(ahead: np.ndarray, behind: np.ndarray) -> np.ndarray:
        """Central difference where depth runs on smoothly (less noise), else the side with less depth change."""
        forward, backward = ahead - points, points - behind
        one_sided = np.where((np.abs(forward[..., 2]) < np.abs(backward[..., 2]))[..., None], forward, backward)
        kink = np.abs(forward[..., 2] - backward[..., 2]) > 0.4 * depth / focal  # 0.4 of a pixel's footprint
        return np.where(kink[..., None], one_sided, (ahead - behind) / 2)

    right = tangent(padded[1:-1, 2:], padded[1:-1, :-2])
    up = tangent(padded[:-2, 1:-1], padded[2:, 1:-1])
    normals = np.cross(right, up)
    normals *= np.where((normals * points).sum(-1, keepdims=True) > 0, -1.0, 1.0)  # face the camera
    length = np.linalg.norm(normals, axis=-1, keepdims=True)
    valid = (length > 0) & (depth > 0)[..., None]
    normals = np.where(valid, normals / np.where(length > 0, length, 1), np.array([0.0, 0.0, 1.0]))
    return normals.astype(np.float32)


def load_normals_from_depth(request: TeacherRequest) -> Labeler:
    request.check_options(["fov", "focal"])
    if request.arg:
        raise ConfigError(f"teacher normals-from-depth takes no argument (got {request.arg!r}); "
                          "use normals-from-depth,fov=DEG or normals-from-depth,focal=PX")
    focal = request.option("focal", None, float)
    fov = request.option("fov", 60.0, float)
    if (focal is not None and focal <= 0) or not 0 < fov < 180:
        raise ConfigError("teacher normals-from-depth: focal must be > 0 and fov within (0, 180) degrees")

    def label(samples):
        out = []
        for sample in samples:
            width = sample["depth"].shape[1]
            out.append(normals_from_depth(sample["depth"], focal or width / 2 / math.tan(math.radians(fov) / 2)))
        return out

    info = {"focal_px": focal} if focal is not None else {"horizontal_fov_deg": fov}
    return Labeler(label, {**info, "principal_point": "image centre", "frame": "x right, y up, z towards camera"})


# ---------------------------------------------------------------- edges


def edges(image: np.ndarray, method: str = "canny", low: float = 100.0, high: float = 200.0,
          blur: float = 1.0) -> np.ndarray:
    """(H, W) float32 edge strength in [0, 1] of an RGB uint8 image: Canny's binary edges, or the Sobel
    gradient magnitude (scaled by its maximum possible value) of the blurred grey image."""
    import cv2
    import numpy as np

    grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    if blur > 0:
        grey = cv2.GaussianBlur(grey, (0, 0), blur)
    if method == "canny":
        return (cv2.Canny(grey, low, high) > 0).astype(np.float32)
    gx = cv2.Sobel(grey, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(grey, cv2.CV_32F, 0, 1, ksize=3)
    return np.minimum(cv2.magnitude(gx, gy) / (4 * 255 * math.sqrt(2)), 1.0)


def load_edges(request: TeacherRequest) -> Labeler:
    method = request.arg or "canny"
    if method not in ("canny", "sobel"):
        raise ConfigError(f"teacher edges:{method}: expected edges:canny or edges:sobel")
    request.check_options(["low", "high", "blur"] if method == "canny" else ["blur"])
    settings = {"method": method, "blur": request.option("blur", 1.0, float)}
    if method == "canny":
        settings.update(low=request.option("low", 100.0, float), high=request.option("high", 200.0, float))
    return Labeler(lambda samples: [edges(s["rgb"], **settings) for s in samples], dict(settings))


# ---------------------------------------------------------------- the edges modality


def read_edges(path: Path) -> np.ndarray:
    """(H, W) float32 edge strength in [0, 1] from an 8/16-bit greyscale PNG or a `.npy` array."""
    import numpy as np

    path = Path(path)
    array = read_array(path) if path.suffix == ".npy" else read_image(path, color=False)
    if array.ndim != 2:
        raise InputError(f"{path}: edges must have one channel, got shape {array.shape}")
    if array.dtype.kind in "ui":
        return array.astype(np.float32) / np.iinfo(array.dtype).max
    return array.astype(np.float32)


def write_edges(path: Path, strength: np.ndarray) -> None:
    import numpy as np

    path = Path(path)
    if path.suffix == ".npy":
        write_array(path, strength.astype(np.float32))
    else:
        write_image(path, np.rint(np.clip(strength, 0, 1) * 255).astype(np.uint8))


def normalize_edges(strength: torch.Tensor) -> torch.Tensor:
    """(B, 1, H, W) strength in [0, 1] -> [-1, 1], centred like the other targets."""
    return strength.float() * 2 - 1


def denormalize_edges(value: torch.Tensor) -> torch.Tensor:
    return ((value.float() + 1) / 2).clamp(0, 1)


def colorize_edges(value: torch.Tensor) -> np.ndarray:
    """A normalised (1, H, W) map as white edges on black, uint8 (H, W, 3)."""
    grey = (denormalize_edges(value).reshape(value.shape[-2:]) * 255).round().byte().cpu().numpy()
    return grey[..., None].repeat(3, axis=-1)


# ---------------------------------------------------------------- registration


@hookimpl
def register_modalities(register):
    register(Modality(
        name="edges", channels=1, description="2-D edge strength in [0, 1] (Taskonomy-style; Canny or Sobel)",
        input_adapter=PatchInput(pos_interpolation="bicubic"), output_adapter=SpatialOutput(), loss=MaskedL1(),
        extensions=(".png", ".npy"), read=read_edges, write=write_edges, interpolation="linear",
        normalize=normalize_edges, denormalize=denormalize_edges, colorize=colorize_edges,
    ))


@hookimpl
def register_teachers(register):
    register(Teacher(
        name="multimae", load=load_multimae,
        description="a multimae checkpoint predicts the modality from rgb: multimae:CKPT",
    ))
    register(Teacher(
        name="hf", load=load_hf,
        description="a transformers depth-estimation or segmentation model: hf:DIR or hf:ORG/NAME (hub id)",
    ))
    register(Teacher(
        name="normals-from-depth", load=load_normals_from_depth, produces=("normals",), needs=("depth",),
        default_for=("normals",), description="analytic normals of the depth map (fov=DEG or focal=PX)",
    ))
    register(Teacher(
        name="edges", load=load_edges, produces=("edges",), default_for=("edges",),
        description="OpenCV edges of the rgb image: edges:canny (default) or edges:sobel",
    ))
