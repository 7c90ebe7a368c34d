"""Process-wide settings, decided once at the command boundary (:func:`vlm_cli.cli.run`).

Library code never changes global state of third-party packages (logging levels, progress
bars); the entry point does it here, once, before any of them is imported.
"""

from __future__ import annotations

import os
import sys


def quiet_third_party() -> None:
    """Turn off transformers' and huggingface_hub's own tqdm progress bars ("Loading weights",
    "Writing model shards", "Fetching N files"): progress is ours
    (:func:`vlm_cli.console.progress_bar`), on stderr, readable in a log.

    Sets ``HF_HUB_DISABLE_PROGRESS_BARS=1``, which huggingface_hub reads at import and
    transformers follows (``transformers.utils.logging``); packages already imported are switched
    off directly. Cheap: imports nothing.
    """
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    if "huggingface_hub" in sys.modules:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    if "transformers" in sys.modules:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
