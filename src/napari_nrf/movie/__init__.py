"""Films and the fMRI recorded while people watched them (the movie encoder-decoder paper), Qt-free.

* :mod:`.video`: a video file (PyAV) or a folder of frames -> chunks of F frames per TR;
* :mod:`.dataset`: :class:`MovieDataset` (films chunked per TR, z-scored responses,
  splits, SNR), written atomically, read lazily; the training view for the one loop;
* :mod:`.evaluate`: predictions over a film, voxelwise Pearson over TRs, permutation
  tests, spatial r, SSIM of reconstructions, the FIR ridge baseline;
* :mod:`.importer`: ``import-movie`` from BOLD NIfTI runs + the film;
* virtual films and their BOLD: :mod:`napari_nrf.simulate.movies`.
"""

from .dataset import ChunkView, MovieDataset, movie_splits, snr_selection, write_movie_dataset
from .video import FRAME_SIZE, FRAMES_PER_TR, MovieError, film_info, iter_chunks, read_film

__all__ = ["FRAMES_PER_TR", "FRAME_SIZE", "ChunkView", "MovieDataset", "MovieError", "film_info", "iter_chunks",
           "movie_splits", "read_film", "snr_selection", "write_movie_dataset"]
