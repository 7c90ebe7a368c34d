"""requirements.lock (made by `make lock` with uv) and pyproject.toml must agree.

`make demo` / `make test` (and so CI) install exactly the lock; people who `pip install` the
package into their own environment get pyproject's ranges. If the two drift apart, the tested
environment is no longer one a user can get, so these tests fail until `make lock` is re-run.
"""
from __future__ import annotations

import importlib.metadata
import re
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
ENTRY = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)\s*(?:;\s*(.+?))?\s*\\?$")
TORCH_FAMILY = {"torch": "2.11.0", "torchaudio": "2.11.0", "torchvision": "0.26.0"}


def _pyproject_requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return [Requirement(r) for r in project["dependencies"] + project["optional-dependencies"]["test"]]


def _lock() -> dict[str, list[tuple[Version, Marker | None, int]]]:
    """name -> [(version, marker, number of hashes)]; a name appears once per Python fork."""
    entries: dict[str, list[tuple[Version, Marker | None, int]]] = {}
    current = None
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        match = ENTRY.match(line)
        if match:
            name, version, marker = match.groups()
            current = [Version(version), Marker(marker) if marker else None, 0]
            entries.setdefault(canonicalize_name(name), []).append(current)
        elif current is not None and line.strip().startswith("--hash=sha256:"):
            current[2] += 1
    return {name: [tuple(e) for e in group] for name, group in entries.items()}


def _applies_here(marker: Marker | None) -> bool:
    return marker is None or marker.evaluate()


def test_every_pyproject_requirement_is_locked_within_its_range():
    lock = _lock()
    for req in _pyproject_requirements():
        name = canonicalize_name(req.name)
        assert name in lock, f"{req.name} is in pyproject.toml but not in requirements.lock: run make lock"
        for version, _, _ in lock[name]:
            assert req.specifier.contains(version, prereleases=True), (
                f"requirements.lock has {req.name}=={version}, outside pyproject's {req}: run make lock")


def test_every_locked_package_has_hashes():
    for name, group in _lock().items():
        for version, _, hashes in group:
            assert hashes > 0, f"{name}=={version} has no sha256 hash in requirements.lock"


def test_torch_family_and_transformers_are_pinned_exactly():
    """torchaudio builds are tied to one torch build (torchaudio 2.11.1 does not load against
    torch 2.11.0): pyproject pins the family exactly and together; transformers is locked to one
    version because its multimodal processor APIs change between 5.x minors."""
    pins = {canonicalize_name(r.name): r for r in _pyproject_requirements()}
    lock = _lock()
    for name, version in TORCH_FAMILY.items():
        assert str(pins[name].specifier) == f"=={version}", pins[name]
        assert [str(v) for v, _, _ in lock[name]] == [version]
    assert len({v for v, _, _ in lock["transformers"]}) == 1


def test_lock_holds_exactly_the_dependency_closure_of_pyproject():
    """Walk the installed packages' own requirements from pyproject's list (markers evaluated for
    this interpreter): the locked names that apply here are exactly that closure, so a dependency
    removed from pyproject.toml (or added without re-locking) fails here."""
    lock = _lock()
    closure: set[str] = set()
    todo = [(r, frozenset()) for r in _pyproject_requirements()]
    while todo:
        req, extras = todo.pop()
        if req.marker is not None and not any(
                req.marker.evaluate({"extra": e}) for e in (extras or {""})):
            continue
        name = canonicalize_name(req.name)
        if name in closure:
            continue
        closure.add(name)
        for sub in importlib.metadata.distribution(name).requires or []:
            todo.append((Requirement(sub), frozenset(req.extras)))
    here = {name for name, group in lock.items() if any(_applies_here(m) for _, m, _ in group)}
    assert closure - here == set(), f"installed dependencies missing from the lock: {closure - here}"
    assert here - closure == set(), f"locked packages nothing requires: {here - closure}"


def test_installed_environment_is_the_lock():
    """What `make install` put into the venv is what the lock says (a stale venv fails here)."""
    if Path(sys.prefix).resolve() != (ROOT / ".venv").resolve():
        pytest.skip("not running in the project's .venv (make install)")
    for name, group in _lock().items():
        for version, marker, _ in group:
            if _applies_here(marker):
                assert Version(importlib.metadata.version(name)) == version, name
