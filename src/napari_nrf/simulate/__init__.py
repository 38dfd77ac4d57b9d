"""Virtual subjects: simulated image-evoked fMRI in MNI space with a known truth.

Main entry points: :func:`simulate` (response sets for several subjects),
:func:`make_stimuli` / :func:`make_stimulus_set` (deterministic stimuli),
:class:`VirtualSubject` (``truth(stimuli, xyz)`` at any MNI points), :func:`describe`
(the per-image descriptors the truth depends on). See docs/simulator.md.
"""

from .descriptors import SCORES, Descriptors, describe
from .stimuli import CATEGORIES, CONTENT, StimulusSet, make_parametric, make_stimuli, make_stimulus_set
from .subjects import (
    SimulationError,
    VirtualSubject,
    make_subjects,
    noise_ceiling,
    simulate,
    stimulus_descriptors,
    subject_from_meta,
    truth_at,
)

__all__ = [
    "CATEGORIES", "CONTENT", "SCORES", "Descriptors", "SimulationError", "StimulusSet", "VirtualSubject",
    "describe", "make_parametric", "make_stimuli", "make_stimulus_set", "make_subjects", "noise_ceiling",
    "simulate", "stimulus_descriptors", "subject_from_meta", "truth_at",
]
