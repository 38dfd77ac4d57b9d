"""Science experiment: NRF against a voxelwise ridge baseline on virtual subjects.

Claims checked (seed 000):

A. data efficiency: median voxel Pearson of NRF and ridge at 20, 200, 800 and all
   training images, against the noisy test responses and against the noiseless truth
   (mean and spread over subjects);
B. local smoothness: globally shuffling the voxel <-> coordinate pairing (the same
   permutation for every image, train and test) hurts NRF, most at low data; ridge is
   voxelwise and therefore unaffected;
C. resolution: an NRF trained on 2 mm samples of a region and queried at 1 mm is closer to
   the 1 mm truth than trilinear upsampling of its own 2 mm predictions.

Virtual subjects (self-contained, so the experiment does not depend on the simulator
module): images are random crops, flips and tints of scikit-image's bundled photographs and
LFW face / non-face patches (64 x 64). Each image gets 24 hand-made descriptors
(luminance and contrast per quadrant, gradient-orientation energy per half, colourfulness,
fine-scale energy, "is a face" from the LFW label, centre-surround contrast), none of which
is a backbone feature. The noiseless response at MNI point x is
``sum_k (d(image) . w_k) * exp(-|x - c_k|^2 / 2 s_k^2)`` over K = 16 smooth "functional
regions" in the posterior brain (s_k 5-14 mm); subjects share the regions up to a
2 mm jitter of their centres and have independent noise (SNR 1: responses = truth / sd +
N(0, 1), so a perfect model reaches r about 0.7 in the strongest voxels).
Voxels: the 4 mm MNI brain mask behind y = -60 mm (6020 voxels) (claims A, B), a 2 mm box in the
occipital lobe (claim C).

Run (full, about 40 min on 2 idle CPU cores; split across processes with --subject-ids,
--sizes and --no-resolution, then --merge the logs):
    .venv/bin/python benchmarks/nrf_vs_ridge.py --out nrf_vs_ridge.json
Tiny (tests): NRF_EXAMPLE_TINY=1 or --tiny.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from napari_nrf import space
from napari_nrf.data.responseset import ResponseSet
from napari_nrf.evaluate import RidgeBaseline, metrics, write_json
from napari_nrf.train import fit, predict_set, voxel_pearson

IMG = 64


# ---- virtual subjects -------------------------------------------------------------------
def make_images(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(n, 64, 64, 3) uint8 images and (n,) bool "is a face" labels."""
    import skimage.data as d
    from skimage.transform import resize

    photos = [d.astronaut(), d.chelsea(), d.coffee(), d.rocket(), d.stereo_motorcycle()[0], d.horse(),
              d.camera(), d.coins(), d.text(), d.page(), d.brick(), d.grass(), d.gravel(), d.colorwheel(),
              d.clock(), d.immunohistochemistry(), d.hubble_deep_field()]
    photos = [np.stack([p] * 3, -1) if p.ndim == 2 else p[..., :3] for p in photos]
    photos = [(p.astype(np.float32) / (255.0 if p.max() > 1 else 1.0)) for p in photos]
    lfw = d.lfw_subset()  # 100 faces then 100 non-faces, 25 x 25 float in [0, 1]
    rng = np.random.default_rng(seed)
    out = np.empty((n, IMG, IMG, 3), np.uint8)
    face = np.zeros(n, bool)
    for i in range(n):
        if rng.random() < 0.3:
            j = int(rng.integers(200))
            face[i] = j < 100
            img = np.stack([lfw[j]] * 3, -1)
        else:
            p = photos[int(rng.integers(len(photos)))]
            h, w = p.shape[:2]
            s = int(rng.uniform(0.25, 0.9) * min(h, w))
            y0, x0 = int(rng.integers(0, h - s + 1)), int(rng.integers(0, w - s + 1))
            img = p[y0:y0 + s, x0:x0 + s]
        img = resize(img, (IMG, IMG), anti_aliasing=True)
        if rng.random() < 0.5:
            img = img[:, ::-1]
        img = np.clip(img * rng.uniform(0.7, 1.2, 3) + rng.uniform(-0.1, 0.1), 0, 1)
        out[i] = (img * 255).astype(np.uint8)
    return out, face


def descriptors(images: np.ndarray, face: np.ndarray) -> np.ndarray:
    """(n, 24) standardised image descriptors (the image half of the ground truth)."""
    x = images.astype(np.float32) / 255.0
    lum = x.mean(-1)
    h = IMG // 2
    cols = []
    for qy in (slice(0, h), slice(h, None)):
        for qx in (slice(0, h), slice(h, None)):
            q = lum[:, qy, qx]
            cols += [q.mean((1, 2)), q.std((1, 2))]
    gy, gx = np.gradient(lum, axis=(1, 2))
    ang = np.arctan2(gy, gx)
    mag = np.hypot(gx, gy)
    for half in (slice(0, h), slice(h, None)):
        for k in range(4):
            sel = np.cos(2 * (ang[:, half] - k * np.pi / 4)) ** 8
            cols.append((mag[:, half] * sel).mean((1, 2)))
    rg = x[..., 0] - x[..., 1]
    yb = 0.5 * (x[..., 0] + x[..., 1]) - x[..., 2]
    cols += [rg.std((1, 2)), yb.std((1, 2))]
    lap = np.abs(lum[:, 1:-1, 1:-1] * 4 - lum[:, 2:, 1:-1] - lum[:, :-2, 1:-1] - lum[:, 1:-1, 2:] - lum[:, 1:-1, :-2])
    cols += [lap.mean((1, 2)), face.astype(np.float32) * 2.0]
    c = slice(IMG // 4, 3 * IMG // 4)
    cols += [lum[:, c, c].std((1, 2)) - lum.std((1, 2)), mag.mean((1, 2))]
    d = np.stack(cols, 1).astype(np.float64)
    return ((d - d.mean(0)) / (d.std(0) + 1e-9)).astype(np.float32)


class Field:
    """Ground-truth response field: K Gaussian regions with linear descriptor tuning."""

    def __init__(self, n_desc: int, k: int = 16, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.centres = rng.uniform([-50, -100, -20], [50, -60, 40], size=(k, 3))
        self.widths = rng.uniform(5.0, 14.0, size=k)
        self.w = rng.standard_normal((k, n_desc)) / np.sqrt(n_desc)

    def jittered(self, seed: int, mm: float = 2.0) -> "Field":
        f = Field.__new__(Field)
        rng = np.random.default_rng(seed)
        f.centres = self.centres + rng.normal(0, mm, self.centres.shape)
        f.widths, f.w = self.widths, self.w
        return f

    def __call__(self, desc: np.ndarray, xyz: np.ndarray) -> np.ndarray:
        """Noiseless responses (n_images, V) float32 at MNI points xyz (V, 3) mm."""
        amp = desc @ self.w.T  # (n, K)
        d2 = ((np.asarray(xyz, np.float64)[:, None, :] - self.centres[None]) ** 2).sum(-1)
        return (amp @ np.exp(-d2 / (2 * self.widths ** 2)).T).astype(np.float32)


def make_subject(name: str, field: Field, desc: np.ndarray, images: np.ndarray, xyz: np.ndarray, split: np.ndarray,
                 seed: int, scale: float | None = None) -> ResponseSet:
    truth = field(desc, xyz)
    scale = float(truth.std()) if scale is None else scale
    truth = truth / scale
    rng = np.random.default_rng(seed)
    resp = truth + rng.standard_normal(truth.shape).astype(np.float32)
    return ResponseSet(responses=resp, coords=xyz, split=split, images=images, truth=truth, subject=name,
                       meta={"truth_scale": scale})


def shuffled(rs: ResponseSet, seed: int) -> ResponseSet:
    """The same set with its voxel responses reassigned to random coordinates."""
    perm = np.random.default_rng(seed).permutation(rs.n_voxels)
    return ResponseSet(responses=np.asarray(rs.responses)[:, perm], coords=rs.coords, split=rs.split,
                       images=rs.images, truth=np.asarray(rs.truth)[:, perm], subject=rs.subject)


# ---- experiment -------------------------------------------------------------------------
def train_rows(split: np.ndarray, n: int | None, seed: int) -> np.ndarray:
    tr = np.flatnonzero(split == 0)
    if n is None or n >= len(tr):
        return tr
    return np.sort(np.random.default_rng(seed).choice(tr, n, replace=False))


def with_train(rs: ResponseSet, rows: np.ndarray) -> ResponseSet:
    """``rs`` with only ``rows`` of its train split kept as training images."""
    split = rs.split.copy()
    keep = np.zeros(rs.n_images, bool)
    keep[rows] = True
    split[(split == 0) & ~keep] = 3  # neither train, val nor test
    return ResponseSet(responses=rs.responses, coords=rs.coords, split=split, images=rs.images, truth=rs.truth,
                       subject=rs.subject)


def fit_nrf(rs, feats, cfg, seed, log=None):
    from napari_nrf.models.nrf import build_nrf

    model = build_nrf("efficientnet-lite0", cfg["preset"], seed=seed, **cfg.get("nrf_overrides", {}))
    n_tr = int((rs.split == 0).sum())
    hist = fit(model, [rs], features=[feats], epochs=cfg["epochs"], steps_per_epoch=cfg["steps"],
               batch_images=min(cfg["batch_images"], n_tr), batch_voxels=cfg["batch_voxels"], lr=cfg["lr"],
               weight_decay=cfg["weight_decay"], patience=cfg["patience"], seed=seed,
               on_epoch=(lambda r: log(f"  epoch {r['epoch']}: {r}")) if log else None)
    return model, hist


def score(pred, rs, rows):
    m = metrics(pred, rs.get_responses(rows), truth=rs.get_truth(rows))
    return {"r_noisy": m["pearson_median"], "r_truth": m["truth_pearson_median"]}


def run(tiny: bool = False, subjects: int = 3, sizes=(20, 200, 800, None), shuffle_sizes=(20, None),
        cache_dir=None, log=print, subject_ids=None, resolution: bool = True, sharp: bool = False) -> dict:
    from napari_nrf.features import FeatureCache, extract_features, get_backbone

    cfg = dict(preset="demo", epochs=8, steps=12, batch_images=32, batch_voxels=400, lr=1e-3, weight_decay=0.015,
               patience=3, n_images=1200, n_val=50, n_test=100, voxel_mm=4.0, y_max=-60.0)
    if tiny:
        cfg.update(preset="tiny", epochs=2, steps=3, batch_voxels=200, n_images=40, n_val=8, n_test=8, voxel_mm=8.0)
        subjects, sizes, shuffle_sizes = 1, (20,), (20,)
    t0 = time.perf_counter()
    images, face = make_images(cfg["n_images"], seed=0)
    desc = descriptors(images, face)
    cache = FeatureCache(cache_dir) if cache_dir else None
    feats = extract_features(get_backbone("efficientnet-lite0"), images, batch_size=32, cache=cache)
    log(f"images + features: {time.perf_counter() - t0:.1f} s")
    n = cfg["n_images"]
    split = np.zeros(n, np.uint8)
    split[n - cfg["n_val"] - cfg["n_test"]:n - cfg["n_test"]] = 1
    split[n - cfg["n_test"]:] = 2
    test = np.flatnonzero(split == 2)
    g = space.Grid.mni(cfg["voxel_mm"])
    xyz = g.coords(space.brain_mask(g))
    xyz = xyz[xyz[:, 1] < cfg["y_max"]]
    base = Field(desc.shape[1], seed=0)
    res = {"config": cfg, "n_voxels": int(len(xyz)), "n_train_pool": int((split == 0).sum()), "runs": []}
    for s in (range(subjects) if subject_ids is None else subject_ids):
        field = base.jittered(100 + s)
        rs = make_subject(f"sub-{s + 1:02d}", field, desc, images, xyz, split, seed=200 + s)
        for size in sizes:
            rows = train_rows(split, size, seed=300 + s)
            sub = with_train(rs, rows)
            rec = {"subject": rs.subject, "n_train": int(len(rows))}
            t = time.perf_counter()
            model, hist = fit_nrf(sub, feats, cfg, seed=s, log=log)
            rec["nrf"] = score(predict_set(model, {k: v[test] for k, v in feats.items()}, sub), sub, test)
            rec["nrf"]["epochs"] = len(hist.records)
            rec["nrf"]["seconds"] = time.perf_counter() - t
            rb = RidgeBaseline().fit({k: v[rows] for k, v in feats.items()}, rs.get_responses(rows))
            rec["ridge"] = score(rb.predict({k: v[test] for k, v in feats.items()}), sub, test)
            if size in shuffle_sizes:
                sh = shuffled(sub, seed=400 + s)
                model_sh, _ = fit_nrf(sh, feats, cfg, seed=s)
                rec["nrf_shuffled"] = score(predict_set(model_sh, {k: v[test] for k, v in feats.items()}, sh), sh, test)
                rb = RidgeBaseline().fit({k: v[rows] for k, v in feats.items()}, sh.get_responses(rows))
                rec["ridge_shuffled"] = score(rb.predict({k: v[test] for k, v in feats.items()}), sh, test)
            res["runs"].append(rec)
            log(json.dumps(rec))
    if resolution:
        res["resolution"] = resolution_claim(base, desc, images, feats, split, cfg, tiny, log, sharp=sharp)
    res["summary"] = summarise(res["runs"])
    res["seconds"] = time.perf_counter() - t0
    return res


def resolution_claim(base, desc, images, feats, split, cfg, tiny, log, sharp: bool = False) -> dict:
    """Claim C on one subject: NRF at 1 mm vs trilinear upsampling of its 2 mm predictions.

    ``sharp=True``: a variant with finer truth (region widths 1.8-5 mm instead of 5-14 mm)
    and an NRF with twice the Fourier bandwidth (std 64) so that it can follow it.
    """
    from napari_nrf.query import QueryEngine

    lo, hi = np.array([-30.0, -96.0, -10.0]), np.array([30.0, -60.0, 26.0])
    if tiny:
        hi = lo + 12.0
    g2 = space.Grid.from_extent(2.0, lo, hi)
    g1 = space.Grid.from_extent(1.0, lo, hi)
    field = base.jittered(100)
    if sharp:
        field.widths = field.widths * 0.36  # 5-14 mm -> 1.8-5 mm
        cfg = {**cfg, "nrf_overrides": {"fourier_std": 64.0}}
    rs = make_subject("sub-01", field, desc, images, g2.coords(), split, seed=500)
    model, _ = fit_nrf(rs, feats, cfg, seed=0)
    test = np.flatnonzero(split == 2)
    ft = {k: v[test] for k, v in feats.items()}
    eng = QueryEngine(model, device="cpu")
    v1 = eng.volume(ft, g1).reshape(len(test), -1)
    v2 = eng.volume(ft, g2)
    up = np.stack([space.resample(v, g2, g1, order=1) for v in v2]).reshape(len(test), -1)
    truth1 = field(desc[test], g1.coords()) / rs.meta["truth_scale"]
    # Only 1 mm points inside the 2 mm grid's hull (trilinear upsampling cannot extrapolate).
    ijk = g2.world_to_index(g1.coords())
    inside = np.all((ijk >= 0) & (ijk <= np.array(g2.shape) - 1), axis=1)
    out = {}
    for name, pred in (("nrf_1mm", v1), ("upsampled_2mm", up)):
        p, t = pred[:, inside], truth1[:, inside]
        out[name] = {"r_truth_median": float(np.nanmedian(voxel_pearson(p, t))), "mse_truth": float(np.mean((p - t) ** 2))}
    out["n_points_1mm"] = int(inside.sum())
    out["box_mm"] = [lo.tolist(), hi.tolist()]
    out["sharp"] = bool(sharp)
    log(json.dumps(out))
    return out


def summarise(runs: list) -> dict:
    """Mean and standard deviation over subjects per training size, model and target."""
    out = {}
    for n in sorted({r["n_train"] for r in runs}):
        rs = [r for r in runs if r["n_train"] == n]
        row = {}
        for model in ("nrf", "ridge", "nrf_shuffled", "ridge_shuffled"):
            vals = [r[model] for r in rs if model in r]
            if not vals:
                continue
            for key in ("r_noisy", "r_truth"):
                a = np.array([v[key] for v in vals])
                row[f"{model}.{key}"] = [float(a.mean()), float(a.std()), len(a)]
        out[str(n)] = row
    return out


def merge(logs, out) -> int:
    """Collect the per-run JSON lines (and claim C) printed by split runs into one result."""
    runs, reso = [], None
    for path in logs:
        for line in Path(path).read_text().splitlines():
            if line.startswith("{") and '"n_train"' in line:
                runs.append(json.loads(line))
            elif line.startswith("{") and '"nrf_1mm"' in line:
                reso = json.loads(line)
    runs.sort(key=lambda r: (r["subject"], r["n_train"]))
    res = {"runs": runs, "resolution": reso, "summary": summarise(runs), "logs": [str(p) for p in logs]}
    write_json(res, out)
    print(markdown(res))
    return 0


def markdown(res: dict) -> str:
    """The summary as a markdown table (mean +- sd over subjects)."""
    def cell(row, key):
        if key not in row:
            return "-"
        m, sd, n = row[key]
        return f"{m:.3f} +- {sd:.3f}"

    lines = ["| train images | NRF r (noisy) | ridge r (noisy) | NRF r (truth) | ridge r (truth) "
             "| NRF shuffled r (noisy) | NRF shuffled r (truth) |", "|---|---|---|---|---|---|---|"]
    for n, row in sorted(res["summary"].items(), key=lambda kv: int(kv[0])):
        lines.append(f"| {n} | " + " | ".join(cell(row, k) for k in (
            "nrf.r_noisy", "ridge.r_noisy", "nrf.r_truth", "ridge.r_truth", "nrf_shuffled.r_noisy",
            "nrf_shuffled.r_truth")) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", default=os.environ.get("NRF_EXAMPLE_TINY") == "1")
    ap.add_argument("--subjects", type=int, default=3)
    ap.add_argument("--out", default="nrf_vs_ridge.json")
    ap.add_argument("--cache", default=None, help="feature cache folder")
    ap.add_argument("--subject-ids", help="comma-separated 0-based subject indices (to split the work)")
    ap.add_argument("--sizes", default="20,200,800,all", help="training sizes (default: %(default)s)")
    ap.add_argument("--no-resolution", action="store_true", help="skip claim C")
    ap.add_argument("--sharp", action="store_true", help="claim C with finer truth and NRF Fourier std 64")
    ap.add_argument("--merge", nargs="+", help="merge the JSON-line logs of split runs into --out and stop")
    args = ap.parse_args(argv)
    if args.merge:
        return merge(args.merge, args.out)
    sizes = tuple(None if v == "all" else int(v) for v in args.sizes.split(",") if v != "none")
    ids = [int(v) for v in args.subject_ids.split(",")] if args.subject_ids else None
    res = run(tiny=args.tiny, subjects=args.subjects, cache_dir=args.cache, sizes=sizes, subject_ids=ids,
              resolution=not args.no_resolution, sharp=args.sharp, log=lambda s: print(s, flush=True))
    write_json(res, args.out)
    print(json.dumps(res["summary"], indent=1))
    print(f"wrote {args.out} in {res['seconds']:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
