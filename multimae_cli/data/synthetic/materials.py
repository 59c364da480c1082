"""Solid textures of the synthetic scenes (checker, stripes, value noise, plain) as albedo factors."""

from __future__ import annotations

import math

import numpy as np

from .raytrace import F32, Surface

TEXTURES = ("checker", "stripes", "noise", "solid")


def _floor(value):
    """floor of an array, or of a plain number as a plain number (a numpy scalar would promote float32)."""
    return math.floor(value) if np.ndim(value) == 0 else np.floor(value)


def _value_noise(points, table):
    """Trilinear value noise of a periodic (n, n, n) table (n a power of two) at points given per component,
    with smoothstep weights. A component given as a plain number (a plane's own axis) is interpolated once, in
    the table. Each cell's corner values are turned into the coefficients of its multilinear polynomial, so a
    pixel costs one index, a gather per coefficient and a Horner evaluation."""
    n = table.shape[0]
    weights, bases = [], []
    for c in points:
        base = _floor(c)
        f = c - base
        if np.ndim(c) == 0:
            i = int(base) % n
            f = f * f * (3 - 2 * f)
            low, high = np.take(table, i, axis=len(weights)), np.take(table, (i + 1) % n, axis=len(weights))
            table = low + (high - low) * f
            continue
        weight = f * F32(-2)
        weight += 3
        weight *= f
        weight *= f
        weights.append(weight)
        bases.append(base)
    index = None
    for base in bases:  # the cell: (i0 mod n, i1 mod n, ...) in row-major order
        part = base.astype(np.intp)
        part &= n - 1
        index = part if index is None else (index << (n.bit_length() - 1)) | part
    axes = len(weights)
    # coefficients: differences of the corner values along each subset of the axes, from the table plus one
    # period-wrapped layer per axis (slices, no rolls)
    wrap = np.arange(n + 1) % n
    coefficients = {(): table[np.ix_(*[wrap] * axes)]}
    for axis in range(axes):
        upper = tuple(slice(1, None) if a == axis else slice(None) for a in range(axes))
        lower = tuple(slice(None, -1) if a == axis else slice(None) for a in range(axes))
        for key in list(coefficients):
            coefficients[(*key, axis)] = coefficients[key][upper] - coefficients[key][lower]
    flat = {key: np.ascontiguousarray(value[tuple(slice(None, n) for _ in range(axes))]).ravel().take(
        index, mode="wrap") for key, value in coefficients.items()}

    def horner(axis, key):  # sum over subsets of the axes >= axis of coefficient * product of weights
        if axis == axes:
            return flat[key]
        rest = horner(axis + 1, (*key, axis))
        rest *= weights[axis]
        rest += horner(axis + 1, key)
        return rest

    return horner(0, ())


def _pattern(surface: Surface, points):
    """The texture's pattern in [0, 1] at points given per component (arrays, or plain numbers for a
    coordinate constant over the pixels); None for solid colours."""
    if surface.texture == "solid":
        return None
    center = surface.params.get("center", (0.0, 0.0, 0.0))
    scale = float(surface.texture_scale) / (2 if surface.texture == "noise" else 1)  # noise: two cells per unit

    def scaled(k):
        offset = float(center[k])
        return (points[k] - offset if offset else points[k]) / scale

    if surface.texture == "stripes":  # a function of x and z only
        phase = scaled(0) * (2 * np.pi)
        phase += scaled(2) * np.pi
        pattern = np.sin(phase)
        pattern *= 0.5
        pattern += 0.5
        return pattern
    sx, sy, sz = (scaled(k) for k in range(3))
    if surface.texture == "checker":
        cells = _floor(sx) + _floor(sy) + _floor(sz)
        return (cells.astype(np.int32) & 1).astype(F32)  # the parity; float % 2 is ten times slower
    return _value_noise((sx, sy, sz), surface.noise)


def texture(surface: Surface, coords, albedo, own) -> None:
    """Write the albedo factor 0.55 + 0.45 * pattern into `albedo` (a window) where `own`. Value noise, the
    costly pattern, is computed on the owned pixels only; the others over the whole window."""
    if surface.texture == "solid":
        return
    if surface.texture == "noise":
        pattern = _pattern(surface, [c if np.ndim(c) == 0 else c[own] for c in coords])
        pattern *= 0.45
        pattern += 0.55
        albedo[own] = pattern
        return
    pattern = _pattern(surface, coords)
    pattern *= 0.45
    pattern += 0.55
    np.copyto(albedo, pattern, where=own)


def texture_room(surfaces, seen, points, albedo) -> None:
    """The albedo factor on the room's planes, each computed over the rectangle holding its pixels (written to
    its own pixels only), at the plane's exact coordinate along its normal (no rounding noise at texture edges)."""
    for i, surface in enumerate(surfaces):
        if surface.kind != "plane" or surface.texture == "solid":
            continue
        own = seen == i
        rows = np.flatnonzero(own.any(1))
        if not len(rows):
            continue
        cols = np.flatnonzero(own.any(0))
        window = slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)
        normal = surface.params["normal"]
        axes = np.flatnonzero(normal)
        coords = [float(surface.params["offset"]) / float(normal[k]) if len(axes) == 1 and k == axes[0]
                  else points[k][window] for k in range(3)]
        texture(surface, coords, albedo[window], own[window])
