"""Deterministic synthetic H&E tissue, rendered at a physical scale.

The renderer draws lymph-node-like tissue at a **physical scale**: every size is in microns and
every texture is a function of the *world* position in microns (pixel index times ``mpp``), so
the same tissue rendered at 0.486 and at 0.972 microns per pixel (mpp) looks like a 2x
downsample, and neighbouring tiles of a slide join without seams.

Tissue classes (what a patch classifier has to learn; they differ in nuclear size, shape, density
and chromatin texture, *not* in a global colour shift):

- stroma: pink eosin with wavy collagen fibres, pale gaps and sparse thin spindle nuclei;
- normal lymph node: densely packed small round dark lymphocyte nuclei (radius 3.5-4.5 um);
- metastatic tumour (inside ``tumour_mask``): crowded clusters of large (radius 6-9 um),
  irregular, pleomorphic, pale vesicular nuclei with a chromatin rim and 1-2 dark nucleoli,
  in amphophilic cytoplasm, with stromal strands between clusters.

Colours follow Beer-Lambert: optical densities of haematoxylin and eosin times typical stain
vectors. To keep the sample data small, the rendering is deliberately "clean": piecewise-flat
optical densities with soft edges about 0.6 um wide, no per-pixel noise by default, and grey
levels in steps of 4 (gzip then compresses a 96x96 patch about 6x).

Conventions: arrays are indexed ``[row, col]``; ``origin_xy`` is ``(x, y)`` in pixels at the
rendering ``mpp``; resolution is always microns per pixel. Nothing here imports TensorFlow.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
from scipy.ndimage import gaussian_filter

__all__ = [
    "PCAM_MPP",
    "GLASS_RGB",
    "PATCH_SIZE",
    "CENTRE_SIZE",
    "render_tissue",
    "random_blob_polygon",
]

PCAM_MPP = 0.972
"""Microns per pixel of PatchCamelyon patches (10x)."""
PATCH_SIZE = 96
"""Side of a PCam patch in pixels."""
CENTRE_SIZE = 32
"""Side of the centre region that decides a PCam label."""

# Stain optical-density vectors (R, G, B), unit length (Macenko-style reference values).
_H_VEC = np.array([0.5626, 0.7201, 0.4062], dtype=np.float32)
_E_VEC = np.array([0.2159, 0.8012, 0.5581], dtype=np.float32)
# Light through bare glass (R, G, B); multiples of the output quantisation step.
_GLASS = np.array([244.0, 244.0, 248.0], dtype=np.float32)
GLASS_RGB: tuple[int, int, int] = (244, 244, 248)
"""Colour of bare glass in rendered images (exact, no noise)."""
_QUANT = 4.0  # output grey levels are multiples of this (max error 2): patches gzip ~30% better

# --------------------------------------------------------------------------------------------
# Hash-based deterministic randomness as a function of integer lattice coordinates
# --------------------------------------------------------------------------------------------

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLD = np.uint64(0x9E3779B97F4A7C15)
_FIBRE_WAVELENGTH = 7.5  # um
_STRIP = 256  # rows per strip when composing


def _mix(h: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser on a uint64 array (wraps modulo 2**64)."""
    h = h ^ (h >> np.uint64(30))
    h = h * _M1
    h = h ^ (h >> np.uint64(27))
    h = h * _M2
    return h ^ (h >> np.uint64(31))


def _hash(seed: int, stream: int, *coords: np.ndarray) -> np.ndarray:
    """uint64 hash of (seed, stream, *integer coords); broadcasts the coords."""
    shape = np.broadcast_shapes(*(np.shape(c) for c in coords)) if coords else ()
    h = np.full(shape, (seed * 0x100000001B3 + stream) % 2**64, dtype=np.uint64)
    h = _mix(h + _GOLD)
    for c in coords:
        ci = np.asarray(c, dtype=np.int64).view(np.uint64)
        h = _mix(h ^ (ci + _GOLD + (h << np.uint64(6)) + (h >> np.uint64(2))))
    return h


def _uniform(seed: int, stream: int, *coords: np.ndarray) -> np.ndarray:
    """float64 uniform [0, 1) from the hash of (seed, stream, *coords)."""
    return (_hash(seed, stream, *coords) >> np.uint64(11)).astype(np.float64) * (1.0 / 2**53)


def _smooth(t: np.ndarray) -> np.ndarray:
    return t * t * (3.0 - 2.0 * t)


def _smoothstep(e0: float, e1: float, x: np.ndarray) -> np.ndarray:
    t = np.clip((x - e0) / (e1 - e0), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _noise_grid(seed: int, stream: int, u: np.ndarray, v: np.ndarray, spacing: float) -> np.ndarray:
    """Value noise in [0, 1] on the grid ``u`` (x microns, [W]) by ``v`` (y microns, [H]).

    Lattice values are hashed from integer lattice coordinates, so any window of the world
    gives the same values (seamless tiles). Returns float32 ``[H, W]``.
    """
    gu = u / spacing
    i0 = np.floor(gu).astype(np.int64)
    wu = _smooth(gu - i0).astype(np.float32)
    gv = v / spacing
    j0 = np.floor(gv).astype(np.int64)
    wv = _smooth(gv - j0).astype(np.float32)
    ia, ja = int(i0.min()), int(j0.min())
    ix = np.arange(ia, int(i0.max()) + 2)
    jy = np.arange(ja, int(j0.max()) + 2)
    lat = _uniform(seed, stream, ix[None, :], jy[:, None]).astype(np.float32)
    a = lat[:, i0 - ia] * (1.0 - wu) + lat[:, i0 - ia + 1] * wu  # [Ly, W]
    return a[j0 - ja, :] * (1.0 - wv)[:, None] + a[j0 - ja + 1, :] * wv[:, None]


def _noise_points(
    seed: int, stream: int, u: np.ndarray, v: np.ndarray, spacing: float
) -> np.ndarray:
    """Value noise in [0, 1] at points (u, v) in microns; equals :func:`_noise_grid` there."""
    gu = np.asarray(u, dtype=np.float64) / spacing
    gv = np.asarray(v, dtype=np.float64) / spacing
    i0 = np.floor(gu).astype(np.int64)
    j0 = np.floor(gv).astype(np.int64)
    wu = _smooth(gu - i0).astype(np.float32)
    wv = _smooth(gv - j0).astype(np.float32)

    def lat(di: int, dj: int) -> np.ndarray:
        return _uniform(seed, stream, i0 + di, j0 + dj).astype(np.float32)

    top = lat(0, 0) * (1 - wu) + lat(1, 0) * wu
    bot = lat(0, 1) * (1 - wu) + lat(1, 1) * wu
    return top * (1 - wv) + bot * wv


# Field stream ids (any distinct integers).
# (_S_UNUSED keeps the numbering, and so the generated sample data, stable.)
(
    _S_REGION1,
    _S_REGION2,
    _S_ORIENT,
    _S_WARP1,
    _S_WARP2,
    _S_GAPS,
    _S_CLUSTER,
    _S_UNUSED,
    _S_WARP3,
    _S_FIBAMP,
) = range(10)
_S_ANGLES = 20
_S_NUC = 100  # + 10 * kind + parameter


def _region_field(seed: int, u: np.ndarray, v: np.ndarray, grid: bool) -> np.ndarray:
    """Lymphoid weight in [0, 1] (1 = lymphoid tissue, 0 = stroma)."""
    f = _noise_grid if grid else _noise_points
    n = 0.72 * f(seed, _S_REGION1, u, v, 260.0) + 0.28 * f(seed, _S_REGION2, u, v, 70.0)
    return _smoothstep(0.495, 0.505, n)


def _orient_field(seed: int, u: np.ndarray, v: np.ndarray, grid: bool) -> np.ndarray:
    f = _noise_grid if grid else _noise_points
    return _smoothstep(0.49, 0.51, f(seed, _S_ORIENT, u, v, 180.0))


def _cluster_field(seed: int, u: np.ndarray, v: np.ndarray, grid: bool) -> np.ndarray:
    """Tumour cluster weight in [0, 1] (1 = crowded tumour cells, 0 = stromal strand)."""
    f = _noise_grid if grid else _noise_points
    return _smoothstep(0.32, 0.34, f(seed, _S_CLUSTER, u, v, 38.0))


def _fibre_angles(seed: int) -> tuple[float, float]:
    a = _uniform(seed, _S_ANGLES, np.arange(2)) * math.pi
    return float(a[0]), float(a[1])


# --------------------------------------------------------------------------------------------
# Nuclei: stamp libraries (rendered at the target mpp) placed on jittered world lattices
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _NucleusKind:
    kind_id: int
    spacing: float  # lattice spacing (um)
    jitter: float  # fraction of the spacing
    n_variants: int
    r_max: float  # bound of the outline radius (um) for the stamp size


_LYMPH = _NucleusKind(0, 8.2, 0.7, 96, 5.6)
_TUMOUR = _NucleusKind(1, 14.5, 0.55, 160, 12.5)
_SPINDLE = _NucleusKind(2, 22.0, 0.8, 96, 9.0)
_N_ORIENT = 12  # spindle orientation bins


def _edge_width(mpp: float) -> float:
    """Width of the soft edge of nuclear outlines, in microns (physical, like optical blur).

    0.6 um: about 0.6 px at PCam's 0.972 mpp (crisp, compresses well) and 1.2 px at 0.486 mpp
    (smooth enough for JPEG), so a 0.486 rendering downsampled 2x matches a 0.972 one.
    """
    return max(0.6, 0.3 * mpp)


@functools.lru_cache(maxsize=32)
def _stamps(kind_id: int, mpp: float, seed: int) -> np.ndarray:
    """Haematoxylin optical-density stamps float32 ``[K, S, S]`` for one nucleus kind at ``mpp``.

    Stamp centre is pixel ``S // 2``. Deterministic in (kind, mpp, seed).
    """
    kind = {0: _LYMPH, 1: _TUMOUR, 2: _SPINDLE}[kind_id]
    rng = np.random.default_rng([seed % 2**63, 7919, kind_id])
    half = int(math.ceil(kind.r_max / mpp)) + 1
    size = 2 * half + 1
    off = (np.arange(size, dtype=np.float32) - half) * mpp
    dy, dx = np.meshgrid(off, off, indexing="ij")
    r = np.hypot(dx, dy) + 1e-6
    c1, s1 = dx / r, dy / r
    c2, s2 = c1 * c1 - s1 * s1, 2 * c1 * s1
    c3, s3 = c1 * c2 - s1 * s2, s1 * c2 + c1 * s2
    c4, s4 = c2 * c2 - s2 * s2, 2 * c2 * s2
    c5, s5 = c1 * c4 - s1 * s4, s1 * c4 + c1 * s4
    ew = _edge_width(mpp)
    sigma_px = 0.9 / mpp  # chromatin clumps ~2 um
    out = np.zeros((kind.n_variants, size, size), dtype=np.float32)

    def chromatin() -> np.ndarray:
        n = gaussian_filter(rng.standard_normal((size, size)).astype(np.float32), sigma_px)
        return n / (n.std() + 1e-6)

    for k in range(kind.n_variants):
        if kind is _SPINDLE:
            theta = (k % _N_ORIENT) * math.pi / _N_ORIENT + rng.uniform(-0.12, 0.12)
            a, b = rng.uniform(4.5, 7.5), rng.uniform(1.2, 2.0)
            ct, st = math.cos(theta), math.sin(theta)
            xr = dx * ct + dy * st
            yr = -dx * st + dy * ct
            bend = rng.uniform(-0.04, 0.04)
            yr = yr - bend * xr * xr
            rho = np.sqrt((xr / a) ** 2 + (yr / b) ** 2)
            scale = b  # edge width relative to the short axis
            inside = np.clip((1.0 - rho) * scale / ew + 0.5, 0.0, 1.0)
            out[k] = inside * rng.uniform(0.85, 1.0)
            continue
        if kind is _LYMPH:
            r0 = rng.uniform(3.5, 4.5)
            amps = (rng.uniform(0.0, 0.10), rng.uniform(0.0, 0.04), rng.uniform(0.0, 0.03), 0.0)
        else:
            r0 = rng.uniform(6.0, 9.0)
            amps = (
                rng.uniform(0.08, 0.30),
                rng.uniform(0.04, 0.14),
                rng.uniform(0.02, 0.09),
                rng.uniform(0.0, 0.05),
            )
        ph = rng.uniform(0, 2 * math.pi, 4)
        shape = (
            1.0
            + amps[0] * (c2 * math.cos(2 * ph[0]) + s2 * math.sin(2 * ph[0]))
            + amps[1] * (c3 * math.cos(3 * ph[1]) + s3 * math.sin(3 * ph[1]))
            + amps[2] * (c4 * math.cos(4 * ph[2]) + s4 * math.sin(4 * ph[2]))
            + amps[3] * (c5 * math.cos(5 * ph[3]) + s5 * math.sin(5 * ph[3]))
        )
        rad = r0 * shape
        inside = np.clip((rad - r) / ew + 0.5, 0.0, 1.0)
        rho = r / rad
        if kind is _LYMPH:
            dens = rng.uniform(0.95, 1.20)
            out[k] = inside * dens
        else:
            # Vesicular: pale interior, chromatin rim and clumps, 1-2 dark nucleoli.
            rim = _smoothstep(0.62, 0.93, rho)
            # Chromatin clumps as a few flat levels (flat areas compress well).
            clumps = np.floor(np.clip(chromatin(), 0.0, 2.0) * 1.5) / 1.5
            interior = rng.uniform(0.22, 0.36)
            val = interior + np.floor(rim * 3.0 + 0.5) * (0.42 / 3.0) + 0.12 * clumps
            for _ in range(1 + int(rng.random() < 0.35)):
                ang = rng.uniform(0, 2 * math.pi)
                dist = rng.uniform(0.0, 0.35) * r0
                nx, ny = dist * math.cos(ang), dist * math.sin(ang)
                nr = rng.uniform(0.9, 1.4)
                dn = np.hypot(dx - nx, dy - ny)
                val = val + 1.1 * np.clip((nr - dn) / ew + 0.5, 0.0, 1.0)
            out[k] = inside * np.clip(val, 0.0, 1.6)
    return out


def _place(
    kind: _NucleusKind, seed: int, u0: float, u1: float, v0: float, v1: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Jittered lattice of candidate nuclei covering [u0, u1) x [v0, v1) microns (+ margin).

    Returns (u, v, accept_uniform, variant_uniform), all [N] float64.
    """
    s, m = kind.spacing, kind.r_max
    ii = np.arange(math.floor((u0 - m) / s), math.floor((u1 + m) / s) + 1)
    jj = np.arange(math.floor((v0 - m) / s), math.floor((v1 + m) / s) + 1)
    i, j = (a.ravel() for a in np.meshgrid(ii, jj, indexing="xy"))
    base = _S_NUC + 10 * kind.kind_id
    u = (i + 0.5 + kind.jitter * (_uniform(seed, base, i, j) - 0.5)) * s
    v = (j + 0.5 + kind.jitter * (_uniform(seed, base + 1, i, j) - 0.5)) * s
    return u, v, _uniform(seed, base + 2, i, j), _uniform(seed, base + 3, i, j)


def _splat_max(
    target: np.ndarray,
    rows: np.ndarray,
    cols: np.ndarray,
    variant: np.ndarray,
    stamps: np.ndarray,
    chunk_elems: int = 3_000_000,
) -> None:
    """target[r, c] = max(target, stamp) for every nucleus, in place.

    Args:
        target: float32 ``[H, W]``.
        rows, cols: int ``[N]`` pixel of each nucleus centre (may lie outside the target).
        variant: int ``[N]`` stamp index of each nucleus.
        stamps: float32 ``[K, S, S]`` centred stamps.
    """
    if rows.size == 0:
        return
    h, w = target.shape
    k, size, _ = stamps.shape
    half = size // 2
    nzo = np.flatnonzero(stamps.max(axis=0).reshape(-1) > 0)
    oy = (nzo // size - half).astype(np.int64)
    ox = (nzo % size - half).astype(np.int64)
    st = stamps.reshape(k, -1)[:, nzo]  # [K, nnz]
    flat = target.reshape(-1)
    step = max(1, chunk_elems // max(1, len(nzo)))
    for s in range(0, len(rows), step):
        r = rows[s : s + step, None] + oy[None, :]
        c = cols[s : s + step, None] + ox[None, :]
        val = st[variant[s : s + step]]
        ok = (val > 0) & (r >= 0) & (r < h) & (c >= 0) & (c < w)
        np.maximum.at(flat, r[ok] * w + c[ok], val[ok])


def _mask_at(mask: np.ndarray | None, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    if mask is None:
        return np.zeros(rows.shape, dtype=bool)
    h, w = mask.shape
    return mask[np.clip(rows, 0, h - 1), np.clip(cols, 0, w - 1)]


def _background_od(
    seed: int, mpp: float, u: np.ndarray, v: np.ndarray, tumour_mask: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """Haematoxylin and eosin optical density of everything but nuclei, float32 ``[H, W]`` each.

    ``u`` are the x microns of the columns ``[W]``, ``v`` the y microns of the rows ``[H]``;
    ``tumour_mask`` bool ``[H, W]`` or None. Stroma: collagen with wavy fibres and pale gaps;
    lymphoid: flat purple-grey; tumour: amphophilic cytoplasm in clusters, collagen between.
    """
    # Piecewise-flat optical densities with anti-aliased edges: keeps the patches compressible.
    lymph = _region_field(seed, u, v, grid=True)
    orient = _orient_field(seed, u, v, grid=True)
    a1, a2 = _fibre_angles(seed)
    k = 2 * math.pi / _FIBRE_WAVELENGTH
    fine = _noise_grid(seed, _S_WARP3, u, v, 13.0)
    warp1 = _noise_grid(seed, _S_WARP1, u, v, 55.0) + 0.35 * fine
    warp2 = _noise_grid(seed, _S_WARP2, u, v, 55.0) + 0.35 * fine
    del fine
    amp = np.float32(2 * math.pi * 1.6)
    # Large world coordinates: reduce the linear phase modulo 2 pi in float64 first.
    ph1x = np.mod(u * (math.cos(a1) * k), 2 * math.pi).astype(np.float32)[None, :]
    ph1y = np.mod(v * (math.sin(a1) * k), 2 * math.pi).astype(np.float32)[:, None]
    ph2x = np.mod(u * (math.cos(a2) * k), 2 * math.pi).astype(np.float32)[None, :]
    ph2y = np.mod(v * (math.sin(a2) * k), 2 * math.pi).astype(np.float32)[:, None]
    wave = np.sin(ph1x + ph1y + amp * warp1) * (1.0 - orient)
    wave += np.sin(ph2x + ph2y + amp * warp2) * orient
    del warp1, warp2, orient
    aa = min(0.45, 0.5 * k * max(mpp, 0.8))  # soft fibre edges, ~0.8 um (physical)
    fibre = _smoothstep(0.45 - aa, 0.45 + aa, wave)
    del wave
    # Fibre bundles come and go (~20 um), with pale gaps between bundles (~26 um).
    fibre *= _smoothstep(0.40, 0.42, _noise_grid(seed, _S_FIBAMP, u, v, 20.0))
    coll = _smoothstep(0.33, 0.35, _noise_grid(seed, _S_GAPS, u, v, 26.0))
    coll *= 0.45 + 0.55 * fibre
    del fibre
    e_bg = (0.08 + 0.28 * coll) * (1.0 - lymph) + 0.11 * lymph
    h_bg = (0.03 + 0.025 * coll) * (1.0 - lymph) + 0.13 * lymph
    del lymph

    if tumour_mask is not None and tumour_mask.any():
        rows_t, cols_t = np.nonzero(tumour_mask)
        r0_, r1_ = rows_t.min(), rows_t.max() + 1
        c0_, c1_ = cols_t.min(), cols_t.max() + 1
        cl = _cluster_field(seed, u[c0_:c1_], v[r0_:r1_], grid=True)
        sub_coll = coll[r0_:r1_, c0_:c1_]
        # Amphophilic cytoplasm in the clusters, collagen strands between them.
        e_t = cl * 0.19 + (1.0 - cl) * (0.08 + 0.28 * sub_coll)
        h_t = cl * 0.11 + (1.0 - cl) * (0.03 + 0.025 * sub_coll)
        sub = tumour_mask[r0_:r1_, c0_:c1_]
        e_bg[r0_:r1_, c0_:c1_] = np.where(sub, e_t, e_bg[r0_:r1_, c0_:c1_])
        h_bg[r0_:r1_, c0_:c1_] = np.where(sub, h_t, h_bg[r0_:r1_, c0_:c1_])
    return h_bg, e_bg


# --------------------------------------------------------------------------------------------
# Public renderer
# --------------------------------------------------------------------------------------------


def render_tissue(
    shape_rc: tuple[int, int],
    mpp: float,
    tumour_mask: np.ndarray | None,
    rng: np.random.Generator,
    *,
    origin_xy: tuple[int, int] = (0, 0),
    texture_seed: int | None = None,
    tissue_mask: np.ndarray | None = None,
    grain: float = 0.0,
) -> np.ndarray:
    """Render H&E-like lymph-node tissue (with metastatic tumour where asked) at ``mpp``.

    Args:
        shape_rc: ``(rows, cols)`` of the output.
        mpp: microns per pixel of the output; nuclei and textures have fixed sizes in microns.
        tumour_mask: bool ``[rows, cols]`` (True = metastatic tumour), or None for no tumour.
        rng: source of randomness for ``texture_seed`` (when not given) and ``grain``.
        origin_xy: ``(x, y)`` of the output's top-left pixel, in pixels at ``mpp`` in the world
            frame of ``texture_seed``; tiles rendered with the same seed and adjacent origins
            join seamlessly (the texture is a function of ``(origin + index) * mpp`` microns).
        texture_seed: the world's texture (nuclei, fibres, regions); default: drawn from ``rng``.
        tissue_mask: bool ``[rows, cols]`` (True = tissue, False = bare glass), or None for all
            tissue. Glass pixels are exactly :data:`GLASS_RGB`.
        grain: standard deviation of per-pixel noise in grey levels (0 = none, compresses best).

    Returns:
        uint8 ``[rows, cols, 3]`` RGB.
    """
    h, w = int(shape_rc[0]), int(shape_rc[1])
    if h <= 0 or w <= 0:
        raise ValueError(f"shape_rc must be positive, got {shape_rc}")
    if mpp <= 0:
        raise ValueError(f"mpp must be > 0, got {mpp}")
    if texture_seed is None:
        texture_seed = int(rng.integers(0, 2**63 - 1))
    seed = int(texture_seed)
    if tumour_mask is not None:
        tumour_mask = np.asarray(tumour_mask, dtype=bool)
        if tumour_mask.shape != (h, w):
            raise ValueError(f"tumour_mask shape {tumour_mask.shape} != shape_rc {(h, w)}")
        if not tumour_mask.any():
            tumour_mask = None
    if tissue_mask is not None:
        tissue_mask = np.asarray(tissue_mask, dtype=bool)
        if tissue_mask.shape != (h, w):
            raise ValueError(f"tissue_mask shape {tissue_mask.shape} != shape_rc {(h, w)}")
        if tissue_mask.all():
            tissue_mask = None
        elif not tissue_mask.any():
            out = np.empty((h, w, 3), dtype=np.uint8)
            out[:] = GLASS_RGB
            return out
    if tumour_mask is not None and tissue_mask is not None:
        tumour_mask = tumour_mask & tissue_mask

    ox, oy = int(origin_xy[0]), int(origin_xy[1])
    u = (ox + np.arange(w, dtype=np.float64)) * mpp  # x microns of each column
    v = (oy + np.arange(h, dtype=np.float64)) * mpp  # y microns of each row

    # ---- nuclei -------------------------------------------------------------------------
    nuc = np.zeros((h, w), dtype=np.float32)
    a1, a2 = _fibre_angles(seed)
    u0, u1, v0, v1 = ox * mpp, (ox + w) * mpp, oy * mpp, (oy + h) * mpp
    for kind in (_SPINDLE, _LYMPH, _TUMOUR):
        if kind is _TUMOUR and tumour_mask is None:
            continue
        pu, pv, acc, var = _place(kind, seed, u0, u1, v0, v1)
        cols = np.rint(pu / mpp).astype(np.int64) - ox
        rows = np.rint(pv / mpp).astype(np.int64) - oy
        in_t = _mask_at(tumour_mask, rows, cols)
        lw = _region_field(seed, pu, pv, grid=False)
        if kind is _LYMPH:
            p = np.where(in_t, 0.05, 0.035 + 0.85 * lw)
        elif kind is _SPINDLE:
            p = np.where(in_t, 0.12, 0.55 * (1.0 - lw) + 0.05 * lw)
        else:
            cl_p = _cluster_field(seed, pu, pv, grid=False)
            p = np.where(in_t, 0.10 + 0.85 * cl_p, 0.0)
        keep = acc < p
        rows, cols, var, pu, pv = rows[keep], cols[keep], var[keep], pu[keep], pv[keep]
        stamps = _stamps(kind.kind_id, float(mpp), seed)
        if kind is _SPINDLE:
            # Align spindle nuclei with the local fibre direction (normal of the wave front).
            ob = _orient_field(seed, pu, pv, grid=False)
            ang = np.where(ob < 0.5, a1, a2) + math.pi / 2
            obin = np.rint(np.mod(ang, math.pi) / (math.pi / _N_ORIENT)).astype(np.int64)
            obin %= _N_ORIENT
            per = kind.n_variants // _N_ORIENT
            vidx = obin + _N_ORIENT * np.minimum((var * per).astype(np.int64), per - 1)
        else:
            vidx = np.minimum((var * kind.n_variants).astype(np.int64), kind.n_variants - 1)
        _splat_max(nuc, rows, cols, vidx, stamps)

    # ---- background and Beer-Lambert composition, in strips of rows (cache-friendly) -----
    out = np.empty((h, w, 3), dtype=np.uint8)
    ln10 = np.float32(-math.log(10.0))
    for r0 in range(0, h, _STRIP):
        r1 = min(h, r0 + _STRIP)
        t_sub = None if tumour_mask is None else tumour_mask[r0:r1]
        h_bg, e_bg = _background_od(seed, mpp, u, v[r0:r1], t_sub)
        nuc_s = nuc[r0:r1]
        cover = np.minimum(nuc_s * np.float32(1.0 / 0.3), np.float32(1.0))
        hh = h_bg * (1.0 - cover) + nuc_s
        ee = e_bg * (1.0 - 0.6 * cover) + 0.05 * cover
        if tissue_mask is not None:
            hh *= tissue_mask[r0:r1]
            ee *= tissue_mask[r0:r1]
        for ch in range(3):
            od = hh * (_H_VEC[ch] * ln10) + ee * (_E_VEC[ch] * ln10)
            val = np.exp(od, out=od)
            val *= _GLASS[ch]
            if grain > 0:
                val += rng.standard_normal(val.shape, dtype=np.float32) * np.float32(grain)
            val *= np.float32(1.0 / _QUANT)
            np.rint(val, out=val)
            val *= np.float32(_QUANT)
            np.clip(val, 0, 255, out=val)
            out[r0:r1, :, ch] = val
    if tissue_mask is not None and grain > 0:
        out[~tissue_mask] = GLASS_RGB
    return out


# --------------------------------------------------------------------------------------------
# Lesion shapes
# --------------------------------------------------------------------------------------------


def random_blob_polygon(
    rng: np.random.Generator,
    centre_xy: tuple[float, float],
    radius: float,
    *,
    irregularity: float = 0.35,
    n_vertices: int = 64,
) -> np.ndarray:
    """An irregular closed blob outline (star-shaped, smooth radial harmonics).

    Args:
        rng: randomness for the harmonics.
        centre_xy: ``(x, y)`` of the centre, in the caller's pixel frame.
        radius: mean radius in the same units.
        irregularity: relative amplitude of the radial variation (0 = circle).
        n_vertices: number of vertices.

    Returns:
        float64 ``[n_vertices, 2]`` ``(x, y)`` vertices, counter-clockwise in image axes.
    """
    t = np.linspace(0.0, 2 * math.pi, n_vertices, endpoint=False)
    rr = np.ones_like(t)
    for harm in range(2, 7):
        amp = irregularity * rng.uniform(0.2, 1.0) / harm
        rr += amp * np.cos(harm * t + rng.uniform(0, 2 * math.pi))
    rr = np.clip(rr, 0.35, None) * radius
    return np.stack([centre_xy[0] + rr * np.cos(t), centre_xy[1] + rr * np.sin(t)], axis=1)
