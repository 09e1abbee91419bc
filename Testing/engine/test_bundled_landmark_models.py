"""The bundled landmark models on data they were not trained on: they must track the anatomy,
and detect on a whole uncropped brain volume (the models were trained on head crops)."""

from __future__ import annotations

import numpy as np

from labelfree.landmarks.detect import detect_landmarks
from labelfree.landmarks.metrics import correspondence_error
from labelfree.landmarks.model import load_landmark_model, predict_landmarks
from labelfree.landmarks.synthetic import shepp_logan_population


def test_bundled_2d_model_follows_unseen_phantom_warps():
    """bench/README section 5 measures 0.86 px against 3.80 px for fixed points on 50 phantoms."""
    regressor, config, _ = load_landmark_model(None, ndim=2)
    population = shepp_logan_population(12, size=128, seed=5)
    found = np.stack([predict_landmarks(regressor, config, im) for im in population.images])
    error = correspondence_error(population, found).mean()
    fixed = np.ascontiguousarray(np.broadcast_to(found.mean(axis=0), found.shape))
    still = correspondence_error(population, fixed).mean()
    assert still > 2.5  # the warps really move the landmarks
    assert error < 1.2
    assert error < still / 3


def test_bundled_3d_model_detects_on_the_whole_1mm_brain_inside_the_head(mni_t1):
    t1 = mni_t1[0]
    found = detect_landmarks(t1, None, device="cpu")
    assert len(found) == 40 and len(set(found.names)) == 40
    index = np.asarray(found.index_xyz)[:, ::-1]  # (z, y, x)
    shape = np.asarray(t1.array.shape)
    assert (index >= 0).all() and (index <= shape - 1).all()
    voxels = np.round(index).astype(int)
    values = t1.array[voxels[:, 0], voxels[:, 1], voxels[:, 2]]
    assert (values > 0.05 * t1.array.max()).mean() >= 0.9  # on the head, not the background
    gaps = np.linalg.norm(found.points_lps[:, None] - found.points_lps[None], axis=-1)
    assert gaps[np.triu_indices(40, 1)].min() > 0.3  # mm: no two landmarks on top of each other
