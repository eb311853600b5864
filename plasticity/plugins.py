"""Plugins: a user's own tasks, rules and search spaces, loaded by every command.

A plugin is a Python module; importing it registers what it brings with the public API:

    plasticity.config.register_config(MyConfig, presets={"default": {...}, "small": {...}})
    plasticity.tasks.register_task("mytask")(MyTask)      # an EpisodicTask (or a Task)
    plasticity.rules.register(Rule("myrule", update, elementwise=...))
    plasticity.config.register_space("mytask", {"eta": {"type": "float", ...}, ...})

Where plugins come from, in this order (each module is imported once):

1. the entry points of the group `plasticity.plugins` of the installed packages
   (`[project.entry-points."plasticity.plugins"] mytasks = "mytasks.plugin"`);
2. $PLASTICITY_PLUGINS, module names separated by commas;
3. `--plugin MODULE` on the command line (repeatable), before or after the command.

The CLI loads them before it parses the command line, so `--help`, the choices of `--task`
and `--rule`, the presets and the one-line errors include them; a sweep hands its
plugins to every trial (`specs()`: the module names and the folders they were found in),
and a trial loads them before it builds its task.

A plugin that fails to import, or registers something that does not hold (a task without
its config or with a method missing, a rule whose elementwise form disagrees with its
update, a preset that does not validate, a name taken already) is taken back whole (what it
registered is removed again) and named in one line: `PluginError` for a plugin the command
line or the environment asked for, a warning for an installed entry point (an installed
package that is broken does not stop the built-in tasks).

May import: plasticity.config, plasticity.errors, plasticity.rules, plasticity.tasks
May import in functions: plasticity.train
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from plasticity.errors import PlasticityError

GROUP = "plasticity.plugins"
"""The entry-point group a package declares its plugin module in."""
ENV = "PLASTICITY_PLUGINS"
"""Environment variable: plugin modules, separated by commas."""


class PluginError(PlasticityError):
    """A plugin asked for by name could not be loaded (exit code 2)."""


@dataclass
class Plugin:
    """A loaded plugin: where it came from and what it registered."""

    module: str
    source: str
    """`entry point NAME (DIST VERSION)`, `$PLASTICITY_PLUGINS` or `--plugin`."""
    path: str | None = None
    """The file it was imported from."""
    registered: dict[str, list[str]] = field(default_factory=dict)
    """Registry ("tasks", "rules", "spaces", "algorithms") -> the names it added."""

    def spec(self) -> tuple[str, str | None]:
        """(module, folder to put on sys.path to import it) for a process that loads it again."""
        if self.path is None:
            return self.module, None
        root = Path(self.path).parent
        for _ in range(self.module.count(".") + (Path(self.path).name == "__init__.py")):
            root = root.parent
        return self.module, str(root)


LOADED: dict[str, Plugin] = {}
"""Module name -> the plugin, for every plugin loaded in this process."""
FAILED: dict[str, str] = {}
"""Module name -> the line that said why it was not loaded."""


def _registries() -> dict[str, dict]:
    from plasticity.config.base import CONFIGS, PRESETS, SEARCH_SPACES
    from plasticity.rules import RULES
    from plasticity.tasks import TASKS
    from plasticity.train.algorithm import ALGORITHMS

    return {"tasks": TASKS, "configs": CONFIGS, "presets": PRESETS, "rules": RULES, "spaces": SEARCH_SPACES,
            "algorithms": ALGORITHMS}


def _snapshot() -> dict[str, dict]:
    return {name: dict(reg) for name, reg in _registries().items()}


def _restore(before: dict[str, dict]) -> None:
    for name, reg in _registries().items():
        reg.clear()
        reg.update(before[name])


def _check_added(before: dict[str, dict]) -> dict[str, list[str]]:
    """What the plugin added, checked; raises PlasticityError naming the first problem."""
    from plasticity.config.base import preset
    from plasticity.rules.elementwise import check_elementwise
    from plasticity.tasks import EpisodicTask, Task

    now = _registries()
    labels = {"tasks": "task", "configs": "config of task", "presets": "presets of task", "rules": "rule",
              "spaces": "search space of task", "algorithms": "algorithm"}
    for name, reg in now.items():
        for key, value in before[name].items():
            if reg.get(key) is not value:
                raise PlasticityError(f"it replaces the {labels[name]} {key!r}, which is already registered: "
                                      "give yours another name")
    added = {name: [k for k in reg if k not in before[name]] for name, reg in now.items()}
    for task in added["tasks"]:
        cls = now["tasks"][task]
        if not (isinstance(cls, type) and issubclass(cls, Task)):
            raise PlasticityError(f"task {task!r} is {cls!r}, not a subclass of plasticity.tasks.Task")
        if task not in now["configs"]:
            raise PlasticityError(f"task {task!r} has no config: register its TaskConfig subclass (with "
                                  "`task` defaulting to its name) with plasticity.config.register_config")
        base = EpisodicTask if issubclass(cls, EpisodicTask) else Task
        needed = ("sample", "inputs", "loss", "metrics", "figure") if base is EpisodicTask else ("build_model",)
        missing = [m for m in needed if getattr(cls, m, None) is getattr(base, m)]
        if missing:
            raise PlasticityError(f"task {task!r} does not define {', '.join(missing)}: a "
                                  f"plasticity.tasks.{base.__name__} implements each of them")
    for task in added["configs"]:
        if task not in now["tasks"]:
            raise PlasticityError(f"config {task!r} has no task: register the task with "
                                  f"plasticity.tasks.register_task({task!r})")
        presets = now["presets"].get(task) or {}
        if not presets:
            raise PlasticityError(f"task {task!r} registers no preset: give register_config at least one")
        for name in presets:
            try:
                preset(task, name)
            except PlasticityError as e:
                raise PlasticityError(f"preset {task}/{name} does not validate: {e}") from None
    for rule in added["rules"]:
        problems = check_elementwise(now["rules"][rule]) if now["rules"][rule].elementwise is not None else []
        if problems:
            raise PlasticityError(f"rule {rule!r}: its elementwise form disagrees with itself ({problems[0]})")
    for task in added["spaces"]:
        if task not in now["configs"]:
            raise PlasticityError(f"search space for {task!r}, which is not a registered task")
    return {k: v for k, v in added.items() if v and k not in ("configs", "presets")}


def _first_line(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return f"{type(e).__name__}: {lines[0][:200]}" if lines else type(e).__name__


def load(module: str, source: str, path_entry: str | None = None) -> Plugin:
    """Import plugin `module` (once) and check what it registered; PluginError naming the
    plugin and the problem, with its registrations taken back, if it fails."""
    if module in LOADED:
        return LOADED[module]
    before = _snapshot()
    if path_entry and path_entry not in sys.path and Path(path_entry).is_dir():
        sys.path.insert(0, path_entry)
    try:
        loaded = importlib.import_module(module)
        added = _check_added(before)
    except ModuleNotFoundError as e:
        _restore(before)
        sys.modules.pop(module, None)
        hint = ("install its package, or put its folder on PYTHONPATH" if e.name == module.split(".")[0]
                or e.name == module else f"install {e.name}, which it imports")
        raise PluginError(f"plugin {module} ({source}) cannot be imported ({_first_line(e)}): {hint}") from None
    except PlasticityError as e:
        _restore(before)
        sys.modules.pop(module, None)
        raise PluginError(f"plugin {module} ({source}) is not loaded: {e}") from None
    except Exception as e:  # noqa: BLE001 - a user's module can raise anything while it imports
        _restore(before)
        sys.modules.pop(module, None)
        if isinstance(e, SyntaxError):
            where = f"{e.filename}:{e.lineno}"
        else:
            frames = [f for f in traceback.extract_tb(e.__traceback__) if not f.filename.startswith("<frozen")]
            where = f"{frames[-1].filename}:{frames[-1].lineno}" if frames else module
        raise PluginError(f"plugin {module} ({source}) failed while importing ({_first_line(e)}, at {where}): "
                          "fix the module") from None
    plugin = Plugin(module, source, getattr(loaded, "__file__", None), added)
    LOADED[module] = plugin
    return plugin


def entry_point_modules() -> list[tuple[str, str]]:
    """(module, source) of the installed packages' entry points in GROUP."""
    out = []
    for ep in importlib.metadata.entry_points(group=GROUP):
        dist = f" ({ep.dist.name} {ep.dist.version})" if ep.dist is not None else ""
        out.append((ep.value.split(":")[0].strip(), f"entry point {ep.name}{dist}"))
    return out


def env_modules(environ=None) -> list[str]:
    value = (os.environ if environ is None else environ).get(ENV, "")
    return [m.strip() for m in value.split(",") if m.strip()]


def load_all(extra: list[str] | tuple[str, ...] = (), warn=None) -> list[Plugin]:
    """Load the entry points' plugins (a broken one: `warn(line)`, default stderr), then
    $PLASTICITY_PLUGINS and `extra` (a broken one: PluginError)."""
    warn = warn or (lambda line: print(f"plasticity: warning: {line}", file=sys.stderr))
    for module, source in entry_point_modules():
        if module in LOADED or module in FAILED:
            continue
        try:
            load(module, source)
        except PluginError as e:
            FAILED[module] = str(e)
            warn(f"{e}; the other tasks work")
    for module in env_modules():
        load(module, f"${ENV}")
    for module in extra:
        load(module, "--plugin")
    return list(LOADED.values())


def load_specs(specs: list[tuple[str, str | None]] | tuple = ()) -> None:
    """Load plugins in another process (a sweep's trial, a served model) from `specs()`:
    the installed entry points, then each module, its folder put on sys.path first where
    this machine has it (on a cluster the module comes installed or in the job's
    working_dir instead)."""
    load_all(warn=lambda line: None)
    for module, folder in specs:
        load(module, "the sweep's plugins", folder)


def specs() -> list[tuple[str, str | None]]:
    """What another process needs to load this one's plugins (see `load_specs`)."""
    return [plugin.spec() for plugin in LOADED.values()]


def load_command_line(argv: list[str]) -> list[str]:
    """Load the plugins a command line gets (entry points, $PLASTICITY_PLUGINS, its
    `--plugin`s); returns the line without the `--plugin`s. PluginError on a bad one."""
    modules, rest = split_argv(argv)
    load_all(modules)
    return rest


def split_argv(argv: list[str]) -> tuple[list[str], list[str]]:
    """(`--plugin` modules, argv without them): `--plugin M` and `--plugin=M`, anywhere."""
    modules, rest, i = [], [], 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            rest += argv[i:]
            break
        if arg == "--plugin":
            if i + 1 >= len(argv) or argv[i + 1].startswith("-"):
                raise PluginError("--plugin needs a module name: --plugin mypackage.plugin")
            modules.append(argv[i + 1])
            i += 2
            continue
        if arg.startswith("--plugin="):
            modules.append(arg.split("=", 1)[1])
        else:
            rest.append(arg)
        i += 1
    return modules, rest


def export(environ=None) -> None:
    """Put the plugins loaded here into the environment processes started from now on
    inherit ($PLASTICITY_PLUGINS, and their folders on $PYTHONPATH): a local Ray's workers
    (`plasticity serve`'s replicas) load them as this process did."""
    environ = os.environ if environ is None else environ
    installed = dict(entry_point_modules())
    given = [(m, folder) for m, folder in specs() if m not in installed]
    if not given:
        return
    environ[ENV] = ",".join(dict.fromkeys([*env_modules(environ), *(m for m, _ in given)]))
    folders = [folder for _, folder in given if folder]
    path = [*folders, *[p for p in environ.get("PYTHONPATH", "").split(os.pathsep) if p]]
    environ["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(path))


def command_line_plugins() -> list[str]:
    """The modules loaded from `--plugin` (a command that repeats this one names them again)."""
    return [plugin.module for plugin in LOADED.values() if plugin.source == "--plugin"]


def describe() -> str:
    """What `plasticity plugins` prints: each loaded plugin, where from, what it registered."""
    lines = []
    for plugin in LOADED.values():
        lines.append(f"{plugin.module}  ({plugin.source}; {plugin.path or 'no file'})")
        for kind, names in plugin.registered.items():
            lines.append(f"    {kind}: {', '.join(names)}")
        if not plugin.registered:
            lines.append("    (registered nothing)")
    for line in FAILED.values():
        lines.append(f"not loaded: {line}")
    if not lines:
        lines.append(f"no plugins: install a package with a `{GROUP}` entry point, set ${ENV}, or pass "
                     "--plugin MODULE")
    return "\n".join(lines)
