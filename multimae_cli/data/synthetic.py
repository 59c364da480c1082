"""Procedural 3-D rooms with exact, aligned rgb / depth / normals / semseg: the embedded default dataset.

Numpy only, vectorised ray casting. A room (floor, four walls, an optional ceiling) holds 2-8 primitives
(spheres, yawed boxes, upright cylinders) with solid textures (checker, stripes, value noise, plain), lit by
a point light with Lambertian + ambient shading and cast shadows, seen by a random pinhole camera. Every
scene is a pure function of `(seed, index)` and renders at any size, non-square included.

Per pixel: `rgb` uint8 (H, W, 3); `depth` float32 (H, W), metric z-depth along the camera axis in metres;
`normals` float32 (H, W, 3), camera-frame unit vectors (x right, y up, z towards the camera); `semseg` int64
(H, W) class ids into `CLASSES`.

How it stays fast (about 5 ms a 224 px scene on one core; numpy calls cost ~20 us on a full image, so the
count of full-image passes is what matters): rays are (H, W) planes per component; the room seen along a ray
is its largest inverse plane distance; each primitive is intersected only over the pixel rectangle of its
projected bounds (tangent lines of a sphere, projected corners otherwise), then z-buffered; normals, lighting
and textures run on each surface's own rectangle, textures at the plane's exact coordinate; shadow rays are
traced only for the (pixel, primitive) pairs that a light-space direction grid and the primitive's bounding
cone cannot rule out (conservative filters: the result equals testing every lit pixel); large temporaries live
in a per-thread workspace, since fresh ones cost more in page faults than in arithmetic.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass

import numpy as np

CLASSES = ("floor", "wall", "ceiling", "sphere", "box", "cylinder")
FLOOR, WALL, CEILING, SPHERE, BOX, CYLINDER = range(len(CLASSES))
DEPTH_SCALE = 1000.0  # 16-bit depth PNGs store millimetres: metres = value / DEPTH_SCALE
EPS = 1e-4
TEXTURES = ("checker", "stripes", "noise", "solid")
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
# Rays come per component: origin (ox, oy, oz) of plain numbers or arrays, direction (dx, dy, dz) of arrays of
# any shape (an image window, or a list of pixels). Shape parameters are plain numbers, or arrays matching the
# rays (many primitives of one kind at once). Each returns t along the direction, inf where the ray misses.


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


def _params(surface: Surface) -> dict:
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


def _hit(kind: str, params: dict, origin, dirs):
    if kind == "sphere":
        return _sphere(origin, dirs, params["center"], params["radius"])
    if kind == "box":
        return _box(origin, dirs, params["center"], params["half"], params["cos"], params["sin"])
    return _cylinder(origin, dirs, params["center"], params["radius"], params["height"])


def _blocked(kind: str, params: dict, origin, dirs, dist):
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


def _bounding_sphere(surface: Surface) -> tuple[np.ndarray, float]:
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


def _normal(kind: str, params: dict, points):
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


# ---------------------------------------------------------------- materials


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


def _random_color(rng):
    hue, sat, val = rng.random(), rng.uniform(0.2, 0.9), rng.uniform(0.45, 1.0)
    k = [(c + hue * 6) % 6 for c in (5, 3, 1)]  # hsv -> rgb, in plain floats (the same values as in numpy)
    return np.array([val - val * sat * min(max(min(c, 4 - c), 0), 1) for c in k], F32)


# ---------------------------------------------------------------- scenes


def _scene(rng: np.random.Generator):
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


def camera_basis(yaw: float, pitch: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Forward, right and up unit vectors of a camera (y is up in the world)."""
    sy, cy, sp, cp = math.sin(yaw), math.cos(yaw), math.sin(pitch), math.cos(pitch)
    forward = (sy * cp, sp, cy * cp)
    right = (-cy, 0.0, sy)  # forward x (0, 1, 0), normalised
    up = (-sp * sy, cp, -sp * cy)  # right x forward
    return np.array(forward, F32), np.array(right, F32), np.array(up, F32)


def render_scene(seed: int, index: int, size: int | tuple[int, int] = 224) -> dict[str, np.ndarray]:
    """Render scene `index` of the stream `seed` at `size` (H, W); also returns the focal length in pixels."""
    height, width = (size, size) if isinstance(size, int) else size
    rng = np.random.default_rng([seed, index])
    surfaces, camera, light, ambient, look = _scene(rng)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        return _render(surfaces, camera, light, ambient, look, height, width)


_LOCAL = threading.local()


_WORKSPACE_PIXELS = 512 * 512  # larger renders get fresh scratch each time (it would hold ~4 MB per 50k pixels)


def _workspace(height: int, width: int):
    """Per-thread scratch images, kept between renders of one size: a fresh set of large temporaries per scene
    costs more in page faults than the arithmetic on them. Nothing returned to the caller lives here."""
    cached = getattr(_LOCAL, "workspace", None)
    if cached is None or cached[0] != (height, width):
        cached = ((height, width), {})
        if height * width <= _WORKSPACE_PIXELS:
            _LOCAL.workspace = cached
    buffers = cached[1]

    def get(name: str, channels: int = 0, dtype=F32) -> np.ndarray:
        array = buffers.get(name)
        if array is None:
            array = buffers[name] = np.empty((channels, height, width) if channels else (height, width), dtype)
        return array

    return get


_SIGNS = np.array([[(c >> k) & 1 for k in range(3)] for c in range(8)], np.float64) * 2 - 1


def _corners(surface: Surface, margin: float) -> np.ndarray:
    """(8, 3) corners of a box holding the primitive (a box itself, a cylinder's square prism), grown by margin."""
    p = surface.params
    center = p["center"].astype(np.float64)
    if surface.kind == "box":
        cos, sin = _yaw(p["yaw"])
        to_world = np.array([[cos, 0, -sin], [0, 1, 0], [sin, 0, cos]])  # row vectors: box -> world frame
        return center + (_SIGNS * (p["half"].astype(np.float64) + margin)) @ to_world
    radius, height = float(p["radius"]) + margin, float(p["height"])
    return center + np.where(_SIGNS > 0, [radius, height + margin, radius], [-radius, -margin, -radius])


def _extent(kind: str, ball, corners, eye, axes, margin: float):
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


def _window(kind, ball, corners, camera, axes, focal, height, width):
    """The pixel rectangle (rows, cols slices) whose rays can hit a primitive; None if none can. `axes`: the
    camera's right, up and forward vectors as rows."""
    extent = _extent(kind, ball, corners, camera, axes, 1e-3)
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


_MARGIN = 2e-3  # primitives' bounds are grown by this: shadow rays start 1 mm off a surface


def _render(surfaces, camera, light, ambient, look, height, width):
    scratch = _workspace(height, width)
    forward, right, up = camera_basis(look["yaw"], look["pitch"])
    basis = tuple(v.astype(np.float64) for v in (forward, right, up))
    focal = float((width / 2) / np.tan(look["fov"] / 2))
    cols = (np.arange(width) + 0.5 - width / 2) / focal
    rows = (height / 2 - np.arange(height) - 0.5) / focal
    # unnormalised rays with a unit forward component (t is the z-depth), one (H, W) plane per component
    dirs = scratch("dirs", 3)
    for k in range(3):
        np.add.outer((forward[k] + rows * up[k]).astype(F32), (cols * right[k]).astype(F32), out=dirs[k])
    corner_rays = np.array([basis[0] + c * basis[1] + r * basis[2] for c in cols[[0, -1]] for r in rows[[0, -1]]])
    cam = tuple(float(c) for c in camera)
    camera64, light64 = camera.astype(np.float64), light.astype(np.float64)
    tmp, tmp2 = scratch("tmp"), scratch("tmp2")
    mask = scratch("mask", dtype=bool)
    planes = [i for i, s in enumerate(surfaces) if s.kind == "plane"]
    primitives = [i for i, s in enumerate(surfaces) if s.kind != "plane"]
    params = {i: _params(surfaces[i]) for i in primitives}
    balls = {i: (lambda c, r: (c.astype(np.float64), r))(*_bounding_sphere(surfaces[i])) for i in primitives}
    corners = {i: None if surfaces[i].kind == "sphere" else _corners(surfaces[i], _MARGIN) for i in primitives}

    # the room: the camera is inside this convex box, so the plane seen along a ray is the one with the largest
    # inverse distance (d.n) / (offset - o.n); only planes the ray moves towards have a positive one
    seen = scratch("seen", dtype=np.uint8)  # the index of the surface seen at each pixel
    inverse = scratch("inverse")
    first = True
    for i in planes:
        normal = surfaces[i].params["normal"].astype(np.float64)
        distance = float(surfaces[i].params["offset"]) - float(normal @ camera64)
        if distance >= 0:
            raise ValueError("the camera must be inside the room")
        if (corner_rays @ normal).min() >= 0 and not first:  # the image's rays all move away from it
            continue
        target = inverse if first else tmp
        axes = np.flatnonzero(normal)
        np.multiply(dirs[axes[0]], float(normal[axes[0]] / distance), out=target)
        for k in axes[1:]:
            np.multiply(dirs[k], float(normal[k] / distance), out=tmp2)
            target += tmp2
        if first:
            seen.fill(i)
            first = False
        else:
            np.greater(tmp, inverse, out=mask)
            np.copyto(seen, i, where=mask)
            np.maximum(inverse, tmp, out=inverse)
    depth = np.empty((height, width), F32)  # returned: not scratch
    np.divide(1.0, inverse, out=depth)
    # the primitives, each only over the pixels that can see it
    windows = {}
    camera_axes = np.array([basis[1], basis[2], basis[0]])
    for i in primitives:
        window = _window(surfaces[i].kind, balls[i], corners[i], camera64, camera_axes, focal, height, width)
        if window is None:
            continue
        hit = _hit(surfaces[i].kind, params[i], cam, (dirs[0][window], dirs[1][window], dirs[2][window]))
        view = depth[window]
        nearer = hit < view
        if nearer.any():
            np.copyto(view, hit, where=nearer)
            np.copyto(seen[window], i, where=nearer)
            windows[i] = window

    index = scratch("index", dtype=np.intp)  # `seen` as indices: table lookups run 2-3 times faster
    np.copyto(index, seen)
    points = scratch("points", 3)
    np.multiply(dirs, depth, out=points)
    for k in range(3):
        points[k] += cam[k]
    to_light = scratch("to_light", 3)
    np.subtract(light.reshape(3, 1, 1), points, out=to_light)

    # normals: camera frame for the output; on the room's planes, which face the camera inside it, n . (light -
    # point) is n . light - offset, one number per plane; the primitives fill in their windows
    to_camera = np.array([basis[1], basis[2], -basis[0]])  # rows: world -> camera frame
    camera_table = np.zeros((3, len(surfaces)), F32)
    facing = np.zeros(len(surfaces), F32)
    for i in planes:
        normal = surfaces[i].params["normal"].astype(np.float64)
        camera_table[:, i] = to_camera @ normal
        facing[i] = normal @ light64 - float(surfaces[i].params["offset"])
    camera_normals = np.empty((height, width, 3), F32)
    for k in range(3):
        camera_table[k].take(index, out=tmp, mode="wrap")
        camera_normals[..., k] = tmp
    cosine = scratch("cosine")
    facing.take(index, out=cosine, mode="wrap")
    albedo = scratch("albedo")
    albedo.fill(1.0)
    _texture_room(surfaces, seen, points, albedo)
    cols32, rows32 = cols.astype(F32), rows.astype(F32)
    for i, window in windows.items():
        surface, prm = surfaces[i], params[i]
        own = seen[window] == i
        rows_seen, cols_seen = np.flatnonzero(own.any(1)), np.flatnonzero(own.any(0))
        if not len(rows_seen):  # hidden behind later primitives
            continue
        # shade only the rectangle of its pixels still seen (later primitives may cover some)
        r0, r1, c0, c1 = int(rows_seen[0]), int(rows_seen[-1]) + 1, int(cols_seen[0]), int(cols_seen[-1]) + 1
        own = own[r0:r1, c0:c1]
        top, left = window[0].start, window[1].start
        window = slice(top + r0, top + r1), slice(left + c0, left + c1)
        where = tuple(points[k][window] for k in range(3))
        n = _normal(surface.kind, prm, where)  # world frame
        center, radius = balls[i]
        inside = math.dist(camera64, center) <= radius * 1.001
        if inside:  # seen from inside: turn the normals to the camera
            d = (dirs[0][window], dirs[1][window], dirs[2][window])
            flip = np.where(n[0] * d[0] + n[1] * d[1] + n[2] * d[2] > 0, F32(-1), F32(1))
            n = tuple(c * flip for c in n)
        lit = n[0] * to_light[0][window]
        lit += n[1] * to_light[1][window]
        lit += n[2] * to_light[2][window]
        np.copyto(cosine[window], lit, where=own)
        if surface.kind == "sphere" and not inside:
            # (point - centre) / radius in the camera frame, where the point is depth * (col, row, -1)
            offset = to_camera @ (center - camera64)
            scale = 1.0 / prm["radius"]
            z = depth[window]
            for k, ray in enumerate((cols32[window[1]][None, :], rows32[window[0]][:, None], F32(-1))):
                c = z * ray
                c -= float(offset[k])
                c *= scale
                np.copyto(camera_normals[(*window, k)], c, where=own)
        else:
            for k in range(3):
                c = n[0] * float(to_camera[k, 0])  # plain numbers: a float64 scalar would promote the arrays
                c += n[1] * float(to_camera[k, 1])
                c += n[2] * float(to_camera[k, 2])
                np.copyto(camera_normals[(*window, k)], c, where=own)
        _texture(surface, where, albedo[window], own)

    # Lambert + ambient from a point light, with cast shadows
    distance2, distance = scratch("distance2"), scratch("distance")
    np.square(to_light[0], out=distance2)
    for k in (1, 2):
        np.square(to_light[k], out=tmp)
        distance2 += tmp
    np.sqrt(distance2, out=distance)
    cosine /= distance
    lit = scratch("lit", dtype=bool)
    np.greater(cosine, 0, out=lit)
    if primitives:
        shadowed = _shadowed(surfaces, primitives, params, balls, corners, points, camera_normals, to_camera,
                             to_light, distance, lit, light64, seen, camera64, scratch)
        cosine.ravel()[shadowed] = 0
    cosine *= 1.6 * 6.0
    np.add(distance2, 4.0, out=tmp)
    cosine /= tmp  # falloff 6 / (4 + d^2)
    np.clip(cosine, 0, 1, out=cosine)
    shade = cosine
    shade *= 1 - ambient
    shade += ambient
    # rgb = (albedo * shade) ** (1 / 2.2) = colour ** (1 / 2.2) * (factor * shade) ** (1 / 2.2), all in [0, 1]
    shade *= albedo
    np.power(shade, F32(1 / 2.2), out=shade)
    colors = np.zeros((3, len(surfaces)), F32)
    for i, surface in enumerate(surfaces):
        colors[:, i] = surface.color.astype(np.float64) ** (1 / 2.2) * 255
    rgb = np.empty((height, width, 3), np.uint8)
    for k in range(3):
        colors[k].take(index, out=tmp, mode="wrap")
        tmp *= shade
        np.add(tmp, 0.5, out=rgb[..., k], casting="unsafe")  # + 0.5, truncated: rounded
    labels = np.array([s.label for s in surfaces], np.int64)
    return {
        "rgb": rgb,
        "depth": depth,
        "normals": camera_normals,
        "semseg": labels.take(index, mode="wrap"),
        "focal": np.array(focal, dtype=F32),
    }


def _texture(surface: Surface, coords, albedo, own) -> None:
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


def _texture_room(surfaces, seen, points, albedo) -> None:
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
        _texture(surface, coords, albedo[window], own[window])


def _shadowed(surfaces, primitives, params, balls, corners, points, camera_normals, to_camera, to_light, distance,
              lit, light, seen, camera, scratch) -> np.ndarray:
    """Flat indices of the lit pixels whose path to the light a primitive blocks.

    Only the primitives can: the room is convex. The direction from the light to each lit pixel (below it) is
    taken as (a, b), its horizontal offset per metre of drop. A grid over (a, b) marks, per primitive, the cells
    its shadow can reach: inside the bounds of its projection from the light (exact tangent bounds of a sphere,
    projected corners otherwise) and inside its bounding ball's cone, widened by the cells' size. Each pixel
    reads one cell; "lies beyond the ball from the light" narrows these (pixel, primitive) pairs further, and
    the rest get exact segment tests, all primitives of a kind at once. Every filter is conservative: the
    result is the exact test's on all lit pixels.
    """
    light_axes = np.array([[1.0, 0, 0], [0, 0, 1.0], [0, -1.0, 0]])  # u = x and v = z offsets per metre of drop
    order = sorted(primitives, key=lambda i: KINDS.index(surfaces[i].kind))  # pairs come grouped by kind
    cones = [_extent(surfaces[i].kind, balls[i], corners[i], light, light_axes, _MARGIN) for i in order]
    balls = [(balls[i][0], balls[i][1] * 1.001 + _MARGIN) for i in order]
    bounded = [j for j, cone in enumerate(cones) if cone is not None]
    if bounded:
        cells = 128  # inner cells per axis; one more on each side holds everything outside all cones
        lows = [min(cones[j][2 * a] for j in bounded) for a in (0, 1)]
        highs = [max(cones[j][2 * a + 1] for j in bounded) for a in (0, 1)]
        scales = [cells / max(hi - lo, 1e-6) for lo, hi in zip(lows, highs, strict=True)]

        def cell(value, axis):
            return min(max(math.floor((value - lows[axis]) * scales[axis]) + 1, 0), cells + 1)

        bits_type = np.uint8 if len(order) <= 8 else np.uint16 if len(order) <= 16 else np.uint64
        grid = np.zeros((cells + 2, cells + 2), bits_type)
        # A pixel may land one cell off its direction's (float rounding), so a cell is marked when a disc of
        # 1.5 cell diagonals around its centre meets the cone: that disc subtends at most asin(that radius) from
        # the light (the plane lies a unit from it), so the cone's half angle grows by it.
        slack = math.asin(min(1.5 * math.hypot(1 / scales[0], 1 / scales[1]), 1.0))
        for j in bounded:
            a0, a1, b0, b1 = cones[j]
            i0, i1, k0, k1 = max(cell(a0, 0) - 1, 1), min(cell(a1, 0) + 1, cells), \
                max(cell(b0, 1) - 1, 1), min(cell(b1, 1) + 1, cells)
            center, radius = balls[j]
            cx, cy, cz = center - light
            reach = math.sqrt(cx * cx + cy * cy + cz * cz)
            angle = math.asin(min(radius / reach, 1.0)) + slack
            if angle >= math.pi / 2:
                grid[i0:i1 + 1, k0:k1 + 1] |= 1 << j
                continue
            a = lows[0] + (np.arange(i0, i1 + 1) - 0.5) / scales[0]
            b = lows[1] + (np.arange(k0, k1 + 1) - 0.5) / scales[1]
            along = (a * cx)[:, None] + (b * cz - cy)[None, :]  # (a, -1, b) . (centre - light)
            across = (a * a)[:, None] + (b * b + 1)[None, :]
            across *= (math.cos(angle) * reach) ** 2
            inside = along > 0
            along *= along
            inside &= along >= across  # the angle to the cone's axis is within its (grown) half angle
            cells_of = grid[i0:i1 + 1, k0:k1 + 1]
            np.bitwise_or(cells_of, bits_type(1 << j), out=cells_of, where=inside)
    drop, value = scratch("drop"), scratch("value")
    part, index = scratch("part", dtype=np.intp), scratch("cell", dtype=np.intp)
    if bounded:
        # pixels at or above the light's height get huge offsets, so border cells, empty (and any pixel that
        # passes this filter still gets an exact test)
        np.maximum(to_light[1], 1e-6, out=drop)
        for axis, k in ((0, 0), (1, 2)):  # cell = 1 + (offset per metre of drop - low) * scale, clipped
            np.divide(-scales[axis], drop, out=value)
            value *= to_light[k]
            value += 1 - lows[axis] * scales[axis]
            np.clip(value, 0, cells + 1, out=value)
            if axis == 0:
                np.copyto(index, value, casting="unsafe")
                index *= cells + 2
            else:
                np.copyto(part, value, casting="unsafe")
                index += part
    if bounded:
        bits = grid.ravel().take(index, mode="clip")
        bits *= lit
        pixels = np.flatnonzero(bits > 0)  # nonzero runs faster on booleans
        pixel_bits = bits.ravel()[pixels]
        # seen from outside, a convex solid cannot shade itself: drop each pixel's own primitive
        others = np.full(len(surfaces), ~np.zeros((), bits_type), bits_type)
        for j, i in enumerate(order):
            if math.dist(camera, balls[j][0]) > balls[j][1]:
                others[i] = ~bits_type(1 << j)
        pixel_bits &= others[seen.ravel()[pixels]]
    lit_pixels = np.flatnonzero(lit) if len(bounded) < len(order) else None
    pairs = []  # per primitive, the pixels that may lie in its shadow
    for j, cone in enumerate(cones):
        pairs.append(lit_pixels if cone is None else pixels[np.flatnonzero((pixel_bits & (1 << j)) != 0)])
    counts = [len(p) for p in pairs]
    at = np.concatenate(pairs)
    if not len(at):
        return at

    def per_pair(values, dtype=F32):
        return np.repeat(np.asarray(values, dtype), counts)

    # only what lies beyond the ball from the light; seen from outside, a convex solid cannot shade itself
    dist = distance.ravel()[at]
    keep = dist > per_pair([math.dist(light, c) - r for c, r in balls])
    if len(bounded) < len(order):  # the lit pixels of an unbounded one include its own
        keep &= (seen.ravel()[at] != per_pair(order, np.uint8)) | per_pair(
            [math.dist(camera, c) <= r or cone is not None for (c, r), cone in zip(balls, cones, strict=True)], bool)
    slots = per_pair(range(len(order)), np.intp)[keep]
    at, dist = at[keep], dist[keep]
    if not len(at):
        return at
    counts = np.bincount(slots, minlength=len(order)).tolist()
    # rays from 1 mm off the surface (world normal = camera normal rotated back) towards the light
    flat_normals = camera_normals.reshape(-1, 3)
    normal = [flat_normals[:, k][at] for k in range(3)]
    origin, direction = [], []
    for k in range(3):
        offset = normal[0] * float(to_camera[0, k])
        offset += normal[1] * float(to_camera[1, k])
        offset += normal[2] * float(to_camera[2, k])
        offset *= 1e-3
        offset += points[k].ravel()[at]
        origin.append(offset)
        direction.append(to_light[k].ravel()[at] / dist)
    blocked = np.zeros(len(at), bool)
    start = 0
    for kind in KINDS:
        members = [j for j, i in enumerate(order) if surfaces[i].kind == kind]
        if not members:
            continue
        stop = start + sum(counts[j] for j in members)
        if stop > start:
            table = {}
            repeats = [counts[j] for j in members]
            for name in params[order[members[0]]]:
                values = np.array([params[order[j]][name] for j in members], F32)
                table[name] = tuple(np.repeat(values[:, k], repeats) for k in range(values.shape[1])) \
                    if values.ndim == 2 else np.repeat(values, repeats)
            span = slice(start, stop)
            blocked[span] = _blocked(kind, table, tuple(c[span] for c in origin), tuple(c[span] for c in direction),
                                     dist[span])
        start = stop
    return at[blocked]
