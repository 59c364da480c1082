"""The synthetic scenes' renderer: one scene's surfaces, camera and light to aligned rgb, depth, normals and
surface ids.

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

import numpy as np

from .materials import texture, texture_room
from .raytrace import (
    F32,
    KINDS,
    bounding_sphere,
    box_corners,
    intersect,
    pixel_window,
    projected_extent,
    segment_blocked,
    shape_params,
    surface_normal,
)


def camera_basis(yaw: float, pitch: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Forward, right and up unit vectors of a camera (y is up in the world)."""
    sy, cy, sp, cp = math.sin(yaw), math.cos(yaw), math.sin(pitch), math.cos(pitch)
    forward = (sy * cp, sp, cy * cp)
    right = (-cy, 0.0, sy)  # forward x (0, 1, 0), normalised
    up = (-sp * sy, cp, -sp * cy)  # right x forward
    return np.array(forward, F32), np.array(right, F32), np.array(up, F32)


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


_MARGIN = 2e-3  # primitives' bounds are grown by this: shadow rays start 1 mm off a surface


def render(surfaces, camera, light, ambient, look, height, width):
    """rgb, depth, camera-frame normals, surface labels and the focal length (pixels) of `surfaces` seen from
    `camera` (yaw, pitch and field of view in `look`) under a point light at `light` with `ambient` light."""
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
    params = {i: shape_params(surfaces[i]) for i in primitives}
    balls = {i: (lambda c, r: (c.astype(np.float64), r))(*bounding_sphere(surfaces[i])) for i in primitives}
    corners = {i: None if surfaces[i].kind == "sphere" else box_corners(surfaces[i], _MARGIN) for i in primitives}

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
        window = pixel_window(surfaces[i].kind, balls[i], corners[i], camera64, camera_axes, focal, height, width)
        if window is None:
            continue
        hit = intersect(surfaces[i].kind, params[i], cam, (dirs[0][window], dirs[1][window], dirs[2][window]))
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
    texture_room(surfaces, seen, points, albedo)
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
        n = surface_normal(surface.kind, prm, where)  # world frame
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
        texture(surface, where, albedo[window], own)

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
    cones = [projected_extent(surfaces[i].kind, balls[i], corners[i], light, light_axes, _MARGIN) for i in order]
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
            blocked[span] = segment_blocked(kind, table, tuple(c[span] for c in origin),
                                            tuple(c[span] for c in direction), dist[span])
        start = stop
    return at[blocked]
