"""Encoder alignment (``vlm pretrain RECIPE --stage encoders``): train the vision and audio
encoders of a recipe that has no pretrained ones (tiny-av) against caption views, then freeze them.

Why: trained end to end through an untrained LLM, a tiny video encoder never learns shape or
motion direction (the signal does not get back through two untrained attention stages);
real systems align their encoders to language first (LanguageBind, ImageBind — the thesis of
Video-LLaVA). Here each caption is split into *views* that name one attribute at a time (its
colour, shape, motion direction, sound: :class:`vlm_cli.recipe.ViewSpec`); each encoder learns to
predict the views of its modality from its pooled output. A spatio-temporal encoder (ViViT,
tubelets spanning 2 frames) makes motion direction learnable at all.

Inputs are decoded once (frames and fbank, in crash-isolated workers forked from one process that
imported torch once, one compute thread each, as ``vlm preprocess``'s) and kept in the cache
manager like features are, so a re-run does not decode again. The run directory gets
``vision/`` and ``audio/`` (``save_pretrained``, safetensors), which later stages use with
``--encoders RUN``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vlm_cli.errors import DataError, UsageError, VlmError
from vlm_cli.recipe import AlignSpec, Recipe, ViewSpec

IGNORE = -100


def view_labels(captions: Sequence[str], views: Sequence[ViewSpec]) -> dict[str, torch.Tensor]:
    """Per view, the index in ``view.words`` that each caption names (-100 when none).

    Words match whole-word and case-insensitively; the longest match wins ("rising chirp" over
    "chirp"), so multi-word phrases work.
    """
    out = {}
    for view in views:
        order = sorted(range(len(view.words)), key=lambda i: -len(view.words[i]))
        patterns = [(i, re.compile(rf"\b{re.escape(view.words[i].lower())}\b")) for i in order]
        labels = []
        for caption in captions:
            text = caption.lower()
            labels.append(next((i for i, pat in patterns if pat.search(text)), IGNORE))
        out[view.name] = torch.tensor(labels)
    return out


def decoded_inputs(paths: Sequence[Path], store: Any, *, workers: int) -> dict[str, torch.Tensor]:
    """Decoded encoder inputs of every file: ``frames [N, T, H, W, 3] uint8`` and
    ``spectrogram [N, K, ...] float32``, from the cache or decoded in workers and cached.

    Raises:
        VlmError: a file that cannot be decoded (named), or one without an audio track.
    """
    from vlm_cli.keys import DecodedKey, FeatureKey
    from vlm_cli.preprocess import decode_in_workers
    from vlm_cli.workers import TaskFailure

    media = [store.media(p) for p in paths]
    request = store.request(media[0], ["vision", "audio"])
    decoded = DecodedKey(frames=request.frames, audio=request.audio)
    cache = store.cache
    keys = [FeatureKey(m.sha256, decoded, {}) for m in media]
    entries: list[dict[str, torch.Tensor] | None] = []
    for key in keys:
        entry = cache.get(key)
        entries.append(entry[0] if entry is not None else None)
    todo = [i for i, e in enumerate(entries) if e is None]
    requests = [store.request(media[i], ["vision", "audio"]) for i in todo]
    for j, result in (decode_in_workers(requests, workers=workers) if todo else []):
        i = todo[j]
        if isinstance(result, TaskFailure):
            raise VlmError(f"{paths[i]}: {result.reason}")
        if "absent" in result["audio"]:
            raise VlmError(f"{paths[i]}: no audio track (the audio encoder needs one to align)")
        tensors = {"frames": torch.as_tensor(result["vision"]["frames"]),
                   "spectrogram": torch.as_tensor(result["audio"]["spectrogram"])}
        cache.put(keys[i], tensors, {"modality": "decoded", "media": str(paths[i])})
        entries[i] = tensors
    return {name: torch.stack([e[name] for e in entries]) for name in ("frames", "spectrogram")}


class AlignmentModel(nn.Module):
    """The two encoders (trainable) with one linear head per view and per joint group."""

    def __init__(self, recipe: Recipe, spec: AlignSpec, digest: Callable[[Path], str]) -> None:
        super().__init__()
        from vlm_cli.model.encoders import AudioEncoder, VisionEncoder

        self.vision = VisionEncoder(recipe.model.vision, digest)
        self.audio = AudioEncoder(recipe.model.audio, digest, recipe.data.clip_seconds)
        self.vision.requires_grad_(True)
        self.audio.requires_grad_(True)
        from vlm_cli.model.fingerprint import encoder_hidden_size

        widths = {"vision": encoder_hidden_size(recipe.model.vision),
                  "audio": encoder_hidden_size(recipe.model.audio)}
        self.views = {v.name: v for v in spec.views}
        self.heads = nn.ModuleDict({v.name: nn.Linear(widths[v.modality], len(v.words))
                                    for v in spec.views})
        self.joint = [list(group) for group in spec.joint]
        self.joint_heads = nn.ModuleList(
            nn.Linear(widths["vision"], math.prod(len(self.views[n].words) for n in group))
            for group in self.joint)

    def forward(self, frames: torch.Tensor, spectrogram: torch.Tensor
                ) -> dict[str, torch.Tensor]:
        """``frames [B, T, H, W, 3] uint8``, ``spectrogram [B, K, ...]`` -> logits per view name
        and per joint group (``"a+b+c"``)."""
        pixels = torch.stack([self.vision.preprocess(f) for f in frames])
        if self.vision.per_clip:
            v = self.vision(pixels).mean(dim=(1, 2))
        else:
            v = torch.stack([self.vision(p)[0].mean(dim=(0, 1)) for p in pixels])
        b, k = spectrogram.shape[:2]
        a = self.audio(spectrogram.flatten(0, 1))
        a = a.reshape(b, k, -1, a.shape[-1]).mean(dim=(1, 2))
        pooled = {"vision": v, "audio": a}
        logits = {name: head(pooled[self.views[name].modality])
                  for name, head in self.heads.items()}
        for group, head in zip(self.joint, self.joint_heads):
            logits["+".join(group)] = head(v)
        return logits


def joint_labels(labels: dict[str, torch.Tensor], group: list[str],
                 sizes: dict[str, int]) -> torch.Tensor:
    """Mixed-radix index of a joint group (-100 when any member is missing)."""
    out = torch.zeros_like(labels[group[0]])
    missing = torch.zeros_like(out, dtype=torch.bool)
    for name in group:
        out = out * sizes[name] + labels[name].clamp(min=0)
        missing |= labels[name] == IGNORE
    return out.masked_fill(missing, IGNORE)


@dataclasses.dataclass
class AlignSummary:
    """What ``vlm pretrain --stage encoders`` prints."""

    run_dir: str
    stage: str
    samples: int
    steps: int
    seconds: float
    final_loss: float
    train_accuracy: dict[str, float]
    processes: int = 1


def run_align(recipe: Recipe, run_dir: Path, *, data: Path | None, media_root: Path | None,
              workers: int = 2, resume: bool = False,
              on_step: Callable[[Any], None] | None = None) -> AlignSummary | None:
    """Align the recipe's encoders to caption views and save them into ``run_dir``, on the
    training engine of stages 1 and 2 (:func:`vlm_cli.train.loop.fit`): checkpoints, ``--resume``
    and ``accelerate launch`` (DDP, or FSDP2 with the encoders' layers as sharded units) work the
    same.

    Returns:
        The summary on the main process; None on the other processes of a distributed run.

    Raises:
        UsageError: the recipe has no ``train.encoders``, no vision + audio encoders built from
            a config, no data, or ``run_dir`` is not empty (without ``resume``).
        DataError: a record without a caption, or no caption naming any view.
    """
    from vlm_cli.cache import FeatureCache
    from vlm_cli.data import load_records
    from vlm_cli.features import FeatureStore
    from vlm_cli.train.loop import fit, make_accelerator, plot_loss

    spec = recipe.train.encoders
    if spec is None or recipe.model.vision is None or recipe.model.audio is None:
        raise UsageError(f"recipe {recipe.name!r} has no train.encoders stage (or lacks a vision "
                         "or audio encoder)")
    data_path = data or (Path(spec.data) if spec.data else None)
    if data_path is None:
        raise UsageError("no caption data: pass --data or set train.encoders.data")
    if not resume and run_dir.exists() and any(run_dir.iterdir()):
        raise UsageError(f"{run_dir}: run directory exists; pass --resume to continue it or "
                         "choose another --out")
    root = media_root or (Path(recipe.data.media_root) if recipe.data.media_root else None)
    records = [r for r in load_records(data_path, root) if r.media]
    captions = []
    for record in records:
        answers = [t["value"] for t in record.conversations if t["from"] == "gpt"]
        if not answers:
            raise DataError(f"record {record.id!r}: no caption (gpt turn)")
        captions.append(" ".join(answers))
    labels = view_labels(captions, spec.views)
    if all((labels[v.name] == IGNORE).all() for v in spec.views):
        raise DataError(f"{data_path}: no caption names any of the views' words")
    accelerator = make_accelerator()
    store = FeatureStore(recipe, FeatureCache())
    paths = [r.media[0].path for r in records]
    if accelerator.is_main_process:  # decode once; the other processes read the cache
        inputs = decoded_inputs(paths, store, workers=workers)
    accelerator.wait_for_everyone()
    if not accelerator.is_main_process:
        inputs = decoded_inputs(paths, store, workers=workers)
    sizes = {v.name: len(v.words) for v in spec.views}
    for group in spec.joint:
        labels["+".join(group)] = joint_labels(labels, group, sizes)

    torch.manual_seed(spec.seed)
    model = AlignmentModel(recipe, spec, store.cache.file_digest)
    hits: dict[str, list[float]] = {name: [] for name in labels}

    def loss(model: nn.Module, micro: list[int]) -> torch.Tensor:
        """Sum over views of the mean cross-entropy, times the micro-batch size (the engine
        divides by the global batch size)."""
        idx = torch.tensor(micro)
        total = torch.zeros((), device=accelerator.device)
        for name, out in model(inputs["frames"][idx], inputs["spectrogram"][idx]).items():
            target = labels[name][idx].to(out.device)
            keep = target != IGNORE
            if keep.any():
                total = total + nn.functional.cross_entropy(out, target, ignore_index=IGNORE)
                hits[name].append((out.argmax(-1)[keep] == target[keep]).float().mean().item())
        return total * len(micro)

    run_dir.mkdir(parents=True, exist_ok=True)
    result, model = fit(model, loss, spec, n=len(records), steps=spec.steps, run_dir=run_dir,
                        resume=resume, accelerator=accelerator, on_step=on_step)
    if not accelerator.is_main_process:
        return None
    _save(run_dir, recipe, model, spec, result.seconds)
    plot_loss(run_dir)
    window = max(1, min(20, spec.steps))
    accuracy = {name: round(sum(h[-window:]) / len(h[-window:]), 4)
                for name, h in hits.items() if h}
    return AlignSummary(str(run_dir), "encoders", len(records), result.steps, result.seconds,
                        result.final_loss, accuracy, accelerator.num_processes)


def _save(run_dir: Path, recipe: Recipe, model: AlignmentModel, spec: AlignSpec,
          seconds: float) -> None:
    import yaml

    from vlm_cli.atomic import atomic_write_text

    model.vision.model.save_pretrained(run_dir / "vision", safe_serialization=True)
    model.audio.model.save_pretrained(run_dir / "audio", safe_serialization=True)
    atomic_write_text(run_dir / "recipe.yaml", yaml.safe_dump(recipe.to_dict(), sort_keys=False))
    atomic_write_text(run_dir / "config.json", json.dumps(
        {"format": "vlm-encoders/1", "stage": "encoders", "recipe": recipe.name,
         "steps": spec.steps, "seconds": round(seconds, 2)}, indent=2) + "\n")


def use_aligned_encoders(recipe: Recipe, encoders_dir: Path) -> Recipe:
    """``recipe`` with its vision and audio encoders loaded from an alignment run directory
    (``RUN/vision``, ``RUN/audio``) instead of randomly initialised from their configs. A branch
    the recipe leaves out (``model.audio=null``: a model trained without audio) stays out.

    Raises:
        UsageError: ``encoders_dir`` is not an alignment run directory.
    """
    model, parts = recipe.model, {}
    for part in ("vision", "audio"):
        if not (encoders_dir / part / "config.json").exists():
            raise UsageError(f"--encoders {encoders_dir}: no {part}/ encoder (run "
                             "`vlm pretrain RECIPE --stage encoders` first)")
        spec = getattr(model, part)
        if spec is not None:
            parts[part] = dataclasses.replace(spec, pretrained=str((encoders_dir / part)
                                                                   .resolve()),
                                              config=None, revision=None)
    return dataclasses.replace(recipe, model=dataclasses.replace(model, **parts))
