"""Audio decoding to mono 16 kHz, 2-second clip sampling and Kaldi fbank features.

The audio branch follows Video-LLaMA (arXiv 2306.02858, §2.1): the audio of a video is split
into clips of 2 s, each turned into a 128-bin Kaldi fbank of 204 frames, as ImageBind's
``load_and_transform_audio_data`` (``waveform2melspec`` + ``Normalize(mean=-4.268,
std=9.138)``), which Video-LLaMA calls with ``clips_per_video=8``.

Decoding uses PyAV (libavcodec: AAC, MP3, PCM wav, FLAC, Vorbis, Opus, ...); torchaudio is used
only for resampling (``torchaudio.functional.resample``) and fbank
(``torchaudio.compliance.kaldi.fbank``). ``load_audio(resampler="soxr")`` reproduces what
Qwen2.5-Omni's reference (qwen-omni-utils, ``librosa.load``) feeds the model: 16-bit samples
resampled by libsoxr.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from fractions import Fraction
from typing import Literal

import av
import numpy as np
import torch
import torchaudio

from vlm_cli.errors import MediaError
from vlm_cli.media.probe import describe_error, open_container

log = logging.getLogger(__name__)

SAMPLE_RATE = 16_000
"""Sample rate (Hz) of every waveform this module returns."""

IMAGEBIND_FBANK_MEAN = -4.268
"""fbank mean used by ImageBind / Video-LLaMA (``transforms.Normalize(mean=-4.268, std=9.138)``)."""
IMAGEBIND_FBANK_STD = 9.138
"""fbank std used by ImageBind / Video-LLaMA; :func:`kaldi_fbank` divides by it."""
AST_FBANK_MEAN = -4.2677393
"""AudioSet fbank mean of AST (``ASTFeatureExtractor.mean``)."""
AST_FBANK_STD = 4.5689974
"""AudioSet fbank std of AST (``ASTFeatureExtractor.std``). AST divides by **twice** this value:
pass ``std=2 * AST_FBANK_STD`` to :func:`kaldi_fbank` to reproduce AST's input."""

"""Lower-case suffixes of audio-only files (any container with an audio stream also decodes)."""


@dataclass(frozen=True, eq=False)
class AudioTrack:
    """The first audio stream of a file, decoded, downmixed and resampled.

    Attributes:
        waveform: ``[S] float32`` mono samples at ``sample_rate``, nominally in [-1, 1]
            (``[C, S]`` when decoded with ``load_audio(mix="channels")``).
        sample_rate: Hz, always :data:`SAMPLE_RATE` (16 000).
        duration: seconds, ``S / sample_rate``.
        source_sample_rate: sample rate of the stream in the file, Hz.
        source_channels: channel count of the stream in the file (all were averaged).
    """

    waveform: torch.Tensor
    sample_rate: int
    duration: float
    source_sample_rate: int
    source_channels: int


@dataclass(frozen=True)
class NoAudio:
    """The explicit result for a media file that has no audio stream (never silent zeros).

    Attributes:
        path: the file, as given.
        reason: why there is no audio, for messages.
    """

    path: str
    reason: str = "no audio track"


@dataclass(frozen=True, eq=False)
class AudioClips:
    """Spectrograms of clips sampled from one audio track.

    Attributes:
        spectrogram: ``[K, target_frames, num_mel_bins] float32`` normalised Kaldi fbank
            (:func:`audio_clip_fbanks`), or ``[K, num_mel_bins, target_frames] float32`` Whisper
            log-mel (:func:`audio_clip_log_mels`), as each encoder expects.
        starts: ``[K] float64`` seconds, start time of each clip in the track.
    """

    spectrogram: torch.Tensor
    starts: np.ndarray


# --------------------------------------------------------------------------------------------
# Decoding


def load_audio(path: str | os.PathLike[str], *,
               mix: Literal["mean", "channels"] = "mean",
               resampler: Literal["torchaudio", "soxr", "ffmpeg"] = "torchaudio",
               ) -> AudioTrack | NoAudio:
    """Decode the first audio stream of ``path`` to a mono 16 kHz waveform.

    Works on videos (mp4 with AAC or MP3, mkv, ...) and audio-only files (wav, mp3, flac, ...).
    Every channel is averaged into mono (``mix="mean"``), or every channel is kept (``mix="channels"``: ``waveform [C, S]``, what
    ``torchaudio.load`` gives ImageBind's front end, :func:`imagebind_clip_fbanks`); planar and packed layouts, unsigned 8-bit, int16,
    int32, int64, float and double samples; then resampled to 16 kHz with
    ``torchaudio.functional.resample`` (windowed sinc). A file without an audio stream returns
    :class:`NoAudio`, never zeros. A stream that stops decoding part-way (truncated file) keeps
    the samples decoded before the damage.

    ``resampler="soxr"`` gives instead what Qwen2.5-Omni's reference preprocessing gives
    (qwen-omni-utils' ``process_audio_info``: ``librosa.load(..., sr=16000)``, which reads a
    video's audio as ``ffmpeg -i path -f s16le -`` through audioread): every decoded sample is
    first converted to 16 bits as libswresample converts to s16 (float: ``lrintf(x * 32768)``
    clipped to int16, round half to even; s32: ``x >> 16``; u8: ``(x - 128) << 8``), then
    divided by 32768 (librosa's ``buf_to_float``), channels averaged in float32 (``to_mono``)
    and resampled by ``soxr.resample(..., quality="HQ")`` (librosa's ``res_type="soxr_hq"``),
    trimmed or zero-padded to ``ceil(S * 16000 / rate)`` samples (librosa's ``fix_length``);
    a 16 kHz track is not resampled. Samples past the stream's declared end (its edit list or
    header duration, :func:`_declared_end`: the encoder's padding in the last frame) are
    dropped, as the ``ffmpeg`` tool of FFmpeg n9.0.2 (imageio-ffmpeg 0.8.1) does; PyAV's
    libraries (FFmpeg 8.1) keep them, and so would an older ``ffmpeg`` tool: up to one codec
    frame (1024 samples of AAC) more at the end. PCM s16 files (which librosa reads with
    soundfile) give the same 16-bit values exactly; files of more than 16 bits that soundfile
    reads itself (24-bit or float wav, flac) keep their precision in librosa, so there the two
    differ by at most half a 16-bit step (``2 ** -16``) before resampling.

    ``resampler="ffmpeg"`` gives what transformers' ``load_audio`` gives through torchcodec
    (``AudioDecoder(path, sample_rate=16000, num_channels=1).get_all_samples()``, which Gemma
    4's processors read every audio with, a clip's own track included): FFmpeg's libswresample
    converts the decoded float samples to mono 16 kHz (its default downmix matrix and
    resampling filter), through PyAV; within float rounding (2.4e-7) of torchcodec's samples
    on the shared clips.

    Args:
        path: a video or audio file.
        mix: ``"mean"`` (mono) or ``"channels"`` (``[C, S]``, each channel resampled).
        resampler: ``"torchaudio"`` (windowed sinc, float samples as decoded), ``"soxr"``
            (Qwen2.5-Omni's reference, above) or ``"ffmpeg"`` (libswresample, mono only).

    Returns:
        :class:`AudioTrack` (``waveform [S] float32`` at 16 kHz) or :class:`NoAudio`.

    Raises:
        MediaError: missing, zero-byte or non-media file, or an audio stream with no sample
            that decodes.
    """
    if resampler not in ("torchaudio", "soxr", "ffmpeg"):
        raise ValueError(f"resampler must be 'torchaudio', 'soxr' or 'ffmpeg', got {resampler!r}")
    if resampler == "ffmpeg" and mix != "mean":
        raise ValueError("the ffmpeg resampler gives mono only (mix='mean')")
    as_s16 = resampler == "soxr"
    with open_container(path) as container:
        if not container.streams.audio:
            return NoAudio(path=str(path))
        stream = container.streams.audio[0]
        swr = av.AudioResampler(format="fltp", layout="mono", rate=SAMPLE_RATE) \
            if resampler == "ffmpeg" else None
        source_rate = int(stream.codec_context.sample_rate or 0)
        source_channels = int(stream.codec_context.layout.nb_channels or 0)
        chunks: list[np.ndarray] = []
        failure: BaseException | None = None
        end = _declared_end(stream) if as_s16 else None
        try:
            for packet in container.demux(stream):
                for frame in packet.decode():
                    if not source_rate:
                        source_rate = int(frame.sample_rate)
                    if swr is not None:
                        chunks += [f.to_ndarray()[0] for f in swr.resample(frame)]
                        continue
                    chunk = _frame_to_mono(frame, mix, as_s16=as_s16)
                    if end is not None and frame.pts is not None:
                        past = (end - frame.pts) * stream.time_base * frame.sample_rate
                        chunk = chunk[..., :max(0, round(past))]
                    chunks.append(chunk)
        except av.FFmpegError as exc:  # truncated / damaged: keep what decoded so far
            failure = exc
        if swr is not None and chunks:
            chunks += [f.to_ndarray()[0] for f in swr.resample(None)]  # the filter's tail
    if failure is not None:
        if not chunks:
            raise MediaError(path, f"audio cannot be decoded ({describe_error(failure)})")
        log.info("%s: audio decoding stopped early (%s)", path, describe_error(failure))
    mono = np.concatenate(chunks, axis=-1) if chunks else np.zeros(0, dtype=np.float32)
    if mono.size == 0:
        raise MediaError(path, "audio track holds no samples")
    if source_rate <= 0:
        raise MediaError(path, "audio track has no sample rate")
    if as_s16:
        waveform = torch.from_numpy(_soxr_resample(mono, source_rate, SAMPLE_RATE))
    elif swr is not None:
        waveform = torch.from_numpy(mono.astype(np.float32, copy=False))
    else:
        waveform = torch.from_numpy(mono)
        if source_rate != SAMPLE_RATE:
            waveform = torchaudio.functional.resample(waveform, source_rate, SAMPLE_RATE)
    waveform = waveform.to(torch.float32).contiguous()
    return AudioTrack(
        waveform=waveform,
        sample_rate=SAMPLE_RATE,
        duration=waveform.shape[-1] / SAMPLE_RATE,
        source_sample_rate=source_rate,
        source_channels=source_channels or 1,
    )


def _frame_to_mono(frame: av.AudioFrame, mix: str = "mean", *,
                   as_s16: bool = False) -> np.ndarray:
    """``[n] float32`` mean over all channels of one decoded frame (``mix="mean"``), or
    ``[C, n]`` (``"channels"``), scaled to [-1, 1]; ``as_s16``: converted to 16 bits first
    (:func:`_to_s16`), then scaled by 1 / 32768."""
    channels = frame.layout.nb_channels
    data = frame.to_ndarray()
    if not frame.format.is_planar:  # packed: one row of interleaved samples
        data = data.reshape(-1, channels).T
    if as_s16:
        data = _to_s16(data)
    if data.dtype == np.uint8:
        samples = (data.astype(np.float32) - 128.0) / 128.0
    elif np.issubdtype(data.dtype, np.integer):
        samples = data.astype(np.float32) / float(-np.iinfo(data.dtype).min)
    else:
        samples = data.astype(np.float32, copy=False)
    if mix == "channels":
        return np.ascontiguousarray(samples, dtype=np.float32)
    return samples.mean(axis=0, dtype=np.float64).astype(np.float32)


def _declared_end(stream: av.audio.AudioStream) -> int | None:
    """The stream's end in its time base (``start_time + duration``, from the edit list or the
    header), or None when the container declares no duration."""
    if not stream.duration or stream.time_base is None:
        return None
    return (stream.start_time or 0) + stream.duration


def _to_s16(data: np.ndarray) -> np.ndarray:
    """Samples as int16, the way libswresample converts any sample format to s16 (what the
    ``ffmpeg`` tool writes for ``-f s16le``): float and double ``clip(rint(x * 32768))``
    (``lrintf``: round half to even), 32- and 64-bit integers shifted right (the top 16 bits),
    unsigned 8-bit ``(x - 128) << 8``."""
    if data.dtype == np.int16:
        return data
    if data.dtype == np.uint8:
        return ((data.astype(np.int16) - 128) << 8).astype(np.int16)
    if data.dtype in (np.int32, np.int64):
        return (data >> (8 * data.itemsize - 16)).astype(np.int16)
    if data.dtype in (np.float32, np.float64):
        scaled = np.rint(data * data.dtype.type(32768))  # exact product: a power of two
        return np.clip(scaled, -32768, 32767).astype(np.int16)
    raise ValueError(f"unsupported sample type {data.dtype}")


def _soxr_resample(samples: np.ndarray, source_rate: int, target_rate: int) -> np.ndarray:
    """``[S]`` or ``[C, S]`` float32 at ``source_rate`` -> ``target_rate`` as librosa's
    ``resample(res_type="soxr_hq")``: libsoxr's HQ one-shot per channel, then trimmed or
    zero-padded to ``ceil(S * target_rate / source_rate)`` samples; unchanged at the same
    rate."""
    if source_rate == target_rate:
        return samples
    import soxr

    length = int(math.ceil(samples.shape[-1] * (float(target_rate) / source_rate)))
    rows = samples.reshape(-1, samples.shape[-1])
    out = np.zeros((rows.shape[0], length), dtype=np.float32)
    for out_row, row in zip(out, rows):
        resampled = soxr.resample(np.ascontiguousarray(row, dtype=np.float32), source_rate,
                                  target_rate, quality="HQ")[:length]
        out_row[:resampled.size] = resampled
    return out.reshape(*samples.shape[:-1], length)


# --------------------------------------------------------------------------------------------
# Clip sampling


def _clip_layout(
    num_samples: int, num_clips: int, clip_seconds: float, sample_rate: int
) -> tuple[np.ndarray, np.ndarray, int]:
    """(starts [K] float64 s, start sample [K] int64, clip length in samples)."""
    if num_samples < 1:
        raise ValueError("waveform is empty")
    if num_clips < 1:
        raise ValueError(f"num_clips must be >= 1, got {num_clips}")
    if not clip_seconds > 0:
        raise ValueError(f"clip_seconds must be > 0, got {clip_seconds}")
    if sample_rate < 1:
        raise ValueError(f"sample_rate must be >= 1 Hz, got {sample_rate}")
    # pytorchvideo's ConstantClipsPerVideoSampler in exact fractions (clip k starts at
    # k * max(duration - clip, 0) / num_clips: the last clip ends before the track does), and
    # ImageBind's ``int(start * sample_rate)`` (truncation) for the first sample of each clip.
    span = Fraction(max(num_samples / sample_rate - clip_seconds, 0.0))
    step = span / num_clips
    exact = [step * k for k in range(num_clips)]
    starts = np.asarray([float(t) for t in exact], dtype=np.float64)
    first = np.minimum(np.asarray([int(t * sample_rate) for t in exact], dtype=np.int64),
                       num_samples - 1)
    clip_samples = int(round(clip_seconds * sample_rate))
    return starts, first, clip_samples


def sample_audio_clips(
    waveform: torch.Tensor | np.ndarray,
    *,
    num_clips: int = 8,
    clip_seconds: float = 2.0,
    sample_rate: int = SAMPLE_RATE,
) -> tuple[torch.Tensor, np.ndarray]:
    """Cut ``num_clips`` clips of ``clip_seconds`` spread uniformly over a waveform.

    Clip ``k`` starts at ``k * max(duration - clip_seconds, 0) / num_clips`` seconds, as
    pytorchvideo's ``ConstantClipsPerVideoSampler`` used by ImageBind and Video-LLaMA (§2.1:
    8 clips of 2 s), computed in exact fractions (so the last clip ends ``1 / num_clips`` of the
    spare time before the track does); a clip's first sample is ``int(start * sample_rate)``,
    as ImageBind's ``load_and_transform_audio_data``. A clip that runs past the end of the audio (audio shorter than
    ``clip_seconds``) is **zero-padded at its end**: this pads real audio to a fixed length, it
    never stands in for missing audio. (:func:`audio_clip_fbanks` computes fbank on the real
    samples only and pads the fbank instead, as ImageBind does.)

    Args:
        waveform: ``[S] float32`` mono samples (torch or numpy).
        num_clips: K >= 1.
        clip_seconds: clip length in seconds (> 0).
        sample_rate: Hz of ``waveform``.

    Returns:
        ``(clips, starts)``: ``clips [K, round(clip_seconds * sample_rate)] float32`` (torch),
        ``starts [K] float64`` seconds (numpy).

    Raises:
        ValueError: empty or non-1-D waveform, or bad clip arguments.
    """
    wave = torch.as_tensor(waveform, dtype=torch.float32)
    if wave.ndim != 1:
        raise ValueError(f"waveform must be [S] mono, got shape {tuple(wave.shape)}")
    starts, first, clip_samples = _clip_layout(wave.numel(), num_clips, clip_seconds, sample_rate)
    clips = torch.zeros(num_clips, clip_samples, dtype=torch.float32)
    for k, s in enumerate(first.tolist()):
        piece = wave[s : s + clip_samples]
        clips[k, : piece.numel()] = piece
    return clips, starts


# --------------------------------------------------------------------------------------------
# fbank


def kaldi_fbank(
    clip: torch.Tensor | np.ndarray,
    *,
    sample_rate: int = SAMPLE_RATE,
    num_mel_bins: int = 128,
    target_frames: int = 204,
    mean: float = IMAGEBIND_FBANK_MEAN,
    std: float = IMAGEBIND_FBANK_STD,
) -> torch.Tensor:
    """Kaldi-compatible log-mel filterbank of one clip, the ImageBind / AST audio front end.

    Steps (ImageBind ``waveform2melspec`` followed by its ``Normalize``):

    1. ``clip - clip.mean()`` (ImageBind; AST's original data loader does the same);
    2. ``torchaudio.compliance.kaldi.fbank(htk_compat=True, use_energy=False,
       window_type="hanning", dither=0.0, frame_length=25, frame_shift=10, num_mel_bins=...)``:
       25 ms windows every 10 ms (2 s at 16 kHz gives 198 frames; a clip shorter than one
       window gives none, where ImageBind would fail);
    3. zero-pad at the end, or crop, to ``target_frames`` frames;
    4. ``(fbank - mean) / std`` -- **after** padding, so padded rows become ``-mean / std``
       (ImageBind normalises the padded spectrogram; transformers' ``ASTFeatureExtractor``
       also pads before normalising). AST divides by ``2 * std``: pass
       ``std=2 * AST_FBANK_STD`` to match it.

    Args:
        clip: ``[S] float32`` mono samples in [-1, 1] (not int16-scaled), ``S >= 1``.
        sample_rate: Hz.
        num_mel_bins: mel bands (128 for ImageBind / AST).
        target_frames: output frames (204 for ImageBind's 2 s clips, 1024 for AST).
        mean, std: normalisation constants.

    Returns:
        ``[target_frames, num_mel_bins] float32``.

    Raises:
        ValueError: empty or non-1-D clip, ``std == 0``, or ``target_frames < 1``.
    """
    wave = torch.as_tensor(clip, dtype=torch.float32)
    if wave.ndim != 1 or wave.numel() == 0:
        raise ValueError(f"clip must be a non-empty [S] waveform, got shape {tuple(wave.shape)}")
    if target_frames < 1:
        raise ValueError(f"target_frames must be >= 1, got {target_frames}")
    if std == 0:
        raise ValueError("std must be non-zero")
    return _fbank(wave - wave.mean(), sample_rate, num_mel_bins, target_frames, mean, std)


def _fbank(wave: torch.Tensor, sample_rate: int, num_mel_bins: int, target_frames: int,
           mean: float, std: float) -> torch.Tensor:
    """Steps 2-4 of :func:`kaldi_fbank` on ``[S]`` samples."""
    if wave.numel() < int(sample_rate * 0.025):  # shorter than one 25 ms window: no frame
        fbank = torch.zeros(0, num_mel_bins)
    else:
        fbank = torchaudio.compliance.kaldi.fbank(
            wave.unsqueeze(0),
            htk_compat=True,
            sample_frequency=float(sample_rate),
            use_energy=False,
            window_type="hanning",
            num_mel_bins=num_mel_bins,
            dither=0.0,
            frame_length=25.0,
            frame_shift=10.0,
        )  # [frames, num_mel_bins]
    missing = target_frames - fbank.shape[0]
    if missing > 0:
        fbank = torch.nn.functional.pad(fbank, (0, 0, 0, missing), value=0.0)
    elif missing < 0:
        fbank = fbank[:target_frames]
    return ((fbank - mean) / std).to(torch.float32).contiguous()


def audio_clip_fbanks(
    track: AudioTrack | NoAudio,
    *,
    num_clips: int = 8,
    clip_seconds: float = 2.0,
    num_mel_bins: int = 128,
    target_frames: int = 204,
    mean: float = IMAGEBIND_FBANK_MEAN,
    std: float = IMAGEBIND_FBANK_STD,
) -> AudioClips:
    """fbank features of ``num_clips`` clips of ``clip_seconds``: the Video-LLaMA audio input.

    Defaults are Video-LLaMA's (§2.1) use of ImageBind: 8 clips of 2 s, 128 mel bins, 204
    frames, mean -4.268, std 9.138. Clip starts as :func:`sample_audio_clips`. As ImageBind,
    the fbank of a clip is computed on the real samples only (a clip cut short by the end of the
    audio is not padded with zero samples) and then padded with zero frames to
    ``target_frames`` before normalisation (:func:`kaldi_fbank`).

    Returns:
        :class:`AudioClips` with ``spectrogram [K, target_frames, num_mel_bins] float32`` and
        ``starts [K] float64`` seconds.

    Raises:
        MediaError: ``track`` is :class:`NoAudio` (the file has no audio to featurise).
        ValueError: bad clip or fbank arguments.
    """
    if isinstance(track, NoAudio):
        raise MediaError(track.path, track.reason)
    wave = track.waveform
    starts, first, clip_samples = _clip_layout(
        wave.numel(), num_clips, clip_seconds, track.sample_rate
    )
    feats = [
        kaldi_fbank(
            wave[s : s + clip_samples],
            sample_rate=track.sample_rate,
            num_mel_bins=num_mel_bins,
            target_frames=target_frames,
            mean=mean,
            std=std,
        )
        for s in first.tolist()
    ]
    return AudioClips(spectrogram=torch.stack(feats), starts=starts)


def whisper_log_mel(
    clip: torch.Tensor, *, sample_rate: int = SAMPLE_RATE, num_mel_bins: int = 80,
    target_frames: int = 3000,
) -> torch.Tensor:
    """Whisper's input: a log-mel spectrogram ``[num_mel_bins, target_frames] float32``.

    Computed by transformers' ``WhisperFeatureExtractor`` (25 ms Hann window, 10 ms hop, Slaney
    mel filters, log10, floor at max - 8, then ``(x + 4) / 4``) on the clip zero-padded (or cut)
    to ``target_frames / 100`` seconds: Whisper pads every input to 30 s (3000 frames); a tiny
    encoder built with ``max_source_positions = P`` takes ``2 P`` frames.

    Args:
        clip: ``[S] float32`` mono at ``sample_rate`` Hz (16 kHz).

    Raises:
        ValueError: ``target_frames`` is not a positive even number (Whisper's convolution
            stem halves the frame count).
    """
    from transformers import WhisperFeatureExtractor

    if target_frames < 2 or target_frames % 2:
        raise ValueError(f"target_frames must be a positive even number, got {target_frames}")
    extractor = WhisperFeatureExtractor(feature_size=num_mel_bins, sampling_rate=sample_rate,
                                        hop_length=sample_rate // 100, n_fft=400,
                                        chunk_length=1)
    extractor.n_samples = target_frames * extractor.hop_length
    extractor.nb_max_frames = target_frames
    feats = extractor(np.asarray(clip, dtype=np.float32), sampling_rate=sample_rate,
                      padding="max_length", return_tensors="np")["input_features"][0]
    return torch.from_numpy(np.ascontiguousarray(feats[:, :target_frames], dtype=np.float32))


def audio_clip_log_mels(
    track: AudioTrack | NoAudio, *, num_clips: int = 8, clip_seconds: float = 2.0,
    num_mel_bins: int = 80, target_frames: int = 3000,
) -> AudioClips:
    """Whisper log-mel spectrograms of ``num_clips`` clips of ``clip_seconds`` (clip starts as
    :func:`sample_audio_clips`; each clip's real samples only, padded by :func:`whisper_log_mel`).

    Returns:
        :class:`AudioClips` with ``spectrogram [K, num_mel_bins, target_frames] float32``.

    Raises:
        MediaError: ``track`` is :class:`NoAudio`.
    """
    if isinstance(track, NoAudio):
        raise MediaError(track.path, track.reason)
    wave = track.waveform
    starts, first, clip_samples = _clip_layout(wave.numel(), num_clips, clip_seconds,
                                               track.sample_rate)
    feats = [whisper_log_mel(wave[s: s + clip_samples], sample_rate=track.sample_rate,
                             num_mel_bins=num_mel_bins, target_frames=target_frames)
             for s in first.tolist()]
    return AudioClips(spectrogram=torch.stack(feats), starts=starts)


def audio_track_log_mel(track: AudioTrack | NoAudio, *, processor: str) -> AudioClips:
    """The whole track as one Whisper log-mel spectrogram, by the feature extractor of a
    checkpoint's processor (``preprocessor_config.json``: Qwen2.5-Omni's 128 bins, 10 ms hop):
    the frames the processor marks valid, without its padding to 300 s.

    The extractor pads the waveform with zeros to a fixed length before its STFT and floors the
    log spectrogram at its maximum minus 8; frames of the real samples only depend on the
    samples within half a window, so padding to the next frames beyond the track (instead of to
    300 s) gives the same values (the tests compare with the processor).

    Args:
        track: mono 16 kHz. processor: the checkpoint directory.

    Returns:
        :class:`AudioClips` with ``spectrogram [1, mel_bins, M] float32`` (``M`` =
        ceil(samples / hop)) and ``starts`` ``[0.0]``.

    Raises:
        MediaError: ``track`` is :class:`NoAudio`.
        ValueError: longer than the extractor takes (``nb_max_frames``: 300 s for
            Qwen2.5-Omni); the message says what to do.
    """
    from transformers import WhisperFeatureExtractor

    if isinstance(track, NoAudio):
        raise MediaError(track.path, track.reason)
    extractor = WhisperFeatureExtractor.from_pretrained(processor)
    wave = np.asarray(track.waveform, dtype=np.float32)
    hop = extractor.hop_length
    frames = max(1, math.ceil(len(wave) / hop))
    if frames > extractor.nb_max_frames:  # the processor would cut it silently; we do not
        raise ValueError(f"{len(wave) / track.sample_rate:.0f} s of audio, over the "
                         f"{extractor.nb_max_frames * hop / track.sample_rate:.0f} s this "
                         "model's audio front end takes; use --no-audio or cut the clip")
    padded = (frames + math.ceil(extractor.n_fft / hop) + 1) * hop
    extractor.n_samples, extractor.nb_max_frames = padded, padded // hop
    feats = extractor(wave, sampling_rate=track.sample_rate, padding="max_length",
                      return_tensors="np")["input_features"][0]
    return AudioClips(spectrogram=torch.from_numpy(np.ascontiguousarray(feats[None, :, :frames])),
                      starts=np.zeros(1))


def audio_track_waveform(track: AudioTrack | NoAudio) -> AudioClips:
    """The whole track as it is, for a model whose processor computes its own features from
    the samples (Gemma 4: its feature extractor runs with its tower).

    Returns:
        :class:`AudioClips` with ``spectrogram [1, S] float32`` (the 16 kHz samples) and
        ``starts`` ``[0.0]``.

    Raises:
        MediaError: ``track`` is :class:`NoAudio`.
    """
    if isinstance(track, NoAudio):
        raise MediaError(track.path, track.reason)
    return AudioClips(spectrogram=track.waveform.reshape(1, -1), starts=np.zeros(1))


def imagebind_clip_fbanks(
    track: AudioTrack | NoAudio,
    *,
    num_clips: int = 8,
    clip_seconds: float = 2.0,
    num_mel_bins: int = 128,
    target_frames: int = 204,
    mean: float = IMAGEBIND_FBANK_MEAN,
    std: float = IMAGEBIND_FBANK_STD,
) -> AudioClips:
    """ImageBind's ``load_and_transform_audio_data`` exactly, as Video-LLaMA's demo calls it
    (``clips_per_video=8``), on a track decoded with ``load_audio(mix="channels")``.

    It differs from :func:`audio_clip_fbanks` in two quirks of the original, kept so that the
    released audio branch sees what it was trained on:

    - ``waveform2melspec`` subtracts the clip's mean **in place** on a view of the whole track, so
      a later clip that overlaps an earlier one starts from the already shifted samples;
    - the mean is taken over every channel, but ``kaldi.fbank`` reads channel 0 only.

    Clip starts as :func:`sample_audio_clips`; fbank, padding and normalisation as
    :func:`kaldi_fbank` (steps 2-4).

    Args:
        track: ``waveform [C, S]`` (or ``[S]``) at 16 kHz, or :class:`NoAudio`.

    Returns:
        :class:`AudioClips` with ``spectrogram [K, target_frames, num_mel_bins] float32``.

    Raises:
        MediaError: ``track`` is :class:`NoAudio`.
    """
    if isinstance(track, NoAudio):
        raise MediaError(track.path, track.reason)
    wave = torch.atleast_2d(track.waveform).clone()
    starts, first, clip_samples = _clip_layout(wave.shape[-1], num_clips, clip_seconds,
                                               track.sample_rate)
    feats = []
    for s in first.tolist():
        view = wave[:, s : s + clip_samples]
        view -= view.mean()  # in place: the shared track changes, as in the original
        feats.append(_fbank(view[0], track.sample_rate, num_mel_bins, target_frames, mean, std))
    return AudioClips(spectrogram=torch.stack(feats), starts=starts)


#: Spectrogram front ends by the name a decode request gives (``frontend``): each takes an
#: :class:`AudioTrack` and its keyword arguments and returns :class:`AudioClips`. Families name
#: theirs in their encoders' decode settings; the feature store looks them up here.
AUDIO_FRONTENDS = {"kaldi_fbank": audio_clip_fbanks, "whisper_log_mel": audio_clip_log_mels,
                   "whisper_track": audio_track_log_mel, "imagebind_fbank": imagebind_clip_fbanks,
                   "waveform": audio_track_waveform}
