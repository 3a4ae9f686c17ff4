"""Feature extraction for ``guard evaluate``: worker processes give exactly the one-process features, in order."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from synfundus_guard.data.images import encode_png
from synfundus_guard.data.phantom import PhantomPatient, render_visit
from synfundus_guard.embed.stats import DIM, StatsEmbedder
from synfundus_guard.errors import ImageError
from synfundus_guard.fidelity.extract import BATCH, extract_features


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("extract")
    paths = []
    for i in range(2 * BATCH + 5):  # three batches, the last one short
        path = root / f"{i:03d}.png"
        path.write_bytes(encode_png(render_visit(PhantomPatient.from_seed(5, i), visit=0, size=64)[0]))
        paths.append(path)
    return paths


def test_two_workers_match_one_process_in_order(files):
    one = extract_features(files, workers=1)
    two = extract_features(files, workers=2)
    assert one.shape == (len(files), DIM) and np.array_equal(one, two)
    from synfundus_guard.data.images import load_image

    assert np.array_equal(one[7], StatsEmbedder().features([load_image(files[7])])[0])


def test_an_unreadable_file_is_an_image_error_naming_it(files, tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG not really")
    with pytest.raises(ImageError, match="broken.png"):
        extract_features([*files[:3], broken], workers=1)
