"""Speed and memory of the movie side (issue 17 targets).

1. Prediction: a demo-size movie encoder-decoder (4,609 voxels, 32 frames per TR of
   112 x 112) predicting a 600-TR film (TR 1.3 s: 13 minutes, 19,200 frames) read from a
   224 x 224 MPEG-4 file, through ``napari-nrf query-movie``'s path
   (:func:`napari_nrf.movie.evaluate.predict_film`: decoded and predicted 16 TRs at a
   time). Target: at most 60 s; memory bounded by one batch, not the film (the film's
   chunks would take 722 MB as uint8, 2.9 GB as float32): the peak resident memory above
   the start is reported. Wall and CPU seconds are both reported: the machine's 2 cores are
   shared, so the wall time depends on the load (reported too).
2. Import: ``import_movie`` of one 2 mm whole-brain (MNI 91 x 109 x 91), 600-volume run
   (int16, uncompressed) in the grey-matter mask with the same film. Target: at most 3 GB peak.

Run:  OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_movie.py [--only predict|import] [--trs 600]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import time
from pathlib import Path

import numpy as np


class PeakRSS:
    """Peak resident set size (bytes) of this process, sampled every 20 ms."""

    def __init__(self):
        import psutil

        self.p = psutil.Process()
        self.start = self.p.memory_info().rss
        self.peak = self.start
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.p.memory_info().rss)
            time.sleep(0.02)

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, self.p.memory_info().rss)


def make_film_file(path: Path, n_trs: int, tr: float = 1.3, fps_frames: int = 32, size: int = 224) -> Path:
    """A virtual film of n_trs TRs (shots, pans, moving patches) written as MPEG-4."""
    from napari_nrf.movie.video import write_video
    from napari_nrf.simulate.movies import make_film

    if path.exists():
        return path

    def frames():  # 25-TR pieces keep the generator's memory small (the film is streamed)
        for s in range(0, n_trs, 25):
            yield from make_film(min(25, n_trs - s), tr=tr, frames_per_tr=fps_frames, size=size, seed=s).frames

    write_video(path, frames(), fps=fps_frames / tr)
    return path


def bench_predict(film: Path, n_trs: int) -> dict:
    import torch

    from napari_nrf.models.movie import MovieEncoderDecoder
    from napari_nrf.movie.evaluate import predict_film

    torch.manual_seed(0)
    model = MovieEncoderDecoder(4609, size="demo").eval()
    with PeakRSS() as mem:
        t, c = time.perf_counter(), time.process_time()
        pred = predict_film(model, film, tr=1.3, batch=16)
        sec, cpu = time.perf_counter() - t, time.process_time() - c
    assert pred.shape == (n_trs, 4609)
    n_params = sum(p.numel() for p in model.parameters())
    # query-movie then writes the 4D NIfTI: 4,609 voxels of a 2 mm block (an occipital
    # patch's size), 600 volumes, gzip
    from napari_nrf.movie.volumes import save_4d

    g = np.stack(np.meshgrid(*[np.arange(17) * 2.0] * 2, np.arange(16) * 2.0, indexing="ij"), -1).reshape(-1, 3)
    coords = (g[:4609] + np.array([-16.0, -100.0, -10.0])).astype(np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        t, c = time.perf_counter(), time.process_time()
        save_4d(Path(tmp) / "pred.nii.gz", pred, coords, 1.3)
        nii_sec, nii_cpu = time.perf_counter() - t, time.process_time() - c
    return {"trs": n_trs, "seconds": round(sec, 1), "cpu_seconds": round(cpu, 1),
            "nifti_write_seconds": round(nii_sec, 1), "nifti_write_cpu_seconds": round(nii_cpu, 1),
            "load_average": os.getloadavg()[0],
            "peak_rss_above_start_mb": round((mem.peak - mem.start) / 2**20),
            "film_chunks_uint8_mb": round(n_trs * 32 * 112 * 112 * 3 / 2**20), "model_parameters": n_params,
            "torch_threads": torch.get_num_threads()}


def bench_import(film: Path, n_trs: int, work: Path) -> dict:
    import nibabel as nib

    from napari_nrf import space
    from napari_nrf.movie.importer import import_movie

    grid = space.Grid.mni(2.0)
    run = work / "bold.nii"
    if not run.exists():
        rng = np.random.default_rng(0)
        img = nib.Nifti1Image(np.zeros(grid.shape + (n_trs,), np.int16), grid.affine)
        img.set_sform(grid.affine, 4)
        img.set_qform(grid.affine, 4)
        # written a block of volumes at a time through a memory map (the benchmark's own
        # memory stays out of the import's measurement, which runs after)
        nib.save(img, str(run))
        mm = nib.load(str(run), mmap=True)
        arr = np.memmap(str(run), dtype=np.int16, mode="r+", offset=int(mm.dataobj.offset),
                        shape=grid.shape + (n_trs,), order="F")
        for s in range(0, n_trs, 50):
            e = min(n_trs, s + 50)
            arr[..., s:e] = (1000 + 20 * rng.standard_normal(grid.shape + (e - s,))).astype(np.int16)
        arr.flush()
        del arr, mm
    out = work / "imported.h5"
    out.unlink(missing_ok=True)
    with PeakRSS() as mem:
        t, c = time.perf_counter(), time.process_time()
        ds = import_movie(film, [run], tr=1.3, out=out)
        sec, cpu = time.perf_counter() - t, time.process_time() - c
    v = ds.n_voxels
    ds.close()
    return {"volumes": n_trs, "grid": list(grid.shape), "voxels_in_gm_mask": int(v), "seconds": round(sec, 1),
            "cpu_seconds": round(cpu, 1),
            "peak_rss_mb": round(mem.peak / 2**20), "peak_rss_above_start_mb": round((mem.peak - mem.start) / 2**20),
            "run_file_mb": round(run.stat().st_size / 2**20), "output_mb": round(out.stat().st_size / 2**20)}


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--trs", type=int, default=600)
    ap.add_argument("--only", choices=["predict", "import"], default=None)
    ap.add_argument("--work", default=None, help="scratch folder (default: a temporary one)")
    ap.add_argument("--out", default=None, help="JSON report")
    args = ap.parse_args(argv)
    work = Path(args.work or tempfile.mkdtemp(prefix="bench_movie_"))
    work.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    film = make_film_file(work / f"film{args.trs}.mp4", args.trs)
    res = {"film_seconds_to_make": round(time.perf_counter() - t, 1), "cpu": _cpu()}
    if args.only in (None, "predict"):
        res["predict"] = bench_predict(film, args.trs)
        print(json.dumps(res["predict"]), flush=True)
    if args.only in (None, "import"):
        res["import"] = bench_import(film, args.trs, work)
        print(json.dumps(res["import"]), flush=True)
    text = json.dumps(res, indent=2)
    if args.out:
        Path(args.out).write_text(text)
    print(text)


def _cpu() -> str:
    """The CPU model (napari_nrf.precision.cpu_info, the one /proc/cpuinfo reader)."""
    from napari_nrf.precision import cpu_info

    return cpu_info()["model"] + f" ({os.cpu_count()} logical CPUs visible)"


if __name__ == "__main__":
    main()
