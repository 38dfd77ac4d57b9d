"""The movie encoder-decoder kind (film chunks -> voxels -> the chunk's middle frame)."""

from __future__ import annotations

from napari_nrf.kinds import KindError, KindSpec
from napari_nrf.settings import MOVIE_FIT


def train_files(data, out=None, *, backbone: str = "efficientnet-lite0", preset: str = "demo", **fit_kwargs):
    """The recipe on one movie data set file: :func:`napari_nrf.recipes.train_movie`
    (``preset``: its size; ``backbone`` unused: the model reads frames)."""
    from napari_nrf.movie import MovieDataset
    from napari_nrf.recipes import train_movie

    if len(data) != 1:
        raise KindError(f"the movie kind trains on one movie data set (.h5), got {len(data)} files")
    return train_movie(MovieDataset.load(data[0]), size=preset, out=out, **fit_kwargs)


SPEC = KindSpec(kind="movie", title="movie encoder-decoder: film chunks -> voxels -> frame",
                model="napari_nrf.models.movie:MovieEncoderDecoder", fit=MOVIE_FIT,
                recipe="napari_nrf.kinds.movie:train_files", evaluate="napari_nrf.movie.evaluate:evaluate_movie",
                verbs={"train": "train-movie", "evaluate": "evaluate-movie"}, data="movie",
                panel={"data": "one movie data set (.h5)", "presets": ("tiny", "demo", "paper")})
