"""Resting-state runs of virtual subjects whose connectivity follows each subject's own areas.

The BOLD of subject ``s`` at MNI point ``x`` and volume ``t`` is

    y(x, t) = HRF * [ sum_a m_a(x) L_a(t) + g_dmn(x) d(t) ] + noise(x, t)

* ``m_a(x)`` is the subject's own soft membership in area blob ``a`` (its displaced
  centroids and sizes, :meth:`VirtualSubject.membership`), so the map of any seed follows
  the subject's layout: the individual information a rest map carries;
* ``L_a(t) = l_a(t) + c_s f(t) + k_a d(t)``: an area's own slow latent (AR(1), rho 0.9),
  a shared visual-stream factor ``f`` and the default-mode signal ``d`` with a fixed
  population coupling ``k_a`` per area (some areas anticorrelated), so a PCC seed map
  shows each area with its own sign and strength;
* ``g_dmn(x)``: Gaussian blobs at default-mode nodes (PCC, medial prefrontal, both
  angular gyri), the regions a PCC seed finds;
* noise: white per voxel plus a global signal, in the units of a z-scored BOLD.

Latents are slow (AR(1)) before one HRF convolution: white latents convolved with an HRF
leave almost no band-limited covariance (design notes). Controls: ``control=True`` draws
the run from the population's template layout (no displacement; every subject's run is
then a sample of the same connectivity), so the rest map carries no individual
information.
"""

from __future__ import annotations

import numpy as np

from .. import space
from .subjects import SimulationError, VirtualSubject

#: Default-mode nodes (MNI mm, radius mm): PCC, medial prefrontal, left/right angular gyrus.
DMN_NODES = (((0.0, -52.0, 26.0), 9.0), ((0.0, 52.0, -6.0), 9.0), ((-46.0, -68.0, 32.0), 7.0),
             ((46.0, -68.0, 32.0), 7.0))
RHO = 0.9


def _ar1(rng, n_t: int, k: int, rho: float = RHO) -> np.ndarray:
    """(n_t, k) unit-variance AR(1) series."""
    e = rng.standard_normal((n_t + 50, k))
    x = np.empty_like(e)
    x[0] = e[0]
    s = np.sqrt(1 - rho * rho)
    for t in range(1, len(e)):
        x[t] = rho * x[t - 1] + s * e[t]
    return x[50:]


def area_couplings(seed: int, n_areas: int) -> np.ndarray:
    """Population coupling (A,) of each area blob to the default-mode signal (fixed per ``seed``)."""
    rng = np.random.default_rng([int(seed), 201])
    return rng.uniform(-0.8, 0.8, n_areas)


def resting_run(subject: VirtualSubject, grid: space.Grid, n_volumes: int = 300, t_r: float = 2.0,
                session: int = 0, control: bool = False, noise: float = 1.0) -> np.ndarray:
    """A resting BOLD run (X, Y, Z, T) float32 of ``subject`` on ``grid`` (0 outside the brain).

    ``session`` seeds the latents and the noise (each session is a new run of the same
    brain); ``control`` uses the population's template layout instead of the subject's.
    """
    if n_volumes < 2:
        raise SimulationError(f"n_volumes must be >= 2, got {n_volumes}")
    from napari_nrf.guards import check_size

    check_size(int(np.prod(grid.shape)) * int(n_volumes) * 4 * 2, f"volumes {n_volumes} (one resting run on a "
               f"{tuple(grid.shape)} grid)")
    who = VirtualSubject(index=subject.index, seed=subject.seed, resolution=subject.resolution,
                         identical=True) if control else subject
    brain = space.brain_mask(grid)
    xyz = grid.coords(brain).astype(np.float32)
    m = who.membership(xyz).astype(np.float32)  # (V, A)
    n_a = m.shape[1]
    rng = np.random.default_rng([int(subject.seed), int(subject.index), int(session), 202, int(bool(control))])
    lat = _ar1(rng, n_volumes, n_a + 2)
    own, stream, dmn = lat[:, :n_a], lat[:, n_a], lat[:, n_a + 1]
    k = area_couplings(subject.seed, n_a)
    c_stream = 0.4
    big_l = own + c_stream * stream[:, None] + k[None] * dmn[:, None]  # (T, A)
    g = np.zeros(len(xyz), np.float32)
    for c, r in DMN_NODES:
        g += np.exp(-((xyz - np.asarray(c, np.float32)) ** 2).sum(1) / (2 * r * r))
    sig = big_l.astype(np.float32) @ m.T + dmn[:, None].astype(np.float32) * g[None]  # (T, V)
    from nilearn.glm.first_level import spm_hrf

    h = np.asarray(spm_hrf(t_r, oversampling=1), np.float32)
    h /= h.sum()
    from scipy.signal import lfilter

    sig = lfilter(h, [1.0], sig, axis=0).astype(np.float32)
    sig /= max(float(sig.std()), 1e-6)
    glob = rng.standard_normal(n_volumes).astype(np.float32)[:, None] * 0.3
    y = sig + noise * (rng.standard_normal(sig.shape, dtype=np.float32) + glob)
    out = np.zeros(grid.shape + (n_volumes,), np.float32)
    out[brain] = (y + 100.0).T  # a baseline, as in real BOLD
    return out


def rest_maps_for(subject: VirtualSubject, grid: space.Grid, n_sessions: int = 2, n_volumes: int = 300,
                  t_r: float = 2.0, control: bool = False, noise: float = 1.0, hrf: bool = False,
                  progress=None) -> np.ndarray:
    """Seed-based rest maps (S, X, Y, Z) float32 of ``n_sessions`` simulated runs on ``grid``
    (the PCC seed and the defaults of :func:`napari_nrf.data.restmap.rest_map`)."""
    from napari_nrf.data.restmap import rest_map

    out = np.empty((n_sessions,) + grid.shape, np.float32)
    for s in range(n_sessions):
        run = resting_run(subject, grid, n_volumes=n_volumes, t_r=t_r, session=s, control=control, noise=noise)
        out[s] = rest_map(run, t_r, grid=grid, hrf=hrf).volume
        if progress is not None:
            progress(s + 1, n_sessions, f"{subject.name} rest session {s + 1}")
    return out


def add_rest_maps(sets, grid: space.Grid | None = None, n_sessions: int = 2, n_volumes: int = 300,
                  t_r: float = 2.0, control: bool = False, noise: float = 1.0, hrf: bool = False) -> list:
    """Give each simulated response set of ``sets`` per-session rest maps (in place; returned).

    ``grid``: where the runs are simulated (default whole brain at 4 mm). With
    ``control`` every subject's runs come from the template layout.
    """
    from .subjects import subject_from_meta

    grid = grid or space.Grid.mni(4.0)
    for rs in sets:
        subj = subject_from_meta(rs.meta)
        maps = rest_maps_for(subj, grid, n_sessions=n_sessions, n_volumes=n_volumes, t_r=t_r, control=control,
                             noise=noise, hrf=hrf)
        rs.set_rest_maps(maps, grid, [f"ses-{i + 1:02d}" for i in range(n_sessions)])
        rs.meta["rest_simulation"] = {"n_volumes": n_volumes, "t_r": t_r, "control": bool(control),
                                      "noise": noise, "hrf": hrf}
    return list(sets)


def simulate_with_rest(n_subjects: int = 6, n_images: int = 200, seed: int = 0, *, max_voxels: int | None = 4000,
                       image_size: int = 64, n_sessions: int = 2, n_volumes: int = 300, t_r: float = 2.0,
                       displacement_mm: float = 5.0, control: bool = False, rest_grid: space.Grid | None = None,
                       resolution: float = 2.0, roi=None, n_shared: int | None = None, noise: float = 1.0,
                       hrf: bool = False, workers: int | None = None) -> list:
    """:func:`napari_nrf.simulate.simulate` with per-session rest maps (see :func:`add_rest_maps`).

    Subjects' areas are displaced by ``displacement_mm`` (sd, mm; the simulator's default
    2.5 mm leaves a weak individual signal in a rest map, 5 mm a clear one). ``control``:
    the rest runs come from the template layout (no individual information), while the
    evoked responses keep each subject's own layout.
    """
    from .subjects import make_subjects, simulate

    base = make_subjects(n_subjects, seed)
    subs = [VirtualSubject(index=s.index, seed=s.seed, resolution=resolution, snr=s.snr,
                           displacement_mm=float(displacement_mm)) for s in base]
    sets = simulate(n_subjects=n_subjects, n_images=n_images, seed=seed, subjects=subs, max_voxels=max_voxels,
                    image_size=image_size, roi=roi, n_shared=n_shared, workers=workers)
    return add_rest_maps(sets, rest_grid, n_sessions=n_sessions, n_volumes=n_volumes, t_r=t_r, control=control,
                         noise=noise, hrf=hrf)
