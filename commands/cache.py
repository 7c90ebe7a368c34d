"""``vlm cache``: list, measure, prune or clear the feature cache ($VLM_HOME)."""

from __future__ import annotations

import time
from typing import Annotated, Optional

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode="rich",
                  help="List, measure, prune or clear the feature cache "
                       "($VLM_HOME, else $XDG_CACHE_HOME/vlm, else ~/.cache/vlm). Model weights "
                       "are not here: they stay in the Hugging Face hub cache.")

JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON object.")]


def _entry_dict(entry) -> dict:
    meta = entry.metadata
    return {"key": entry.key, "modality": meta.get("modality"), "media": meta.get("media"),
            "audio": meta.get("audio"), "bytes": entry.size,
            "last_used": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(entry.mtime)),
            "path": str(entry.path)}


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


@app.command("ls")
def ls(json_out: JsonOption = False) -> None:
    """List cache entries: key, modality, media file, size, last use."""
    from rich.table import Table

    from vlm_cli import console
    from vlm_cli.cache import FeatureCache

    cache = FeatureCache()
    rows = [_entry_dict(e) for e in cache.entries()]
    if json_out:
        console.print_json({"root": str(cache.root), "entries": rows})
        return
    table = Table("key", "modality", "media", "size", "last used", box=None)
    for r in rows:
        modality = r["modality"] + (" (absent)" if r["audio"] == "absent" else "")
        table.add_row(r["key"][:12], modality, r["media"], _human(r["bytes"]), r["last_used"])
    console.stdout.print(table)
    console.stdout.print(f"{len(rows)} entries in {cache.root}")


@app.command("du")
def du(json_out: JsonOption = False) -> None:
    """Total size of the cache, by modality."""
    from vlm_cli import console
    from vlm_cli.cache import FeatureCache

    cache = FeatureCache()
    by_modality: dict[str, dict[str, int]] = {}
    for e in cache.entries():
        slot = by_modality.setdefault(e.metadata.get("modality") or "unknown",
                                      {"entries": 0, "bytes": 0})
        slot["entries"] += 1
        slot["bytes"] += e.size
    total = {"entries": sum(v["entries"] for v in by_modality.values()),
             "bytes": sum(v["bytes"] for v in by_modality.values())}
    if json_out:
        console.print_json({"root": str(cache.root), **total, "by_modality": by_modality})
        return
    for name, v in sorted(by_modality.items()):
        console.stdout.print(f"{name}: {v['entries']} entries, {_human(v['bytes'])}")
    console.stdout.print(f"total: {total['entries']} entries, {_human(total['bytes'])} "
                         f"in {cache.root}")


@app.command("prune")
def prune(
    max_size: Annotated[Optional[str], typer.Option(
        help="Remove least-recently-used entries until the cache is at most this size "
             "(e.g. 500M, 2G).", show_default=False)] = None,
    older_than: Annotated[Optional[float], typer.Option(
        min=0, help="Remove entries not used for more than this many days.",
        show_default=False)] = None,
    json_out: JsonOption = False,
) -> None:
    """Remove least-recently-used entries (--max-size) or stale ones (--older-than)."""
    from vlm_cli import console
    from vlm_cli.cache import FeatureCache, parse_size
    from vlm_cli.errors import UsageError

    if max_size is None and older_than is None:
        raise UsageError("vlm cache prune: give --max-size SIZE or --older-than DAYS")
    limit = parse_size(max_size) if max_size is not None else None
    removed = FeatureCache().prune(max_size=limit, older_than_s=None if older_than is None
                                   else older_than * 86400)
    freed = sum(e.size for e in removed)
    if json_out:
        console.print_json({"removed": len(removed), "bytes": freed})
    else:
        console.stdout.print(f"removed {len(removed)} entries, freed {_human(freed)}")


@app.command("clear")
def clear(
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    json_out: JsonOption = False,
) -> None:
    """Remove every feature entry and the media-hash memo."""
    import sys

    from vlm_cli import console
    from vlm_cli.cache import FeatureCache
    from vlm_cli.errors import UsageError

    cache = FeatureCache()
    if not yes:
        if not sys.stdin.isatty():
            raise UsageError("vlm cache clear: pass --yes to clear without a prompt")
        typer.confirm(f"Remove every entry in {cache.root}?", abort=True)
    removed = cache.clear()
    freed = sum(e.size for e in removed)
    if json_out:
        console.print_json({"removed": len(removed), "bytes": freed})
    else:
        console.stdout.print(f"removed {len(removed)} entries, freed {_human(freed)}")
