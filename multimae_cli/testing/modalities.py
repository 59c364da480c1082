"""Conformance checks of a modality plugin: everything the core does with a modality, on small data."""

from __future__ import annotations

import re
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..config import ModelConfig
from ..plugin import protocols
from ..plugin.hookspecs import hookimpl
from ..plugin.modality import AdapterContext, Modality
from ..plugin.registry import Registry, get_registry
from ._common import (
    DIM,
    IMAGE_SIZE,
    INTERPOLATIONS,
    PATCH_SIZE,
    _call,
    _check,
    _check_grads,
    _check_layout,
    _fail,
    _pattern,
    file_array,
    make_sample,
)


def check_modality(modality: Modality, sample: np.ndarray | None = None, *,
                   extensions: Sequence[str] | None = None, companion: Modality | str | None = "rgb",
                   train_step: bool = True) -> None:
    """Check everything the core does with `modality`; raise AssertionError naming the first problem.

    `sample` is a file-space array as the plugin's `read` returns it (default: one made by `make_sample`).
    `extensions` are the file types whose write/read round trip is checked (default: the first of the
    modality's extensions, and `.npy` if listed). `companion` is the modality trained alongside it in the tiny
    training step (default: the registered rgb; None: the modality alone).
    """
    what = f"modality {modality.name!r}"
    _check_record(modality, what)
    if modality.target is not None:
        _check_loss(modality, what, None)
        if train_step:
            _train_step(modality, what, companion)
        return
    if sample is None:
        sample = make_sample(modality)
    _check(isinstance(sample, np.ndarray), what, f"a sample must be a numpy array, got {type(sample).__name__}")
    _check_layout(modality, what, sample, "the sample")
    if modality.read is not None and modality.write is not None:
        _check_round_trips(modality, what, sample, extensions)
    _check_flip(modality, what, sample)
    _check_resize(modality, what, sample)
    batch = _check_normalize(modality, what, sample)
    if modality.input_adapter is not None:
        _check_input_adapter(modality, what, batch)
    _check_loss(modality, what, batch)
    _check_colorize(modality, what, batch[0])
    if train_step:
        _train_step(modality, what, companion)


def _check_record(modality: Modality, what: str) -> None:
    _check(bool(re.fullmatch(r"[A-Za-z_][A-Za-z0-9_\-]*", modality.name)), what,
           "a name must be a word (letters, digits, _ or -): it is typed in --modalities and used as a folder name")
    _check(isinstance(modality.channels, int) and modality.channels >= 1, what,
           f"channels must be a positive integer, got {modality.channels!r}")
    _check(modality.kind in ("dense", "labels"), what, f"kind must be 'dense' or 'labels', got {modality.kind!r}")
    _check(isinstance(modality.stride, int) and modality.stride >= 1 and PATCH_SIZE % modality.stride == 0, what,
           f"stride must be a positive divisor of the patch size, got {modality.stride!r}")
    _check(modality.interpolation in INTERPOLATIONS, what,
           f"interpolation {modality.interpolation!r} is not one of {', '.join(INTERPOLATIONS)}")
    if modality.kind == "labels":
        _check(modality.interpolation == "nearest", what,
               f"label maps must be resized with interpolation='nearest' ({modality.interpolation!r} invents "
               "class ids between neighbours)")
    _check(modality.input_adapter is not None or modality.output_adapter is not None, what,
           "neither an input adapter nor an output adapter: it can be neither an input nor an output")
    if modality.output_adapter is not None:
        _check(modality.loss is not None, what, "an output adapter without a loss cannot be trained")
    if modality.target is not None:
        _check(modality.input_adapter is None, what, "a modality with a `target` is an output only: no input adapter")
        return
    _check(bool(modality.extensions), what, "no file extensions: the folder dataset would find no files")
    for extension in modality.extensions:
        _check(extension.startswith(".") and extension == extension.lower(), what,
               f"extension {extension!r} must be lower case and start with '.' (files are matched by "
               "their lower-cased suffix)")
    _check((modality.read is None) == (modality.write is None), what,
           "give both `read` and `write` (predictions are written by `write` and trained on through `read`)")


def _close(a: np.ndarray, b: np.ndarray, tolerance: float) -> bool:
    return a.shape == b.shape and bool(np.all(np.abs(a.astype(np.float64) - b.astype(np.float64)) <= tolerance))


def _check_round_trips(modality: Modality, what: str, sample: np.ndarray, extensions: Sequence[str] | None) -> None:
    """write then read gives the sample back; a missing file is an error, not an empty array."""
    if extensions is None:
        extensions = [modality.extensions[0], *([".npy"] if ".npy" in modality.extensions[1:] else [])]
    tolerance = 0.0 if sample.dtype.kind in "iub" else 1e-5 * max(1.0, float(np.abs(sample).max(initial=0)))
    with tempfile.TemporaryDirectory() as tmp:
        for extension in extensions:
            path = Path(tmp) / f"round-trip{extension}"
            _call(what, f"write to {path.name}", modality.write, path, sample)
            _check(path.is_file(), what, f"write to {path.name} wrote no file")
            back = _call(what, f"read of {path.name}", modality.read, path)
            _check(isinstance(back, np.ndarray), what, f"read of {path.name} returned {type(back).__name__}, "
                                                       "not a numpy array")
            _check_layout(modality, what, back, f"read of {path.name}")
            _check(_close(back, sample, tolerance), what,
                   f"write then read of {path.name} changes the data (max difference "
                   f"{_difference(back, sample)}): reader and writer disagree on scale, channels or layout")
            if modality.decode is not None:
                decoded = _call(what, f"decode of {path.name}'s bytes", modality.decode, path.read_bytes(), path.name)
                _check(isinstance(decoded, np.ndarray) and decoded.dtype == back.dtype
                       and np.array_equal(decoded, back), what,
                       f"decode of {path.name}'s bytes differs from read of the file (shards decode, folders read)")
        missing = Path(tmp) / f"missing{modality.extensions[0]}"
        try:
            modality.read(missing)
        except Exception:
            pass
        else:
            _fail(what, f"read of a missing file {missing.name} returned data instead of raising")


def _difference(a: np.ndarray, b: np.ndarray) -> str:
    if a.shape != b.shape:
        return f"shape {a.shape} vs {b.shape}"
    return f"{np.abs(a.astype(np.float64) - b.astype(np.float64)).max():.4g}"


def _perturbed(modality: Modality, array: np.ndarray, row: int, col: int) -> np.ndarray:
    """`array` with one pixel changed to another valid value."""
    out = array.copy()
    pixel = out[row, col]
    if modality.kind == "labels":
        out[row, col] = (pixel + 1) % modality.channels
    elif out.dtype.kind in "iu":
        high = np.iinfo(out.dtype).max
        out[row, col] = np.where(pixel > high // 2, pixel // 2, pixel + high // 4 + 1)
    else:
        out[row, col] = pixel + 0.5 + 0.5 * np.abs(pixel)
    return out


def _check_flip(modality: Modality, what: str, sample: np.ndarray) -> None:
    """A horizontal mirror: the same layout, twice is the identity, and pixel (r, c) lands at (r, W-1-c)."""
    flipped = _call(what, "flip", modality.flip, sample)
    _check(isinstance(flipped, np.ndarray) and flipped.shape == sample.shape and flipped.dtype == sample.dtype, what,
           f"flip must keep shape {sample.shape} and dtype {sample.dtype}, got "
           f"{getattr(flipped, 'dtype', type(flipped).__name__)} of shape {getattr(flipped, 'shape', None)}")
    twice = modality.flip(flipped)
    _check(_close(twice, sample, 1e-6 * max(1.0, float(np.abs(sample).max(initial=0)))), what,
           f"flipping twice does not give the data back (max difference {_difference(twice, sample)})")
    height, width = sample.shape[:2]
    row, col = height // 3, width // 5
    moved = modality.flip(_perturbed(modality, sample, row, col)) != flipped
    found = sorted({(int(r), int(c)) for r, c in zip(*np.nonzero(moved.reshape(height, width, -1).any(-1)),
                                                      strict=True)})
    expected = [(row, width - 1 - col)]
    _check(bool(found), what, f"flip loses pixel (row {row}, col {col}): changing it changes nothing in the result")
    _check(found == expected, what,
           f"flip misaligns: pixel (row {row}, col {col}) ends up at {_positions(found)}, expected "
           f"(row {row}, col {width - 1 - col}); every modality is mirrored left-right together with rgb")


def _positions(found: list[tuple[int, int]]) -> str:
    shown = ", ".join(f"(row {r}, col {c})" for r, c in found[:3])
    return shown + (f" and {len(found) - 3} more" if len(found) > 3 else "")


def _check_resize(modality: Modality, what: str, sample: np.ndarray) -> None:
    """The declared interpolation works on the data type, keeps the layout, and commutes with the flip."""
    from ..data.transforms import resize

    size = (sample.shape[0] * 2, sample.shape[1] * 2)  # 2x: no pixel centre falls on a tie when mirrored
    larger = _call(what, f"resize with interpolation {modality.interpolation!r}", resize, sample, size,
                   modality.interpolation)
    _check_layout(modality, what, larger, f"the sample resized with {modality.interpolation!r}")
    if modality.kind == "labels":
        _check(set(np.unique(larger)) <= set(np.unique(sample)), what,
               f"resizing with {modality.interpolation!r} invents class ids")
    tolerance = 1.0 if sample.dtype.kind in "iu" else 1e-4 * max(1.0, float(np.ptp(sample)))
    one = modality.flip(larger)
    other = resize(modality.flip(sample), size, modality.interpolation)
    _check(_close(one, other, tolerance), what,
           f"flip does not commute with resizing (max difference {_difference(one, other)}): the flip must act on "
           "positions (and, like normals, on vector components) only")


def _check_normalize(modality: Modality, what: str, sample: np.ndarray) -> torch.Tensor:
    """normalize takes a batch and treats its samples independently, gives what the adapters take, and a
    denormalised prediction written and read back is the same. Returns the normalised batch (the sample and
    its mirror image)."""
    from ..data.transforms import to_tensor

    one = to_tensor(sample.copy(), modality)
    files = torch.stack([one, one.flip(-1) * (2 if one.is_floating_point() else 1)])  # two different samples
    batch = _call(what, "normalize of a batch", modality.normalize, files.clone())
    _check(isinstance(batch, torch.Tensor), what, f"normalize must return a tensor, got {type(batch).__name__}")
    height, width = sample.shape[:2]
    if modality.kind == "labels":
        _check(not batch.is_floating_point() and tuple(batch.shape) == (2, height, width), what,
               f"normalize of a batch of label maps must give (B, H, W) integer ids, got {batch.dtype} of shape "
               f"{tuple(batch.shape)}")
    else:
        _check(batch.is_floating_point() and tuple(batch.shape) == (2, modality.channels, height, width), what,
               f"normalize of a batch must give a float (B, {modality.channels}, {height}, {width}) tensor, got "
               f"{batch.dtype} of shape {tuple(batch.shape)}")
        _check(bool(torch.isfinite(batch).all()), what, "normalize gives NaN or inf values")
    for i in range(2):
        alone = _call(what, "normalize of a batch of one", modality.normalize, files[i:i + 1].clone())
        _check(tuple(alone.shape) == tuple(batch[i:i + 1].shape) and bool(torch.allclose(alone, batch[i:i + 1])),
               what, "normalize gives a sample other values in a batch than alone: it must treat the samples of a "
                     "batch (dimension 0) independently")
    if modality.kind == "labels":
        return batch
    tensor = batch[0]
    spread = float(tensor.max() - tensor.min()) or 1.0
    again = to_tensor(file_array(modality, tensor.clone()), modality)
    back = _call(what, "normalize of a denormalised value", modality.normalize, again[None])[0]
    _check(tuple(back.shape) == tuple(tensor.shape) and bool(torch.allclose(back, tensor, atol=1e-3 * spread)), what,
           f"normalize(denormalize(x)) differs from x by {float((back - tensor).abs().max()):.4g}: denormalize "
           "must invert normalize (predictions are denormalised before they are written)")
    if modality.write is not None and modality.read is not None:
        _check_stored_prediction(modality, what)
    return batch


def _check_stored_prediction(modality: Modality, what: str) -> None:
    """A decoder output, denormalised, written and read back, means what it meant before the file (up to the
    file's quantisation): catches a denormalize that does not give the writer's units."""
    from ..data.transforms import to_tensor

    prediction = _pattern(modality.channels, 24, 32, seed=1)
    prediction = 0.5 * prediction / prediction.abs().max()  # a modest prediction, inside any writer's range
    array = file_array(modality, prediction)
    expected = modality.normalize(to_tensor(array.copy(), modality)[None])[0].float()  # it may work in place
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"prediction{modality.extensions[0]}"
        _call(what, f"write of a denormalised prediction to {path.name}", modality.write, path, array)
        stored = modality.normalize(to_tensor(modality.read(path), modality)[None])[0].float()
    spread = float(expected.max() - expected.min()) or 1.0
    error = float((stored - expected).abs().max()) if stored.shape == expected.shape else float("inf")
    _check(error <= 0.05 * spread, what,
           f"a prediction written and read back differs by {error:.4g} (spread {spread:.4g}): denormalize must "
           "give the values the writer stores")


def _resized_batch(modality: Modality, batch: torch.Tensor) -> torch.Tensor:
    """The batch at the tiny model's size (data size / stride), resized the modality's way."""
    from ..data.transforms import resize

    size = (IMAGE_SIZE // modality.stride, IMAGE_SIZE // modality.stride)
    out = []
    for item in batch:
        array = item.numpy() if modality.kind == "labels" else item.permute(1, 2, 0).numpy()
        array = resize(np.ascontiguousarray(array), size, modality.interpolation)
        tensor = torch.from_numpy(np.ascontiguousarray(array))
        out.append(tensor if modality.kind == "labels" else tensor.reshape(*size, -1).permute(2, 0, 1))
    return torch.stack(out)


def _check_input_adapter(modality: Modality, what: str, batch: torch.Tensor) -> None:
    """(B, N, dim) tokens for a normalised batch with the declared channel count."""
    context = AdapterContext(PATCH_SIZE, DIM, (IMAGE_SIZE, IMAGE_SIZE))
    adapter = _call(what, "input_adapter factory", modality.input_adapter, modality, context)
    _check(isinstance(adapter, nn.Module), what, f"input_adapter must return an nn.Module, got "
                                                 f"{type(adapter).__name__}")
    lacking = protocols.missing(adapter, protocols.InputAdapter)
    _check(not lacking, what, f"its input adapter lacks {', '.join(lacking)} (see multimae_cli.protocols.InputAdapter)")
    _check(adapter.stride == modality.stride and adapter.patch == max(1, PATCH_SIZE // modality.stride), what,
           f"its input adapter has stride {adapter.stride} and patch {adapter.patch}, expected the modality's stride "
           f"{modality.stride} and patch {max(1, PATCH_SIZE // modality.stride)}")
    data = _resized_batch(modality, batch)
    declared = f"{modality.channels} class(es)" if modality.kind == "labels" else f"{modality.channels} channel(s)"
    try:
        tokens = adapter(data)
    except Exception as exc:
        _fail(what, f"input adapter fails on a normalised batch of shape {tuple(data.shape)} (the declared "
                    f"{declared}): {type(exc).__name__}: {exc}")
    expected = (len(data), (IMAGE_SIZE // PATCH_SIZE) ** 2, DIM)
    _check(isinstance(tokens, torch.Tensor) and tuple(tokens.shape) == expected, what,
           f"input adapter returned shape {tuple(getattr(tokens, 'shape', ()))} for {tuple(data.shape)}, expected "
           f"{expected} (batch, tokens, dim)")
    _check(bool(torch.isfinite(tokens).all()), what, "input adapter gives NaN or inf tokens")


def _check_loss(modality: Modality, what: str, batch: torch.Tensor | None) -> None:
    """A finite scalar, gradient on the masked tokens' pixels only, no NaN when nothing is masked."""
    if modality.loss is None:
        return
    criterion = _call(what, "loss factory", modality.loss, modality, PATCH_SIZE)
    size = IMAGE_SIZE // modality.stride
    generator = torch.Generator().manual_seed(0)
    if batch is None:
        target = torch.randn(2, modality.channels, size, size, generator=generator)
    else:
        target = _resized_batch(modality, batch)
    prediction = torch.randn(2, modality.channels, size, size, generator=generator, requires_grad=True)
    mask = torch.tensor([[1, 0, 0, 1], [0, 1, 0, 0]], dtype=torch.bool)  # 1 = masked, 2 x 2 tokens
    loss = _call(what, "loss", criterion, prediction, target, mask)
    _check(isinstance(loss, torch.Tensor) and loss.ndim == 0, what,
           f"the loss must be a scalar tensor, got {getattr(loss, 'shape', type(loss).__name__)}")
    _check(bool(torch.isfinite(loss)), what, f"the loss is {float(loss.detach())} on ordinary data")
    loss.backward()
    grad = prediction.grad
    _check(grad is not None and bool(torch.isfinite(grad).all()), what, "the loss gives no finite gradient")
    patch = PATCH_SIZE // modality.stride
    pixels = mask.view(2, 2, 1, 2, 1).expand(2, 2, patch, 2, patch).reshape(2, 1, size, size)
    _check(bool((grad * ~pixels).abs().sum() == 0), what,
           "the loss has gradient on visible (unmasked) tokens: it must score masked tokens only")
    _check(bool((grad * pixels).abs().sum() > 0), what, "the loss has no gradient on the masked tokens")
    nothing = _call(what, "loss with no masked token", criterion, prediction.detach(), target,
                    torch.zeros_like(mask))
    _check(bool(torch.isfinite(nothing)), what, f"the loss is {float(nothing)} when no token is masked")


def _check_colorize(modality: Modality, what: str, value: torch.Tensor) -> None:
    """uint8 (H, W, 3) pictures of inputs and of predictions (label predictions are (K, H, W) logits)."""
    if modality.colorize is None:
        return
    height, width = value.shape[-2:]
    values = [value]
    if modality.kind == "labels":
        values.append(torch.randn(modality.channels, height, width))
    for shown in values:
        picture = _call(what, f"colorize of a {tuple(shown.shape)} tensor", modality.colorize, shown)
        _check(isinstance(picture, np.ndarray) and picture.dtype == np.uint8
               and picture.shape == (height, width, 3), what,
               f"colorize of a {tuple(shown.shape)} tensor must give a uint8 ({height}, {width}, 3) array, got "
               f"{getattr(picture, 'dtype', type(picture).__name__)} of shape {getattr(picture, 'shape', None)}")


def _train_step(modality: Modality, what: str, companion: Modality | str | None) -> None:
    """Three optimiser steps of a tiny MultiMAE with the companion (rgb) and this modality, fed through the
    shared crop/flip transform: decoder shapes, finite losses, gradients reaching this modality's adapters."""
    from ..data.transforms import MultiModalTransform, to_device
    from ..plugin.factory import create_model, create_objective

    known = get_registry().modalities()
    if isinstance(companion, str):
        companion = known.get(companion)
    records = {modality.name: modality}
    if companion is not None and companion.name != modality.name:
        records = {companion.name: companion, **records}
    if modality.target is not None and modality.target not in records:
        _check(modality.target in known, what, f"its target {modality.target!r} is not registered")
        records[modality.target] = known[modality.target]

    class Records:
        @hookimpl
        def register_modalities(self, register):
            for record in records.values():
                register(record)

    registry = Registry()
    registry.register(Records(), name="conformance")
    inputs = tuple(name for name, record in records.items() if record.input_adapter is not None)
    outputs = tuple(name for name, record in records.items() if record.output_adapter is not None)
    _check(bool(inputs), what, "the tiny model has no input: give a companion modality with an input adapter")
    config = ModelConfig(inputs=inputs, outputs=outputs, image_size=IMAGE_SIZE, patch_size=PATCH_SIZE, dim=DIM,
                         depth=1, num_heads=2, decoder_dim=32, decoder_depth=1, decoder_num_heads=2,
                         num_encoded_tokens=len(inputs) * 2)
    torch.manual_seed(0)
    model = _call(what, "building a model with it", create_model, config, registry)
    objective = _call(what, "building its loss", create_objective, config, None, registry)
    if modality.output_adapter is not None:
        lacking = protocols.missing(model.output_adapters[modality.name], protocols.OutputDecoder)
        _check(not lacking, what, f"its decoder lacks {', '.join(lacking)} (see multimae_cli.protocols.OutputDecoder)")
    data = {name: record for name, record in records.items() if record.target is None}
    transform = MultiModalTransform(data, IMAGE_SIZE, train=True, hflip=0.5)
    samples = [{name: make_sample(record, seed=seed) for name, record in data.items()} for seed in range(4)]
    batch = [_call(what, "the shared crop/flip/resize transform", transform, sample,
                   np.random.default_rng(seed)) for seed, sample in enumerate(samples)]
    batch = {name: torch.stack([item[name] for item in batch]) for name in data}
    batch = _call(what, "normalize of the training batch", to_device, batch, data, "cpu")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    size = IMAGE_SIZE // modality.stride
    for step in range(3):
        preds, masks = _call(what, "the model's forward pass", model, {name: batch[name] for name in inputs})
        if modality.name in outputs:
            shape = tuple(preds[modality.name].shape)
            _check(shape == (4, modality.channels, size, size), what,
                   f"the decoder returned shape {shape}, expected {(4, modality.channels, size, size)} "
                   "(batch, channels or classes, H / stride, W / stride)")
        total, losses = _call(what, "the pretraining loss", objective, preds, batch, masks)
        _check(bool(torch.isfinite(total)), what, f"training step {step}: loss {losses}")
        optimizer.zero_grad()
        total.backward()
        if step == 0:
            for group in ("input_adapters", "output_adapters"):
                adapters = getattr(model, group)
                if modality.name in adapters:
                    _check_grads(adapters[modality.name], what, group[:-1].replace("_", " "))
            if modality.name in outputs:
                _check_colorize(modality, what, preds[modality.name][0].detach())
        optimizer.step()
