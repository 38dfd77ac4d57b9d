"""Speed of the movie-features kind on this CPU: predicting a 600-TR film (8 frames per TR
of 112 px, 4,609 voxels) from frames in memory through the streaming path
(:func:`napari_nrf.movie.evaluate.predict_chunks`, batches of 16 TRs with their history),
no feature cache (a new film).

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_movie_features.py [frames embedded per TR, default 2]
"""

import time

import numpy as np
import torch


def main(n_trs=600, frames=8, size=112, voxels=4609, frames_used=2):
    from napari_nrf.models.movie_features import MovieFeatureEncoder
    from napari_nrf.movie.evaluate import predict_chunks

    rng = np.random.default_rng(0)
    chunks = rng.integers(0, 255, (n_trs, frames, size, size, 3), dtype=np.uint8)
    m = MovieFeatureEncoder(voxels, frames_per_tr=frames, frame_size=size, frames_used=frames_used)
    m.backbone_name = "efficientnet-lite0"
    m.backbone()  # built once, as a loaded model's first prediction does
    t, c = time.perf_counter(), time.process_time()
    p = predict_chunks(m, chunks, batch=16)
    wall, cpu = time.perf_counter() - t, time.process_time() - c
    print(f"{n_trs} TR x {frames} frames of {size} px, {frames_used} embedded per TR, {voxels} voxels: "
          f"{wall:.1f} s wall, {cpu:.1f} s CPU, "
          f"threads {torch.get_num_threads()}, output {p.shape}")


if __name__ == "__main__":
    import sys

    main(frames_used=int(sys.argv[1]) if len(sys.argv) > 1 else 2)
