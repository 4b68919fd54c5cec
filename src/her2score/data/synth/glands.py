"""Glandular tumour architecture (``architecture="glandular"``): tubular glands of tall columnar cells
around a lumen, as in gastric, colorectal and other adenocarcinomas.

A gland is a *capsule* (a tube cut along its axis, or a round gland when its axis has no length): a
lumen of radius ``R`` around a segment, lined by one row of columnar cells of height ``H`` (15-30 µm)
and width ``W`` (6-10 µm at mid-height). Each cell's nucleus is elongated along the cell's axis,
perpendicular to the basement membrane, and sits basally or, in pseudostratified glands, at varied
depths. Cells are drawn analytically per pixel in gland coordinates (depth ``d`` from the lumen, arc
position ``s`` along the gland), so a gland crossing two render tiles looks the same in both.

HER2 membranes follow the same per-cell truth as round cells (membrane class, intensity, completeness,
arc start), plus a ``pattern``: ``PATTERN_RING`` (an arc of ``completeness`` of the cell outline: the
whole outline for complete classes, part of it for incomplete ones) or ``PATTERN_U`` (basolateral:
basal and both lateral membranes, luminal side unstained; counted complete by the gastric rulebook,
incomplete by the breast one). The shared lateral membrane of two neighbours carries both cells' DAB.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from her2score.data.synth.cells import Layout

ARCHITECTURES = ("solid", "glandular")
PATTERN_RING, PATTERN_U = 0, 1
PATTERNS = ("ring", "basolateral")
#: Membrane line width (Gaussian σ, µm): as the round cells' rings.
MEMBRANE_SIGMA_UM = 0.55


def check_architecture(architecture: str) -> str:
    """``architecture`` if known, else a ValueError naming the choices."""
    if architecture not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {architecture!r}; expected one of {', '.join(ARCHITECTURES)}")
    return architecture


def place_glands(
    tumour: np.ndarray, tissue: np.ndarray, factor: int, mpp: float, grade: float, rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """Glands (capsules) packed without overlap where the coarse ``tumour`` and ``tissue`` maps are on.

    Returns per-gland float64 arrays in level-0 px: centre ``cy, cx``, unit axis ``ey, ex``, half-length
    ``half``, lumen radius ``radius``, cell ``height`` and the number of cells ``n_cells`` (int).
    """
    um = 1.0 / mpp
    hc, wc = tumour.shape
    gap = rng.uniform(3.0, 25.0) * um  # stroma between glands: back-to-back to well separated
    typical = (rng.uniform(8, 22) * (1 - 0.4 * grade) + 22) * um
    step = 0.8 * typical  # dense candidates, packed greedily below: glands fill the tumour area
    dy = step * np.sqrt(3) / 2
    ys = np.arange(dy / 2, hc * factor, dy)
    xs = np.arange(step / 2, wc * factor + step, step)
    yy, xx = np.meshgrid(ys, xs, indexing="ij")
    xx = xx + (np.arange(ys.size)[:, None] % 2) * step / 2
    pts = np.stack([yy.ravel(), xx.ravel()], axis=1) + rng.normal(0, 0.3 * step, (yy.size, 2))
    iy = np.clip((pts[:, 0] // factor).astype(np.int64), 0, hc - 1)
    ix = np.clip((pts[:, 1] // factor).astype(np.int64), 0, wc - 1)
    ok = (tumour[iy, ix] > 0.5) & (tissue[iy, ix] > 0.5)
    pts = pts[ok][rng.permutation(int(ok.sum()))]
    n = len(pts)
    radius = rng.uniform(3.0, 22.0, n) * (1 - 0.4 * grade) * um
    height = rng.uniform(15.0, 30.0, n) * um
    half = np.where(rng.uniform(size=n) < 0.45, rng.uniform(0.3, 2.5, n) * (radius + height), 0.0)
    theta = rng.uniform(0, np.pi, n)
    width = rng.uniform(6.0, 10.0, n) * um
    placed: list[int] = []
    reach = np.zeros(0)
    centres = np.zeros((0, 2))
    for i in range(n):
        for shrink in (1.0, 0.4, 0.0):
            r = half[i] * shrink + radius[i] + height[i]
            if not len(placed) or np.all(np.hypot(*(centres - pts[i]).T) >= reach + r + gap):
                half[i] *= shrink
                placed.append(i)
                reach = np.append(reach, r)
                centres = np.vstack([centres, pts[i]])
                break
    if not placed:  # a section must show tumour: one round gland in the middle of the tumour area
        on = np.argwhere((tumour > 0.5) & (tissue > 0.5))
        centre = (on.mean(axis=0) + 0.5) * factor if len(on) else np.array([hc, wc]) * factor / 2
        pts = np.vstack([pts, centre])
        radius, height, width = (
            np.append(v, x) for v, x in ((radius, 12 * um), (height, 22 * um), (width, 8 * um))
        )
        half, theta = np.append(half, 0.0), np.append(theta, 0.0)
        placed = [len(pts) - 1]
    sel = np.asarray(placed, dtype=np.int64)
    mid = radius[sel] + height[sel] / 2
    perimeter = 2 * np.pi * mid + 4 * half[sel]
    return {
        "cy": pts[sel, 0],
        "cx": pts[sel, 1],
        "ey": np.sin(theta[sel]),
        "ex": np.cos(theta[sel]),
        "half": half[sel],
        "radius": radius[sel],
        "height": height[sel],
        "n_cells": np.maximum(6, np.round(perimeter / width[sel])).astype(np.int64),
        "pseudo": rng.uniform(size=sel.size) < 0.35 + 0.4 * grade,
    }


def _arc(a: np.ndarray, b: np.ndarray, half: float, mid: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Arc position ``s`` (along the gland's mid-height outline, px), radial distance from the axis
    segment, and the local µm-per-``s`` scale factor (ρ / mid on the round ends, 1 on the sides) of
    points at axis coordinate ``a`` and cross coordinate ``b``."""
    t = np.clip(a, -half, half)
    ra = a - t
    rho = np.hypot(ra, b)
    phi = np.arctan2(b, ra)  # -π..π
    cap_right = a > half
    cap_left = a < -half
    pi = np.pi
    s = np.where(
        cap_right,
        mid * (phi + pi / 2),
        np.where(
            cap_left,
            pi * mid + 2 * half + mid * (np.mod(phi, 2 * pi) - pi / 2),
            np.where(b >= 0, pi * mid + (half - a), 2 * pi * mid + 2 * half + (a + half)),
        ),
    )
    scale = np.where(cap_right | cap_left, rho / np.maximum(mid, 1e-6), 1.0)
    return s, rho, scale


def _outline_point(s: np.ndarray, half: float, mid: float) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of :func:`_arc` on the mid-height outline: the outward unit normal (na, nb) at ``s``
    and the axis-segment point (ta) it starts from (cross coordinate 0)."""
    pi = np.pi
    s1, s2, s3 = pi * mid, pi * mid + 2 * half, 2 * pi * mid + 2 * half
    phi = np.where(
        s < s1,
        s / np.maximum(mid, 1e-6) - pi / 2,
        np.where(s < s2, pi / 2, np.where(s < s3, (s - s2) / np.maximum(mid, 1e-6) + pi / 2, -pi / 2)),
    )
    ta = np.where(s < s1, half, np.where(s < s2, half - (s - s1), np.where(s < s3, -half, s - s3 - half)))
    return np.cos(phi), np.sin(phi), ta


def gland_cells(
    glands: dict[str, np.ndarray], mpp: float, grade: float, rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """One columnar cell per slot of each gland: nucleus centre ``y, x`` (level-0 px), ``gland`` index,
    ``slot``, nucleus depth ``depth`` (fraction of the cell height from the lumen) and half-axes
    ``nuc_long``, ``nuc_short`` (px; long axis along the cell), in gland order."""
    um = 1.0 / mpp
    n_cells = glands["n_cells"]
    total = int(n_cells.sum())
    gland = np.repeat(np.arange(len(n_cells)), n_cells)
    first = np.concatenate([[0], np.cumsum(n_cells)[:-1]])
    slot = np.arange(total) - np.repeat(first, n_cells)
    radius, height, half = (glands[k][gland] for k in ("radius", "height", "half"))
    mid = radius + height / 2
    width = (2 * np.pi * mid + 4 * half) / n_cells[gland]
    pseudo = glands["pseudo"][gland]
    depth = np.where(pseudo, rng.uniform(0.3, 0.8, total), rng.uniform(0.6, 0.8, total))
    # Pseudostratified glands have cigar-shaped nuclei (intestinal type, ~10-16 µm long, 3-4.5 µm wide);
    # basal nuclei are ovoid, larger and rounder with grade.
    long_ = np.where(pseudo, rng.uniform(5.0, 8.0, total), rng.uniform(3.5, 6.0, total) * (1 - 0.15 * grade))
    short = np.where(pseudo, rng.uniform(1.5, 2.2, total), rng.uniform(1.8, 2.8, total) * (1 + 0.4 * grade))
    long_, short = long_ * um, np.minimum(0.42 * width, short * um)
    long_ = np.maximum(np.minimum(long_, 0.45 * height), short)
    depth = np.clip(depth, (long_ + 0.5 * um) / height, 1 - (long_ + 0.8 * um) / height)
    s = (slot + 0.5) * width
    na, nb, ta = _outline_point(s, half, mid)
    rho = radius + depth * height
    a, b = ta + na * rho, nb * rho
    ey, ex = glands["ey"][gland], glands["ex"][gland]
    # Axis e = (ey, ex); cross axis e⊥ = (ex, -ey): point = centre + a e + b e⊥.
    y = glands["cy"][gland] + a * ey + b * ex
    x = glands["cx"][gland] + a * ex - b * ey
    return {
        "y": y,
        "x": x,
        "gland": gland.astype(np.int32),
        "slot": slot.astype(np.int32),
        "depth": depth.astype(np.float32),
        "nuc_long": long_.astype(np.float32),
        "nuc_short": short.astype(np.float32),
    }


def _gland_axes(
    glands: dict[str, np.ndarray], g: int, dy: np.ndarray, dx: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Offsets (dy, dx) from gland ``g``'s centre in its own frame: along its axis, and across it."""
    ey, ex = glands["ey"][g], glands["ex"][g]
    return dy * ey + dx * ex, dy * ex - dx * ey


def coarse_cover(glands: dict[str, np.ndarray], shape: tuple[int, int], factor: int) -> np.ndarray:
    """Boolean coarse map of where glands (lumen and epithelium) lie: no stromal cells there."""
    out = np.zeros(shape, dtype=bool)
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    yy = (yy + 0.5) * factor
    xx = (xx + 0.5) * factor
    for g in range(len(glands["cy"])):
        outer = glands["radius"][g] + glands["height"][g] + factor / 2
        reach = glands["half"][g] + outer
        cy, cx = glands["cy"][g], glands["cx"][g]
        r0, r1 = max(0, int((cy - reach) // factor)), min(shape[0], int((cy + reach) // factor) + 1)
        c0, c1 = max(0, int((cx - reach) // factor)), min(shape[1], int((cx + reach) // factor) + 1)
        if r0 >= r1 or c0 >= c1:
            continue
        a, b = _gland_axes(glands, g, yy[r0:r1, c0:c1] - cy, xx[r0:r1, c0:c1] - cx)
        ra = a - np.clip(a, -glands["half"][g], glands["half"][g])
        out[r0:r1, c0:c1] |= np.hypot(ra, b) <= outer
    return out


def render_glands(
    layout: Layout,
    y0: int,
    x0: int,
    h: int,
    w: int,
    grain: np.ndarray,
    nuc_h: np.ndarray,
    nuc_d: np.ndarray,
    mem_d: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Gland maps over level-0 [y0, y0+h) × [x0, x0+w): epithelium (0..1), lumen (0..1), hematoxylin
    and DAB OD of the columnar cells, and their membrane lines (0..1, whatever the stain, for H&E).

    ``grain``: the region's unit-variance noise (h, w), for chromatin; per cell, in layout cell order:
    ``nuc_h`` nuclear hematoxylin OD, ``nuc_d`` nuclear DAB OD, ``mem_d`` membrane DAB OD (0: none).
    """
    c = layout.cells
    glands = layout.extras["glands"]
    mpp = layout.mpp
    sigma = MEMBRANE_SIGMA_UM / mpp
    epi, lumen, hem, dab, lines = (np.zeros((h, w), dtype=np.float32) for _ in range(5))
    first = layout.extras["gland_first"]
    for g in range(len(glands["cy"])):
        half, radius, height = glands["half"][g], glands["radius"][g], glands["height"][g]
        outer = radius + height + 3 * sigma
        reach = half + outer
        cy, cx = glands["cy"][g], glands["cx"][g]
        r0, r1 = max(y0, int(np.floor(cy - reach))), min(y0 + h, int(np.ceil(cy + reach)) + 1)
        c0, c1 = max(x0, int(np.floor(cx - reach))), min(x0 + w, int(np.ceil(cx + reach)) + 1)
        if r0 >= r1 or c0 >= c1:
            continue
        dy = (np.arange(r0, r1, dtype=np.float64) - cy)[:, None]
        dx = (np.arange(c0, c1, dtype=np.float64) - cx)[None, :]
        a, b = _gland_axes(glands, g, dy, dx)
        mid = radius + height / 2
        s, rho, scale = _arc(a, b, half, mid)
        d = rho - radius
        near = d <= height + 3 * sigma
        if not near.any():
            continue
        win = (slice(r0 - y0, r1 - y0), slice(c0 - x0, c1 - x0))
        lumen[win] = np.maximum(lumen[win], np.clip(0.5 - d / sigma, 0, 1))
        body = np.clip(0.5 + d / sigma, 0, 1) * np.clip(0.5 + (height - d) / sigma, 0, 1)
        epi[win] = np.maximum(epi[win], body)

        n = int(glands["n_cells"][g])
        width = (2 * np.pi * mid + 4 * half) / n
        u = s / width
        k = np.floor(u).astype(np.int64) % n
        q = u - np.floor(u)
        rows = first[g] + k  # each pixel's own cell
        right = q >= 0.5
        other = first[g] + np.where(right, (k + 1) % n, (k - 1) % n)
        w_um = width * scale  # the cell's local width at this depth (px)
        lateral_px = np.minimum(q, 1 - q) * w_um

        # Nucleus of the pixel's own cell: an ellipse, long axis along the cell.
        dn = c["depth"][rows] * height
        e = np.hypot((q - 0.5) * w_um / c["nuc_short"][rows], (d - dn) / c["nuc_long"][rows])
        shape = np.clip((1.0 - e) / 0.2 + 0.5, 0.0, 1.0)
        chrom = (0.85 + 0.08 * grain[win]) * (1 + 0.25 * np.clip(e - 0.6, 0, 1))
        nucleus = shape * chrom
        hem[win] += (nucleus * nuc_h[rows]).astype(np.float32)
        if nuc_d.any():
            dab[win] += (nucleus * nuc_d[rows]).astype(np.float32)

        # Membranes: apical (d = 0), basal (d = H) and the two lateral lines shared with neighbours,
        # each carrying the DAB of the cell(s) whose stained part of the outline passes there.
        per = 2 * (width + height)  # a cell's outline length (mid-height width)
        inside = np.clip(0.5 + d / sigma, 0, 1) * np.clip(0.5 + (height - d) / sigma, 0, 1)
        d_in = np.clip(d, 0, height)
        g_ap = np.exp(-0.5 * (d / sigma) ** 2)
        g_ba = np.exp(-0.5 * ((d - height) / sigma) ** 2)
        g_lat = np.exp(-0.5 * (lateral_px / sigma) ** 2) * inside
        p_ap = q * width
        p_ba = width + height + (1 - q) * width
        p_own_lat = np.where(right, width + d_in, 2 * width + height + (height - d_in))
        p_other_lat = np.where(right, 2 * width + height + (height - d_in), width + d_in)
        own = (
            g_ap * _stained(c, rows, p_ap, per, "apical")
            + g_ba * _stained(c, rows, p_ba, per, "basal")
            + g_lat * _stained(c, rows, p_own_lat, per, "lateral")
        )
        theirs = g_lat * _stained(c, other, p_other_lat, per, "lateral")
        dab[win] += (own * mem_d[rows] + theirs * mem_d[other]).astype(np.float32)
        lines[win] += (g_ap + g_ba + g_lat).astype(np.float32)
    return epi, lumen, hem, dab, lines


def _stained(c: dict[str, np.ndarray], rows: np.ndarray, p: np.ndarray, per: float, side: str) -> np.ndarray:
    """1 where the outline position ``p`` (px from the apical-left corner, clockwise) of cell ``rows``
    is stained: the U pattern stains all but the apical side, a ring an arc of ``completeness``."""
    pattern = c["pattern"][rows]
    frac = np.mod(p / per - c["arc_start"][rows] / (2 * np.pi), 1.0)
    ring = frac < c["completeness"][rows]
    u_shape = np.full(p.shape, side != "apical")
    return np.where(pattern == PATTERN_U, u_shape, ring).astype(np.float32)
