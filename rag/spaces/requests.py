"""What an operator asks of embedding spaces, through the route or the command: a new space, activating one, dropping
one. Each checks and records the request; the space builder carries it out (`builder.py`)."""

from __future__ import annotations

import re
from typing import Any

from config import Settings
from rag.embedders.factory import build_embedder
from rag.errors import InvalidRequest, SpaceConflict, SpaceNotFound
from rag.spaces.active import embedder_settings
from rag.spaces.registry import DEFAULT_SPACE, Request, Space, SpaceRegistry

NAME = re.compile(r"[a-z0-9][a-z0-9_]{0,39}")  # a folder name and a PostgreSQL schema name as it stands


def name_for(model: str) -> str:
    """A space's default name: its model's, in the letters a name may hold."""
    return re.sub(r"[^a-z0-9]+", "_", model.lower().rsplit("/", 1)[-1]).strip("_")[:40] or "space"


async def ask_for_space(
    settings: Settings,
    registry: SpaceRegistry,
    serving: tuple[str, int],
    overrides: dict[str, Any],
    name: str | None = None,
) -> Space:
    """Register a space for the embedder these settings (over the service's) build; the builder fills it. The
    embedder is loaded here once, so a model that cannot be loaded is refused now, not in the background.
    `serving`: the model and dimension the service embeds with now (the first store's, when none is registered)."""
    if settings.vector_store not in ("numpy", "postgres"):
        raise InvalidRequest("embedding spaces need the embedded or the PostgreSQL store, not a plug-in")
    config = embedder_settings(settings, overrides)
    try:
        embedder = await build_embedder(settings.model_copy(update=config))
    except Exception as exc:
        raise InvalidRequest(f"cannot build that embedder: {exc}") from None
    try:
        model, dimension = embedder.model_name, embedder.dimension
    finally:
        await embedder.aclose()
    name = name or name_for(model)
    if not NAME.fullmatch(name) or name == DEFAULT_SPACE:
        raise InvalidRequest(f"{name!r} cannot name a space: use 1-40 of a-z, 0-9 and _, not {DEFAULT_SPACE!r}")
    spaces = await registry.spaces()
    same = next((space for space in spaces if (space.model, space.dimension) == (model, dimension)), None)
    if same is not None:
        raise SpaceConflict(f"space {same.name!r} already embeds with {model!r} (dimension {dimension})")
    first = Space(DEFAULT_SPACE, embedder_settings(settings), *serving, "active")
    space = Space(name, config, model, dimension, "building")
    if not await registry.add(space, first):
        raise SpaceConflict(f"a space named {name!r} exists")
    return space


async def _existing(registry: SpaceRegistry, name: str) -> Space:
    space = await registry.get(name)
    if space is None:
        raise SpaceNotFound(f"no embedding space named {name!r}")
    return space


async def _ask(registry: SpaceRegistry, name: str, action: Request, refusal: str) -> Space:
    space = await _existing(registry, name)
    if space.state == "active":
        raise SpaceConflict(f"space {name!r} is the active one{refusal}")
    await registry.request(name, action)
    return await _existing(registry, name)


async def ask_to_activate(registry: SpaceRegistry, name: str) -> Space:
    """Ask for the switch to space `name`; it happens after the builder's next whole pass over it."""
    return await _ask(registry, name, "activate", "")


async def ask_to_drop(registry: SpaceRegistry, name: str) -> Space:
    """Ask for space `name` to be removed with its store; never the active one."""
    return await _ask(registry, name, "drop", ": activate another first")
