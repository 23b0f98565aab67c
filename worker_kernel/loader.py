"""Module specs: resolve them to a canonical name, import them, and re-execute them on a new cache-buster.

A spec is a path to a ``.py`` file, a ``file://`` URL or a dotted module name. The canonical form, which the
broker uses in worker keys and the worker uses to import, is an absolute path for files and the dotted name for
modules found on ``sys.path``.

Re-executing compiles the module afresh from its source, never from a ``.pyc``: the bytecode cache is keyed by
the source's mtime and size, so a same-size rewrite within one second would otherwise run stale code.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from types import ModuleType
from typing import Any, Union

ModuleSpec = Union[str, os.PathLike]

# Sources the broker sent for modules whose files are not on this host (a worker on another machine): canonical
# path -> source text. A shipped source takes the place of the file it names.
shipped: dict[str, str] = {}

# The file the broker found for a dotted name, where its worker constructor looked (None: no file). A worker that
# finds another file under that name (its working directory shadowing the host's sys.path, say) must not run it:
# the constructor chose this worker's rights for the other file.
expected_files: dict[str, str | None] = {}

# Whether a module file's folder goes on ``sys.path`` when it is loaded. A sandboxed worker turns this off
# (`isolate_module_folders`): the modules beside its own are other tenants', which it may neither read nor import.
_module_folders_on_path = True


def isolate_module_folders() -> None:
    """From now on, loading a module file does not put its folder on ``sys.path`` (a sandboxed worker)."""
    global _module_folders_on_path
    _module_folders_on_path = False


def split_target(target: Any) -> tuple[Any, str | None]:
    """A target's module spec and segregation id, as every side reads them. A target is a module spec or a
    ``(spec, segregation id)`` pair; the id becomes its ``str()`` (so ``0`` is ``"0"``, not the shared worker),
    and ``None`` or ``""`` mean the shared worker. Raises `ValueError` for a tuple of another length."""
    if isinstance(target, tuple):
        if len(target) != 2:
            raise ValueError("a target is a module spec or a (module spec, segregation id) pair")
        spec, segregation_id = target
    else:
        spec, segregation_id = target, None
    if segregation_id is None or (isinstance(segregation_id, str) and not segregation_id):
        return spec, None
    return spec, str(segregation_id)


def is_file_spec(spec: str) -> bool:
    return spec.startswith("file://") or spec.endswith(".py") or os.sep in spec or spec.startswith(".")


def resolve_module(spec: ModuleSpec, base: str | os.PathLike | None = None) -> str:
    """The canonical name of a module spec. Relative paths resolve against ``base`` (a directory or a file's
    directory) or else the working directory, and a path is made real (no ``..``, no symbolic links), so that
    a test of where a module lives cannot be fooled. Raises `ValueError` for a spec that is neither."""
    text = os.fspath(spec)
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"a module spec must be a path, a file:// URL or a dotted name, not {spec!r}")
    if text.startswith("file://"):
        from urllib.parse import unquote, urlparse

        text = unquote(urlparse(text).path)
    if is_file_spec(text):
        path = os.path.expanduser(text)
        if not os.path.isabs(path):
            root = os.fspath(base) if base is not None else os.getcwd()
            if root.endswith(".py"):
                root = os.path.dirname(root)
            path = os.path.join(root, path)
        return os.path.realpath(path)
    if not all(part.isidentifier() for part in text.split(".")):
        raise ValueError(f"{spec!r} is neither a path to a .py file nor a dotted module name")
    return text


def module_name_for(canonical: str) -> str:
    """The ``__name__`` a target module gets: its file's stem, or its dotted name."""
    return os.path.splitext(os.path.basename(canonical))[0] if is_file_spec(canonical) else canonical


def module_file(canonical: str) -> str | None:
    """The real path of a canonical module's source file on this machine, found as a worker started in the
    working directory would find it, without importing (running) anything of it or of its packages; None if it
    has none here (a built-in module, say)."""
    if is_file_spec(canonical):
        return canonical if os.path.isfile(canonical) else None
    import importlib.machinery

    parts = canonical.split(".")
    search: list[str] | None = [os.getcwd(), *sys.path]
    found = None
    for depth in range(1, len(parts) + 1):
        if search is None:  # a module, not a package: it has no submodules
            return None
        found = importlib.machinery.PathFinder.find_spec(".".join(parts[:depth]), search)
        if found is None:
            return None
        search = list(found.submodule_search_locations) if found.submodule_search_locations is not None else None
    return os.path.realpath(found.origin) if found is not None and found.has_location and found.origin else None


def source_path(canonical: str) -> str:
    """The file a canonical module is executed from. Raises `ModuleNotFoundError`."""
    if is_file_spec(canonical):
        if canonical in shipped:
            return canonical
        if not os.path.isfile(canonical):
            raise ModuleNotFoundError(f"no module file {canonical!r}", name=canonical)
        return canonical
    found = importlib.util.find_spec(canonical)
    if found is None or not found.origin or not found.has_location:
        raise ModuleNotFoundError(f"no module named {canonical!r}", name=canonical)
    return found.origin


def load_module(canonical: str, *, fresh: bool = False) -> ModuleType:
    """Import the module. With ``fresh``, execute its current source again in a new module object.

    The module's own directory goes first on ``sys.path``, as when a script runs, so that it can import the
    modules beside it; those stay imported across re-executions (they are dependencies, not the target). Not in
    a sandboxed worker (`isolate_module_folders`): it imports what its ``sys.path`` holds, nothing beside it.
    """
    if canonical in expected_files and canonical not in shipped:
        found, expected = module_file(canonical), expected_files[canonical]
        if found != expected:
            raise ImportError(
                f"{canonical!r} is {found or 'no file'} in this worker, but {expected or 'no file'} where the broker"
                " looked it up for its worker constructor: the worker will not run a module it was not launched for",
                name=canonical,
            )
    path = source_path(canonical)
    if is_file_spec(canonical) and _module_folders_on_path:
        folder = os.path.dirname(path)
        if folder not in sys.path:
            sys.path.insert(0, folder)
    elif not is_file_spec(canonical) and not fresh:
        return importlib.import_module(canonical)
    name = module_name_for(canonical)
    taken = sys.modules.get(name)
    if not fresh and taken is not None and getattr(taken, "__file__", None) == path:
        return taken  # already imported (as another module's dependency, or as the hooks)
    if taken is not None and getattr(taken, "__file__", None) != path:
        name = f"wb_target_{name}"  # a file named like a loaded module (json.py, say) must not replace it
    module = ModuleType(name)
    module.__file__ = path
    if not is_file_spec(canonical) and "." in name:
        module.__package__ = name.rpartition(".")[0]
    source: str | bytes
    if path in shipped:
        source = shipped[path]
    else:
        with open(path, "rb") as f:
            source = f.read()
    code = compile(source, path, "exec", dont_inherit=True)
    previous = sys.modules.get(name)
    sys.modules[name] = module
    try:
        exec(code, module.__dict__)
    except BaseException:
        if previous is not None:
            sys.modules[name] = previous
        else:
            sys.modules.pop(name, None)
        raise
    return module
