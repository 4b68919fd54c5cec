"""Render a cell layout to RGB in optical density: per-stain concentration maps (hematoxylin, eosin,
DAB) built from pre-drawn cell stamps and region maps, mixed through per-site stain vectors, then the
"scanner": out-of-focus areas, noise (dithered quantisation), gamma and white balance; the optics'
mild blur is drawn into the soft edges of the stamps, and JPEG artefacts come from the JPEG tiles.

Everything is vectorised per region (a tile of a slide or a whole patch): stamps are summed with one
``np.bincount`` per stain, so a 1024×1024 tile costs tens of milliseconds.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from her2score.data.synth.cells import MEMBRANE_DAB_OD, NUCLEAR_DAB_OD, Layout, tumour_spacing_um
from her2score.stain.deconvolution import DAB, EOSIN, HEMATOXYLIN

LN10 = np.float32(np.log(10.0))
N_VARIANTS = 24
TEXTURE_SIZE = 512
#: Pen-ink colours as OD vectors: blue, green, black.
INK_OD = np.array([[0.9, 0.45, 0.08], [0.85, 0.2, 0.65], [0.7, 0.7, 0.65]], dtype=np.float32)
DUST_OD = np.array([0.55, 0.58, 0.6], dtype=np.float32)


@dataclass(frozen=True)
class SiteStyle:
    """How one lab stains and one scanner images: stain vectors, gains, glass colour, colour response."""

    hematoxylin: tuple[float, float, float]
    eosin: tuple[float, float, float]
    dab: tuple[float, float, float]
    dab_gain: float
    counterstain_gain: float
    background: tuple[float, float, float]
    gamma: float
    white_balance: tuple[float, float, float]
    noise: float  # sensor noise, in concentration quantisation steps
    jpeg_quality: int
    blur: float = 0.0  # scanner optics: Gaussian sigma in µm over the whole scan (0: only the stamps' edges)


#: Ranges of the per-site draws (uniform), by how far labs and scanners are allowed to differ:
#: ``mild`` (the default, what every figure measured before issue 15 used) and ``wide`` (stain vectors
#: further apart, DAB and hematoxylin strength ±35-40 %, stronger tone, white-balance and JPEG
#: differences, and optics blur: a leave-one-site-out test that means something). README, Synthetic data.
SITE_VARIATION: dict[str, dict[str, tuple[float, float]]] = {
    "mild": {
        "vector_jitter": (0.05, 0.05), "dab_gain": (0.8, 1.2), "counterstain_gain": (0.8, 1.25),
        "background": (238, 250), "gamma": (0.85, 1.15), "white_balance": (0.98, 1.015),
        "noise": (0.6, 1.4), "jpeg_quality": (75, 93), "blur_um": (0.0, 0.0),
    },
    "wide": {
        "vector_jitter": (0.12, 0.12), "dab_gain": (0.6, 1.4), "counterstain_gain": (0.65, 1.45),
        "background": (228, 252), "gamma": (0.8, 1.25), "white_balance": (0.95, 1.03),
        "noise": (0.5, 2.0), "jpeg_quality": (60, 95), "blur_um": (0.0, 1.2),
    },
}  # fmt: skip

#: A "look" stands for another renderer or lab altogether, pushed far from her2score's defaults (the
#: same for every site, on top of the per-site draw): its own stain vectors, gains, scanner tone and a
#: geometry scale (cells and tissue drawn as if the pixels were ``scale`` × larger: other cell sizes
#: and layout). ``foreign`` mimics the cohort of issue 15.
LOOKS: dict[str, dict] = {
    "default": {},
    "foreign": {
        "hematoxylin": (0.55, 0.76, 0.35), "dab": (0.34, 0.60, 0.72), "eosin": (0.10, 0.90, 0.42),
        "dab_gain": 1.0, "counterstain_gain": 1.15, "gamma": 1.1, "white_balance": (1.0, 0.97, 0.9),
        "background": 232.0, "blur_um": 0.8, "scale": 0.8,
    },
}  # fmt: skip


def site_style(site: int, variation: str = "mild", look: str = "default") -> SiteStyle:
    """The (fixed) style of site ``site``: the same site, variation and look always stain and scan alike.

    With ``variation="mild"`` and ``look="default"`` the draws are those of earlier versions.
    """
    if variation not in SITE_VARIATION:
        raise ValueError(f"site variation must be one of {', '.join(SITE_VARIATION)}, not {variation!r}")
    if look not in LOOKS:
        raise ValueError(f"look must be one of {', '.join(LOOKS)}, not {look!r}")
    r = SITE_VARIATION[variation]
    lk = LOOKS[look]
    rng = np.random.default_rng([0x48E2, int(site)])

    def jitter(v: tuple[float, float, float], s: float) -> tuple[float, float, float]:
        a = np.abs(np.asarray(v) / np.linalg.norm(v) + rng.normal(0, s, 3))
        return tuple(float(x) for x in a / np.linalg.norm(a))

    s = r["vector_jitter"][0]
    hematoxylin = jitter(lk.get("hematoxylin", HEMATOXYLIN), s)
    eosin = jitter(lk.get("eosin", EOSIN), s)
    dab = jitter(lk.get("dab", DAB), s)
    dab_gain = float(rng.uniform(*r["dab_gain"])) * lk.get("dab_gain", 1.0)
    counterstain_gain = float(rng.uniform(*r["counterstain_gain"])) * lk.get("counterstain_gain", 1.0)
    glass = lk.get("background")
    background = rng.uniform(*r["background"]) + rng.uniform(-2, 2, 3)
    if glass is not None:
        background = background - np.mean(background) + glass
    gamma = float(rng.uniform(*r["gamma"])) * lk.get("gamma", 1.0)
    balance = rng.uniform(*r["white_balance"], 3) * np.asarray(lk.get("white_balance", (1.0, 1.0, 1.0)))
    noise = float(rng.uniform(*r["noise"]))
    jpeg = int(rng.integers(int(r["jpeg_quality"][0]), int(r["jpeg_quality"][1])))
    blur = float(rng.uniform(*r["blur_um"])) if r["blur_um"][1] > 0 else 0.0
    return SiteStyle(
        hematoxylin=hematoxylin, eosin=eosin, dab=dab, dab_gain=dab_gain, counterstain_gain=counterstain_gain,
        background=tuple(float(x) for x in background), gamma=gamma,
        white_balance=tuple(float(x) for x in balance), noise=noise, jpeg_quality=jpeg,
        blur=blur + lk.get("blur_um", 0.0),
    )  # fmt: skip


def look_scale(look: str) -> float:
    """The geometry scale of a look (1: her2score's own cell sizes and layout)."""
    return float(LOOKS[look].get("scale", 1.0))


def apply_blur(rgb: np.ndarray, style: SiteStyle, mpp: float) -> np.ndarray:
    """The scanner's optics blur (Gaussian, ``style.blur`` µm) over a rendered region."""
    sigma = style.blur / mpp
    if sigma < 0.3:
        return rgb
    from PIL import Image, ImageFilter

    return np.asarray(Image.fromarray(rgb).filter(ImageFilter.GaussianBlur(sigma)))


# --------------------------------------------------------------------------- stamps
@dataclass
class Stamps:
    """Pre-drawn cells of each type at the layout's µm/px: stacks of (N_VARIANTS, S, S) float32 maps."""

    tumour_nucleus: np.ndarray
    tumour_membrane: np.ndarray
    tumour_angle: np.ndarray  # (S, S) angle of each stamp pixel around the centre, 0..2π
    fibroblast: np.ndarray
    lymphocyte: np.ndarray
    adipocyte: np.ndarray
    dust: np.ndarray
    texture: np.ndarray  # (T, T) stroma fibre texture, mean ~1
    grain: np.ndarray  # (T, T, 3) sensor noise, unit variance
    cache: dict = field(default_factory=dict)

    @property
    def pad(self) -> int:
        return max(s.shape[-1] for s in (self.tumour_nucleus, self.fibroblast, self.adipocyte)) // 2 + 1


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    c = (size - 1) / 2
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    return yy - c, xx - c


def _ellipse_radius(yy: np.ndarray, xx: np.ndarray, a: float, b: float, theta: float) -> np.ndarray:
    c, s = np.cos(theta), np.sin(theta)
    u = (xx * c + yy * s) / a
    v = (-xx * s + yy * c) / b
    return np.sqrt(u * u + v * v)


def _soft_disk(r: np.ndarray, edge: float = 0.15) -> np.ndarray:
    return np.clip((1.0 - r) / edge + 0.5, 0.0, 1.0)


def make_stamps(mpp: float, grade: float, rng: np.random.Generator) -> Stamps:
    """Draw the cell stamps of one section: nuclear size and pleomorphism grow with ``grade``."""
    px = 1.0 / mpp
    spacing = tumour_spacing_um(grade) * 1.07 * px
    cell_r = 0.49 * spacing
    s_t = int(2 * np.ceil(cell_r * 1.12 + 2.5 * px)) + 1
    yy, xx = _grid(s_t)
    angle = np.mod(np.arctan2(yy, xx), 2 * np.pi).astype(np.float32)
    nuc, mem = [], []
    for _ in range(N_VARIANTS):
        r_n = (3.6 + 2.2 * grade) * px * np.exp(rng.normal(0, 0.08 + 0.14 * grade))
        elong = 1.0 + abs(rng.normal(0, 0.12 + 0.2 * grade))
        theta = rng.uniform(0, np.pi)
        ang = np.arctan2(yy, xx)
        wobble = 1 + (0.04 + 0.1 * grade) * np.sin(3 * ang + rng.uniform(0, 6.3)) * rng.uniform(0, 1)
        r = _ellipse_radius(yy, xx, r_n * np.sqrt(elong), r_n / np.sqrt(elong), theta) / wobble
        chromatin = 0.75 + 0.25 * rng.uniform(size=r.shape)
        chromatin = ndimage.gaussian_filter(chromatin, 0.6 * px) * (1 + 0.25 * np.clip(r - 0.6, 0, 1))
        nuc.append(_soft_disk(r, 0.2) * chromatin)
        rc = cell_r * rng.uniform(0.94, 1.08)
        re = _ellipse_radius(
            yy, xx, rc * rng.uniform(1.0, 1.12), rc / rng.uniform(1.0, 1.12), rng.uniform(0, np.pi)
        )
        width = 0.55 * px / rc
        mem.append(np.exp(-0.5 * ((re - 1.0) / width) ** 2))

    def family(size_um: float, radii: callable) -> np.ndarray:
        size = int(2 * np.ceil(size_um * px / 2)) + 1
        gy, gx = _grid(size)
        out = []
        for _ in range(N_VARIANTS):
            a, b, edge = radii()
            out.append(_soft_disk(_ellipse_radius(gy, gx, a * px, b * px, rng.uniform(0, np.pi)), edge))
        return np.stack(out).astype(np.float32)

    fibro = family(16, lambda: (rng.uniform(4.5, 7.5), rng.uniform(1.0, 1.7), 0.25))
    lymph = family(9, lambda: (rng.uniform(2.6, 3.4), rng.uniform(2.4, 3.2), 0.2))
    dust = family(12, lambda: (rng.uniform(1.0, 4.5), rng.uniform(0.8, 3.0), 0.3))
    size_a = int(2 * np.ceil(40 * px)) + 1
    gy, gx = _grid(size_a)
    adipo = []
    for _ in range(N_VARIANTS // 3):
        ra = rng.uniform(34, 39) * px
        re = _ellipse_radius(
            gy, gx, ra * rng.uniform(1, 1.1), ra / rng.uniform(1, 1.1), rng.uniform(0, np.pi)
        )
        adipo.append(np.exp(-0.5 * ((re - 1.0) / (0.5 * px / ra)) ** 2))
    texture = _fibre_texture(rng, px)
    grain = rng.standard_normal((TEXTURE_SIZE, TEXTURE_SIZE, 3)).astype(np.float32)
    return Stamps(
        tumour_nucleus=np.stack(nuc).astype(np.float32),
        tumour_membrane=np.stack(mem).astype(np.float32),
        tumour_angle=angle,
        fibroblast=fibro,
        lymphocyte=lymph,
        adipocyte=np.stack(adipo).astype(np.float32),
        dust=dust,
        texture=texture,
        grain=grain,
    )


def _fibre_texture(rng: np.random.Generator, px: float) -> np.ndarray:
    """Wavy collagen fibres: noise stretched along a slowly changing direction, mean ~1."""
    t = TEXTURE_SIZE
    base = rng.standard_normal((t, t)).astype(np.float32)
    a = ndimage.gaussian_filter(base, (0.8 * px, 5 * px), mode="wrap", truncate=2.5)
    b = ndimage.gaussian_filter(base, (5 * px, 0.8 * px), mode="wrap", truncate=2.5)
    coarse = ndimage.gaussian_filter(rng.standard_normal((8, 8)), 1.0, mode="wrap")
    mix = ndimage.zoom(coarse, t / 8, order=1, mode="grid-wrap", grid_mode=True)
    mix = 1 / (1 + np.exp(-mix / (mix.std() + 1e-6) * 3))
    fib = mix * a / (a.std() + 1e-6) + (1 - mix) * b / (b.std() + 1e-6)
    return np.clip(1.0 + 0.55 * fib, 0.15, 2.2).astype(np.float32)


# --------------------------------------------------------------------------- rendering
#: Concentrations are quantised to LEVELS steps of 1/OD_STEPS OD (0..2 OD) and mapped to RGB through a
#: per-site lookup table (stain vectors, glass colour and scanner response in one gather).
OD_STEPS = 64
LEVELS = 128


@functools.lru_cache(maxsize=16)
def stain_lut(style: SiteStyle, stain: str) -> np.ndarray:
    """(LEVELS³, 3) uint8 table: RGB of (hematoxylin, eosin, DAB) concentration levels at this site."""
    od = np.arange(LEVELS, dtype=np.float32) / OD_STEPS
    vec = [np.asarray(v, dtype=np.float32) for v in (style.hematoxylin, style.eosin, style.dab)]
    if stain == "he":  # the H&E section has no DAB; keep the axis so that indices stay the same
        vec[2] = np.zeros(3, dtype=np.float32)
    total = (
        od[:, None, None, None] * vec[0] + od[None, :, None, None] * vec[1] + od[None, None, :, None] * vec[2]
    )
    rgb = np.exp(-LN10 * total) * np.asarray(style.background, dtype=np.float32)
    rgb = np.clip(rgb, 0, 255).astype(np.uint8).reshape(-1, 3)
    return apply_scanner(rgb[None], style)[0]


def _upsample(coarse: np.ndarray, factor: int, y0: int, x0: int, h: int, w: int) -> np.ndarray:
    """Bilinear crop of a coarse map to level-0 pixels [y0, y0+h) × [x0, x0+w) (broadcast, no gathers)."""
    f = factor
    r0, c0 = y0 // f, x0 // f
    nr, nc = -(-(y0 + h) // f) - r0, -(-(x0 + w) // f) - c0
    ri = np.clip(np.arange(r0, r0 + nr + 1), 0, coarse.shape[0] - 1)
    ci = np.clip(np.arange(c0, c0 + nc + 1), 0, coarse.shape[1] - 1)
    a = coarse[np.ix_(ri, ci)]
    t = np.arange(f, dtype=np.float32) / f
    # Columns first on the small array, then rows with long inner loops (numpy is slow on short ones).
    cols = (a[:, :-1, None] * (1 - t) + a[:, 1:, None] * t).reshape(nr + 1, nc * f)
    cols = cols[:, x0 - c0 * f : x0 - c0 * f + w]
    tt = t[None, :, None]
    out = (cols[:-1, None, :] * (1 - tt) + cols[1:, None, :] * tt).reshape(nr * f, w)
    return out[y0 - r0 * f : y0 - r0 * f + h]


def _wrap_crop(tex: np.ndarray, y0: int, x0: int, h: int, w: int) -> np.ndarray:
    """Crop of a periodic texture, by slicing a tiled copy."""
    t = tex.shape[0]
    reps = max(-(-(h + t) // t), -(-(w + t) // t))
    key = (id(tex), reps)
    big = _TILED.get(key)
    if big is None or big[0] is not tex:
        big = (tex, np.tile(tex, (reps, reps) + (1,) * (tex.ndim - 2)))
        if len(_TILED) > 8:
            _TILED.clear()
        _TILED[key] = big
    return big[1][y0 % t : y0 % t + h, x0 % t : x0 % t + w]


_TILED: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}


class _Canvas:
    """Sums cell stamps into padded per-stain maps with one bincount per stain."""

    def __init__(self, h: int, w: int, pad: int) -> None:
        self.h, self.w, self.pad = h, w, pad
        self.wp = w + 2 * pad
        self.size = (h + 2 * pad) * self.wp
        self.idx: dict[str, list[np.ndarray]] = {}
        self.wts: dict[str, list[np.ndarray]] = {}

    def add(self, stain: str, ys: np.ndarray, xs: np.ndarray, stamps: np.ndarray) -> None:
        """Add ``stamps`` (N, S, S), already weighted, centred at local (ys, xs) (ints, may be < 0)."""
        if len(ys) == 0:
            return
        s = stamps.shape[-1]
        top = ys - s // 2 + self.pad
        left = xs - s // 2 + self.pad
        gy, gx = np.mgrid[0:s, 0:s]
        off = (gy * self.wp + gx).ravel()
        idx = (top * self.wp + left)[:, None] + off[None, :]
        self.idx.setdefault(stain, []).append(idx.ravel())
        self.wts.setdefault(stain, []).append(stamps.reshape(len(ys), -1).ravel())

    def get(self, stain: str) -> np.ndarray | None:
        if stain not in self.idx:
            return None
        idx = np.concatenate(self.idx[stain])
        wts = np.concatenate(self.wts[stain])
        flat = np.bincount(idx, weights=wts, minlength=self.size).astype(np.float32)
        full = flat.reshape(-1, self.wp)
        p = self.pad
        return full[p : p + self.h, p : p + self.w]


def _base_maps(layout: Layout, stain: str) -> dict[str, np.ndarray]:
    """Coarse concentration maps of the tissue itself (no cells), cached on the layout."""
    key = f"base-{stain}"
    if key not in layout.extras:
        fl = layout.fields
        tissue, tumour, fat = fl["tissue"], fl["tumour"], fl["fat"]
        if "glands" in layout.extras:  # the epithelium is drawn per gland (render_region); stroma around
            tumour = np.zeros_like(tumour)
        stroma = tissue * (1 - tumour) * (1 - fat)
        if stain == "he":
            maps = {
                "h": tissue * 0.03 + tumour * 0.05,
                "e": tumour * (0.14 + 0.06 * layout.case.grade) + tissue * 0.04,
                "h_tex": stroma * 0.02,
                "e_tex": stroma * 0.2,
            }
        else:
            maps = {
                "h": tissue * 0.025 + tumour * 0.045,
                "e": tumour * 0.01,
                "h_tex": stroma * 0.02,
                "e_tex": stroma * 0.025,
            }
            if layout.blush:
                maps["d"] = tumour * layout.blush
        layout.extras[key] = {k: v.astype(np.float32) for k, v in maps.items()}
    return layout.extras[key]


def render_region(
    layout: Layout,
    stamps: Stamps,
    style: SiteStyle,
    y0: int,
    x0: int,
    h: int,
    w: int,
    stain: str = "ihc",
) -> np.ndarray:
    """Render level-0 pixels [y0, y0+h) × [x0, x0+w) of ``layout`` as RGB uint8 (``stain``: ihc or he)."""
    f = layout.coarse_factor
    fl = layout.fields
    he = stain == "he"
    base = _base_maps(layout, stain)
    tex = _wrap_crop(stamps.texture, y0, x0, h, w)
    cs = style.counterstain_gain
    dab_gain = style.dab_gain * layout.dab_gain

    # Cells whose stamps reach into the region.
    canvas = _Canvas(h, w, 2 * stamps.pad)  # twice the reach: no stamp leaves the canvas
    c = layout.cells
    near = (
        (c["y"] >= y0 - stamps.pad)
        & (c["y"] < y0 + h + stamps.pad)
        & (c["x"] >= x0 - stamps.pad)
        & (c["x"] < x0 + w + stamps.pad)
    )
    sel = np.flatnonzero(near)
    ys = np.round(c["y"][sel]).astype(np.int64) - y0
    xs = np.round(c["x"][sel]).astype(np.int64) - x0
    kind = c["kind"][sel]
    var = c["variant"][sel]
    jit = c["od_jitter"][sel]
    nuc_od = (0.5 if he else 0.36) * cs

    glandular = "glands" in layout.extras
    t = kind == 0
    if t.any() and not glandular:
        v = var[t] % N_VARIANTS
        nuclei = stamps.tumour_nucleus[v]
        pos = c["nuclear_positive"][sel][t]
        h_scale = nuc_od * jit[t] * np.where(pos & (not he), 0.35, 1.0)
        canvas.add("h", ys[t], xs[t], nuclei * h_scale[:, None, None])
        membranes = stamps.tumour_membrane[v]
        if he:
            canvas.add("e", ys[t], xs[t], membranes * np.float32(0.12))
        elif layout.case.marker == "her2":
            inten = c["intensity"][sel][t]
            stained = inten > 0
            if stained.any():
                comp = c["completeness"][sel][t][stained]
                start = c["arc_start"][sel][t][stained]
                rel = np.mod(stamps.tumour_angle[None] - start[:, None, None], 2 * np.pi)
                arc = (rel < (2 * np.pi * comp)[:, None, None]).astype(np.float32)
                od = MEMBRANE_DAB_OD[inten[stained]] * jit[t][stained] * dab_gain
                canvas.add("d", ys[t][stained], xs[t][stained], membranes[stained] * arc * od[:, None, None])
        elif pos.any():
            inten = c["intensity"][sel][t][pos]
            od = NUCLEAR_DAB_OD[inten] * jit[t][pos] * dab_gain
            canvas.add("d", ys[t][pos], xs[t][pos], nuclei[pos] * od[:, None, None])
    for k, stack, od in ((1, stamps.fibroblast, 0.75 * nuc_od), (2, stamps.lymphocyte, 1.5 * nuc_od)):
        m = kind == k
        if m.any():
            canvas.add("h", ys[m], xs[m], stack[var[m] % len(stack)] * (od * jit[m])[:, None, None])
    m = kind == 3
    if m.any():
        walls = stamps.adipocyte[var[m] % len(stamps.adipocyte)]
        canvas.add("e", ys[m], xs[m], walls * np.float32(0.3 if he else 0.1))
        canvas.add("h", ys[m], xs[m], walls * np.float32(0.03))
    m = kind == 4
    if m.any():
        canvas.add("n", ys[m], xs[m], stamps.dust[var[m] % len(stamps.dust)] * (1.2 * jit[m])[:, None, None])

    def up(name: str) -> np.ndarray:
        return _upsample(base[name], f, y0, x0, h, w)

    conc = {
        "h": up("h") + up("h_tex") * tex,
        "e": up("e") + up("e_tex") * tex,
    }
    if "d" in base:
        conc["d"] = up("d")
    if glandular:
        _add_glands(conc, layout, style, stamps, y0, x0, h, w, he, nuc_od, dab_gain)
    for key in ("h", "e", "d"):
        cells_map = canvas.get(key)
        if cells_map is not None:
            conc[key] = conc[key] + cells_map if key in conc else cells_map
    if _touches(fl["fold"], f, y0, x0, h, w):
        thick = 1 + 0.9 * _upsample(fl["fold"], f, y0, x0, h, w)
        conc = {k: v * thick for k, v in conc.items()}

    # Quantise with dithering (this is also the sensor noise) and map to RGB through the site's table.
    noise = _wrap_crop(_dither(stamps, style), y0 * 7 + 13, x0 * 3 + 5, h, w)
    index = np.zeros((h, w), dtype=np.int32)
    for i, key in enumerate(("h", "e", "d")):
        if key in conc:
            x = conc[key] * np.float32(OD_STEPS)
            x += noise[..., i]
            np.clip(x, 0, LEVELS - 1, out=x)
            q = x.astype(np.int32)
            q <<= 7 * (2 - i)
            index += q
    rgb = np.take(stain_lut(style, stain), index, axis=0)

    extra = canvas.get("n")
    ink = _upsample(fl["ink"], f, y0, x0, h, w) if _touches(fl["ink"], f, y0, x0, h, w) else False
    if extra is not None or ink is not False:
        od = np.zeros((h, w, 3), dtype=np.float32)
        if extra is not None:
            od += extra[..., None] * DUST_OD
        if ink is not False:
            od += (1.4 * ink)[..., None] * INK_OD[layout.ink_colour]
        rgb = (rgb * np.exp(-LN10 * od)).astype(np.uint8)
    if _touches(fl["focus"], f, y0, x0, h, w):
        rgb = _defocus(rgb, _upsample(fl["focus"], f, y0, x0, h, w), 1.8 / layout.mpp)
    return apply_blur(rgb, style, layout.mpp)


def _add_glands(
    conc: dict[str, np.ndarray],
    layout: Layout,
    style: SiteStyle,
    stamps: Stamps,
    y0: int,
    x0: int,
    h: int,
    w: int,
    he: bool,
    nuc_od: float,
    dab_gain: float,
) -> None:
    """Draw the glands (:mod:`her2score.data.synth.glands`) into the concentration maps: the epithelium
    replaces the stroma under it, lumina are empty, then nuclei (hematoxylin; DAB for positive ER/PR
    nuclei) and HER2 membranes."""
    from her2score.data.synth.glands import render_glands

    c = layout.cells
    n = len(c["y"])
    inten = c["intensity"]
    pos = c["nuclear_positive"]
    her2 = layout.case.marker == "her2" and not he
    mem = MEMBRANE_DAB_OD[inten] * c["od_jitter"] * dab_gain if her2 else np.zeros(n, np.float32)
    nuc_h = nuc_od * c["od_jitter"] * np.where(pos & (not he), 0.35, 1.0)
    nuc_d = (
        NUCLEAR_DAB_OD[inten] * c["od_jitter"] * dab_gain * pos
        if not (he or layout.case.marker == "her2")
        else np.zeros(n, np.float32)
    )
    grain = _wrap_crop(stamps.grain[..., 0], y0 * 3 + 1, x0 * 5 + 2, h, w)
    epi, lumen, h_map, d_map, e_map = render_glands(layout, y0, x0, h, w, grain, nuc_h, nuc_d, mem)
    keep = np.clip(1.0 - epi - lumen, 0.0, 1.0)
    tint = (
        {"h": 0.07, "e": 0.01, "d": layout.blush}
        if not he
        else {"h": 0.08, "e": 0.2 + 0.06 * layout.case.grade}
    )
    for key, level in tint.items():
        if key in conc or level:
            conc[key] = (conc[key] * keep if key in conc else 0) + epi * np.float32(level)
    conc["h"] = conc["h"] + h_map
    if he:
        conc["e"] = conc["e"] + 0.12 * e_map
    elif d_map is not None:
        conc["d"] = conc["d"] + d_map if "d" in conc else d_map


def _touches(fieldmap: np.ndarray, f: int, y0: int, x0: int, h: int, w: int) -> bool:
    """Whether a coarse map is non-zero anywhere over level-0 [y0, y0+h) × [x0, x0+w)."""
    crop = fieldmap[max(0, y0 // f - 1) : (y0 + h) // f + 2, max(0, x0 // f - 1) : (x0 + w) // f + 2]
    return bool(crop.size) and float(crop.max()) > 0.002


def _dither(stamps: Stamps, style: SiteStyle) -> np.ndarray:
    """Per-pixel dither of the quantisation (0.5 ± the site's noise, in quantisation steps), cached."""
    key = ("dither", style.noise)
    cache = stamps.cache
    if key not in cache:
        cache[key] = (0.5 + style.noise / 4.0 * stamps.grain).astype(np.float32)
    return cache[key]


def _defocus(rgb: np.ndarray, weight: np.ndarray, sigma: float) -> np.ndarray:
    """Blend towards a blurred copy where ``weight`` > 0 (an out-of-focus patch of the scan)."""
    from PIL import Image, ImageFilter

    soft = np.asarray(
        Image.fromarray(rgb).filter(ImageFilter.BoxBlur(max(1, round(sigma)))), dtype=np.float32
    )
    out = rgb + weight[..., None] * (soft - rgb)
    return out.astype(np.uint8)


def scanner_lut(style: SiteStyle) -> np.ndarray:
    """Per-channel 256-entry lookup table: gamma and white balance of the site's scanner."""
    x = np.arange(256, dtype=np.float32) / 255.0
    lut = np.stack([255.0 * np.power(x, style.gamma) * g for g in style.white_balance])
    return np.clip(lut, 0, 255).round().astype(np.uint8)


def apply_scanner(rgb: np.ndarray, style: SiteStyle) -> np.ndarray:
    """Apply the scanner's colour response to an RGB uint8 image."""
    lut = scanner_lut(style)
    out = np.empty_like(rgb)
    for ch in range(3):
        out[..., ch] = lut[ch][rgb[..., ch]]
    return out


def background_rgb(style: SiteStyle) -> np.ndarray:
    """The colour of empty glass at this site, after the scanner."""
    bg = np.clip(np.asarray(style.background), 0, 255).astype(np.uint8)[None, None]
    return apply_scanner(bg, style)[0, 0]


def jpeg_roundtrip(rgb: np.ndarray, quality: int) -> np.ndarray:
    """Compress and decompress as JPEG, for the block artefacts of real scans."""
    import imagecodecs

    return imagecodecs.jpeg_decode(imagecodecs.jpeg_encode(rgb, level=quality))
