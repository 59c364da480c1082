"""Rays against the synthetic scenes' primitives (spheres, yawed boxes, upright cylinders): intersections,
shadow-ray tests, surface normals, and the bounds that limit each primitive to the pixels that can see it.

Rays come per component: origin (ox, oy, oz) of plain numbers or arrays, direction (dx, dy, dz) of arrays of any
shape (an image window, or a list of pixels). Shape parameters are plain numbers, or arrays matching the rays
(many primitives of one kind at once). Intersections return t along the direction, inf where the ray misses.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

EPS = 1e-4
KINDS = ("sphere", "box", "cylinder")
F32 = np.float32


@dataclass
class Surface:
    """One renderable surface: its class, how to intersect it, its normal and its material."""

    label: int
    kind: str  # plane | sphere | box | cylinder
    params: dict
    color: np.ndarray
    texture: str
    texture_scale: float
    noise: np.ndarray


# ---------------------------------------------------------------- intersections


def _sphere(origin, dirs, center, radius):
    ox, oy, oz = (origin[k] - center[k] for k in range(3))
    dx, dy, dz = dirs
    a = dx * dx + dy * dy + dz * dz
    b = ox * dx + oy * dy + oz * dz
    c = ox * ox + oy * oy + oz * oz - radius * radius
    disc = b * b - a * c
    root = np.sqrt(np.maximum(disc, 0))
    if np.ndim(c) == 0 and c > 0:  # one eye outside the sphere: the near root is the hit, if in front
        t = -b
        t -= root
        t /= a
        return np.where((disc >= 0) & (t > EPS), t, np.inf)
    near, far = (-b - root) / a, (-b + root) / a
    t = np.where(near > EPS, near, far)
    return np.where((disc >= 0) & (t > EPS), t, np.inf)


def _box(origin, dirs, center, half, cos, sin):
    px, py, pz = (origin[k] - center[k] for k in range(3))
    local_o = (cos * px - sin * pz, py, sin * px + cos * pz)  # world -> box frame (a yaw)
    local_d = (cos * dirs[0] - sin * dirs[2], dirs[1], sin * dirs[0] + cos * dirs[2])
    t_near = t_far = None
    for k in range(3):
        t1, t2 = (-half[k] - local_o[k]) / local_d[k], (half[k] - local_o[k]) / local_d[k]
        near, far = np.fmin(t1, t2), np.fmax(t1, t2)
        t_near = near if t_near is None else np.fmax(t_near, near)
        t_far = far if t_far is None else np.fmin(t_far, far)
    t = np.where(t_near > EPS, t_near, t_far)
    return np.where((t_far >= np.maximum(t_near, EPS)) & (t > EPS), t, np.inf)


def _cylinder(origin, dirs, center, radius, height):
    """An upright solid cylinder standing on `center`."""
    ox, oy, oz = (origin[k] - center[k] for k in range(3))
    dx, dy, dz = dirs
    r2 = radius * radius
    a = dx * dx + dz * dz
    b = ox * dx + oz * dz
    c = ox * ox + oz * oz - r2
    disc = b * b - a * c
    root = np.sqrt(np.maximum(disc, 0))
    hit = disc >= 0
    if np.ndim(c) == 0 and c > 0:
        # one eye outside the tube: the far side is never seen first, and of the caps only the one facing it
        t = (-b - root) / a
        y = oy + t * dy
        best = np.where(hit & (t > EPS) & (y >= 0) & (y <= height), t, np.inf)
        caps = (height,) if oy > height else (0.0,) if oy < 0 else ()
    else:
        best = np.full(np.shape(b), np.inf, dtype=F32)
        for t in ((-b - root) / a, (-b + root) / a):
            y = oy + t * dy
            best = np.where(hit & (t > EPS) & (y >= 0) & (y <= height) & (t < best), t, best)
        caps = (0.0, height)
    for cap in caps:
        t = (cap - oy) / dy
        x, z = ox + t * dx, oz + t * dz
        best = np.where((t > EPS) & (x * x + z * z <= r2) & (t < best), t, best)
    return best


def shape_params(surface: Surface) -> dict:
    """A primitive's shape as plain numbers (the intersection and normal functions take these or arrays)."""
    p = surface.params
    out = {"center": tuple(float(c) for c in p["center"])}
    if surface.kind == "sphere":
        out["radius"] = float(p["radius"])
    elif surface.kind == "box":
        out["half"] = tuple(float(h) for h in p["half"])
        out["cos"], out["sin"] = _yaw(p["yaw"])
    else:
        out["radius"], out["height"] = float(p["radius"]), float(p["height"])
    return out


def intersect(kind: str, params: dict, origin, dirs):
    if kind == "sphere":
        return _sphere(origin, dirs, params["center"], params["radius"])
    if kind == "box":
        return _box(origin, dirs, params["center"], params["half"], params["cos"], params["sin"])
    return _cylinder(origin, dirs, params["center"], params["radius"], params["height"])


def segment_blocked(kind: str, params: dict, origin, dirs, dist):
    """Whether unit-direction rays meet a solid primitive at some t in (EPS, dist): the ray's interval inside
    the convex solid (a sphere; a tube between two cap planes; three slabs) overlaps (EPS, dist). Parameters
    are arrays matching the rays."""
    ox, oy, oz = (origin[k] - params["center"][k] for k in range(3))
    dx, dy, dz = dirs
    if kind == "sphere":
        b = ox * dx
        b += oy * dy
        b += oz * dz
        c = ox * ox
        c += oy * oy
        c += oz * oz
        c -= params["radius"] * params["radius"]
        disc = b * b
        disc -= c
        inside = disc >= 0
        root = np.sqrt(np.maximum(disc, 0))
        inside &= root - b > EPS  # far end past the start
        inside &= -b - root < dist  # near end before the light
        return inside
    if kind == "box":
        cos, sin, half = params["cos"], params["sin"], params["half"]
        local_o = (cos * ox - sin * oz, oy, sin * ox + cos * oz)  # world -> box frame (a yaw)
        local_d = (cos * dx - sin * dz, dy, sin * dx + cos * dz)
        near, far = np.full(np.shape(dx), EPS, F32), np.array(dist, F32)
    else:
        radius, height = params["radius"], params["height"]
        a = dx * dx + dz * dz
        b = ox * dx + oz * dz
        c = ox * ox + oz * oz - radius * radius
        disc = b * b - a * c
        root = np.sqrt(np.maximum(disc, 0))
        inverse = 1 / a
        near = np.fmax((-b - root) * inverse, EPS)  # the infinite tube (a vertical ray: nan, ignored)
        far = np.fmin((root - b) * inverse, dist)
        far[disc < 0] = -np.inf
        inside_tube = (a == 0) & (c > 0)
        far[inside_tube] = -np.inf  # a vertical ray outside the tube
        local_o, local_d = (None, oy - height / 2, None), (None, dy, None)
        half = (None, height / 2, None)
    for k in range(3):
        if local_o[k] is None:
            continue
        inverse = 1 / local_d[k]
        t1 = (-half[k] - local_o[k]) * inverse
        t2 = (half[k] - local_o[k]) * inverse
        np.fmax(near, np.fmin(t1, t2), out=near)
        np.fmin(far, np.fmax(t1, t2), out=far)
    return near < far


def _yaw(yaw) -> tuple[float, float]:
    return float(np.cos(yaw)), float(np.sin(yaw))


def surface_normal(kind: str, params: dict, points):
    """World-frame unit normals (outwards) of a primitive at points given per component."""
    px, py, pz = (points[k] - params["center"][k] for k in range(3))
    if kind == "sphere":
        inv = 1.0 / params["radius"]
        return px * inv, py * inv, pz * inv
    if kind == "box":
        cos, sin, half = params["cos"], params["sin"], params["half"]
        local = (cos * px - sin * pz, py, sin * px + cos * pz)
        ax, ay, az = (np.abs(local[k]) * (1.0 / half[k]) for k in range(3))
        on_x = (ax >= ay) & (ax >= az)  # the face of the largest scaled coordinate (x, then y, on ties)
        on_y = ~on_x & (ay >= az)
        on_z = ~(on_x | on_y)
        nx, ny, nz = (np.sign(c) * on for on, c in zip((on_x, on_y, on_z), local, strict=True))
        return cos * nx + sin * nz, ny, cos * nz - sin * nx  # box -> world frame
    radius, height = params["radius"], params["height"]
    cap = (np.abs(py) < 1e-3) | (np.abs(py - height) < 1e-3)  # on a cap, or inside the rim
    cap |= (px * px + pz * pz) < (radius * (1 - 1e-3)) ** 2
    side = ~cap
    side_scale = side * (1.0 / radius)
    return px * side_scale, np.where(py > height / 2, F32(1), F32(-1)) * cap, pz * side_scale


# ---------------------------------------------------------------- bounds


def bounding_sphere(surface: Surface) -> tuple[np.ndarray, float]:
    p = surface.params
    if surface.kind == "sphere":
        return p["center"], float(p["radius"])
    if surface.kind == "box":
        return p["center"], float(np.linalg.norm(p["half"]))
    return p["center"] + np.array([0, p["height"] / 2, 0], F32), float(np.hypot(p["radius"], p["height"] / 2))


def _tangent_range(x: float, z: float, radius: float) -> tuple[float, float]:
    """The range of x'/z' over a ball at (x, z) (in a plane through the eye), seen from the origin (z > radius):
    the slopes of the two tangent lines, i.e. the exact extent of the ball's projection along one image axis."""
    root = math.sqrt(max(x * x + z * z - radius * radius, 0.0))
    den = z * z - radius * radius
    return (x * z - radius * root) / den, (x * z + radius * root) / den


_SIGNS = np.array([[(c >> k) & 1 for k in range(3)] for c in range(8)], np.float64) * 2 - 1


def box_corners(surface: Surface, margin: float) -> np.ndarray:
    """(8, 3) corners of a box holding the primitive (a box itself, a cylinder's square prism), grown by margin."""
    p = surface.params
    center = p["center"].astype(np.float64)
    if surface.kind == "box":
        cos, sin = _yaw(p["yaw"])
        to_world = np.array([[cos, 0, -sin], [0, 1, 0], [sin, 0, cos]])  # row vectors: box -> world frame
        return center + (_SIGNS * (p["half"].astype(np.float64) + margin)) @ to_world
    radius, height = float(p["radius"]) + margin, float(p["height"])
    return center + np.where(_SIGNS > 0, [radius, height + margin, radius], [-radius, -margin, -radius])


def projected_extent(kind: str, ball, corners, eye, axes, margin: float):
    """The range (u0, u1, v0, v1) of the central projection (u, v) = (p.a_u, p.a_v) / p.a_depth, p = point - eye,
    over a primitive grown by `margin` (axes: the rows a_u, a_v, a_depth); None unless all of it lies at depth
    > 1 mm. Exact for spheres (tangent lines of the ball), else the projected `corners` of a box holding it,
    already grown by at least `margin` (perspective keeps convex hulls)."""
    if kind == "sphere":
        center, radius = ball
        x, y, z = (float(c) for c in axes @ (center - eye))
        radius = radius * 1.001 + margin
        if z - radius <= 1e-3:
            return None
        return (*_tangent_range(x, z, radius), *_tangent_range(y, z, radius))
    projected = (corners - eye) @ axes.T
    if projected[:, 2].min() <= 1e-3:
        return None
    uv = projected[:, :2] / projected[:, 2:]
    low, high = uv.min(0), uv.max(0)
    return float(low[0]), float(high[0]), float(low[1]), float(high[1])


def pixel_window(kind, ball, corners, camera, axes, focal, height, width):
    """The pixel rectangle (rows, cols slices) whose rays can hit a primitive; None if none can. `axes`: the
    camera's right, up and forward vectors as rows."""
    extent = projected_extent(kind, ball, corners, camera, axes, 1e-3)
    if extent is None:
        center, radius = ball
        if float((center - camera) @ axes[2]) + radius * 1.001 <= 0:  # wholly behind the camera
            return None
        return slice(0, height), slice(0, width)
    left, right_, low, high = extent
    c0 = max(math.floor(left * focal + width / 2 - 0.5) - 1, 0)
    c1 = min(math.ceil(right_ * focal + width / 2 - 0.5) + 2, width)
    r0 = max(math.floor(height / 2 - 0.5 - high * focal) - 1, 0)
    r1 = min(math.ceil(height / 2 - 0.5 - low * focal) + 2, height)
    return (slice(r0, r1), slice(c0, c1)) if r0 < r1 and c0 < c1 else None
