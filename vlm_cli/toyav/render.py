"""Render a toy-av clip: frames of one moving coloured shape, and its soundtrack (numpy only).

Both functions are pure functions of a :class:`~vlm_cli.toyav.world.ClipSpec` and the clip settings,
so the same spec always gives the same arrays.
"""

from __future__ import annotations

import numpy as np

from vlm_cli.toyav.world import ClipSpec

#: Nominal frequencies (Hz) of the tonal sounds, before the per-clip ``freq_scale`` jitter.
LOW_TONE_HZ = 220.0
HIGH_TONE_HZ = 880.0
CHIRP_HZ = (300.0, 1500.0)
NOISE_BAND_HZ = (150.0, 6000.0)
FADE_S = 0.015
BACKGROUND_NOISE = 2.0  # std of the static background noise, grey levels


def num_frames(fps: int, seconds: float) -> int:
    """Frames in a clip of ``seconds`` at ``fps`` (at least 2)."""
    return max(2, int(round(fps * seconds)))


def shape_path(spec: ClipSpec, size: int, frames: int) -> np.ndarray:
    """Centre of the shape in each frame: ``[T, 2]`` float64 ``(x, y)`` in px (origin top-left).

    The shape moves at constant speed along ``spec.direction`` from ``start_gap_px`` off one edge to
    ``end_gap_px`` off the other, offset ``offset_px`` from the centre line perpendicular to it.
    """
    half = spec.shape_px / 2
    a = half + spec.start_gap_px  # distance of the centre from the starting edge
    b = size - half - spec.end_gap_px  # ... and of the end position from the starting edge
    along = a + (b - a) * np.linspace(0.0, 1.0, frames)
    if spec.direction in ("left", "up"):
        along = size - along
    across = np.full(frames, size / 2 + spec.offset_px)
    if spec.direction in ("left", "right"):
        return np.stack([along, across], axis=1)
    return np.stack([across, along], axis=1)


def _coverage(
    shape: str, px: float, cx: np.ndarray, cy: np.ndarray, xs: np.ndarray, ys: np.ndarray
) -> np.ndarray:
    """Anti-aliased coverage in [0, 1] of ``shape`` (width ``px``) centred at ``(cx, cy)``.

    ``cx``/``cy`` are ``[T, 1, 1]``, ``xs``/``ys`` pixel-centre grids ``[1, H, W]``; returns ``[T, H, W]``.
    """
    dx, dy = xs - cx, ys - cy
    half = px / 2
    if shape == "circle":
        inside = half - np.sqrt(dx * dx + dy * dy)
    elif shape == "square":
        inside = np.minimum(half - np.abs(dx), half - np.abs(dy))
    elif shape == "triangle":  # pointing up, base width px, height 0.9 px, centred on its box
        h = 0.9 * px
        base = h / 2 - dy
        # Sides through the apex (0, -h/2) and the base corners (+-half, h/2); unit inward normals.
        norm = np.hypot(h, half)
        left = (h * dx + half * dy + half * h / 2) / norm
        right = (-h * dx + half * dy + half * h / 2) / norm
        inside = np.minimum(base, np.minimum(left, right))
    else:
        raise ValueError(f"unknown shape {shape!r}")
    return np.clip(inside + 0.5, 0.0, 1.0)


def render_frames(spec: ClipSpec, *, size: int, fps: int, seconds: float) -> np.ndarray:
    """Frames of the clip: ``[T, size, size, 3]`` uint8 RGB, ``T = round(fps * seconds)``.

    A dark grey background with faint static noise, and the shape of ``spec.rgb`` following
    :func:`shape_path`. Raises ValueError for an unknown shape.
    """
    frames = num_frames(fps, seconds)
    path = shape_path(spec, size, frames)
    grid = np.arange(size, dtype=np.float64) + 0.5
    xs, ys = grid[None, None, :], grid[None, :, None]
    alpha = _coverage(spec.shape, spec.shape_px, path[:, 0, None, None], path[:, 1, None, None], xs, ys)
    noise = np.random.default_rng(spec.video_seed).normal(0.0, BACKGROUND_NOISE, size=(size, size, 1))
    background = np.clip(spec.background + noise, 0, 255)[None]  # [1, H, W, 1]
    colour = np.asarray(spec.rgb, dtype=np.float64)[None, None, None, :]
    alpha = alpha[..., None]
    out = background * (1.0 - alpha) + colour * alpha
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _fade(samples: int, sample_rate: int) -> np.ndarray:
    """Raised-cosine fade-in/out envelope ``[S]`` float64, :data:`FADE_S` long at each end."""
    env = np.ones(samples)
    n = min(int(FADE_S * sample_rate), samples // 2)
    if n > 0:
        ramp = 0.5 - 0.5 * np.cos(np.pi * np.arange(n) / n)
        env[:n] = ramp
        env[samples - n :] = ramp[::-1]
    return env


def render_audio(spec: ClipSpec, *, seconds: float, sample_rate: int = 16000) -> np.ndarray:
    """Soundtrack of the clip: ``[S]`` float32 in [-1, 1] at ``sample_rate`` Hz.

    ``S = round(seconds * sample_rate)`` samples.

    low tone: ~220 Hz sine; high tone: ~880 Hz sine; rising chirp: linear sweep ~300 -> 1500 Hz over
    the clip; noise burst: white noise band-limited to 150-6000 Hz; silence: exact zeros. Frequencies
    are scaled by ``spec.freq_scale``; all but silence peak near ``spec.amplitude`` and fade in/out
    over 15 ms. Raises ValueError for an unknown sound.
    """
    samples = int(round(seconds * sample_rate))
    t = np.arange(samples) / sample_rate
    f = spec.freq_scale
    if spec.sound == "silence":
        return np.zeros(samples, dtype=np.float32)
    if spec.sound == "low tone":
        wave = np.sin(2 * np.pi * LOW_TONE_HZ * f * t)
    elif spec.sound == "high tone":
        wave = np.sin(2 * np.pi * HIGH_TONE_HZ * f * t)
    elif spec.sound == "rising chirp":
        f0, f1 = CHIRP_HZ[0] * f, CHIRP_HZ[1] * f
        wave = np.sin(2 * np.pi * (f0 * t + (f1 - f0) * t * t / (2 * max(seconds, 1e-9))))
    elif spec.sound == "noise burst":
        white = np.random.default_rng(spec.audio_seed).standard_normal(samples)
        spectrum = np.fft.rfft(white)
        freqs = np.fft.rfftfreq(samples, 1.0 / sample_rate)
        spectrum[(freqs < NOISE_BAND_HZ[0]) | (freqs > NOISE_BAND_HZ[1])] = 0
        wave = np.fft.irfft(spectrum, n=samples)
        wave = np.clip(wave / (3.0 * wave.std() + 1e-12), -1.0, 1.0)  # peak ~1, rms ~1/3
    else:
        raise ValueError(f"unknown sound {spec.sound!r}")
    return (spec.amplitude * wave * _fade(samples, sample_rate)).astype(np.float32)
