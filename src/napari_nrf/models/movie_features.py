"""The movie model on pretrained frame features: frozen backbone per frame -> a response in
time (SPM's HRF over 10 TRs, a parameter the loop refines where that helps on validation)
-> voxels (kind ``movie-features``, the default of ``train-movie``).

Input per TR t (features built by :meth:`MovieFeatureEncoder.tr_features`, shape (D_in,)):
  the frozen backbone's pooled embedding (efficientnet-lite0: 1,280 values; "pixels": 8 x 8
  grey levels, 192, for tests) of ``frames_used`` evenly spaced frames of the TR's chunk,
  each resized to ``feature_size`` px (112 by default: a quarter of the 224-px cost, what
  keeps a 600-TR film's prediction near a minute of CPU), concatenated, plus the TR's motion
  energy (mean absolute frame difference over all its frames, 4 x 4 grid, x 10).
  Training sets read them from the project's feature cache (a
  :class:`~napari_nrf.features.FeatureCache`, one float16 row per frame, keyed by the
  frame's hash: computed once per film and frame).

Network (all linear but the optional decoder; the data sizes of a film set, a few hundred
TRs, favour a low-rank linear model, as the FIR ridge shows):
  1. standardise x_t with the training TRs' mean and sd (buffers ``in_mean``, ``in_std``);
  2. within the TR: z_t = W x_t + b (``latent`` values; W spans the frames of the TR, a
     temporal convolution whose kernel covers the whole chunk), input dropout 0.1 in
     training; initialised as the whitened top principal components of the training TRs;
  3. across TRs: u_k(t) = sum_{l=0}^{H-1} g_k[l] z_{t-l} for ``n_kernels`` kernels g_k
     (parameters) over ``history`` TRs, initialised by :func:`hrf_kernels` (SPM's HRF
     averaged per TR, peak at 4 TR for TR 1.3 s; further kernels delayed or advanced);
  4. readout: y_v(t) = gain_v (sum_k a_vk . u_k(t) + c_v), per-voxel weights a_vk and
     bias c_v (initialised by ridge, :meth:`MovieFeatureEncoder.init_closed_form`);
     ``gain`` (V,) fitted out of sample after training
     (:func:`napari_nrf.recipes.train_movie_features`: per voxel, the least-squares slope
     of the measured on the predicted responses, so the output is in the data's units).
Optional decoder (``w < 1``): the middle frame at 16 x 16 px from the predicted voxels
(Linear V -> 3 x 16 x 16 + sigmoid, upsampled to the frame size for display); the loss
adds (1 - w) (0.5 (1 - SSIM) + 0.5 MSE) on it, so it trains the encoder's output too.

Loss (``loss_dict``): w MSE over the sampled voxels (the data's units: no cosine term).

``delay`` is 0: row t of a training set pairs the chunk of TR t (and the ``history - 1``
TRs before it, read through ``context``) with the response of TR t; the haemodynamic delay
lives in the kernels. A prediction from chunks given in a batch (``{"frames": (B, F,
S, S, 3)}``) treats them as consecutive TRs of one film, with blank history before the
first; callers that stream a film pass ``context`` earlier chunks first
(:func:`napari_nrf.movie.evaluate.predict_chunks`).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from napari_nrf.errors import NapariNRFError

from .base import EncodingModel, register
from .movie import MovieEncoderDecoder, ssim

FEATURES = {"efficientnet-lite0": 1280, "pixels": 192}
DECODER_SIZE = 16


def hrf_kernels(tr: float, history: int, n: int, shift: int = 0) -> np.ndarray:
    """(n, history) initial kernels at lags 0..history-1 TR, unit peak: SPM's canonical
    HRF averaged over each TR's lags (peak at 4 TR for TR 1.3 s) delayed by ``shift``
    TR, then copies delayed by a further +1, -1, +2, -2, ... TR (the readout's
    initialisation chooses among them)."""
    from scipy.stats import gamma

    def h(t):  # SPM's canonical HRF (peak 5 s, undershoot 15 s, ratio 1/6), t in s
        t = np.maximum(t, 0.0)
        return gamma.pdf(t, 6.0) - gamma.pdf(t, 16.0) / 6.0

    out = np.zeros((n, history))
    for k in range(n):
        sh = shift + (k + 1) // 2 * (1 if k % 2 else -1)
        for lag in range(history):
            # chunk t - lag covers [t - lag, t - lag + 1) TR, the response is sampled at t + 1/2:
            # the mean of the HRF over lags (lag - 1/2, lag + 1/2) TR
            tt = (np.linspace(lag - sh - 0.5, lag - sh + 0.5, 17)) * tr
            out[k, lag] = h(tt).mean() if lag - sh + 0.5 > 0 else 0.0
        out[k] /= np.abs(out[k]).max() + 1e-12
    return out.astype(np.float32)


def motion_energy(chunks: np.ndarray) -> np.ndarray:
    """(T, 16) float32: mean absolute frame difference of chunks (T, F, S, S, 3) in a 4 x 4
    grid, x 10 (the FIR ridge's motion features)."""
    c = np.asarray(chunks, np.float32) / 255.0
    T, Fn, S = c.shape[0], c.shape[1], c.shape[2]
    if Fn < 2:
        return np.zeros((T, 16), np.float32)
    dif = np.abs(np.diff(c, axis=1)).mean(-1)
    g = S // 4
    return (10 * dif[:, :, : 4 * g, : 4 * g].reshape(T, Fn - 1, 4, g, 4, g).mean((1, 3, 5)).reshape(T, 16)).astype(
        np.float32)


@register
class MovieFeatureEncoder(EncodingModel):
    """See the module doc. Config: ``n_voxels``, ``subject``, ``frames_per_tr`` (F),
    ``frame_size`` (S), ``features`` ("efficientnet-lite0" or "pixels"), ``frames_used``,
    ``feature_size`` (px), ``history`` (TRs), ``latent``, ``n_kernels``, ``w`` (1: no
    decoder), ``tr`` (s)."""

    kind = "movie-features"
    concurrent_fits = False  # dropout draws from torch's global generator
    continuous = False
    inputs = "frames"
    splits_batches = False  # dropout: every rank computes the whole batch
    delay = 0
    own_calibration = True  # its per-voxel gain is fitted out of sample on whole films (fit_gain)

    def __init__(self, n_voxels: int, subject: str = "group", frames_per_tr: int = 8, frame_size: int = 112,
                 features: str = "efficientnet-lite0", frames_used: int = 2, feature_size: int = 112,
                 history: int = 10, latent: int = 32, n_kernels: int = 1, w: float = 1.0, tr: float = 1.3,
                 dropout: float = 0.1, hrf_shift: int = 0):
        super().__init__()
        if features not in FEATURES:
            raise NapariNRFError(f"features must be one of {sorted(FEATURES)}, got {features!r}")
        if not 0.0 <= float(w) <= 1.0:
            raise NapariNRFError(f"w must be in [0, 1], got {w}")
        if int(history) < 1 or int(latent) < 1 or int(n_kernels) < 1 or int(frames_used) < 1:
            raise NapariNRFError("history, latent, n_kernels and frames_used must be >= 1")
        self.n_voxels, self.subject_name = int(n_voxels), str(subject)
        self.frames_per_tr, self.frame_size = int(frames_per_tr), int(frame_size)
        self.features, self.frames_used, self.feature_size = str(features), int(frames_used), int(feature_size)
        self.history, self.latent, self.n_kernels = int(history), int(latent), int(n_kernels)
        self.w, self.tr, self.dropout_p = float(w), float(tr), float(dropout)
        self.context = self.history - 1
        d_in = self.frames_used * FEATURES[self.features] + 16
        self.d_in = d_in
        self.register_buffer("in_mean", torch.zeros(d_in))
        self.register_buffer("in_std", torch.ones(d_in))
        self.register_buffer("gain", torch.ones(self.n_voxels))
        self.within = nn.Linear(d_in, self.latent)
        self.hrf_shift = int(hrf_shift)
        self.kernels = nn.Parameter(torch.as_tensor(hrf_kernels(self.tr, self.history, self.n_kernels,
                                                                self.hrf_shift)))
        self.readout = nn.Linear(self.n_kernels * self.latent, self.n_voxels)
        nn.init.normal_(self.readout.weight, std=0.01)
        nn.init.zeros_(self.readout.bias)
        self.has_decoder = self.w < 1.0
        if self.has_decoder:
            self.dec = nn.Linear(self.n_voxels, 3 * DECODER_SIZE * DECODER_SIZE)

    # ---- the contract ------------------------------------------------------------------------
    def config(self) -> dict:
        return {"n_voxels": self.n_voxels, "subject": self.subject_name, "frames_per_tr": self.frames_per_tr,
                "frame_size": self.frame_size, "features": self.features, "frames_used": self.frames_used,
                "feature_size": self.feature_size, "history": self.history, "latent": self.latent,
                "n_kernels": self.n_kernels, "w": self.w, "tr": self.tr, "dropout": self.dropout_p,
                "hrf_shift": self.hrf_shift}

    @classmethod
    def example(cls, feature_shapes, subjects, backbone="efficientnet-lite0", seed=0, bases=None):
        """A tiny model (4 frames per TR of 16 x 16 px, pixel features, a decoder). One TR of
        history: the contract's tests hand the loop unrelated chunks as raw frames, which a
        model with history would read as one film (its predictions would depend on how the
        rows are batched; film sets give it windows, tests/test_movie_features.py)."""
        (name, xyz), = list(subjects.items())[:1]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = cls(len(xyz), subject=name, frames_per_tr=4, frame_size=16, features="pixels", history=1,
                        latent=8, n_kernels=2, w=0.75)
        model.subjects = {name: np.asarray(xyz, np.float32)}
        model.backbone_name = backbone
        return model

    feature_shapes = MovieEncoderDecoder.feature_shapes  # {"frames": (F, S, S, 3)}, as the conv preset

    def describe_subject(self, subject: str) -> str:
        return f"{subject} ({self.n_voxels} voxels)"

    # ---- frame features ----------------------------------------------------------------------
    def frame_index(self, n_frames: int) -> np.ndarray:
        """Which of a chunk's ``n_frames`` frames are embedded (evenly spaced, centred)."""
        k = min(self.frames_used, n_frames)
        return np.floor((np.arange(k) + 0.5) * n_frames / k).astype(int)

    def _embed(self, frames: np.ndarray, cache=None) -> np.ndarray:
        """(N, D) float32 embeddings of frames (N, S, S, 3) uint8 (float16-rounded, as the cache)."""
        if self.features == "pixels":
            S = frames.shape[1]
            g = S // 8
            return (frames[:, : 8 * g, : 8 * g].reshape(-1, 8, g, 8, g, 3).astype(np.float32).mean((2, 4))
                    .reshape(len(frames), -1) / 255.0)
        from napari_nrf.features.images import image_hash

        bb = self.backbone(device="cpu" if self.device.type == "cpu" else self.device)
        key = f"{bb.cache_key}-embedding-{self.feature_size}px"
        out = np.empty((len(frames), FEATURES[self.features]), np.float32)
        found = np.zeros(len(frames), bool)
        hashes = None
        if cache is not None:
            hashes = [image_hash(f) for f in frames]
            got, found = cache.get(key, hashes)
            if found.any():
                out[found] = got["embedding"]
        todo = np.flatnonzero(~found)
        for s in range(0, len(todo), 32):
            idx = todo[s:s + 32]
            x = torch.as_tensor(np.ascontiguousarray(frames[idx])).permute(0, 3, 1, 2).float()
            if x.shape[-1] != self.feature_size:
                x = F.interpolate(x, size=(self.feature_size, self.feature_size), mode="bilinear",
                                  align_corners=False, antialias=x.shape[-1] > self.feature_size)
            x = ((x - 127.0) / 128.0).to(bb.net.conv_stem.weight.device)
            with torch.inference_mode():
                n = bb.net
                h = n.bn1(n.conv_stem(x))
                for block in n.blocks:
                    h = block(h)
                e = n.global_pool(n.bn2(n.conv_head(h))).flatten(1).float().cpu().numpy()
            out[idx] = e.astype(np.float16)
        if cache is not None and len(todo):
            cache.put(key, [hashes[i] for i in todo], {"embedding": out[todo].astype(np.float16)})
        return out

    def tr_features(self, chunks, cache=None, batch: int = 32, progress=None) -> np.ndarray:
        """(T, D_in) float32 features of chunks (T, F, S, S, 3) grey levels (array, h5py
        dataset or lazy view), read ``batch`` TRs at a time (see the module doc)."""
        n = len(chunks)
        out = np.empty((n, self.d_in), np.float32)
        for s in range(0, n, batch):
            c = np.asarray(chunks[s:s + batch])
            if c.dtype != np.uint8:
                c = np.clip(np.rint(c), 0, 255).astype(np.uint8)
            B, Fn = c.shape[0], c.shape[1]
            idx = self.frame_index(Fn)
            e = self._embed(c[:, idx].reshape((-1,) + c.shape[2:]), cache).reshape(B, -1)
            if len(idx) < self.frames_used:  # fewer frames than asked: repeat the last
                e = np.concatenate([e] + [e[:, -FEATURES[self.features]:]] * (self.frames_used - len(idx)), 1)
            out[s:s + B] = np.concatenate([e, motion_energy(c)], 1)
            if progress is not None:
                progress(min(s + batch, n), n)
        return out

    def windows(self, x: np.ndarray, film: np.ndarray | None = None, t: np.ndarray | None = None) -> np.ndarray:
        """(N, history, D_in) float16 windows: row i holds the features of TRs t_i, t_i - 1,
        ..., t_i - history + 1 of its film (zeros before the film's start). ``x`` is a list
        of per-film (T_f, D_in) arrays with ``film``/``t`` per row, or one (T, D_in) array
        of consecutive TRs (then every TR is a row)."""
        if film is None:
            x, film, t = [x], np.zeros(len(x), np.int64), np.arange(len(x))
        out = np.zeros((len(t), self.history, self.d_in), np.float16)
        for lag in range(self.history):
            tt = np.asarray(t) - lag
            ok = tt >= 0
            for f in np.unique(film[ok]):
                sel = ok & (film == f)
                out[sel, lag] = x[f][tt[sel]]
        return out

    def features_of_set(self, rs, cache=None, progress=None) -> dict:
        """Windows of TR features for the set's rows (a movie data set's training_set(0)):
        {"window": (N, history, D_in) float16, "middle": (N, 16, 16, 3) uint8 with a decoder}."""
        view = rs.images
        want = (self.frames_per_tr, self.frame_size, self.frame_size, 3)
        if view is None or tuple(view.shape[1:]) != want:
            got = None if view is None else tuple(view.shape[1:])
            raise self.unsupported(f"response sets of still images (their images are {got})",
                                   f"it trains on film chunks {want} per TR: a movie data set's training_set(0)")
        if not getattr(view, "lazy_rows", False) or not hasattr(view, "sources"):
            return self._own_features(np.asarray(view))
        from napari_nrf.movie.dataset import ChunkView

        per_film, mids = {}, {}
        for f in np.unique(view.film):
            src = view.sources[f]
            full = ChunkView(view.sources, np.full(len(src), f), np.arange(len(src)), still=view.still)
            per_film[int(f)] = self.tr_features(full, cache=cache)
            if self.has_decoder:
                mids[int(f)] = _small_middle(ChunkView(view.sources, np.full(len(src), f), np.arange(len(src)),
                                                       frame=self.frames_per_tr // 2))
        out = {"window": self.windows(per_film, view.film, view.t)}
        if self.has_decoder:
            out["middle"] = np.stack([mids[int(f)][int(t)] for f, t in zip(view.film, view.t)]) if len(view.t) \
                else np.zeros((0, DECODER_SIZE, DECODER_SIZE, 3), np.uint8)
        if progress is not None:
            progress(len(view), len(view))
        return out

    # A FeatureCache that predictions from frames read and fill (set by a caller that
    # evaluates films whose frames are cached: evaluate-movie, the benchmarks).
    frame_cache = None

    def _own_features(self, chunks: np.ndarray, cache=None) -> dict:
        """Features of consecutive chunks (T, F, S, S, 3) of one film (blank history first)."""
        out = {"window": self.windows(self.tr_features(chunks, cache=cache or self.frame_cache))}
        if self.has_decoder:
            c = np.asarray(chunks)
            out["middle"] = _small_middle(c[:, c.shape[1] // 2])
        return out

    # Chunks (B, F, S, S, 3) pass through (consecutive TRs of one film); still images become
    # still chunks, each its own film (no history): the conv preset's conversion.
    encode_images = MovieEncoderDecoder.encode_images

    # ---- the network -------------------------------------------------------------------------
    def _window_tensor(self, features) -> torch.Tensor:
        if "window" in features:
            return torch.as_tensor(features["window"]).to(self.device, torch.float32)
        fr = features["frames"]
        fr = fr.detach().cpu().numpy() if torch.is_tensor(fr) else np.asarray(fr)
        return torch.as_tensor(self._own_features(fr)["window"]).to(self.device, torch.float32)

    def encode(self, features) -> torch.Tensor:
        """Predicted responses (B, V) from {"window": (B, history, D_in)} or
        {"frames": (B, F, S, S, 3)} (consecutive TRs)."""
        x = self._window_tensor(features)
        x = (x - self.in_mean) / self.in_std
        x = F.dropout(x, self.dropout_p, self.training)
        z = self.within(x)  # (B, H, latent)
        u = torch.einsum("bhl,kh->bkl", z, self.kernels).flatten(1)  # (B, n_kernels latent)
        return self.readout(u) * self.gain

    def predict(self, features, coords=None, voxels=None, subject=None):
        if coords is not None:
            raise self.unsupported("predictions at MNI points", "it predicts at its subject's voxels")
        if subject is not None and subject not in self.subjects and subject != self.subject_name:
            raise self.unsupported(f"subject {subject!r}", f"it was trained on {self.subject_name!r}")
        out = self.encode(features)
        if voxels is not None:
            idx = torch.as_tensor(np.asarray(voxels.cpu() if torch.is_tensor(voxels) else voxels),
                                  dtype=torch.long, device=out.device)
            out = out[:, idx]
        return out

    def decode(self, voxels: torch.Tensor) -> torch.Tensor:
        """Reconstructed middle frames (B, 3, S, S) in [0, 1] from responses (B, V)."""
        if not self.has_decoder:
            raise self.unsupported("frame reconstruction (this is the encoder alone, w = 1)",
                                   "train with w < 1 for an encoder-decoder")
        return F.interpolate(self._decode_small(voxels), size=(self.frame_size, self.frame_size), mode="bilinear",
                             align_corners=False)

    def _decode_small(self, voxels):
        return torch.sigmoid(self.dec(voxels)).view(len(voxels), 3, DECODER_SIZE, DECODER_SIZE)

    @property
    def loss_terms(self) -> tuple:
        return ("encoding", "frame") if self.has_decoder else ("encoding",)

    def loss_dict(self, features, true, subject, voxels, coords, alpha=None) -> dict:
        """``{"encoding": w MSE, "frame": (1 - w) (0.5 (1 - SSIM) + 0.5 MSE)}`` (frame only
        with a decoder, from every predicted voxel); ``alpha`` is unused."""
        pred = self.encode(features)
        idx = voxels if voxels is not None else slice(None)
        e = torch.mean((pred[:, idx] - true) ** 2)
        if not self.has_decoder:
            return {"encoding": e}
        if "middle" in features:
            tgt = torch.as_tensor(features["middle"]).to(self.device, torch.float32)
        else:
            fr = features["frames"]
            fr = fr.detach().cpu().numpy() if torch.is_tensor(fr) else np.asarray(fr)
            tgt = torch.as_tensor(_small_middle(fr[:, fr.shape[1] // 2]), dtype=torch.float32, device=self.device)
        tgt = tgt.permute(0, 3, 1, 2) / 255.0
        rec = self._decode_small(pred)
        d = 0.5 * (1 - ssim(rec, tgt)) + 0.5 * torch.mean((rec - tgt) ** 2)
        return {"encoding": self.w * e, "frame": (1 - self.w) * d}

    # ---- initialisation and calibration -------------------------------------------------------
    def set_input_scaling(self, windows: np.ndarray) -> None:
        """``in_mean``/``in_std`` from training windows (N, history, D_in) (lag 0 rows)."""
        x = np.asarray(windows[:, 0], np.float32)
        self.in_mean.copy_(torch.as_tensor(x.mean(0)))
        self.in_std.copy_(torch.as_tensor(x.std(0) + 1e-3))

    @torch.no_grad()
    def init_closed_form(self, windows: np.ndarray, responses: np.ndarray, train: np.ndarray, val: np.ndarray,
                         film: np.ndarray | None = None, alphas=tuple(np.logspace(0, 6, 13)),
                         per_voxel_kernels: bool = False) -> dict:
        """The starting point of training, in closed form (the loop then refines every part):
        ``within`` = the top ``latent`` principal components of the standardised training
        TR features, whitened; the kernels as initialised (SPM's HRF first); the readout =
        ridge regression of the responses (N, V) on one kernel's outputs per voxel, fitted
        on rows ``train`` + ``val``: the kernel (the delay: one for all voxels, or each
        voxel's own with ``per_voxel_kernels``) chosen by the squared error on rows ``val``
        of a fit on ``train`` (with one kernel, nothing to choose), each voxel's penalty
        among ``alphas`` by efficient leave-one-out on ``train``; the readout is the fit on
        ``train`` (:meth:`refit_readout` refits it on more rows).
        Returns {"alpha": (V,) chosen penalties, "kernel": (V,) chosen kernels,
        "oos_pred", "oos_rows": out-of-sample predictions (n, V) and their rows: the
        validation rows from the train-only fit and, with ``film`` (N,) ids of two or more
        training films, every train + val row of each film from a fit on the others (what a
        new film will see), for the output gain}."""
        x = (np.asarray(windows[train, 0], np.float64) - self.in_mean.double().numpy()) / self.in_std.double().numpy()
        _, sv, vt = np.linalg.svd(x - x.mean(0), full_matrices=False)
        q = min(self.latent, len(sv))
        w = np.zeros((self.latent, self.d_in))
        w[:q] = vt[:q] / (sv[:q, None] / np.sqrt(max(1, len(x) - 1)) + 1e-6)
        self.within.weight.copy_(torch.as_tensor(w, dtype=torch.float32))
        self.within.bias.zero_()
        was = self.training
        self.eval()
        u = np.concatenate([self._kernel_outputs(windows[s:s + 256]) for s in range(0, len(windows), 256)])
        self.train(was)
        y = np.asarray(responses, np.float64)
        alphas = np.asarray(alphas, np.float64)

        L, V = self.latent, y.shape[1]

        def solve(rows, kern, alpha):
            # ridge weights (K L, V) and intercepts (V,) on ``rows``: voxel v reads kernel
            # kern[v]'s outputs only, with penalty alpha[v]
            yb = y[rows].mean(0)
            coef = np.zeros((u.shape[1], V))
            icpt = yb.copy()
            for k in np.unique(kern):
                cols = slice(k * L, (k + 1) * L)
                ub = u[rows, cols].mean(0)
                uu, ss, vv = np.linalg.svd(u[rows, cols] - ub, full_matrices=False)
                for a in np.unique(alpha[kern == k]):
                    m = (kern == k) & (alpha == a)
                    coef[cols, m] = vv.T @ ((ss / (ss ** 2 + a))[:, None] * (uu.T @ (y[rows][:, m] - yb[m])))
                    icpt[m] = yb[m] - ub @ coef[cols, m]
            return coef, icpt

        err = np.empty((self.n_kernels, len(alphas), V))
        for k in range(self.n_kernels):
            for i, a in enumerate(alphas):
                c, b = solve(train, np.full(V, k), np.full(V, a))
                err[k, i] = ((u[val] @ c + b - y[val]) ** 2).mean(0)
        if per_voxel_kernels:
            flat = err.reshape(-1, V).argmin(0)
            kern = flat // len(alphas)
        else:  # one kernel for all voxels (the least summed error): fewer choices to overfit
            kern = np.full(V, int(err.min(1).sum(1).argmin()))
        # each voxel's penalty by efficient leave-one-out on train + val (sklearn's RidgeCV):
        # the 16-32 TRs of a validation block choose it too noisily
        from sklearn.linear_model import RidgeCV

        best = np.empty(V)
        both = np.concatenate([train, val])
        for k in np.unique(kern):
            m = kern == k
            cv = RidgeCV(alphas=alphas, alpha_per_target=True).fit(u[train, k * L:(k + 1) * L], y[train][:, m])
            best[m] = np.broadcast_to(cv.alpha_, (int(m.sum()),))
        c, b = solve(train, kern, best)
        preds, rows = [u[val] @ c + b], [np.asarray(val)]
        if film is not None:
            films = np.unique(np.asarray(film)[both])
            for f in films if len(films) >= 2 else ():
                mine = both[np.asarray(film)[both] == f]
                c, b = solve(both[np.asarray(film)[both] != f], kern, best)
                preds.append(u[mine] @ c + b)
                rows.append(mine)
        c, b = solve(train, kern, best)
        self.readout.weight.copy_(torch.as_tensor(c.T, dtype=torch.float32))
        self.readout.bias.copy_(torch.as_tensor(b, dtype=torch.float32))
        self._solve = solve  # refit_readout: the same solution on more rows
        return {"alpha": best, "kernel": kern, "oos_pred": np.concatenate(preds).astype(np.float32),
                "oos_rows": np.concatenate(rows)}

    @torch.no_grad()
    def refit_readout(self, rows: np.ndarray, init: dict) -> None:
        """The closed-form readout of :meth:`init_closed_form` refitted on ``rows`` (train +
        val, once the validation block has done its work) with the chosen kernels and penalties."""
        c, b = self._solve(np.asarray(rows), init["kernel"], init["alpha"])
        self.readout.weight.copy_(torch.as_tensor(c.T, dtype=torch.float32))
        self.readout.bias.copy_(torch.as_tensor(b, dtype=torch.float32))

    def _kernel_outputs(self, windows) -> np.ndarray:
        x = (torch.as_tensor(np.asarray(windows)).to(self.device, torch.float32) - self.in_mean) / self.in_std
        z = self.within(x)
        return torch.einsum("bhl,kh->bkl", z, self.kernels).flatten(1).double().cpu().numpy()

    def fit_gain(self, pred: np.ndarray, true: np.ndarray, per_voxel: bool = True, lo: float = 0.05,
                 hi: float = 1.0) -> float:
        """Scale the output by the least-squares slope of ``true`` on ``pred`` (both (N, V),
        out-of-sample TRs): per voxel or one pooled slope, clipped to [lo, hi] (a voxel whose
        out-of-sample predictions anti-correlate is turned down to ``lo``, never to 0 or
        below: its r keeps its sign and stays defined). Returns the mean gain."""
        p, y = np.asarray(pred, np.float64), np.asarray(true, np.float64)
        p, y = p - p.mean(0), y - y.mean(0)
        if per_voxel:
            den = (p * p).sum(0)
            s = np.where(den > 0, (p * y).sum(0) / np.maximum(den, 1e-12), lo).clip(lo, hi)
        else:
            den = float((p * p).sum())
            s = np.full(p.shape[1], float(np.clip((p * y).sum() / den, lo, hi)) if den > 0 else 1.0)
        self.gain.mul_(torch.as_tensor(s, dtype=self.gain.dtype))
        return float(self.gain.mean())


def _small_middle(frames) -> np.ndarray:
    """(N, 16, 16, 3) uint8 of frames (N, S, S, 3) (area-averaged)."""
    x = torch.as_tensor(np.asarray(frames)).permute(0, 3, 1, 2).float()
    if len(x) == 0:
        return np.zeros((0, DECODER_SIZE, DECODER_SIZE, 3), np.uint8)
    y = F.interpolate(x, size=(DECODER_SIZE, DECODER_SIZE), mode="area")
    return y.permute(0, 2, 3, 1).round().clamp(0, 255).to(torch.uint8).numpy()
