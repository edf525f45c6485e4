"""Plugins: benchmarks and methods from other installed packages, through entry points.

A package joins the platform by declaring entry points in one of two groups:

    [project.entry-points."mfdiffuser.benchmarks"]
    bar_crowding = "my_package.bar:SPEC"        # a BenchmarkSpec

    [project.entry-points."mfdiffuser.methods"]
    my_method = "my_package.method:SPEC"        # a MethodSpec

An entry point names a spec, a list of specs, or a function of no arguments returning either.
The registries (`envs.registry.BENCHMARKS`, `methods.registry.METHODS`) read the entry points
the first time they are used in a process, so the driver, every Ray actor, Train worker and Tune
trial builds the same registry from what is installed where it runs.

`MFD_PLUGIN_PATH` (directories, separated by `os.pathsep`) adds places to look, for a plugin
installed with `pip install --target DIR` rather than into the environment; `mfd` forwards it
to every Ray worker of a session it starts (`platform.runtime.ray_session`), so the workers find
the same plugins. A plugin may not reuse a built-in name or another plugin's name.

No Ray, no MLflow: the core imports this.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Iterable, Iterator, MutableMapping
from importlib import metadata
from pathlib import Path
from typing import Any, Generic, TypeVar

PLUGIN_PATH_ENV = "MFD_PLUGIN_PATH"
BUILT_IN = "built-in"

T = TypeVar("T")


class PluginError(ValueError):
    """A plugin that cannot be loaded: the message names the entry point and its package."""


def plugin_dirs() -> list[str]:
    """The directories of MFD_PLUGIN_PATH, each checked to exist."""
    raw = os.environ.get(PLUGIN_PATH_ENV, "")
    dirs = [d for d in raw.split(os.pathsep) if d]
    for d in dirs:
        if not Path(d).is_dir():
            raise PluginError(
                f"{PLUGIN_PATH_ENV} = {raw!r}: {d!r} is not a directory; allowed: directories "
                f"separated by {os.pathsep!r} (e.g. a `pip install --target DIR` directory)"
            )
    return dirs


def plugin_env() -> dict[str, str]:
    """What a Ray session's workers need to see the plugins this process sees."""
    raw = os.environ.get(PLUGIN_PATH_ENV)
    return {PLUGIN_PATH_ENV: raw} if raw else {}


def _add_to_path(dirs: Iterable[str]) -> None:
    for d in dirs:
        if d not in sys.path:
            sys.path.append(d)


def _where(ep: metadata.EntryPoint) -> str:
    dist = ep.dist
    package = f"{dist.name} {dist.version}" if dist is not None else "an unnamed package"
    return f"plugin {package} (entry point {ep.name} = {ep.value})"


class Registry(MutableMapping[str, T], Generic[T]):
    """Name -> spec: the built-in specs, then those of the installed plugins (read once, on
    first use). `origin(name)` says where an entry came from. Writable, so tests can add an
    entry for a while (`monkeypatch.setitem`)."""

    def __init__(self, kind: str, group: str, spec_type: type, builtin: Iterable[T]) -> None:
        self.kind = kind  # "benchmark", "method": the word the messages use
        self.group = group
        self._type = spec_type
        self._specs: dict[str, T] = {}
        self._origins: dict[str, str] = {}
        for spec in builtin:
            self._add(spec, BUILT_IN)
        self._loaded = False
        self._lock = threading.Lock()

    def _add(self, spec: T, origin: str) -> None:
        name = str(getattr(spec, "name", ""))
        if name in self._specs:
            raise PluginError(
                f"{origin} registers {self.kind} {name!r}, which the {self._origins[name]} "
                f"{self.kind} of that name already is; allowed: a name not yet registered"
            )
        self._specs[name] = spec
        self._origins[name] = origin

    def _load(self) -> None:
        if self._loaded:
            return
        with self._lock:
            if self._loaded:
                return
            _add_to_path(plugin_dirs())
            points = sorted(metadata.entry_points(group=self.group), key=lambda e: e.name)
            # every plugin loaded before any joins: a bad one leaves the registry as it was
            found = [(spec, _where(ep)) for ep in points for spec in self._specs_of(ep)]
            specs, origins = dict(self._specs), dict(self._origins)
            try:
                for spec, origin in found:
                    self._add(spec, origin)
            except PluginError:
                self._specs, self._origins = specs, origins
                raise
            self._loaded = True

    def _specs_of(self, ep: metadata.EntryPoint) -> list[T]:
        try:
            obj: Any = ep.load()
            if callable(obj) and not isinstance(obj, self._type):
                obj = obj()
        except Exception as exc:
            raise PluginError(f"{_where(ep)} failed to load: {type(exc).__name__}: {exc}") from exc
        specs = list(obj) if isinstance(obj, list | tuple) else [obj]
        for spec in specs:
            if not isinstance(spec, self._type):
                raise PluginError(
                    f"{_where(ep)} gives a {type(spec).__name__}; allowed: a "
                    f"{self._type.__name__}, a list of them, or a function returning either"
                )
        return specs

    def origin(self, name: str) -> str:
        self._load()
        return self._origins[name]

    def builtin(self) -> dict[str, T]:
        """Only the built-in entries (what the generated docs describe)."""
        return {k: v for k, v in self._specs.items() if self._origins.get(k) == BUILT_IN}

    def __getitem__(self, name: str) -> T:
        self._load()
        return self._specs[name]

    def __setitem__(self, name: str, spec: T) -> None:
        self._load()
        self._specs[name] = spec
        self._origins.setdefault(name, "set at run time")

    def __delitem__(self, name: str) -> None:
        self._load()
        del self._specs[name]
        self._origins.pop(name, None)

    def __iter__(self) -> Iterator[str]:
        self._load()
        return iter(list(self._specs))

    def __len__(self) -> int:
        self._load()
        return len(self._specs)

    def __contains__(self, name: object) -> bool:
        self._load()
        return name in self._specs

    def __repr__(self) -> str:
        return f"Registry({self.kind}: {', '.join(self._specs)})"
