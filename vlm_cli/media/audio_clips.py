"""The sampled audio clips of a (long) track, decoded without holding the track.

:func:`~vlm_cli.media.audio.load_audio` returns the whole track as one 16 kHz waveform (2 h:
440 MiB of float32, twice that while it is joined) and :func:`~vlm_cli.media.audio.audio_clip_fbanks`
then cuts ``num_clips`` clips of 2 s out of it. :func:`stream_clip_fbanks` gives the same clips'
fbank with memory bounded by the clips: a first pass counts the samples (decoding, keeping none),
which fixes the clip layout (:func:`~vlm_cli.media.audio._clip_layout`); a second pass keeps only
the source samples each clip needs, plus the resampling filter's reach on both sides, aligned to
the resampler's period, and resamples each span alone
(``torchaudio.functional.resample``: a strided convolution, so every output sample sees exactly
the input samples it sees in the whole track; the track's own edges are zero-padded alike).
"""

from __future__ import annotations

import math
import os

import av
import numpy as np
import torch
import torchaudio

from vlm_cli.errors import MediaError
from vlm_cli.media.audio import (IMAGEBIND_FBANK_MEAN, IMAGEBIND_FBANK_STD, SAMPLE_RATE,
                                 AudioClips, NoAudio, _clip_layout, _frame_to_mono, kaldi_fbank)
from vlm_cli.media.probe import open_container


def _decode_mono(path: str | os.PathLike[str]):
    """Yield ``(source rate Hz, [n] float32 mono samples)`` per decoded frame; stops at the first
    packet that fails (a truncated file keeps what decoded before)."""
    with open_container(path) as container:
        stream = container.streams.audio[0]
        rate = int(stream.codec_context.sample_rate or 0)
        try:
            for packet in container.demux(stream):
                for frame in packet.decode():
                    yield rate or int(frame.sample_rate), _frame_to_mono(frame, "mean")
        except av.FFmpegError:  # truncated / damaged: what decoded before counts (both passes)
            return


def stream_clip_fbanks(
    path: str | os.PathLike[str],
    *,
    num_clips: int = 8,
    clip_seconds: float = 2.0,
    num_mel_bins: int = 128,
    target_frames: int = 204,
    mean: float = IMAGEBIND_FBANK_MEAN,
    std: float = IMAGEBIND_FBANK_STD,
) -> tuple[AudioClips, float] | NoAudio:
    """``audio_clip_fbanks(load_audio(path), ...)`` (channels averaged) with memory bounded by
    the clips, not the track: two decoding passes (see the module notes).

    Returns:
        ``(clips, duration)``: :class:`AudioClips` (``spectrogram [K, target_frames,
        num_mel_bins] float32``, ``starts [K] float64`` s) and the track's duration in s at
        16 kHz; or :class:`NoAudio` for a file without an audio stream.

    Raises:
        MediaError: missing or unreadable file, or an audio stream with no sample that decodes.
        ValueError: bad clip or fbank arguments.
    """
    with open_container(path) as container:
        if not container.streams.audio:
            return NoAudio(path=str(path))
    rate, total = 0, 0
    for rate, samples in _decode_mono(path):  # pass 1: count
        total += samples.shape[-1]
    if total == 0:
        raise MediaError(path, "audio track holds no samples")
    if rate <= 0:
        raise MediaError(path, "audio track has no sample rate")
    gcd = math.gcd(rate, SAMPLE_RATE)
    orig, new = rate // gcd, SAMPLE_RATE // gcd
    if rate == SAMPLE_RATE:
        length, width = total, 0
    else:  # torchaudio's own output length and filter reach (lowpass_filter_width=6, 0.99)
        length = int(torch.ceil(torch.as_tensor(new * total / orig)).long())
        width = math.ceil(6 * orig / (min(orig, new) * 0.99))
    starts, first, clip_samples = _clip_layout(length, num_clips, clip_seconds, SAMPLE_RATE)
    spans = []  # per clip: (source start, source end, output offset of the source start)
    for s in first.tolist():
        end = min(s + clip_samples, length)
        f1, f2 = s // new, -(-end // new)
        a = max(0, f1 - -(-width // orig) - 1)
        spans.append((a * orig, min(total, f2 * orig + width + orig), a * new))
    pieces: list[list[np.ndarray]] = [[] for _ in spans]
    offset = 0
    for _, samples in _decode_mono(path):  # pass 2: keep the clips' source spans
        n = samples.shape[-1]
        for k, (lo, hi, _) in enumerate(spans):
            if lo < offset + n and hi > offset:
                pieces[k].append(samples[max(lo - offset, 0):min(hi - offset, n)])
        offset += n
        if offset >= max(hi for _, hi, _ in spans):
            break
    feats = []
    for (lo, hi, out0), parts, s in zip(spans, pieces, first.tolist()):
        wave = torch.from_numpy(np.concatenate(parts)) if parts else torch.zeros(0)
        if rate != SAMPLE_RATE:
            wave = torchaudio.functional.resample(wave, rate, SAMPLE_RATE)
        wave = wave.to(torch.float32)[s - out0:s - out0 + clip_samples]
        feats.append(kaldi_fbank(wave.contiguous(), sample_rate=SAMPLE_RATE,
                                 num_mel_bins=num_mel_bins, target_frames=target_frames,
                                 mean=mean, std=std))
    return AudioClips(spectrogram=torch.stack(feats), starts=starts), length / SAMPLE_RATE
