"""What the demo page asks for, answered with the prediction engine (`Predictor`): images in, pictures out.

The page uploads files (or picks an example); each becomes a file-space array read by its modality's plugin
and kept under an id. A prediction request names those ids, how many tokens of each input stay visible (or a
Dirichlet draw: a total, a concentration and a seed) and gets back every picture as a PNG: the inputs, the
inputs as masked, and every output drawn by its plugin's colour map. Nothing here knows HTTP (`server.py`).
"""

from __future__ import annotations

import base64
import hashlib
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import InputError, MultiMAEError
from ..predictor import CLASSIFICATION, Predictor, top_classes, working_size

PHOTO = Path(__file__).with_name("coffee.jpg")  # CC0, Rachel Michetti (from scikit-image's sample data)
EXAMPLE_SCENES = 4
MAX_PIXELS = 40_000_000  # refused before decoding where the header tells (PNG, JPEG), else after
MAX_ASPECT = 16
KEPT_PIXELS = 4  # uploads are kept at up to this many times the model's pixel count (the predictor resizes anyway)
KEPT_UPLOADS = 32
MAX_SEED = 2**63 - 1
# File signatures -> the suffix a plugin's reader expects (uploads carry no trustworthy name).
SIGNATURES = {b"\x89PNG\r\n\x1a\n": ".png", b"\xff\xd8\xff": ".jpg", b"\x93NUMPY": ".npy", b"II*\x00": ".tif",
              b"MM\x00*": ".tif", b"v/1\x01": ".exr", b"BM": ".bmp"}


class DemoError(MultiMAEError):
    """A request the page made that cannot be answered (shown in the page, never a crash)."""


class Demo:
    """A checkpoint ready to answer the page: its description, uploads, examples and predictions."""

    def __init__(self, predictor: Predictor, label: str, max_upload_bytes: int = 10_000_000) -> None:
        self.predictor, self.label, self.max_upload_bytes = predictor, label, max_upload_bytes
        self.config = predictor.config
        self.inputs = list(self.config.inputs)
        if predictor.task is not None:  # a fine-tuned model's one output (or its classes)
            self.outputs = predictor.tasks
        else:
            self.outputs = [name for name in predictor.tasks if predictor.modalities[name].colorize is not None]
        self._arrays: OrderedDict[str, tuple[str, np.ndarray]] = OrderedDict()
        self._lock = threading.Lock()  # one prediction at a time: the model is shared, memory stays bounded
        self._decoding = threading.BoundedSemaphore(2)

    @classmethod
    def from_checkpoint(cls, checkpoint: str | Path | None = None, device: str = "auto",
                        max_upload_bytes: int = 10_000_000) -> Demo:
        from ..predictor import find_checkpoint

        weights = find_checkpoint(checkpoint)
        return cls(Predictor.from_checkpoint(weights, device), str(checkpoint or weights), max_upload_bytes)

    # ------------------------------------------------------------------ what the page shows first

    def info(self) -> dict[str, Any]:
        """The checkpoint as the page needs it: inputs (with file types), outputs, examples, limits."""
        modalities = self.predictor.modalities
        return {
            "checkpoint": self.label, "kind": "finetuned" if self.predictor.task else "pretraining",
            "task": self.predictor.task_info["task"] if self.predictor.task else None,
            "primary": self.inputs[0], "outputs": self.outputs, "patch_size": self.config.patch_size,
            "alpha": _alpha(self.predictor.model), "max_upload_bytes": self.max_upload_bytes,
            "inputs": [{"name": name, "extensions": list(modalities[name].extensions or ())} for name in self.inputs],
            "examples": ["photo", *(f"scene-{i}" for i in range(EXAMPLE_SCENES))],
        }

    def example(self, name: str) -> dict[str, Any]:
        """Store the example's arrays (a photo: rgb only; a held-out synthetic scene: every modality it renders
        that this checkpoint takes) and describe them as an upload does."""
        if name == "photo":
            from ...data.folder import read_checked

            arrays = {self.inputs[0]: read_checked(PHOTO, self.predictor.modalities[self.inputs[0]])}
        elif name.startswith("scene-") and name[6:].isdecimal() and int(name[6:]) < EXAMPLE_SCENES:
            from ...data.synthetic.io import split_seed
            from ...data.synthetic.scenes import DEPTH_SCALE, render_scene

            scene = render_scene(split_seed(0, "test"), int(name[6:]), tuple(self.config.image_size))
            scene["depth"] = scene["depth"] * DEPTH_SCALE
            arrays = {key: value for key, value in scene.items() if key in self.inputs}
        else:
            raise DemoError(f"no example named {name!r}")
        return {modality: self._keep(modality, array, name) for modality, array in arrays.items()}

    def upload(self, modality: str, data: bytes, filename: str = "upload") -> dict[str, Any]:
        """Read an uploaded file with `modality`'s plugin; refuse what is too large, not a file it reads, or
        not an image."""
        if modality not in self.inputs:
            raise DemoError(f"{modality!r} is not an input of this checkpoint ({', '.join(self.inputs)})")
        if len(data) > self.max_upload_bytes:
            raise DemoError(f"{filename}: {len(data) / 1e6:.1f} MB is over the upload limit of "
                            f"{self.max_upload_bytes / 1e6:.1f} MB")
        suffix = ".webp" if data[:4] == b"RIFF" and data[8:12] == b"WEBP" else \
            next((s for sig, s in SIGNATURES.items() if data.startswith(sig)), None)
        accepted = [s.lower() for s in self.predictor.modalities[modality].extensions or ()]
        if suffix is None or (suffix not in accepted and not (suffix == ".jpg" and ".jpeg" in accepted)):
            raise DemoError(f"{filename}: not an image {modality} reads (it reads {', '.join(accepted)} files)")
        declared = declared_size(data)
        if declared is not None:
            _check_size(*declared, filename)
        from ...data.folder import read_checked

        with self._decoding:  # a few decodes at a time: memory stays bounded
            try:
                array = read_checked(Path(f"upload{suffix}"), self.predictor.modalities[modality], data=data)
            except InputError as exc:
                raise DemoError(f"{filename}: {str(exc).split(': ', 1)[-1]}") from None
        _check_size(array.shape[0], array.shape[1], filename)
        return self._keep(modality, self._shrunk(modality, array), filename, array.shape[:2])

    def _shrunk(self, modality: str, array: np.ndarray) -> np.ndarray:
        """At most KEPT_PIXELS times the model's pixel count, resized by the modality's own rule."""
        from ...data.transforms import resize

        height, width = array.shape[:2]
        scale = (KEPT_PIXELS * self.config.image_size[0] * self.config.image_size[1] / (height * width)) ** 0.5
        if scale >= 1:
            return array
        size = (max(1, round(height * scale)), max(1, round(width * scale)))
        return resize(array, size, self.predictor.modalities[modality].interpolation)

    def _keep(self, modality: str, array: np.ndarray, source: str,
              original: tuple[int, int] | None = None) -> dict[str, Any]:
        key = hashlib.sha256(modality.encode() + array.tobytes() + str(array.shape).encode()).hexdigest()[:16]
        with self._lock:
            self._arrays[key] = (modality, array)
            self._arrays.move_to_end(key)
            while len(self._arrays) > KEPT_UPLOADS:
                self._arrays.popitem(last=False)
        height, width = original or array.shape[:2]
        grid = self._grid(height, width)
        return {"id": key, "modality": modality, "source": source, "width": width, "height": height,
                "tokens": grid[0] * grid[1], "grid": list(grid), "picture": _png(self._draw(modality, array))}

    def _grid(self, height: int, width: int) -> tuple[int, int]:
        size = working_size(height, width, self.config.image_size, self.config.patch_size)
        return size[0] // self.config.patch_size, size[1] // self.config.patch_size

    def _draw(self, modality: str, array: np.ndarray) -> np.ndarray | None:
        """A file-space array as its plugin draws it (None when the plugin has no colour map)."""
        from ...data.transforms import normalize_sample, to_tensor

        plugin = self.predictor.modalities[modality]
        if plugin.colorize is None:
            return None
        return plugin.colorize(normalize_sample({modality: to_tensor(array, plugin)}, {modality: plugin})[modality])

    # ------------------------------------------------------------------ predictions

    def predict(self, request: Mapping[str, Any]) -> dict[str, Any]:
        """Answer `{"images": {modality: id}, "visible": {modality: n}}` (tokens kept per input), or
        `{"images": ..., "dirichlet": {"total": n, "alpha": a}}`, both with an optional `"seed"`."""
        images = request.get("images")
        if not isinstance(images, Mapping) or self.inputs[0] not in images:
            raise DemoError(f"choose or upload an image first (the {self.inputs[0]} input)")
        sample = {}
        with self._lock:
            for modality, key in images.items():
                kept = self._arrays.get(str(key))
                if kept is None or kept[0] != modality:
                    raise DemoError(f"the {modality} image is no longer kept by the server: upload it again")
                sample[modality] = kept[1]
        sample = _match_sizes(sample, self.inputs[0])
        seed = _integer(request.get("seed", 0), "seed")
        if not 0 <= seed <= MAX_SEED:
            raise DemoError(f"seed must lie in [0, {MAX_SEED}], got {seed}")
        kwargs: dict[str, Any] = {}
        if self.predictor.task is None:
            kwargs = self._masking(request, sample)
        started = time.perf_counter()
        with self._lock:
            try:
                result = self.predictor([("page", sample)], self.outputs, seed=seed, pictures=True, **kwargs)[0]
            except MultiMAEError as exc:
                raise DemoError(str(exc)) from None
        seconds = time.perf_counter() - started
        pictures, drawn_inputs = [], {}
        for index, (name, value, *_) in enumerate(result.pictures):  # the inputs, masked inputs, then outputs
            group = "input" if index < len(sample) else "masked" if name.startswith("masked ") else "output"
            drawn = value if isinstance(value, np.ndarray) else self._draw_model_space(name, value)
            if group == "input":
                drawn_inputs[name] = drawn
            elif group == "output" and name in result.masks and drawn_inputs.get(name) is not None:
                drawn = _paste(drawn_inputs[name], drawn, result.masks[name])  # as the official demo shows it
            if drawn is not None:
                pictures.append({"title": f"predicted {name}" if group == "output" else name, "group": group,
                                 "png": _png(drawn)})
        visible = {name: int((~hidden).sum()) for name, hidden in result.masks.items()}
        answer = {"pictures": pictures, "visible": visible, "seconds": round(seconds, 3)}
        if CLASSIFICATION in result.outputs:
            answer["classes"] = top_classes(result.outputs[CLASSIFICATION], self.predictor.task_info.get("classes"))
        return answer

    def _masking(self, request: Mapping[str, Any], sample: Mapping[str, np.ndarray]) -> dict[str, Any]:
        """The Predictor's masking arguments for a request: tokens per input, or a Dirichlet draw."""
        height, width = next(iter(sample.values())).shape[:2]
        per_input = int(np.prod(self._grid(height, width)))
        dirichlet = request.get("dirichlet")
        if dirichlet is not None:
            if not isinstance(dirichlet, Mapping):
                raise DemoError("dirichlet must be an object with total and alpha")
            total = _integer(dirichlet.get("total"), "dirichlet total")
            alpha = dirichlet.get("alpha", 1.0)
            if not 1 <= total <= per_input * len(sample):
                raise DemoError(f"dirichlet total must lie in [1, {per_input * len(sample)}], got {total}")
            if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 < alpha < math.inf:
                raise DemoError(f"dirichlet alpha must be a positive number, got {alpha!r}")
            return {"mask_ratio": 1 - total / (per_input * len(sample)), "alphas": alpha}
        visible = request.get("visible") or {}
        if not isinstance(visible, Mapping):
            raise DemoError("visible must map each input to a token count")
        counts = {name: _integer(visible.get(name, per_input), f"visible {name}") for name in sample}
        return {"visible": counts}

    def _draw_model_space(self, name: str, tensor) -> np.ndarray | None:
        colorize = self.predictor.modalities[name].colorize
        if colorize is None:
            return None
        return colorize(tensor.float() if tensor.is_floating_point() else tensor)


def _paste(given: np.ndarray, predicted: np.ndarray, hidden: np.ndarray) -> np.ndarray:
    """The prediction of an input with its visible patches taken from the input: the decoder is trained on the
    hidden ones only."""
    from ...data.transforms import resize

    given = resize(given, predicted.shape[:2], "nearest")
    rows = np.arange(predicted.shape[0]) * hidden.shape[0] // predicted.shape[0]
    cols = np.arange(predicted.shape[1]) * hidden.shape[1] // predicted.shape[1]
    return np.where(hidden[rows[:, None], cols[None, :]][..., None], predicted, given)


def _match_sizes(sample: dict[str, np.ndarray], primary: str) -> dict[str, np.ndarray]:
    """Extra inputs must show the primary image's scene: same aspect (to 2 %); they are resized by the
    predictor."""
    height, width = sample[primary].shape[:2]
    for name, array in sample.items():
        h, w = array.shape[:2]
        if abs(h / w - height / width) > 0.02 * height / width:
            raise DemoError(f"the {name} image is {w}x{h}, but the {primary} image is {width}x{height}: "
                            "they must show the same view")
    return sample


def _integer(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or int(value) != value:
        raise DemoError(f"{what} must be a whole number, got {value!r}")
    return int(value)


def _check_size(height: int, width: int, filename: str) -> None:
    if min(height, width) < 1:
        raise DemoError(f"{filename}: an empty image ({width}x{height})")
    if height * width > MAX_PIXELS:
        raise DemoError(f"{filename}: {width}x{height} pixels is over the limit of {MAX_PIXELS / 1e6:.0f} megapixels")
    if max(height, width) > MAX_ASPECT * min(height, width):
        raise DemoError(f"{filename}: {width}x{height} is narrower than 1:{MAX_ASPECT}")


def declared_size(data: bytes) -> tuple[int, int] | None:
    """(height, width) a PNG or JPEG header declares, before anything is decoded; None for other formats."""
    if data.startswith(b"\x89PNG\r\n\x1a\n") and data[12:16] == b"IHDR" and len(data) >= 24:
        return int.from_bytes(data[20:24], "big"), int.from_bytes(data[16:20], "big")
    if data.startswith(b"\xff\xd8"):
        at = 2
        while at + 9 < len(data) and data[at] == 0xFF:
            marker, length = data[at + 1], int.from_bytes(data[at + 2:at + 4], "big")
            if marker in (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF):  # frames
                return int.from_bytes(data[at + 5:at + 7], "big"), int.from_bytes(data[at + 7:at + 9], "big")
            at += 2 + length
    return None


def _alpha(model) -> float:
    alphas = getattr(model, "alphas", 1.0)
    return float(alphas if isinstance(alphas, (int, float)) else alphas[0])


def _png(picture: np.ndarray | None) -> str | None:
    """A uint8 RGB picture as a data URL the page shows directly."""
    import cv2

    if picture is None:
        return None
    ok, data = cv2.imencode(".png", cv2.cvtColor(np.ascontiguousarray(picture), cv2.COLOR_RGB2BGR))
    return "data:image/png;base64," + base64.b64encode(data.tobytes()).decode() if ok else None
