"""Generate the toy-av dataset into a directory, atomically and deterministically.

Public entry point: :func:`generate_toy_av`. Layout of the directory::

    toy-av.json                  manifest (settings, vocabulary, usual sounds, counts, files)
    clips.jsonl                  ground truth, one JSON object per clip
    media/<id>.mp4               h264 yuv420p + mono AAC, ids "toyav-00042"
    stage1.json                  stage-1 caption pairs (train split), LLaVA JSON
    stage2.json                  stage-2 multi-turn instructions (train split), LLaVA JSON
    qa/<split>_questions.json    Video-ChatGPT / MSVD-QA questions for val, test, probe
    qa/<split>_answers.json      ... and their answers
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import secrets
import shutil
import time
from pathlib import Path
from typing import Any, Callable

from vlm_cli.errors import UsageError, VlmError
from vlm_cli.toyav import annotations, world
from vlm_cli.toyav.render import num_frames, render_audio, render_frames

NAME = "toy-av"
FORMAT_VERSION = 1
SAMPLE_RATE = 16000
MANIFEST = "toy-av.json"
_SETTINGS = ("seed", "clips", "size", "fps", "seconds")
_TMP_MARK = ".toyav-tmp-"
_CLIPS_PER_WORKER = 32  # below this many clips per worker, extra processes cost more than they save


def _check_settings(clips: Any, seed: Any, size: Any, fps: Any, seconds: Any, workers: Any) -> None:
    """Raise UsageError for a setting out of range (names the option)."""

    def is_int(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    if not is_int(clips) or not 1 <= clips <= 1_000_000:
        raise UsageError(f"--clips must be an integer in [1, 1000000], got {clips!r}")
    if not is_int(seed) or not 0 <= seed < 2**63:
        raise UsageError(f"--seed must be a non-negative integer, got {seed!r}")
    if not is_int(size) or not 16 <= size <= 1024 or size % 2:
        raise UsageError(f"--size must be an even integer in [16, 1024] px, got {size!r}")
    if not is_int(fps) or not 1 <= fps <= 120:
        raise UsageError(f"--fps must be an integer in [1, 120], got {fps!r}")
    if not isinstance(seconds, (int, float)) or isinstance(seconds, bool) or not 0.1 <= seconds <= 60:
        raise UsageError(f"--seconds must be a number in [0.1, 60], got {seconds!r}")
    if round(fps * seconds) < 2:
        raise UsageError(f"--fps x --seconds must give at least 2 frames, got {fps} x {seconds}")
    if workers is not None and (not is_int(workers) or workers < 1):
        raise UsageError(f"--workers must be a positive integer, got {workers!r}")


def _available_cpus() -> int:
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def _render_clip(job: tuple[world.ClipSpec, str, int, int, float, int]) -> str:
    """Worker: render one clip and write its mp4. Returns the clip id; raises VlmError naming the file."""
    import av  # PyAV is imported only where media is written

    from vlm_cli.toyav.writer import write_mp4

    spec, path, size, fps, seconds, sample_rate = job
    frames = render_frames(spec, size=size, fps=fps, seconds=seconds)
    audio = render_audio(spec, seconds=seconds, sample_rate=sample_rate)
    try:
        write_mp4(path, frames, audio, fps=fps, sample_rate=sample_rate)
    except (OSError, av.error.FFmpegError) as exc:
        raise VlmError(f"{path}: cannot write toy-av clip: {exc}") from None
    return spec.id


def _read_manifest(out_dir: Path) -> dict[str, Any] | None:
    """The manifest of ``out_dir`` or None if it has none; UsageError if it is unreadable."""
    path = out_dir / MANIFEST
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UsageError(
            f"{out_dir}: unreadable {MANIFEST} ({exc}); choose another --out or delete it"
        ) from None
    return data if isinstance(data, dict) else None


def _summary(out_dir: Path, manifest: dict[str, Any], elapsed: float, existing: bool) -> dict[str, Any]:
    files = {"manifest": str(out_dir / MANIFEST)}
    for rel in manifest["annotation_files"]:
        files[Path(rel).stem] = str(out_dir / rel)
    return {
        "out_dir": str(out_dir),
        "clips": manifest["clips"],
        "seed": manifest["seed"],
        "size": manifest["size"],
        "fps": manifest["fps"],
        "seconds": manifest["seconds"],
        "counts": dict(manifest["counts"]),
        "elapsed_s": round(elapsed, 3),
        "annotations": files,
        "existing": existing,
    }


def _existing(out_dir: Path, settings: dict[str, Any]) -> dict[str, Any] | None:
    """Summary of a complete dataset with the same settings in ``out_dir``, None if ``out_dir`` is
    absent or an empty directory; UsageError for anything else there."""
    if not out_dir.exists():
        return None
    if not out_dir.is_dir():
        raise UsageError(f"{out_dir}: exists and is not a directory; choose another --out or delete it")
    if not any(out_dir.iterdir()):
        return None
    manifest = _read_manifest(out_dir)
    if manifest is None or manifest.get("name") != NAME:
        raise UsageError(f"{out_dir}: exists and is not a toy-av dataset; choose another --out or delete it")
    theirs = {k: manifest.get(k) for k in ("format_version", *_SETTINGS)}
    ours = {"format_version": FORMAT_VERSION, **{k: settings[k] for k in _SETTINGS}}
    if theirs != ours:
        diff = ", ".join(f"{k}={theirs[k]!r} (requested {ours[k]!r})" for k in ours if theirs[k] != ours[k])
        raise UsageError(
            f"{out_dir}: holds a toy-av dataset with other settings ({diff}); "
            "choose another --out or delete it"
        )
    media = [f"media/{world.clip_id(i)}.mp4" for i in range(settings["clips"])]
    missing = [rel for rel in [*manifest.get("annotation_files", []), *media] if not (out_dir / rel).is_file()]
    if missing:
        raise UsageError(
            f"{out_dir}: incomplete toy-av dataset (missing {missing[0]}); delete it and generate again"
        )
    return _summary(out_dir, manifest, 0.0, existing=True)


def _remove_stale_temp_dirs(out_dir: Path) -> None:
    """Delete temp siblings ``.<name>.toyav-tmp-<pid>-*`` left by runs whose process is gone (POSIX)."""
    if os.name != "posix" or not out_dir.parent.is_dir():
        return
    prefix = f".{out_dir.name}{_TMP_MARK}"
    for entry in out_dir.parent.iterdir():
        if not entry.name.startswith(prefix):
            continue
        pid_text = entry.name[len(prefix) :].split("-", 1)[0]
        if not pid_text.isdigit() or int(pid_text) == os.getpid():
            continue
        try:
            os.kill(int(pid_text), 0)
        except ProcessLookupError:
            shutil.rmtree(entry, ignore_errors=True)
        except PermissionError:
            continue  # alive, owned by someone else


def _render_all(
    jobs: list[tuple[world.ClipSpec, str, int, int, float, int]],
    workers: int,
    progress: Callable[[int, int], None] | None,
) -> None:
    total = len(jobs)
    if workers <= 1:
        results: Any = map(_render_clip, jobs)
        pool = None
    else:
        method = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
        pool = multiprocessing.get_context(method).Pool(workers)
        chunksize = max(1, min(16, total // (workers * 8)))
        results = pool.imap_unordered(_render_clip, jobs, chunksize=chunksize)
    try:
        for done, _ in enumerate(results, start=1):
            if progress is not None:
                progress(done, total)
        if pool is not None:
            pool.close()
            pool.join()
    finally:
        if pool is not None:
            pool.terminate()


def generate_toy_av(
    out_dir: str | os.PathLike[str],
    *,
    clips: int = 1000,
    seed: int = 0,
    size: int = 64,
    fps: int = 8,
    seconds: float = 2.0,
    workers: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Generate the toy-av dataset (synthetic audio-visual clips + annotations) into ``out_dir``.

    Each clip is an mp4 of ``seconds`` s at ``fps`` frames per second, ``size`` x ``size`` px (h264
    yuv420p) with a mono AAC soundtrack at 16 kHz: one coloured shape crossing the frame in one
    direction while one of 5 sounds plays. Clips go to the train/val/test/probe splits (70/10/10/10 %);
    see :mod:`vlm_cli.toyav.world` for the sampling rules and the module docstring for the layout.

    Output is byte-identical for the same ``(seed, clips, size, fps, seconds)`` whatever ``workers``.
    Everything is written into a temporary sibling directory that is renamed to ``out_dir`` at the
    end, so an interrupted run never leaves a half-written ``out_dir``.

    Args:
        out_dir: directory to create (its parent is created if needed).
        clips: number of clips (>= 1).
        seed: non-negative integer seed.
        size: frame width and height in px (even, 16-1024).
        fps: frames per second (integer).
        seconds: clip length in seconds.
        workers: render processes; None uses the available CPUs, fewer for small datasets
            (one per 32 clips). 1 renders in this process.
        progress: called as ``progress(done, total)`` after each clip is written.

    Returns:
        ``{"out_dir", "clips", "seed", "size", "fps", "seconds", "counts": {split: n},
        "elapsed_s", "annotations": {"manifest"|"clips"|"stage1"|"stage2"|"<split>_questions"|
        "<split>_answers": absolute path}, "existing": bool}``. ``existing`` is True (and nothing is
        written) when ``out_dir`` already holds a complete dataset with the same settings.

    Raises:
        UsageError: a setting out of range, or ``out_dir`` exists with other contents or settings.
        VlmError: a file cannot be written (disk full, permissions).
    """
    _check_settings(clips, seed, size, fps, seconds, workers)
    seconds = float(seconds)
    out = Path(out_dir).expanduser().absolute()
    settings = {"seed": seed, "clips": clips, "size": size, "fps": fps, "seconds": seconds}
    found = _existing(out, settings)
    if found is not None:
        return found

    started = time.perf_counter()
    specs = world.sample_clips(seed, clips, size=size)
    if workers is None:
        workers = min(_available_cpus(), math.ceil(clips / _CLIPS_PER_WORKER))
    workers = max(1, min(workers, clips))

    _remove_stale_temp_dirs(out)
    tmp = out.parent / f".{out.name}{_TMP_MARK}{os.getpid()}-{secrets.token_hex(4)}"
    try:
        (tmp / "media").mkdir(parents=True)
    except OSError as exc:
        raise VlmError(f"{out}: cannot create the output directory ({exc.strerror or exc})") from None
    try:
        jobs = [(s, str(tmp / "media" / f"{s.id}.mp4"), size, fps, seconds, SAMPLE_RATE) for s in specs]
        _render_all(jobs, workers, progress)
        files = annotations.write_annotations(tmp, specs, seed)
        manifest = _manifest(settings, specs, files)
        annotations.write_json(tmp / MANIFEST, manifest)
        if out.is_dir() and not any(out.iterdir()):
            out.rmdir()
        os.rename(tmp, out)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        found = _existing(out, settings)  # a concurrent run may have finished first
        if found is not None:
            return found
        raise VlmError(f"{out}: cannot write the toy-av dataset ({exc})") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return _summary(out, manifest, time.perf_counter() - started, existing=False)


def _manifest(settings: dict[str, Any], specs: list[world.ClipSpec], files: list[str]) -> dict[str, Any]:
    counts = {split: 0 for split in world.SPLITS}
    kinds = {"contradiction": 0, "reversed": 0}
    for s in specs:
        counts[s.split] += 1
        if s.probe_kind:
            kinds[s.probe_kind] += 1
    return {
        "name": NAME,
        "format_version": FORMAT_VERSION,
        **settings,
        "frames": num_frames(settings["fps"], settings["seconds"]),
        "sample_rate": SAMPLE_RATE,
        "video_codec": "h264",
        "pix_fmt": "yuv420p",
        "audio_codec": "aac",
        "audio_channels": 1,
        "colours": list(world.COLOURS),
        "shapes": list(world.SHAPES),
        "directions": list(world.DIRECTIONS),
        "sounds": list(world.SOUNDS),
        "usual_sound": dict(world.USUAL_SOUND),
        "usual_sound_prob": world.USUAL_PROB,
        "split_fractions": dict(world.DEFAULT_FRACTIONS),
        "counts": counts,
        "probe_kinds": kinds,
        "question_types": list(annotations.QUESTION_TYPES),
        "media_dir": "media",
        "annotation_files": files,
    }
