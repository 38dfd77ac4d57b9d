"""Deterministic stimuli for virtual subjects, built from images that install with PyPI.

Every stimulus ``i`` of a stimulus set with seed ``s`` is drawn from its own random
generator ``default_rng([s, i])``, so ``make_stimuli(n, s)[:k]`` equals
``make_stimuli(k, s)`` and subjects can share images by id.

Sources: scikit-image's bundled data (astronaut, camera, chelsea, coffee, rocket,
stereo motorcycle, clock, horse, coins, text, page, brick, grass, gravel, colorwheel) and
the 100 face / 100 non-face patches of ``skimage.data.lfw_subset``; they are cropped,
scaled, flipped, tinted and composed. Parametric images (gratings, checkerboards, wedges,
rings, bars, pink noise) serve retinotopic checks.

Categories (:data:`CATEGORIES`): face, body, scene, object, text, texture, parametric.
"""

from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass

import numpy as np

from napari_nrf.errors import NapariNRFError

CATEGORIES = ("face", "body", "scene", "object", "text", "texture", "parametric")
# Draw probabilities of the categories for natural-looking stimulus sets.
CATEGORY_P = np.array([0.18, 0.12, 0.22, 0.18, 0.10, 0.08, 0.12])
DEFAULT_SIZE = 96


class StimulusError(NapariNRFError):
    """Bad stimulus request (unknown kind, bad size)."""


# ---- sources --------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def _sources() -> dict:
    """Source images as float32 RGB in [0, 1], downscaled to at most 256 px on a side."""
    import skimage.data as d

    def rgb(a):
        a = np.asarray(a)
        if a.dtype == bool:
            a = a.astype(np.float32)
        else:
            a = a.astype(np.float32) / (255.0 if a.max() > 1.5 else 1.0)
        if a.ndim == 2:
            a = np.repeat(a[..., None], 3, axis=2)
        a = a[..., :3]
        return _shrink(a, 256)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        s = {
            "astronaut": rgb(d.astronaut()),
            "camera": rgb(d.camera()),
            "chelsea": rgb(d.chelsea()),
            "coffee": rgb(d.coffee()),
            "rocket": rgb(d.rocket()),
            "motorcycle": rgb(d.stereo_motorcycle()[0]),
            "clock": rgb(d.clock()),
            "horse": rgb(~d.horse()),  # white horse on black -> silhouette mask
            "coins": rgb(d.coins()),
            "text": rgb(d.text()),
            "page": rgb(d.page()),
            "brick": rgb(d.brick()),
            "grass": rgb(d.grass()),
            "gravel": rgb(d.gravel()),
            "colorwheel": rgb(d.colorwheel()),
        }
        lfw = d.lfw_subset().astype(np.float32)  # (200, 25, 25): 100 faces then 100 non-faces
    s["lfw_faces"] = lfw[:100]
    s["lfw_nonfaces"] = lfw[100:]
    return s


def _shrink(a: np.ndarray, max_side: int) -> np.ndarray:
    h, w = a.shape[:2]
    f = max(h, w) / max_side
    if f <= 1:
        return a
    return _resize(a, (int(round(h / f)), int(round(w / f))))


def _resize(a: np.ndarray, shape) -> np.ndarray:
    """Bilinear resize of (H, W[, C]) float32 to ``shape`` (h, w), anti-aliased when
    shrinking (PIL's resampling filters widen with the scale factor)."""
    from PIL import Image

    a = np.asarray(a, dtype=np.float32)
    h, w = int(shape[0]), int(shape[1])
    if a.ndim == 2:
        return np.asarray(Image.fromarray(np.ascontiguousarray(a), mode="F").resize((w, h), Image.BILINEAR))
    return np.stack([np.asarray(Image.fromarray(np.ascontiguousarray(a[..., c]), mode="F").resize((w, h), Image.BILINEAR))
                     for c in range(a.shape[2])], axis=2)


def _crop(rng, img, frac_lo, frac_hi, size, aspect=1.0):
    """Random square-ish crop covering ``frac`` of the shorter side, resized to ``size``."""
    h, w = img.shape[:2]
    side = rng.uniform(frac_lo, frac_hi) * min(h, w)
    ch, cw = int(side), int(min(w, side * aspect))
    y = rng.integers(0, h - ch + 1)
    x = rng.integers(0, w - cw + 1)
    out = _resize(img[y:y + ch, x:x + cw], (size, size))
    if rng.random() < 0.5:
        out = out[:, ::-1]
    return out


def _blur(img, sigma):
    from scipy.ndimage import gaussian_filter

    return gaussian_filter(img, (sigma, sigma, 0) if img.ndim == 3 else sigma)


def _background(rng, size):
    """A low-contrast background: plain colour, blurred natural crop or a colour gradient."""
    s = _sources()
    k = rng.integers(3)
    if k == 0:
        col = rng.uniform(0.2, 0.9, 3).astype(np.float32)
        return np.broadcast_to(col, (size, size, 3)).copy()
    if k == 1:
        name = rng.choice(["camera", "rocket", "motorcycle", "coffee", "grass", "brick"])
        bg = _blur(_crop(rng, s[name], 0.5, 1.0, size), size / 16)
        m = bg.mean()
        return (m + 0.5 * (bg - m)).astype(np.float32)
    c0, c1 = rng.uniform(0.2, 0.9, 3), rng.uniform(0.2, 0.9, 3)
    t = np.linspace(0, 1, size, dtype=np.float32)[:, None, None]
    return np.broadcast_to(c0 * (1 - t) + c1 * t, (size, size, 3)).astype(np.float32).copy()


def _paste(dst, src, alpha, cy, cx):
    """Alpha-blend ``src`` (h, w, 3) centred at (cy, cx) into ``dst`` in place (clipped)."""
    H, W = dst.shape[:2]
    h, w = src.shape[:2]
    y0, x0 = int(cy - h // 2), int(cx - w // 2)
    ys, xs = max(0, -y0), max(0, -x0)
    ye, xe = min(h, H - y0), min(w, W - x0)
    if ye <= ys or xe <= xs:
        return dst
    a = alpha[ys:ye, xs:xe, None]
    reg = dst[y0 + ys:y0 + ye, x0 + xs:x0 + xe]
    dst[y0 + ys:y0 + ye, x0 + xs:x0 + xe] = a * src[ys:ye, xs:xe] + (1 - a) * reg
    return dst


def _ellipse_alpha(h, w, soft=0.15):
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    r = np.sqrt(((yy - (h - 1) / 2) / (h / 2)) ** 2 + ((xx - (w - 1) / 2) / (w / 2)) ** 2)
    return np.clip((1 - r) / soft, 0, 1).astype(np.float32)


# ---- categories -----------------------------------------------------------------------
def _face(rng, size, cont):
    s = _sources()
    img = _background(rng, size)
    if rng.random() < 0.15:  # the astronaut's own face
        src = s["astronaut"]
        n = src.shape[0]
        f = _resize(src[int(0.06 * n):int(0.42 * n), int(0.32 * n):int(0.62 * n)], (int(size * 0.8),) * 2)
        fs = int(rng.uniform(0.55, 0.95) * size)
        f = _resize(f, (fs, fs))
    else:
        face = s["lfw_faces"][rng.integers(100)]
        fs = int(rng.uniform(0.4, 0.9) * size)
        g = _resize(face, (fs, fs))
        tone = np.array([0.95, 0.76, 0.62]) * rng.uniform(0.6, 1.15) + rng.normal(0, 0.04, 3)
        f = np.clip(g[..., None] * tone[None, None, :].astype(np.float32), 0, 1)
    if rng.random() < 0.5:
        f = f[:, ::-1]
    cont[0] = max(cont[0], min(1.0, 0.3 + f.shape[0] / size))
    cy, cx = rng.normal(size / 2, size * 0.08, 2)
    return _paste(img, f, _ellipse_alpha(*f.shape[:2], soft=0.25), cy, cx)


def _body(rng, size, cont):
    from skimage.draw import disk, ellipse, polygon

    s = _sources()
    if rng.random() < 0.2:  # the astronaut's torso and arms
        src = s["astronaut"]
        n = src.shape[0]
        cont[1] = 0.8
        return _crop(rng, src[int(0.35 * n):, : int(0.8 * n)], 0.7, 1.0, size)
    img = _background(rng, size)
    h = rng.uniform(0.6, 0.95) * size  # figure height (px)
    cx = rng.normal(size / 2, size * 0.08)
    top = (size - h) / 2 + rng.normal(0, size * 0.04)
    cloth = rng.uniform(0.05, 0.9, 3)
    skin = np.array([0.9, 0.72, 0.6]) * rng.uniform(0.5, 1.1)
    mask_c = np.zeros((size, size), bool)
    mask_s = np.zeros((size, size), bool)
    head_r = 0.07 * h
    hy = top + head_r
    rr, cc = disk((hy, cx), head_r, shape=mask_s.shape)
    mask_s[rr, cc] = True
    sh_y, hip_y = top + 0.2 * h, top + 0.55 * h
    rr, cc = ellipse((sh_y + hip_y) / 2, cx, (hip_y - sh_y) / 2, 0.11 * h, shape=mask_c.shape)
    mask_c[rr, cc] = True
    width = max(1.5, 0.035 * h)

    def limb(y0, x0, ang, length, mask):
        # A thick segment as a 4-corner polygon; ang = 0 points straight down.
        y1, x1 = y0 + length * np.cos(ang), x0 + length * np.sin(ang)
        ny, nx = -np.sin(ang) * width, np.cos(ang) * width
        rr, cc = polygon([y0 + ny, y1 + ny, y1 - ny, y0 - ny], [x0 + nx, x1 + nx, x1 - nx, x0 - nx], shape=mask.shape)
        mask[rr, cc] = True
        return y1, x1

    for side in (-1, 1):
        a = side * rng.uniform(0.2, 1.3)
        y1, x1 = limb(sh_y + 0.02 * h, cx + side * 0.1 * h, a, 0.17 * h, mask_c)
        limb(y1, x1, a + side * rng.uniform(-0.4, 0.8), 0.16 * h, mask_s)
        b = side * rng.uniform(0.05, 0.5)
        y1, x1 = limb(hip_y, cx + side * 0.05 * h, b, 0.22 * h, mask_c)
        limb(y1, x1, b + side * rng.uniform(-0.3, 0.3), 0.22 * h, mask_c)
    img[mask_c] = cloth
    img[mask_s] = skin
    cont[1] = min(1.0, 0.3 + h / size)
    cont[0] = max(cont[0], 0.15)  # the head
    img = _blur(img, 0.6)
    if rng.random() < 0.5:
        img = img[:, ::-1]
    return img


def _scene(rng, size, cont):
    s = _sources()
    if rng.random() < 0.7:
        name = rng.choice(["camera", "rocket", "motorcycle", "coffee", "astronaut", "chelsea"],
                          p=[0.25, 0.22, 0.22, 0.12, 0.1, 0.09])
        # What the photographs show besides the scene itself (a person, a face, objects).
        extra = {"camera": (0.0, 0.4, 0.3), "rocket": (0.0, 0.0, 0.4), "motorcycle": (0.0, 0.0, 0.6),
                 "coffee": (0.0, 0.0, 0.6), "astronaut": (0.4, 0.4, 0.2), "chelsea": (0.4, 0.0, 0.3)}[name]
        cont[0], cont[1], cont[3] = np.maximum(cont[[0, 1, 3]], extra)
        cont[2] = 0.6 if name in ("coffee", "chelsea") else 1.0
        return _crop(rng, s[name], 0.6, 1.0, size)
    cont[2] = 1.0
    # Synthetic layout: sky gradient, horizon, ground plane and rectilinear buildings.
    img = np.empty((size, size, 3), np.float32)
    hz = int(rng.uniform(0.35, 0.65) * size)
    sky0, sky1 = rng.uniform(0.5, 0.95, 3), rng.uniform(0.3, 0.8, 3)
    t = np.linspace(0, 1, hz, dtype=np.float32)[:, None, None]
    img[:hz] = sky0 * (1 - t) + sky1 * t
    g0 = rng.uniform(0.1, 0.6, 3)
    t = np.linspace(0, 1, size - hz, dtype=np.float32)[:, None, None]
    img[hz:] = g0 * (0.7 + 0.3 * t)
    x = 0
    while x < size:
        w = int(rng.uniform(0.08, 0.3) * size)
        top = int(hz - rng.uniform(0.05, 0.45) * size)
        col = rng.uniform(0.15, 0.85, 3)
        img[max(0, top):hz + 2, x:x + w] = col
        win = rng.uniform(0, 0.3)
        step = max(3, int(size * 0.04))
        for yy in range(max(0, top) + 2, hz - 2, step):
            img[yy:yy + step // 2, x + 1:x + w - 1:2] = col * win
        x += w + int(rng.uniform(0, 0.1) * size)
    # Perspective lines of a road towards the horizon.
    from skimage.draw import line

    for x_end in rng.uniform(-0.5, 1.5, 2) * size:
        rr, cc = line(hz, int(size / 2), size - 1, int(np.clip(x_end, -size, 2 * size)))
        ok = (cc >= 0) & (cc < size)
        img[rr[ok], cc[ok]] = 0.9
    img = _blur(img, 0.5) + rng.normal(0, 0.02, img.shape).astype(np.float32)
    return img


def _object(rng, size, cont):
    s = _sources()
    img = _background(rng, size)
    name = rng.choice(["chelsea", "coffee", "clock", "horse", "coins", "rocket", "colorwheel", "lfw_nonfaces"])
    src = s[name]
    n0, n1 = src.shape[:2] if name != "lfw_nonfaces" else (25, 25)
    if name == "chelsea":  # the cat's head
        obj = src[int(0.05 * n0):int(0.75 * n0), int(0.25 * n1):int(0.75 * n1)]
    elif name == "coffee":  # the cup
        obj = src[int(0.05 * n0):int(0.85 * n0), int(0.25 * n1):int(0.85 * n1)]
    elif name == "rocket":
        obj = src[:, int(0.35 * n1):int(0.6 * n1)]
    elif name == "coins":
        r, c = rng.integers(0, 4), rng.integers(0, 6)
        obj = src[int(r * n0 / 4):int((r + 1) * n0 / 4), int(c * n1 / 6):int((c + 1) * n1 / 6)]
    elif name == "lfw_nonfaces":
        g = src[rng.integers(100)]
        obj = np.repeat(g[..., None], 3, 2) * rng.uniform(0.5, 1.0, 3).astype(np.float32)
    else:
        obj = src
    fs = int(rng.uniform(0.35, 0.8) * size)
    cont[3] = min(1.0, 0.4 + fs / size)
    if name in ("chelsea", "horse"):  # animals: some face/body drive, as in real FFA/EBA
        cont[0] = max(cont[0], 0.4 if name == "chelsea" else 0.0)
        cont[1] = max(cont[1], 0.4 if name == "horse" else 0.0)
    h, w = obj.shape[:2]
    f = fs / max(h, w)
    obj = _resize(obj, (max(4, int(h * f)), max(4, int(w * f))))
    if name == "horse":  # the silhouette is its own mask
        alpha = obj[..., 0]
        obj = np.broadcast_to(rng.uniform(0.0, 0.6, 3).astype(np.float32), obj.shape)
    else:
        alpha = _ellipse_alpha(*obj.shape[:2], soft=0.2)
    if rng.random() < 0.5:
        obj, alpha = obj[:, ::-1], alpha[:, ::-1]
    cy, cx = rng.normal(size / 2, size * 0.1, 2)
    return _paste(img, obj, alpha, cy, cx)


def _text(rng, size, cont):
    s = _sources()
    cont[4] = 1.0
    if rng.random() < 0.6:
        src = s[rng.choice(["text", "page"])]
        return _crop(rng, src, 0.5, 1.0, size, aspect=1.0)
    # Synthetic lines of glyph-like strokes.
    from skimage.draw import line

    ink = rng.uniform(0.0, 0.3)
    paper = rng.uniform(0.7, 1.0)
    g = np.full((size, size), paper, np.float32)
    lh = int(rng.uniform(0.08, 0.16) * size)
    y = int(rng.uniform(0.05, 0.2) * size)
    while y + lh < size:
        x = int(rng.uniform(0.02, 0.1) * size)
        while x < size - lh // 2:
            gw = max(3, int(lh * rng.uniform(0.4, 0.8)))
            for _ in range(rng.integers(2, 4)):
                y0, y1 = y + rng.integers(0, lh), y + rng.integers(0, lh)
                x0, x1 = x + rng.integers(0, gw), x + rng.integers(0, gw)
                rr, cc = line(y0, x0, y1, min(size - 1, x1))
                ok = (rr < size) & (cc < size)
                g[rr[ok], cc[ok]] = ink
            x += gw + max(1, lh // 4) + (lh if rng.random() < 0.15 else 0)
        y += int(lh * 1.6)
    return np.repeat(_blur(g, 0.4)[..., None], 3, 2)


def _texture(rng, size, cont):
    s = _sources()
    name = rng.choice(["brick", "grass", "gravel"])
    img = _crop(rng, s[name], 0.3, 1.0, size)
    tint = rng.uniform(0.6, 1.2, 3).astype(np.float32)
    return np.clip(img * tint, 0, 1)


# ---- parametric -----------------------------------------------------------------------
PARAMETRIC = ("grating", "checkerboard", "wedge", "ring", "bar", "noise")


def make_parametric(kind: str, size: int = DEFAULT_SIZE, *, orientation: float = 0.0, cycles: float = 8.0,
                    phase: float = 0.0, contrast: float = 1.0, side: str | None = None,
                    angle: float = 0.0, width: float = 45.0, radius: tuple = (0.2, 0.5), position: float = 0.5,
                    seed: int = 0) -> np.ndarray:
    """One parametric stimulus, (size, size, 3) uint8.

    Parameters
    ----------
    kind : "grating", "checkerboard", "wedge", "ring", "bar" or "noise"
    orientation : grating/bar orientation in degrees (0 = vertical stripes / vertical bar)
    cycles : spatial frequency in cycles per image (grating, checkerboard checks per side)
    side : None (full field), "left", "right", "upper" or "lower": keep only that half
        of the visual field (the rest is mean grey). "left" is the viewer's left, i.e. the
        left visual hemifield, which drives the right hemisphere's early visual cortex.
    angle, width : wedge centre and width in degrees of polar angle (0 = right horizontal
        meridian, counter-clockwise)
    radius : ring inner/outer radius as a fraction of the image side
    position : bar centre across the image, 0..1
    """
    if kind not in PARAMETRIC:
        raise StimulusError(f"unknown parametric stimulus {kind!r}; choose one of {PARAMETRIC}")
    n = int(size)
    c = (np.arange(n, dtype=np.float32) - (n - 1) / 2) / n  # -0.5..0.5 image widths
    yy, xx = np.meshgrid(-c, c, indexing="ij")  # yy up, xx right
    th = np.deg2rad(orientation)
    u = xx * np.cos(th) + yy * np.sin(th)
    r = np.hypot(xx, yy)
    pa = np.rad2deg(np.arctan2(yy, xx)) % 360
    chk = np.sign(np.sin(2 * np.pi * cycles * xx + 1e-3) * np.sin(2 * np.pi * cycles * yy + 1e-3))
    if kind == "grating":
        g = np.sin(2 * np.pi * cycles * u + phase)
    elif kind == "checkerboard":
        g = chk
    elif kind == "wedge":
        d = np.abs((pa - angle + 180) % 360 - 180)
        g = chk * (d <= width / 2) * (r <= 0.5)
    elif kind == "ring":
        g = chk * ((r >= radius[0]) & (r <= radius[1]))
    elif kind == "bar":
        g = chk * (np.abs(u - (position - 0.5)) <= 0.06)
    else:  # pink (1/f) noise
        rng = np.random.default_rng(seed)
        f = np.fft.fftfreq(n)
        fr = np.hypot(*np.meshgrid(f, f, indexing="ij"))
        fr[0, 0] = 1
        spec = (rng.normal(size=(n, n)) + 1j * rng.normal(size=(n, n))) / fr
        spec[0, 0] = 0
        g = np.real(np.fft.ifft2(spec))
        g = g / (3 * g.std() + 1e-9)
    if side is not None:
        keep = {"left": xx < 0, "right": xx > 0, "upper": yy > 0, "lower": yy < 0}.get(side)
        if keep is None:
            raise StimulusError(f"side must be None, 'left', 'right', 'upper' or 'lower', got {side!r}")
        g = g * keep
    img = np.clip(0.5 + 0.5 * contrast * g, 0, 1)
    return (np.repeat(img[..., None], 3, 2) * 255 + 0.5).astype(np.uint8)


def _parametric(rng, size, cont):
    kind = rng.choice(PARAMETRIC)
    return make_parametric(
        kind, size, orientation=rng.uniform(0, 180), cycles=float(rng.choice([2, 4, 8, 16])),
        phase=rng.uniform(0, 2 * np.pi), contrast=rng.uniform(0.3, 1.0),
        side=rng.choice([None, None, "left", "right", "upper", "lower"]),
        angle=rng.uniform(0, 360), width=rng.uniform(30, 90),
        radius=tuple(sorted(rng.uniform(0.0, 0.5, 2))), position=rng.uniform(0.1, 0.9),
        seed=int(rng.integers(2**31)),
    ).astype(np.float32) / 255


_MAKERS = {"face": _face, "body": _body, "scene": _scene, "object": _object, "text": _text,
           "texture": _texture, "parametric": _parametric}


def stimulus_categories(n: int, seed: int = 0, start: int = 0) -> np.ndarray:
    """Category names (n,) of stimuli ``start .. start + n - 1`` of the set ``seed``."""
    return np.array([_category(seed, i) for i in range(start, start + n)])


def _category(seed, i):
    rng = np.random.default_rng([int(seed), int(i), 7])
    return CATEGORIES[rng.choice(len(CATEGORIES), p=CATEGORY_P)]


CONTENT = ("face", "body", "scene", "object", "text")


def make_stimulus(i: int, seed: int = 0, size: int = DEFAULT_SIZE, category: str | None = None,
                  return_content: bool = False):
    """Stimulus ``i`` of the set ``seed``, (size, size, 3) uint8; deterministic.

    With ``return_content=True`` also returns its content vector, (5,) float32 in [0, 1]
    over :data:`CONTENT` (face, body, scene, object, text): how much of each kind of
    thing the image shows, as recorded while composing it (a large face -> face ~1, a
    cat's head -> face 0.4 and object ~1, a street photograph with a person -> scene 1,
    body 0.4).
    """
    cat = category or _category(seed, i)
    if cat not in _MAKERS:
        raise StimulusError(f"unknown stimulus category {cat!r}; choose one of {CATEGORIES}")
    rng = np.random.default_rng([int(seed), int(i)])
    cont = np.zeros(len(CONTENT), np.float32)
    img = _MAKERS[cat](rng, int(size), cont)
    # A fifth of the scenes are composites: a face or an object pasted into the scene.
    if cat == "scene" and rng.random() < 0.2:
        sub = np.zeros_like(cont)
        fg = _MAKERS[rng.choice(["face", "object"])](rng, int(size) // 2, sub)
        _paste(img, fg, _ellipse_alpha(*fg.shape[:2], 0.3), rng.uniform(0.3, 0.7) * size,
               rng.uniform(0.3, 0.7) * size)
        cont = np.maximum(cont, 0.7 * sub)
    img = np.asarray(img, dtype=np.float32)
    img = (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)
    return (img, cont) if return_content else img


@dataclass
class StimulusSet:
    """Stimuli with their ids, categories and content vectors.

    images (n, H, W, 3) uint8; ids (n,) int64; categories (n,) str; content (n, 5)
    float32 over :data:`CONTENT`; seed: the stimulus-set seed.
    """

    images: np.ndarray
    ids: np.ndarray
    categories: np.ndarray
    content: np.ndarray
    seed: int = 0

    def __len__(self):
        return len(self.ids)


def make_stimulus_set(ids, seed: int = 0, size: int = DEFAULT_SIZE, progress=None) -> StimulusSet:
    """The stimuli with the given ids (any int sequence) of the set ``seed``."""
    ids = np.asarray(ids, dtype=np.int64).reshape(-1)
    if size < 16:
        raise StimulusError(f"stimulus size must be >= 16 px, got {size}")
    if ids.size and ids.min() < 0:
        raise StimulusError("stimulus ids must be >= 0")
    n = ids.size
    out = np.empty((n, size, size, 3), np.uint8)
    cont = np.zeros((n, len(CONTENT)), np.float32)
    labels = np.array([_category(seed, i) for i in ids], dtype=object).astype(str) if n else np.zeros(0, str)
    for k, i in enumerate(ids):
        out[k], cont[k] = make_stimulus(int(i), seed, size, labels[k], return_content=True)
        if progress is not None and (k % 50 == 49 or k == n - 1):
            progress(k + 1, n)
    return StimulusSet(out, ids, labels, cont, int(seed))


def make_stimuli(n: int, seed: int = 0, size: int = DEFAULT_SIZE, start: int = 0,
                 return_labels: bool = False, progress=None):
    """``n`` deterministic natural-looking stimuli, (n, size, size, 3) uint8.

    Stimulus ids run from ``start`` to ``start + n - 1``; the same id and seed always
    give the same image. With ``return_labels=True`` returns ``(images, categories)``
    where categories is an (n,) str array of :data:`CATEGORIES`; see
    :func:`make_stimulus_set` for ids and content vectors too.
    ``progress``: optional callable ``progress(done, total)``.
    """
    if n < 0:
        raise StimulusError(f"need n >= 0, got {n}")
    st = make_stimulus_set(np.arange(start, start + n), seed, size, progress=progress)
    return (st.images, st.categories) if return_labels else st.images
