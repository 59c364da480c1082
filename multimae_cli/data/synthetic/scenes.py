"""Procedural 3-D rooms with exact, aligned rgb / depth / normals / semseg: the embedded default dataset.

Numpy only, vectorised ray casting. A room (floor, four walls, an optional ceiling) holds 2-8 primitives
(spheres, yawed boxes, upright cylinders) with solid textures (checker, stripes, value noise, plain), lit by
a point light with Lambertian + ambient shading and cast shadows, seen by a random pinhole camera. Every
scene is a pure function of `(seed, index)` and renders at any size, non-square included.

Per pixel: `rgb` uint8 (H, W, 3); `depth` float32 (H, W), metric z-depth along the camera axis in metres;
`normals` float32 (H, W, 3), camera-frame unit vectors (x right, y up, z towards the camera); `semseg` int64
(H, W) class ids into `CLASSES`.

The renderer is `render.py` (with `raytrace.py` and `materials.py`); this module draws the scenes.
"""

from __future__ import annotations

import numpy as np

from .materials import TEXTURES
from .raytrace import F32, KINDS, Surface
from .render import render

CLASSES = ("floor", "wall", "ceiling", "sphere", "box", "cylinder")
FLOOR, WALL, CEILING, SPHERE, BOX, CYLINDER = range(len(CLASSES))
DEPTH_SCALE = 1000.0  # 16-bit depth PNGs store millimetres: metres = value / DEPTH_SCALE


def _random_color(rng):
    hue, sat, val = rng.random(), rng.uniform(0.2, 0.9), rng.uniform(0.45, 1.0)
    k = [(c + hue * 6) % 6 for c in (5, 3, 1)]  # hsv -> rgb, in plain floats (the same values as in numpy)
    return np.array([val - val * sat * min(max(min(c, 4 - c), 0), 1) for c in k], F32)


def _scene(rng: np.random.Generator):
    """A random room: its surfaces, the camera position, the light position, the ambient level and the view."""
    width, depth = rng.uniform(4, 8, size=2)
    has_ceiling = rng.random() < 0.6
    ceiling = rng.uniform(2.6, 3.4)

    def material():
        texture = TEXTURES[rng.integers(0, len(TEXTURES))]  # the draw of rng.choice, without its overhead
        return dict(color=_random_color(rng), texture=texture, texture_scale=float(rng.uniform(0.15, 0.6)),
                    noise=rng.random((8, 8, 8)).astype(F32))

    planes = [(FLOOR, (0, 1, 0), 0.0), (WALL, (1, 0, 0), -width / 2), (WALL, (-1, 0, 0), -width / 2),
              (WALL, (0, 0, 1), -depth / 2), (WALL, (0, 0, -1), -depth / 2)]
    if has_ceiling:
        planes.append((CEILING, (0, -1, 0), -ceiling))
    wall_material = material()
    surfaces = [
        Surface(label, "plane", {"normal": np.array(n, F32), "offset": F32(off)},
                **(wall_material if label == WALL else material()))
        for label, n, off in planes
    ]
    camera = np.array([rng.uniform(-0.35, 0.35) * width, rng.uniform(1.0, 1.8), rng.uniform(-0.35, 0.35) * depth], F32)
    # look roughly towards the middle of the room, and put most objects where the camera can see them
    towards_middle = np.arctan2(-camera[0], -camera[2]) if np.hypot(camera[0], camera[2]) > 0.3 else rng.uniform(0, 6.3)
    look = dict(yaw=towards_middle + np.radians(rng.uniform(-40, 40)), pitch=np.radians(rng.uniform(-35, -5)),
                fov=np.radians(rng.uniform(55, 80)))
    for _ in range(rng.integers(2, 9)):
        kind = KINDS[rng.integers(0, len(KINDS))]
        if rng.random() < 0.8:
            angle = look["yaw"] + rng.uniform(-0.5, 0.5) * look["fov"]
            reach = rng.uniform(1.3, 5.0)
            x, z = camera[0] + reach * np.sin(angle), camera[2] + reach * np.cos(angle)
        else:
            x, z = rng.uniform(-0.45, 0.45) * width, rng.uniform(-0.45, 0.45) * depth
        x, z = min(max(x, -0.42 * width), 0.42 * width), min(max(z, -0.42 * depth), 0.42 * depth)  # clip
        if kind == "sphere":
            radius = rng.uniform(0.2, 0.6)
            lift = rng.uniform(0, 1.0) if rng.random() < 0.3 else 0.0
            params = {"center": np.array([x, radius + lift, z], F32), "radius": F32(radius)}
            label = SPHERE
        elif kind == "box":
            half = rng.uniform(0.15, 0.6, size=3).astype(F32)
            params = {"center": np.array([x, half[1], z], F32), "half": half, "yaw": F32(rng.uniform(0, np.pi))}
            label = BOX
        else:
            params = {"center": np.array([x, 0, z], F32), "radius": F32(rng.uniform(0.15, 0.45)),
                      "height": F32(rng.uniform(0.3, 1.8))}
            label = CYLINDER
        surfaces.append(Surface(label, kind, params, **material()))
    light = np.array([rng.uniform(-0.4, 0.4) * width, (ceiling if has_ceiling else 3.0) - 0.3,
                      rng.uniform(-0.4, 0.4) * depth], F32)
    return surfaces, camera, light, float(rng.uniform(0.15, 0.35)), look


def render_scene(seed: int, index: int, size: int | tuple[int, int] = 224) -> dict[str, np.ndarray]:
    """Render scene `index` of the stream `seed` at `size` (H, W); also returns the focal length in pixels."""
    height, width = (size, size) if isinstance(size, int) else size
    rng = np.random.default_rng([seed, index])
    surfaces, camera, light, ambient, look = _scene(rng)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        return render(surfaces, camera, light, ambient, look, height, width)
