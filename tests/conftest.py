"""pytest configuration: tests import their helpers (media_factory) from this directory."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

# As `vlm` itself does at its entry point (vlm_cli.runtime): fixtures that save checkpoints with
# transformers must not print its "Writing model shards" bars into captured stderr.
from vlm_cli.runtime import quiet_third_party  # noqa: E402

quiet_third_party()


import pytest  # noqa: E402


@pytest.fixture(scope="module")
def omni_utils(tmp_path_factory):
    """qwen-omni-utils as the model cards run it here (:func:`omni_fixtures.card_pipeline`)."""
    from omni_fixtures import card_pipeline

    with card_pipeline(tmp_path_factory.mktemp("ffmpeg-bin")) as package:
        yield package
