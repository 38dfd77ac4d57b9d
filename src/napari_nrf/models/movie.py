"""The movie encoder-decoder (arXiv 2507.12009): film chunks -> voxels -> frame.

Trained end to end from pixels (no frozen backbone). Input: a chunk of ``F`` frames of one
TR, ``S`` x ``S`` RGB, as the feature ``frames`` (B, F, S, S, 3) in grey levels 0..255
(uint8 or float; min-max scaled per frame when made, :mod:`napari_nrf.movie.video`).

Encoder (the paper's, sizes scaled by :data:`SIZES`; layout (B, C, T, H, W)):
  Conv3d 3 -> c1, kernel 1 x 3 x 3 + MaxPool 1 x 2 x 2;
  Conv3d c1 -> c2, kernel 5 x 1 x 1 (the temporal convolution) + MaxPool 1 x 2 x 2 + AvgPool 2 x 1 x 1
  -> (c2, F/2, S/4, S/4), no activation on either (as the paper);
  one Conv2d c2 -> c3 3 x 3 + ReLU + BatchNorm per time slice, concatenated -> (F/2 c3, S/4, S/4);
  Conv2d -> c4, stride 2 + ReLU + BatchNorm -> (c4, S/8, S/8); Dropout 0.5; Linear -> V voxels.
  ``paper``: c = 32, 256, 128, 64 at F 32, S 112 (12,544 inputs to the readout).
Decoder: Linear V -> d x S/8 x S/8 + ReLU; 3 x [ConvTranspose2d d -> d, kernel 5 + ReLU +
  upsample x 2 + BatchNorm]; ConvTranspose2d d -> 3 + sigmoid -> (3, S, S): the chunk's middle frame.

Loss (the contract's ``loss_dict``): ``w E + (1 - w) D`` with E = MSE + 0.5 (1 - cos) on the
voxels (cosine across voxels per TR, its prediction norm floored as the loop's loss) and
D = 0.35 perceptual + 0.35 (1 - SSIM) + 0.30 TV on the reconstruction. The perceptual term
is 1 - cosine of five stages of the offline backbone (efficientnet-lite0 blocks 1-4 and 6),
standing in for the paper's five VGG16 blocks, whose weights are not available offline;
``perceptual="none"`` drops it (tiny models in tests: D = 0.35 (1 - SSIM) + 0.30 TV).
``w = 1`` is the encoder alone (no decoder is built).

``delay`` (TR, 4 by default: 5.2 s at TR 1.3 s) is part of the model: ``predict`` of the
chunk of TR t is the response of TR t + delay. Voxel kind (not continuous): it predicts at
its one subject's voxels (a group average counts as one subject, "group").
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from napari_nrf.errors import NapariNRFError

from .base import EncodingModel, register

SIZES = {
    "tiny": {"c1": 4, "c2": 8, "c3": 4, "c4": 8, "d": 8},
    "demo": {"c1": 4, "c2": 16, "c3": 16, "c4": 32, "d": 24},
    "paper": {"c1": 32, "c2": 256, "c3": 128, "c4": 64, "d": 48},
}
PERCEPTUAL_BLOCKS = (1, 2, 3, 4, 6)


def ssim(x: torch.Tensor, y: torch.Tensor, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Mean structural similarity of images (B, C, H, W) in [0, 1] (data range 1;
    Gaussian window 11 px, sigma 1.5, as Wang et al. 2004). Differentiable."""
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    w = min(window, x.shape[-1], x.shape[-2])
    g = torch.arange(w, dtype=x.dtype, device=x.device) - (w - 1) / 2
    g = torch.exp(-g * g / (2 * sigma * sigma))
    g = g / g.sum()
    k = (g[:, None] * g[None, :]).expand(x.shape[1], 1, w, w).contiguous()

    def blur(a):
        return F.conv2d(a, k, groups=x.shape[1])

    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx * mx, blur(y * y) - my * my, blur(x * y) - mx * my
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return s.mean()


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference of neighbouring pixels of (B, C, H, W)."""
    return (x[..., 1:, :] - x[..., :-1, :]).abs().mean() + (x[..., :, 1:] - x[..., :, :-1]).abs().mean()


def voxel_loss(pred: torch.Tensor, true: torch.Tensor) -> torch.Tensor:
    """E = MSE + 0.5 (1 - cos), the cosine across voxels per TR (prediction norm floored
    at 0.1 x the responses' norm, so near-zero starts do not blow it up)."""
    mse = torch.mean((pred - true) ** 2)
    tn = torch.linalg.vector_norm(true, dim=1)
    pn = torch.maximum(torch.linalg.vector_norm(pred, dim=1), 0.1 * tn)
    cos = ((pred * true).sum(1) / (pn * tn).clamp_min(1e-8)).mean()
    return mse + 0.5 * (1 - cos)


def chunks_tensor(frames, device=None) -> torch.Tensor:
    """Frames (B, F, S, S, 3) grey levels (uint8/float array or tensor) -> (B, 3, F, S, S)
    float32 in [0, 1]."""
    x = torch.as_tensor(np.asarray(frames) if not torch.is_tensor(frames) else frames)
    x = x.to(device=device, dtype=torch.float32) / 255.0
    return x.permute(0, 4, 1, 2, 3)


def _max_pool_2x2(x: torch.Tensor) -> torch.Tensor:
    """MaxPool 2 x 2 (stride 2) of (N, C, H, W), H and W even, as the maximum of the four
    strided views: the same values as ``F.max_pool2d(x, 2)``, several times faster on a
    CPU for the few channels of this network; keeps channels-last memory."""
    return torch.maximum(torch.maximum(x[..., ::2, ::2], x[..., 1::2, ::2]),
                         torch.maximum(x[..., ::2, 1::2], x[..., 1::2, 1::2]))


@register
class MovieEncoderDecoder(EncodingModel):
    """The movie encoder-decoder; see the module doc. Config: ``n_voxels`` (V), ``subject``,
    ``frames_per_tr`` (F, even), ``frame_size`` (S, a multiple of 8), ``size`` (a name of
    :data:`SIZES`) or the channel counts, ``delay`` (TR), ``w`` (loss weight of the
    encoder, 1 = encoder alone), ``perceptual`` ("efficientnet-lite0" or "none"), ``tr`` (s)."""

    kind = "movie"
    concurrent_fits = False  # dropout / random draws from torch's global generator
    continuous = False
    inputs = "frames"  # what features the model reads: chunks of frames per TR, not backbone features
    # BatchNorm (training mode) and dropout see the whole batch: data-parallel ranks each
    # compute the whole batch rather than a share, so two ranks train as one process.
    splits_batches = False

    def __init__(self, n_voxels: int, subject: str = "group", frames_per_tr: int = 32, frame_size: int = 112,
                 size: str = "demo", delay: int = 4, w: float = 0.5, perceptual: str = "efficientnet-lite0",
                 tr: float = 1.3, channels: dict | None = None):
        super().__init__()
        if int(frames_per_tr) < 2 or int(frames_per_tr) % 2:
            raise NapariNRFError(f"frames_per_tr must be even and >= 2, got {frames_per_tr}")
        if int(frame_size) < 16 or int(frame_size) % 8:
            raise NapariNRFError(f"frame_size must be a multiple of 8 >= 16, got {frame_size}")
        if not 0.0 <= float(w) <= 1.0:
            raise NapariNRFError(f"w must be in [0, 1], got {w}")
        if size not in SIZES and channels is None:
            raise NapariNRFError(f"size must be one of {sorted(SIZES)}, got {size!r}")
        if perceptual not in ("efficientnet-lite0", "none"):
            raise NapariNRFError(f"perceptual must be 'efficientnet-lite0' or 'none', got {perceptual!r}")
        ch = dict(SIZES.get(size, {}), **(channels or {}))
        self.n_voxels, self.subject_name = int(n_voxels), str(subject)
        self.frames_per_tr, self.frame_size, self.size_name = int(frames_per_tr), int(frame_size), str(size)
        self.delay, self.w, self.perceptual, self.tr = int(delay), float(w), str(perceptual), float(tr)
        self.channels = {k: int(ch[k]) for k in ("c1", "c2", "c3", "c4", "d")}
        c1, c2, c3, c4, d = (self.channels[k] for k in ("c1", "c2", "c3", "c4", "d"))
        S, T = self.frame_size, self.frames_per_tr // 2
        self.conv1 = nn.Conv3d(3, c1, (1, 3, 3), padding=(0, 1, 1))
        self.conv2 = nn.Conv3d(c1, c2, (5, 1, 1), padding=(2, 0, 0))
        self.slices = nn.ModuleList(nn.Sequential(nn.Conv2d(c2, c3, 3, padding=1), nn.ReLU(), nn.BatchNorm2d(c3))
                                    for _ in range(T))
        self.mix = nn.Sequential(nn.Conv2d(T * c3, c4, 3, stride=2, padding=1), nn.ReLU(), nn.BatchNorm2d(c4))
        self.dropout = nn.Dropout(0.5)
        self.readout = nn.Linear(c4 * (S // 8) ** 2, self.n_voxels)
        self.has_decoder = self.w < 1.0
        if self.has_decoder:
            self.dec_in = nn.Linear(self.n_voxels, d * (S // 8) ** 2)
            self.dec_up = nn.ModuleList(
                nn.ModuleDict({"conv": nn.ConvTranspose2d(d, d, 5, padding=2), "bn": nn.BatchNorm2d(d)})
                for _ in range(3))
            self.dec_out = nn.ConvTranspose2d(d, 3, 3, padding=1)

    # ---- the contract ------------------------------------------------------------------------
    def config(self) -> dict:
        return {"n_voxels": self.n_voxels, "subject": self.subject_name, "frames_per_tr": self.frames_per_tr,
                "frame_size": self.frame_size, "size": self.size_name, "delay": self.delay, "w": self.w,
                "perceptual": self.perceptual, "tr": self.tr, "channels": dict(self.channels)}

    @classmethod
    def example(cls, feature_shapes, subjects, backbone="efficientnet-lite0", seed=0, bases=None):
        """A tiny model (4 frames per TR of 16 x 16 px, no perceptual term) for one subject."""
        (name, xyz), = list(subjects.items())[:1]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = cls(len(xyz), subject=name, frames_per_tr=4, frame_size=16, size="tiny", delay=1,
                        perceptual="none")
        model.subjects = {name: np.asarray(xyz, np.float32)}
        model.backbone_name = backbone
        return model

    @property
    def feature_shapes(self) -> dict:
        return {"frames": (self.frames_per_tr, self.frame_size, self.frame_size, 3)}

    def features_of_set(self, rs, cache=None, progress=None) -> dict:
        """The set's chunks themselves (lazy: read a batch at a time by the loop)."""
        want = (self.frames_per_tr, self.frame_size, self.frame_size, 3)
        if rs.images is None or tuple(rs.images.shape[1:]) != want:
            got = None if rs.images is None else tuple(rs.images.shape[1:])
            raise self.unsupported(f"response sets of still images (their images are {got})",
                                   f"it trains on film chunks {want} per TR: a movie data set's training_set()")
        return {"frames": rs.images}

    def encode_images(self, images, batch_size: int = 16, cache=None, progress=None) -> dict:
        """Chunks (B, F, S, S, 3) uint8 pass through; still images (paths or (H, W, 3)
        arrays) become still chunks: each resized to S x S, min-max scaled and repeated F
        times (a shot without motion)."""
        from napari_nrf.features.images import as_image_list
        from napari_nrf.movie.video import _resize, minmax_uint8

        if getattr(images, "ndim", 0) == 5:
            out = np.asarray(images)
        else:
            items = as_image_list(images)
            S, Fn = self.frame_size, self.frames_per_tr
            out = np.empty((len(items), Fn, S, S, 3), np.uint8)
            for i, im in enumerate(items):
                out[i] = minmax_uint8(_resize(im, S))[None]
        if progress is not None:
            progress(len(out), len(out))
        return {"frames": torch.as_tensor(np.ascontiguousarray(out)).to(self.device)}

    def encode(self, frames) -> torch.Tensor:
        """Predicted responses (B, V) of chunks ``frames`` (B, F, S, S, 3) grey levels.

        The same network as :meth:`encode_reference` (equal to float rounding), laid out
        for the CPU: frames stay channels-last as decoded ((B F, S, S, 3) is already NHWC),
        the 1 x 3 x 3 Conv3d runs as a Conv2d over the B F frames, the 5 x 1 x 1 temporal
        Conv3d as a 5 x 1 Conv2d over (time, pixels) on the same memory, the 1 x 2 x 2
        max pools as the maximum of four strided views (PyTorch's pooling kernels are slow
        at 4-16 channels), and the per-slice Conv2ds as one grouped Conv2d."""
        cl = torch.channels_last
        fr = torch.as_tensor(np.asarray(frames) if not torch.is_tensor(frames) else frames).to(self.device)
        B, Fn, S = fr.shape[0], fr.shape[1], fr.shape[2]
        T = Fn // 2
        c1, c2 = self.conv1.out_channels, self.conv2.out_channels
        x = fr.reshape(B * Fn, S, S, 3).permute(0, 3, 1, 2).to(torch.float32) / 255.0  # (BF, 3, S, S) NHWC
        x = F.conv2d(x, self.conv1.weight[:, :, 0], self.conv1.bias, padding=1)
        x = _max_pool_2x2(x.contiguous(memory_format=cl))  # (BF, c1, S/2, S/2), NHWC memory
        s2 = S // 2
        # NHWC memory (B, F, s2 s2, c1) is the channels-last tensor (B, c1, F, s2 s2)
        x = x.permute(0, 2, 3, 1).reshape(B, Fn, s2 * s2, c1).permute(0, 3, 1, 2)
        x = F.conv2d(x, self.conv2.weight[..., 0].contiguous(memory_format=cl), self.conv2.bias, padding=(2, 0))
        x = x.contiguous(memory_format=cl).permute(0, 2, 3, 1).reshape(B * Fn, s2, s2, c2).permute(0, 3, 1, 2)
        x = _max_pool_2x2(x)  # (BF, c2, S/4, S/4), NHWC memory
        s4 = s2 // 2
        x = x.permute(0, 2, 3, 1).reshape(B, T, 2, s4, s4, c2)
        x = (x[:, :, 0] + x[:, :, 1]) * 0.5  # AvgPool 2 x 1 x 1 -> (B, T, s4, s4, c2)
        x = x.permute(0, 2, 3, 1, 4).reshape(B, s4, s4, T * c2).permute(0, 3, 1, 2)  # (B, T c2, s4, s4) NHWC
        w = torch.cat([m[0].weight for m in self.slices])
        b = torch.cat([m[0].bias for m in self.slices])
        x = F.relu(F.conv2d(x, w, b, padding=1, groups=T))  # (B, T c3, s4, s4): slice i's channels i c3...
        bns = [m[2] for m in self.slices]
        if self.training:  # each slice's BatchNorm updates its own running statistics
            x = torch.cat([bn(h) for bn, h in zip(bns, x.chunk(T, 1))], 1)
        else:
            x = F.batch_norm(x, torch.cat([bn.running_mean for bn in bns]), torch.cat([bn.running_var for bn in bns]),
                             torch.cat([bn.weight for bn in bns]), torch.cat([bn.bias for bn in bns]), False, 0.0,
                             bns[0].eps)
        x = self.mix(x).contiguous().flatten(1)
        return self.readout(self.dropout(x))

    def encode_reference(self, frames) -> torch.Tensor:
        """:meth:`encode` written as the paper's layers (Conv3d, MaxPool3d, AvgPool3d, one
        Conv2d per slice), the reference the fast path is tested against."""
        x = chunks_tensor(frames, self.device)
        x = F.max_pool3d(self.conv1(x), (1, 2, 2))
        x = F.avg_pool3d(F.max_pool3d(self.conv2(x), (1, 2, 2)), (2, 1, 1))  # (B, c2, F/2, S/4, S/4)
        x = torch.cat([conv(x[:, :, i]) for i, conv in enumerate(self.slices)], 1)
        x = self.mix(x).flatten(1)
        return self.readout(self.dropout(x))

    def decode(self, voxels: torch.Tensor) -> torch.Tensor:
        """Reconstructed middle frames (B, 3, S, S) in [0, 1] from responses (B, V)."""
        if not self.has_decoder:
            raise self.unsupported("frame reconstruction (this is the encoder alone, w = 1)",
                                   "train with w < 1 for an encoder-decoder")
        s8 = self.frame_size // 8
        x = F.relu(self.dec_in(voxels)).view(len(voxels), -1, s8, s8)
        for blk in self.dec_up:
            x = blk["bn"](F.interpolate(F.relu(blk["conv"](x)), scale_factor=2, mode="nearest"))
        return torch.sigmoid(self.dec_out(x))

    def predict(self, features, coords=None, voxels=None, subject=None):
        if coords is not None:
            raise self.unsupported("predictions at MNI points", "it predicts at its subject's voxels")
        if subject is not None and subject not in self.subjects and subject != self.subject_name:
            raise self.unsupported(f"subject {subject!r}", f"it was trained on {self.subject_name!r}")
        out = self.encode(features["frames"])
        if voxels is not None:
            idx = torch.as_tensor(np.asarray(voxels.cpu() if torch.is_tensor(voxels) else voxels),
                                  dtype=torch.long, device=out.device)
            out = out[:, idx]
        return out

    # ---- training: the model's own loss --------------------------------------------------------
    def _perceptual_net(self):
        bb = self.backbone(device=self.device)
        bb.eval()
        for p in bb.parameters():
            p.requires_grad_(False)
        return bb.net

    def perceptual_loss(self, rec: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Sum over the backbone's five stages of (1 - cosine) between the stage activations
        of reconstruction and target (each flattened per image)."""
        net = self._perceptual_net()

        def stages(x):
            h = net.bn1(net.conv_stem((x * 255.0 - 127.0) / 128.0))
            out = []
            for i, block in enumerate(net.blocks):
                h = block(h)
                if i in PERCEPTUAL_BLOCKS:
                    out.append(h.flatten(1))
            return out

        with torch.no_grad():
            tgt = stages(target)
        return sum((1 - F.cosine_similarity(a, b, dim=1)).mean() for a, b in zip(stages(rec), tgt))

    def frame_loss(self, rec: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """D = 0.35 perceptual + 0.35 (1 - SSIM) + 0.30 TV (perceptual dropped with "none")."""
        d = 0.35 * (1 - ssim(rec, target)) + 0.30 * total_variation(rec)
        if self.perceptual != "none":
            d = d + 0.35 * self.perceptual_loss(rec, target)
        return d

    def middle_frames(self, frames) -> torch.Tensor:
        """The chunks' middle frames (B, 3, S, S) in [0, 1] (the decoder's target)."""
        return chunks_tensor(frames, self.device)[:, :, self.frames_per_tr // 2]

    @property
    def loss_terms(self) -> tuple:
        return ("encoding", "frame") if self.has_decoder else ("encoding",)

    def loss_dict(self, features, true, subject, voxels, coords, alpha=None) -> dict:
        """``{"encoding": w E, "frame": (1 - w) D}`` for a batch (``"frame"`` only with a
        decoder): E on the sampled ``voxels``, D from every predicted voxel (the decoder
        reads the encoder's output, so D trains the encoder too). ``alpha`` is unused."""
        frames = features["frames"]
        pred = self.encode(frames)
        idx = voxels if voxels is not None else slice(None)
        e = voxel_loss(pred[:, idx], true)
        if not self.has_decoder:
            return {"encoding": e}
        rec = self.decode(pred)
        return {"encoding": self.w * e, "frame": (1 - self.w) * self.frame_loss(rec, self.middle_frames(frames))}
