"""Procedural 3-D rooms with exact, aligned rgb / depth / normals / semseg: the embedded default dataset.

Numpy only, vectorised ray casting. A room (floor, four walls, an optional ceiling) holds 2-8 primitives
(spheres, yawed boxes, upright cylinders) with solid textures (checker, stripes, value noise, plain), lit by
a point light with Lambertian + ambient shading and cast shadows, seen by a random pinhole camera. Every
scene is a pure function of `(seed, index)` and renders at any size, non-square included.

Per pixel: `rgb` uint8 (H, W, 3); `depth` float32 (H, W), metric z-depth along the camera axis in metres;
`normals` float32 (H, W, 3), camera-frame unit vectors (x right, y up, z towards the camera); `semseg` int64
(H, W) class ids into `CLASSES`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

CLASSES = ("floor", "wall", "ceiling", "sphere", "box", "cylinder")
FLOOR, WALL, CEILING, SPHERE, BOX, CYLINDER = range(len(CLASSES))
DEPTH_SCALE = 1000.0  # 16-bit depth PNGs store millimetres: metres = value / DEPTH_SCALE
EPS = 1e-4
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


# ---------------------------------------------------------------- intersections (t along each ray, inf = miss)


def _plane(origin, dirs, normal, offset):
    denom = dirs @ normal
    with np.errstate(divide="ignore", invalid="ignore"):
        t = (offset - origin @ normal) / denom
    return np.where((t > EPS) & np.isfinite(t), t, np.inf).astype(F32)


def _sphere(origin, dirs, center, radius):
    oc = origin - center
    a = np.einsum("ij,ij->i", dirs, dirs)
    b = np.einsum("ij,ij->i", oc, dirs) if oc.ndim == 2 else dirs @ oc
    c = (np.einsum("ij,ij->i", oc, oc) if oc.ndim == 2 else oc @ oc) - radius * radius
    disc = b * b - a * c
    root = np.sqrt(np.maximum(disc, 0))
    near, far = (-b - root) / a, (-b + root) / a
    t = np.where(near > EPS, near, far)
    return np.where((disc >= 0) & (t > EPS), t, np.inf).astype(F32)


def _to_box(points, dirs, center, yaw):
    cos, sin = np.cos(yaw), np.sin(yaw)
    rot = np.array([[cos, 0, -sin], [0, 1, 0], [sin, 0, cos]], dtype=F32)  # world -> box frame
    return (points - center) @ rot.T, dirs @ rot.T


def _box(origin, dirs, center, half, yaw):
    local_o, local_d = _to_box(origin, dirs, center, yaw)
    with np.errstate(divide="ignore", invalid="ignore"):
        t1, t2 = (-half - local_o) / local_d, (half - local_o) / local_d
    near, far = np.fmin(t1, t2), np.fmax(t1, t2)
    t_near = np.fmax(np.fmax(near[:, 0], near[:, 1]), near[:, 2])
    t_far = np.fmin(np.fmin(far[:, 0], far[:, 1]), far[:, 2])
    t = np.where(t_near > EPS, t_near, t_far)
    return np.where((t_far >= np.maximum(t_near, EPS)) & (t > EPS), t, np.inf).astype(F32)


def _cylinder(origin, dirs, center, radius, height):
    o = origin - center
    ox, oy, oz = (o[:, 0], o[:, 1], o[:, 2]) if o.ndim == 2 else o
    dx, dy, dz = dirs[:, 0], dirs[:, 1], dirs[:, 2]
    a = dx * dx + dz * dz
    b = ox * dx + oz * dz
    c = ox * ox + oz * oz - radius * radius
    disc = b * b - a * c
    root = np.sqrt(np.maximum(disc, 0))
    best = np.full(dirs.shape[0], np.inf, dtype=F32)
    with np.errstate(divide="ignore", invalid="ignore"):
        for t in ((-b - root) / a, (-b + root) / a):
            y = oy + t * dy
            ok = (disc >= 0) & (t > EPS) & (y >= 0) & (y <= height)
            best = np.where(ok & (t < best), t, best)
        for cap in (0.0, height):
            t = (cap - oy) / dy
            x, z = ox + t * dx, oz + t * dz
            ok = (t > EPS) & (x * x + z * z <= radius * radius)
            best = np.where(ok & (t < best), t, best)
    return best.astype(F32)


def _bounding_sphere(surface: Surface) -> tuple[np.ndarray, float]:
    p = surface.params
    if surface.kind == "sphere":
        return p["center"], float(p["radius"])
    if surface.kind == "box":
        return p["center"], float(np.linalg.norm(p["half"]))
    return p["center"] + np.array([0, p["height"] / 2, 0], F32), float(np.hypot(p["radius"], p["height"] / 2))


def _intersect(surface: Surface, origin, dirs):
    p = surface.params
    if surface.kind == "plane":
        return _plane(origin, dirs, p["normal"], p["offset"])
    # exact tests only on the rays that reach the object's bounding sphere (objects cover few pixels)
    center, radius = _bounding_sphere(surface)
    candidates = np.flatnonzero(np.isfinite(_sphere(origin, dirs, center, radius * 1.001)))
    t = np.full(len(dirs), np.inf, dtype=F32)
    if len(candidates):
        sub_origin = origin[candidates] if origin.ndim == 2 else origin
        sub_dirs = dirs[candidates]
        if surface.kind == "sphere":
            t[candidates] = _sphere(sub_origin, sub_dirs, p["center"], p["radius"])
        elif surface.kind == "box":
            t[candidates] = _box(sub_origin, sub_dirs, p["center"], p["half"], p["yaw"])
        else:
            t[candidates] = _cylinder(sub_origin, sub_dirs, p["center"], p["radius"], p["height"])
    return t


def _normal(surface: Surface, points):
    p = surface.params
    if surface.kind == "plane":
        return np.broadcast_to(p["normal"], points.shape)
    if surface.kind == "sphere":
        return (points - p["center"]) / p["radius"]
    if surface.kind == "box":
        local, _ = _to_box(points, points, p["center"], p["yaw"])
        scaled = np.abs(local / p["half"])
        axis = scaled.argmax(-1)
        normal = np.zeros_like(local)
        normal[np.arange(len(local)), axis] = np.sign(local[np.arange(len(local)), axis])
        cos, sin = np.cos(p["yaw"]), np.sin(p["yaw"])
        rot = np.array([[cos, 0, -sin], [0, 1, 0], [sin, 0, cos]], dtype=F32)
        return normal @ rot
    local = points - p["center"]
    side = np.stack([local[:, 0], np.zeros_like(local[:, 1]), local[:, 2]], -1) / p["radius"]
    on_cap = (np.abs(local[:, 1]) < 1e-3) | (np.abs(local[:, 1] - p["height"]) < 1e-3)
    zero = np.zeros_like(local[:, 0])
    cap = np.stack([zero, np.where(local[:, 1] > p["height"] / 2, 1, -1).astype(F32), zero], -1)
    inside = (local[:, 0] ** 2 + local[:, 2] ** 2) < (p["radius"] * (1 - 1e-3)) ** 2
    return np.where((on_cap | inside)[:, None], cap, side).astype(F32)


# ---------------------------------------------------------------- materials


def _value_noise(points, table):
    n = table.shape[0]
    base = np.floor(points)
    frac = points - base
    frac = frac * frac * (3 - 2 * frac)
    idx = base.astype(np.int64) % n
    out = 0.0
    for corner in range(8):
        offset = np.array([(corner >> k) & 1 for k in range(3)])
        weight = np.prod(np.where(offset, frac, 1 - frac), axis=-1)
        i = (idx + offset) % n
        out = out + weight * table[i[:, 0], i[:, 1], i[:, 2]]
    return out


def _albedo(surface: Surface, points):
    p = surface.params
    local = points - p.get("center", 0)
    scaled = local / surface.texture_scale
    if surface.texture == "checker":
        pattern = np.floor(scaled).sum(-1) % 2
    elif surface.texture == "stripes":
        pattern = 0.5 + 0.5 * np.sin(2 * np.pi * scaled[:, 0] + 2 * np.pi * scaled[:, 2] * 0.5)
    elif surface.texture == "noise":
        pattern = _value_noise(scaled * 2, surface.noise)
    else:
        pattern = np.ones(len(points))
    return surface.color * (0.55 + 0.45 * pattern[:, None])


def _random_color(rng):
    hue, sat, val = rng.random(), rng.uniform(0.2, 0.9), rng.uniform(0.45, 1.0)
    k = (np.array([5, 3, 1]) + hue * 6) % 6
    return (val - val * sat * np.clip(np.minimum(k, 4 - k), 0, 1)).astype(F32)


# ---------------------------------------------------------------- scenes


def _scene(rng: np.random.Generator):
    width, depth = rng.uniform(4, 8, size=2)
    has_ceiling = rng.random() < 0.6
    ceiling = rng.uniform(2.6, 3.4)

    def material():
        texture = rng.choice(["checker", "stripes", "noise", "solid"])
        return dict(color=_random_color(rng), texture=str(texture), texture_scale=float(rng.uniform(0.15, 0.6)),
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
        kind = rng.choice(["sphere", "box", "cylinder"])
        if rng.random() < 0.8:
            angle = look["yaw"] + rng.uniform(-0.5, 0.5) * look["fov"]
            reach = rng.uniform(1.3, 5.0)
            x, z = camera[0] + reach * np.sin(angle), camera[2] + reach * np.cos(angle)
        else:
            x, z = rng.uniform(-0.45, 0.45) * width, rng.uniform(-0.45, 0.45) * depth
        x, z = np.clip(x, -0.42 * width, 0.42 * width), np.clip(z, -0.42 * depth, 0.42 * depth)
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
        surfaces.append(Surface(label, str(kind), params, **material()))
    light = np.array([rng.uniform(-0.4, 0.4) * width, (ceiling if has_ceiling else 3.0) - 0.3,
                      rng.uniform(-0.4, 0.4) * depth], F32)
    return surfaces, camera, light, float(rng.uniform(0.15, 0.35)), look


def camera_basis(yaw: float, pitch: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Forward, right and up unit vectors of a camera (y is up in the world)."""
    forward = np.array([np.sin(yaw) * np.cos(pitch), np.sin(pitch), np.cos(yaw) * np.cos(pitch)], F32)
    right = np.cross(forward, [0, 1, 0]).astype(F32)
    right /= np.linalg.norm(right)
    return forward, right, np.cross(right, forward).astype(F32)


def render_scene(seed: int, index: int, size: int | tuple[int, int] = 224) -> dict[str, np.ndarray]:
    """Render scene `index` of the stream `seed` at `size` (H, W); also returns the focal length in pixels."""
    height, width = (size, size) if isinstance(size, int) else size
    rng = np.random.default_rng([seed, index])
    surfaces, camera, light, ambient, look = _scene(rng)
    forward, right, up = camera_basis(look["yaw"], look["pitch"])
    focal = (width / 2) / np.tan(look["fov"] / 2)
    cols = (np.arange(width, dtype=F32) + 0.5 - width / 2) / focal
    rows = (height / 2 - np.arange(height, dtype=F32) - 0.5) / focal
    # unnormalised rays with a unit forward component: t is the z-depth
    dirs = (forward + cols[None, :, None] * right + rows[:, None, None] * up).reshape(-1, 3).astype(F32)

    hits = np.stack([_intersect(s, camera, dirs) for s in surfaces])
    best = hits.argmin(0)
    t = hits[best, np.arange(len(dirs))]
    points = camera + t[:, None] * dirs
    normals = np.zeros_like(points)
    albedo = np.zeros_like(points)
    labels = np.zeros(len(dirs), dtype=np.int64)
    for i, surface in enumerate(surfaces):
        sel = best == i
        if sel.any():
            normals[sel] = _normal(surface, points[sel])
            albedo[sel] = _albedo(surface, points[sel])
            labels[sel] = surface.label
    facing_away = np.einsum("ij,ij->i", normals, dirs) > 0
    normals[facing_away] *= -1

    to_light = light - points
    distance = np.linalg.norm(to_light, axis=-1)
    light_dir = to_light / distance[:, None]
    origins = points + normals * 1e-3
    shadow = np.zeros(len(dirs), dtype=bool)
    for surface in surfaces:
        if surface.kind != "plane":  # a convex room's own walls never occlude a point inside it
            shadow |= _intersect(surface, origins, light_dir) < distance
    lambert = np.clip(np.einsum("ij,ij->i", normals, light_dir), 0, None) * ~shadow
    falloff = 6.0 / (4.0 + distance**2)
    shade = ambient + (1 - ambient) * np.clip(lambert * falloff * 1.6, 0, 1)
    rgb = np.clip(albedo * shade[:, None], 0, 1) ** (1 / 2.2)

    camera_normals = np.stack([normals @ right, normals @ up, -(normals @ forward)], -1)
    return {
        "rgb": (rgb * 255 + 0.5).astype(np.uint8).reshape(height, width, 3),
        "depth": t.reshape(height, width).astype(F32),
        "normals": camera_normals.reshape(height, width, 3).astype(F32),
        "semseg": labels.reshape(height, width),
        "focal": np.array(focal, dtype=F32),
    }
