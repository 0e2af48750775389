"""Your own embedder, vector store or chat model, without a fork: a setting names a class, as uvicorn takes `main:app`.

`EMBEDDER`, `VECTOR_STORE` and `LLM_PROVIDER` take a built-in name, `package.module:ClassName`, or the name an
installed package registered under an entry point (`rag_service.embedders`, `rag_service.vector_stores`,
`rag_service.llms`), so `pip install our-store` and one setting are enough. The class is imported at start-up and
checked against what the service will call; one that lacks a method stops the start with a message naming the class
and every missing method. Its constructor's options come from a JSON setting (`EMBEDDER_OPTIONS`, ...).

It lives in `llm/`, the lowest layer, because the three factories it serves are on both sides: `rag/` may import
`llm/`, never the reverse.
"""

from __future__ import annotations

import importlib
import inspect
from importlib.metadata import entry_points
from typing import Any

from llm.errors import LLMError

ENTRY_POINT_GROUPS = {
    "EMBEDDER": "rag_service.embedders",
    "VECTOR_STORE": "rag_service.vector_stores",
    "LLM_PROVIDER": "rag_service.llms",
}


class PluginError(LLMError):
    """A plug-in class that cannot be found, imported, built, or does not have what the service calls."""

    error_type = "plugin_error"


def load_class(setting: str, spec: str) -> type:
    """The class `spec` names for `setting`: `package.module:ClassName`, or an entry point's name."""
    if ":" in spec:
        module_name, _, qualname = spec.partition(":")
        try:
            target: Any = importlib.import_module(module_name)
        except ImportError as exc:
            raise PluginError(f"{setting}={spec}: cannot import {module_name}: {exc}") from exc
        for part in qualname.split("."):
            target = getattr(target, part, None)
            if target is None:
                raise PluginError(f"{setting}={spec}: {module_name} has no {qualname}")
    else:
        group = ENTRY_POINT_GROUPS[setting]
        found = [ep for ep in entry_points(group=group) if ep.name == spec]
        if not found:
            names = sorted(ep.name for ep in entry_points(group=group))
            raise PluginError(
                f"{setting}={spec}: not a built-in name, not package.module:ClassName, and no installed package "
                f"registers it under the entry point group {group} (registered: {', '.join(names) or 'none'})"
            )
        try:
            target = found[0].load()
        except ImportError as exc:
            raise PluginError(f"{setting}={spec}: cannot import {found[0].value}: {exc}") from exc
    if not inspect.isclass(target):
        raise PluginError(f"{setting}={spec}: {target!r} is not a class")
    return target


def missing_members(cls: type, methods: tuple[str, ...], attributes: tuple[str, ...] = ()) -> list[str]:
    """What `cls` lacks of `methods` (callables) and `attributes` (set on the class, or in its annotations, since
    an instance may set them in its constructor)."""
    missing = [f"{name}()" for name in methods if not callable(getattr(cls, name, None))]
    annotated: set[str] = set()
    for klass in cls.__mro__:
        annotated |= set(getattr(klass, "__annotations__", {}))
    missing += [name for name in attributes if not hasattr(cls, name) and name not in annotated]
    return missing


def require(setting: str, cls: type, methods: tuple[str, ...], attributes: tuple[str, ...], what: str) -> None:
    missing = missing_members(cls, methods, attributes)
    if missing:
        raise PluginError(
            f"{setting}: the class {cls.__module__}.{cls.__qualname__} lacks {', '.join(missing)} ({what})"
        )


async def construct(setting: str, cls: type, options: dict[str, Any], *args: Any) -> Any:
    """An instance: `await cls.open(*args, **options)` when the class has an async `open` (as the built-in stores
    do), else `cls(**options)`."""
    try:
        opener = getattr(cls, "open", None)
        if opener is not None and inspect.iscoroutinefunction(opener):
            return await opener(*args, **options)
        return cls(**options)
    except TypeError as exc:
        raise PluginError(f"{setting}: cannot build {cls.__qualname__} with options {sorted(options)}: {exc}") from exc


async def close_plugin(impl: Any) -> None:
    """Close a user's object by its `aclose()` or `close()`, whichever it has (awaited when it is a coroutine)."""
    for name in ("aclose", "close"):
        method = getattr(impl, name, None)
        if callable(method):
            result = method()
            if inspect.isawaitable(result):
                await result
            return
