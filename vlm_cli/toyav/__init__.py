"""toy-av: the built-in synthetic audio-visual dataset (offline default data of ``vlm``).

Clips of one coloured shape (red/green/blue/yellow circle/square/triangle) crossing a 64 x 64 px
frame left/right/up/down for 2 s at 8 fps, with one of 5 sounds (low tone, high tone, rising chirp,
noise burst, silence), written as h264 + AAC mp4 with LLaVA-style training JSON and
Video-ChatGPT-style QA files. Shapes usually make "their" sound in train/val/test; the probe split
holds sound contradictions and time-reversed pairs so that shortcuts fail there.

Import-light: numpy and PyAV are imported only when :func:`generate_toy_av` is called.

- :mod:`.world`: vocabulary, splits, deterministic clip specs.
- :mod:`.render`: frames ``[T, H, W, 3]`` uint8 and soundtrack ``[S]`` float32 at 16 kHz.
- :mod:`.writer`: mp4 writing with PyAV.
- :mod:`.annotations`: clips.jsonl, stage1/stage2 JSON, QA files.
- :mod:`.generate`: :func:`generate_toy_av`, the public entry point.
"""

# No ``from __future__ import annotations`` here: it would bind the name ``annotations`` in this
# package and shadow the ``vlm_cli.toyav.annotations`` submodule in ``from vlm_cli.toyav import ...``.
from typing import TYPE_CHECKING, Any

COLOURS: tuple[str, ...] = ("red", "green", "blue", "yellow")
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
DIRECTIONS: tuple[str, ...] = ("left", "right", "up", "down")
SOUNDS: tuple[str, ...] = ("low tone", "high tone", "rising chirp", "noise burst", "silence")
USUAL_SOUND: dict[str, str] = {"circle": "low tone", "square": "high tone", "triangle": "rising chirp"}
SPLITS: tuple[str, ...] = ("train", "val", "test", "probe")
QUESTION_TYPES: tuple[str, ...] = ("sound", "colour", "shape", "direction")

if TYPE_CHECKING:
    from vlm_cli.toyav.generate import generate_toy_av

__all__ = [
    "COLOURS",
    "DIRECTIONS",
    "QUESTION_TYPES",
    "SHAPES",
    "SOUNDS",
    "SPLITS",
    "USUAL_SOUND",
    "generate_toy_av",
]


def __getattr__(name: str) -> Any:
    if name == "generate_toy_av":
        from vlm_cli.toyav.generate import generate_toy_av

        return generate_toy_av
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
