"""The plugin manager: discovers plugins through the `multimae` entry-point group and looks modalities up.

Built-in modalities are installed under that group exactly like a third party's. `MULTIMAE_LOAD_PLUGINS`
(comma-separated entry-point names) restricts which plugins load; an empty value loads none. A plugin that
fails to import, is written for another plugin API (`MULTIMAE_API`) than this multimae's `API_VERSION`, or
whose hook raises is reported in one line and left out; everything else keeps working.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from importlib import metadata
from types import ModuleType
from typing import TYPE_CHECKING, Any

import pluggy

from ..errors import PluginError, UnknownModalityError
from . import hookspecs
from .hookspecs import API_CHANGES, API_VERSION
from .modality import Modality

if TYPE_CHECKING:
    from .logger import Logger
    from .task import Task
    from .teacher import Teacher
    from .weights import Weights

ENTRY_POINT_GROUP = "multimae"
LOAD_ENV = "MULTIMAE_LOAD_PLUGINS"
API_ATTRIBUTE = "MULTIMAE_API"
BUILTIN_DISTRIBUTION = "multimae"


@dataclass
class PluginInfo:
    """What `multimae plugins` reports about one plugin."""

    name: str
    module: str
    distribution: str | None = None
    version: str | None = None
    api: int | None = None  # the plugin's MULTIMAE_API, when it declares one
    modalities: list[str] = field(default_factory=list)
    tasks: list[str] = field(default_factory=list)
    teachers: list[str] = field(default_factory=list)
    weights: list[str] = field(default_factory=list)
    loggers: list[str] = field(default_factory=list)
    error: str | None = None

    @property
    def builtin(self) -> bool:
        return self.distribution == BUILTIN_DISTRIBUTION

    @property
    def source(self) -> str:
        """`built-in`, the distribution that installed the plugin, or `registered in code`."""
        return "built-in" if self.builtin else (self.distribution or "registered in code")

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "module": self.module,
            "source": self.source,
            "builtin": self.builtin,
            "distribution": self.distribution,
            "version": self.version,
            "api": self.api,
            "modalities": self.modalities,
            "tasks": self.tasks,
            "teachers": self.teachers,
            "weights": self.weights,
            "loggers": self.loggers,
            "error": self.error,
        }


def required_api(plugin: object) -> int | None:
    """The plugin API version a plugin says it is written for (`MULTIMAE_API = N`), None when it says nothing."""
    value = getattr(plugin, API_ATTRIBUTE, None)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise PluginError(f"declares {API_ATTRIBUTE} = {value!r}, which is not a positive integer")
    return value


class Registry:
    """A pluggy manager plus the modalities its plugins registered."""

    def __init__(self) -> None:
        self.manager = pluggy.PluginManager(hookspecs.PROJECT)
        self.manager.add_hookspecs(hookspecs)
        self.plugins: dict[str, PluginInfo] = {}
        self._modalities: dict[str, Modality] | None = None
        self._tasks: dict[str, Task] | None = None
        self._teachers: dict[str, Teacher] | None = None
        self._weights: dict[str, Weights] | None = None
        self._loggers: dict[str, Logger] | None = None

    def load_entry_points(self) -> None:
        """Import and register every plugin of the entry-point group (respecting MULTIMAE_LOAD_PLUGINS)."""
        wanted = os.environ.get(LOAD_ENV)
        allowed = None if wanted is None else {n.strip() for n in wanted.split(",") if n.strip()}
        for entry_point in sorted(metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda ep: ep.name):
            if allowed is not None and entry_point.name not in allowed:
                continue
            dist = entry_point.dist
            info = PluginInfo(entry_point.name, entry_point.value, dist.name if dist else None,
                              dist.version if dist else None)
            try:
                plugin = entry_point.load()
            except (Exception, SystemExit) as exc:  # a broken plugin must not take the others down
                self._fail(info, f"failed to import: {type(exc).__name__}: {exc}")
                continue
            self._add_checked(plugin, info)

    def register(self, plugin: ModuleType | object, name: str | None = None) -> None:
        """Register a plugin object or module from code, exactly as an entry point would."""
        name = name or getattr(plugin, "__name__", None) or type(plugin).__name__
        self._add_checked(plugin, PluginInfo(name, getattr(plugin, "__name__", type(plugin).__name__)))

    def _add_checked(self, plugin: object, info: PluginInfo) -> None:
        """Register `plugin` unless it is written for another plugin API than this multimae provides."""
        try:
            info.api = required_api(plugin)
        except PluginError as exc:
            self._fail(info, str(exc))
            return
        if info.api is not None and info.api > API_VERSION:
            self._fail(info, f"needs multimae plugin API {info.api}, this multimae provides {API_VERSION}: "
                             "upgrade multimae")
            return
        if info.api is not None and info.api < API_VERSION:
            changes = "; ".join(API_CHANGES[version] for version in range(info.api + 1, API_VERSION + 1))
            self._fail(info, f"is written for multimae plugin API {info.api}, this multimae provides {API_VERSION} "
                             f"({changes}): update the plugin and its MULTIMAE_API")
            return
        self._add(plugin, info)

    def unregister(self, name: str) -> None:
        self.manager.unregister(name=name)
        self.plugins.pop(name, None)
        self._modalities = self._tasks = self._teachers = self._weights = self._loggers = None

    def _add(self, plugin: object, info: PluginInfo) -> None:
        if info.name in self.plugins:
            raise PluginError(f"a plugin named {info.name!r} is already registered")
        self.manager.register(plugin, name=info.name)
        self.plugins[info.name] = info
        self._modalities = self._tasks = self._teachers = self._weights = self._loggers = None

    def _fail(self, info: PluginInfo, reason: str) -> None:
        info.error = reason
        self.plugins[info.name] = info
        print(f"warning: plugin {info.name!r} {reason}", file=sys.stderr)

    def _collect(self, hook: str, record_type: type, listing: str) -> dict[str, Any]:
        """Call every plugin's `hook` with a `register` callback; records by name, in registration order.
        A plugin that raises, registers the wrong type or a taken name is reported and its record left out."""
        found: dict[str, Any] = {}
        for impl in getattr(self.manager.hook, hook).get_hookimpls():  # pluggy lists them in registration order
            info = self.plugins[impl.plugin_name]
            added: list[Any] = []
            try:
                impl.function(**{arg: added.append for arg in impl.argnames})
            except (Exception, SystemExit) as exc:
                self._fail(info, f"raised in {hook}: {type(exc).__name__}: {exc}")
                continue
            for record in added:
                if not isinstance(record, record_type):
                    self._fail(info, f"registered {record!r} in {hook}, which is not a {record_type.__name__}")
                elif record.name in found:
                    self._fail(info, f"registers {record_type.__name__.lower()} {record.name!r}, already "
                                     "registered by another plugin")
                else:
                    found[record.name] = record
                    getattr(info, listing).append(record.name)
        return found

    def modalities(self) -> dict[str, Modality]:
        """Every registered modality by name (collected once)."""
        if self._modalities is None:
            self._modalities = self._collect("register_modalities", Modality, "modalities")
        return self._modalities

    def tasks(self) -> dict[str, Task]:
        """Every registered fine-tuning task by name (collected once)."""
        if self._tasks is None:
            from .task import Task

            self._tasks = self._collect("register_tasks", Task, "tasks")
        return self._tasks

    def task(self, name: str) -> Task:
        tasks = self.tasks()
        if name not in tasks:
            raise PluginError(f"unknown task {name!r} (registered: {', '.join(sorted(tasks)) or 'none'})")
        return tasks[name]

    def teachers(self) -> dict[str, Teacher]:
        """Every registered pseudo-labelling teacher by name (collected once)."""
        if self._teachers is None:
            from .teacher import Teacher

            self._teachers = self._collect("register_teachers", Teacher, "teachers")
        return self._teachers

    def weights(self) -> dict[str, Weights]:
        """Every registered named weights file by name (collected once)."""
        if self._weights is None:
            from .weights import Weights

            self._weights = self._collect("register_weights", Weights, "weights")
        return self._weights

    def loggers(self) -> dict[str, Logger]:
        """Every registered run logger by name (collected once)."""
        if self._loggers is None:
            from .logger import Logger

            self._loggers = self._collect("register_loggers", Logger, "loggers")
        return self._loggers

    def modality(self, name: str) -> Modality:
        """The registered modality `name`, or an error listing the known ones."""
        modalities = self.modalities()
        if name not in modalities:
            known = ", ".join(sorted(modalities)) or "none: no modality plugin is loaded"
            raise UnknownModalityError(f"unknown modality {name!r} (registered: {known})")
        return modalities[name]

    def origin(self, kind: str, name: str) -> dict[str, str | None] | None:
        """Which plugin registered the modality / task / teacher `name` (`kind`: modalities, tasks, teachers):
        its entry-point name, distribution and version, as checkpoints record it."""
        getattr(self, kind)()  # collected
        for info in self.plugins.values():
            if name in getattr(info, kind):
                return {"plugin": info.name, "distribution": info.distribution, "version": info.version}
        return None

    def add_commands(self, app: Any) -> None:
        """Let plugins add CLI commands; a plugin that raises is reported and the CLI starts without it."""
        for impl in self.manager.hook.register_commands.get_hookimpls():
            try:
                impl.function(**{arg: app for arg in impl.argnames})
            except (Exception, SystemExit) as exc:
                self._fail(self.plugins[impl.plugin_name], f"raised in register_commands: {type(exc).__name__}: {exc}")


_registry: Registry | None = None


def get_registry() -> Registry:
    """The process-wide registry, with entry-point plugins loaded on first use."""
    global _registry
    if _registry is None:
        _registry = Registry()
        _registry.load_entry_points()
    return _registry


def reset_registry() -> None:
    """Forget the loaded plugins (tests; after changing MULTIMAE_LOAD_PLUGINS)."""
    global _registry
    _registry = None
