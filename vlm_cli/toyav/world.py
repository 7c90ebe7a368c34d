"""The toy-av world: vocabulary, split plan and deterministic sampling of clip specs.

Pure Python + numpy, no media code. A :class:`ClipSpec` holds everything needed to render one clip
(labels and the small random render parameters), so that rendering is a pure function of the spec:
workers may run in any order and still write identical files.

Sampling rules (see ``../../shared/design.md`` and ``generate.py``):

- train / val / test: colour, shape and direction uniform; with probability ``usual_prob`` (0.8) the
  sound is the shape's usual sound (circle -> low tone, square -> high tone, triangle -> rising
  chirp), otherwise it is drawn uniformly from all 5 sounds (so ~84 % of clips end up "usual").
- probe: about half the clips are *contradictions* (sound uniform over the 4 sounds that are not the
  shape's usual one); the rest are *reversed pairs*: two clips with the same colour, shape, sound
  (also a non-usual one), offset, jitter and background, and opposite directions, whose frames are
  exactly each other's time reversal. A model that guesses the sound from the picture, or ignores
  frame order, cannot answer the probe split.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Mapping

import numpy as np

from vlm_cli.toyav import COLOURS, DIRECTIONS, SHAPES, SOUNDS, SPLITS, USUAL_SOUND

__all__ = [
    "COLOURS", "DIRECTIONS", "SHAPES", "SOUNDS", "SPLITS", "USUAL_SOUND", "OPPOSITE", "PALETTE",
    "ClipSpec", "clip_id", "clip_rng", "sample_clips", "split_counts",
]

OPPOSITE: Mapping[str, str] = {"left": "right", "right": "left", "up": "down", "down": "up"}
DEFAULT_FRACTIONS: Mapping[str, float] = {"train": 0.7, "val": 0.1, "test": 0.1, "probe": 0.1}
USUAL_PROB = 0.8

#: Nominal RGB of each colour (0-255), far apart in YUV so they survive h264 yuv420p.
PALETTE: Mapping[str, tuple[int, int, int]] = {
    "red": (225, 35, 35),
    "green": (40, 205, 60),
    "blue": (45, 85, 235),
    "yellow": (235, 215, 35),
}

# Domain tags that keep the seed streams of different uses apart.
_TAG_SPLIT = 0x5B17
_TAG_CLIP = 0xC11B


def clip_id(index: int) -> str:
    """The id of clip ``index`` (0-based): ``"toyav-00042"``."""
    return f"toyav-{index:05d}"


@dataclass(frozen=True)
class ClipSpec:
    """One clip: its labels plus the render parameters drawn for it.

    Labels: ``colour``, ``shape``, ``direction``, ``sound`` (vocabulary words), ``usual_sound`` (the
    sound is the shape's usual one), ``pair`` (id of the reversed partner or None), ``probe_kind``
    ("contradiction", "reversed" or None).

    Render parameters, all for a ``size`` x ``size`` frame: ``shape_px`` (shape width, px),
    ``offset_px`` (offset of the path perpendicular to the motion from the frame centre, px),
    ``start_gap_px`` / ``end_gap_px`` (gap between the shape and the frame edge at the first / last
    frame, px), ``rgb`` (shape colour, 0-255), ``background`` (background grey level, 0-255),
    ``video_seed`` (background noise), ``freq_scale`` (multiplies the sound's nominal frequencies),
    ``amplitude`` (peak level in [0, 1]), ``audio_seed`` (noise burst samples).
    """

    index: int
    id: str
    split: str
    colour: str
    shape: str
    direction: str
    sound: str
    usual_sound: bool
    pair: str | None
    probe_kind: str | None
    shape_px: float
    offset_px: float
    start_gap_px: float
    end_gap_px: float
    rgb: tuple[int, int, int]
    background: int
    video_seed: int
    freq_scale: float
    amplitude: float
    audio_seed: int

    def record(self) -> dict[str, Any]:
        """The ground-truth line written to ``clips.jsonl`` (labels only, no render parameters)."""
        return {
            "id": self.id,
            "split": self.split,
            "video": f"media/{self.id}.mp4",
            "colour": self.colour,
            "shape": self.shape,
            "direction": self.direction,
            "sound": self.sound,
            "usual_sound": self.usual_sound,
            "pair": self.pair,
            "probe_kind": self.probe_kind,
        }

    def as_dict(self) -> dict[str, Any]:
        """All fields, for pickling to workers or debugging."""
        return asdict(self)


def split_counts(clips: int, fractions: Mapping[str, float] = DEFAULT_FRACTIONS) -> dict[str, int]:
    """Number of clips per split: largest-remainder rounding of ``clips * fraction``.

    Every split with a positive fraction gets at least one clip when ``clips`` allows it (taken from
    the largest split). Returns ``{split: count}`` in :data:`SPLITS` order, summing to ``clips``.

    Raises:
        ValueError: ``clips`` < 1, an unknown split name, negative fractions or all zero.
    """
    if clips < 1:
        raise ValueError(f"clips must be >= 1, got {clips}")
    unknown = set(fractions) - set(SPLITS)
    if unknown:
        raise ValueError(f"unknown split(s) {sorted(unknown)}; known: {list(SPLITS)}")
    frac = np.array([float(fractions.get(s, 0.0)) for s in SPLITS])
    if (frac < 0).any() or frac.sum() <= 0:
        raise ValueError(f"split fractions must be >= 0 and not all zero, got {dict(fractions)}")
    exact = clips * frac / frac.sum()
    counts = np.floor(exact).astype(int)
    order = np.argsort(-(exact - counts), kind="stable")
    for i in order[: clips - int(counts.sum())]:
        counts[i] += 1
    for i in range(len(SPLITS)):
        if frac[i] > 0 and counts[i] == 0:
            donor = int(np.argmax(counts))
            if counts[donor] > 1:
                counts[donor] -= 1
                counts[i] += 1
    return {s: int(c) for s, c in zip(SPLITS, counts)}


def _render_params(rng: np.random.Generator, colour: str, size: int) -> dict[str, Any]:
    """Draw the per-clip render jitter (see :class:`ClipSpec`) for a ``size`` px frame."""
    shape_px = size * rng.uniform(0.25, 0.3125)  # 16-20 px at 64 px
    rgb = np.clip(np.array(PALETTE[colour]) + rng.integers(-12, 13, size=3), 0, 255)
    return {
        "shape_px": round(float(shape_px), 3),
        "offset_px": round(float(size * rng.uniform(-0.12, 0.12)), 3),
        "start_gap_px": round(float(size * rng.uniform(0.01, 0.06)), 3),
        "end_gap_px": round(float(size * rng.uniform(0.01, 0.06)), 3),
        "rgb": (int(rgb[0]), int(rgb[1]), int(rgb[2])),
        "background": int(rng.integers(8, 29)),
        "video_seed": int(rng.integers(0, 2**31 - 1)),
        "freq_scale": round(float(rng.uniform(0.95, 1.05)), 4),
        "amplitude": round(float(rng.uniform(0.3, 0.5)), 4),
        "audio_seed": int(rng.integers(0, 2**31 - 1)),
    }


def _pick(rng: np.random.Generator, options: tuple[str, ...] | list[str]) -> str:
    return options[int(rng.integers(len(options)))]


def _usual_or_random_sound(rng: np.random.Generator, shape: str, usual_prob: float) -> str:
    if rng.random() < usual_prob:
        return USUAL_SOUND[shape]
    return _pick(rng, SOUNDS)


def _unusual_sound(rng: np.random.Generator, shape: str) -> str:
    return _pick(rng, [s for s in SOUNDS if s != USUAL_SOUND[shape]])


def clip_rng(seed: int, index: int) -> np.random.Generator:
    """The RNG of clip ``index`` for ``seed``: independent of every other clip and of scheduling."""
    return np.random.default_rng([_TAG_CLIP, seed, index])


def sample_clips(
    seed: int,
    clips: int,
    *,
    size: int = 64,
    fractions: Mapping[str, float] = DEFAULT_FRACTIONS,
    usual_prob: float = USUAL_PROB,
) -> list[ClipSpec]:
    """Sample the specs of ``clips`` clips for ``seed`` and a ``size`` x ``size`` px frame.

    Clips are assigned to splits by a seeded permutation (:func:`split_counts` gives the sizes); each
    clip's labels and jitter come from :func:`clip_rng`. In the probe split, ``(n + 2) // 4`` reversed
    pairs are formed from consecutive probe clips of the permutation (the partner copies the leader's
    draws, flips the direction and swaps the start/end gaps); the others are contradictions.

    Returns: specs ordered by index (``ids`` ``toyav-00000`` ...).

    Raises:
        ValueError: ``seed`` < 0, ``clips`` < 1, ``size`` < 16, or bad fractions.
    """
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    if size < 16:
        raise ValueError(f"size must be >= 16 px, got {size}")
    counts = split_counts(clips, fractions)
    order = np.random.default_rng([_TAG_SPLIT, seed, clips]).permutation(clips)
    split_of: dict[int, str] = {}
    start = 0
    for split in SPLITS:
        for i in order[start : start + counts[split]]:
            split_of[int(i)] = split
        start += counts[split]
    probe = [int(i) for i in order[clips - counts["probe"] :]]
    n_pairs = (len(probe) + 2) // 4 if len(probe) >= 2 else 0
    partner_of = {}
    for k in range(n_pairs):
        lead, follower = probe[2 * k], probe[2 * k + 1]
        partner_of[lead], partner_of[follower] = follower, lead

    def draw(index: int) -> dict[str, Any]:
        rng = clip_rng(seed, index)
        colour, shape, direction = _pick(rng, COLOURS), _pick(rng, SHAPES), _pick(rng, DIRECTIONS)
        if split_of[index] == "probe":
            sound = _unusual_sound(rng, shape)
        else:
            sound = _usual_or_random_sound(rng, shape, usual_prob)
        fields = {"colour": colour, "shape": shape, "direction": direction, "sound": sound}
        return {**fields, **_render_params(rng, colour, size)}

    specs = []
    for index in range(clips):
        split = split_of[index]
        kind: str | None = "contradiction" if split == "probe" else None
        pair: str | None = None
        if index in partner_of:
            partner = partner_of[index]
            kind, pair = "reversed", clip_id(partner)
            fields = draw(min(index, partner))
            if index > partner:  # the follower: same draws, opposite direction, swapped gaps
                fields["direction"] = OPPOSITE[fields["direction"]]
                fields["start_gap_px"], fields["end_gap_px"] = fields["end_gap_px"], fields["start_gap_px"]
        else:
            fields = draw(index)
        specs.append(
            ClipSpec(
                index=index,
                id=clip_id(index),
                split=split,
                usual_sound=fields["sound"] == USUAL_SOUND[fields["shape"]],
                pair=pair,
                probe_kind=kind,
                **fields,
            )
        )
    return specs
