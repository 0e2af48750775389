"""`python -m rag.spaces`: the embedding spaces from the command line, with the service's settings (the routes under
/api/v1/embedding-spaces do the same). The running service's space builder carries the requests out.

    python -m rag.spaces list
    python -m rag.spaces add '{"embedding_model": "sentence-transformers/all-MiniLM-L12-v2"}' [--name NAME]
    python -m rag.spaces activate NAME
    python -m rag.spaces drop NAME
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

from config import settings_or_exit
from rag.embedders.factory import build_embedder
from rag.errors import InvalidRequest, RAGError
from rag.spaces.registry import SpaceRegistry
from rag.spaces.requests import ask_for_space, ask_to_activate, ask_to_drop


async def _run(args: argparse.Namespace) -> None:
    settings = settings_or_exit()
    registry = await SpaceRegistry.open(settings)
    try:
        match args.action:
            case "list":
                print(json.dumps([space.as_dict() for space in await registry.spaces()], indent=2))
            case "add":
                try:
                    overrides = json.loads(args.embedder)
                except json.JSONDecodeError as exc:
                    raise InvalidRequest(f"the embedder settings are not JSON: {exc}") from None
                active = await registry.active()
                if active is not None:
                    serving = (active.model, active.dimension)
                else:  # nothing registered: the service embeds with its settings' embedder
                    embedder = await build_embedder(settings)
                    serving = (embedder.model_name, embedder.dimension)
                    await embedder.aclose()
                space = await ask_for_space(settings, registry, serving, overrides, args.name)
                print(json.dumps(space.as_dict(), indent=2))
            case "activate":
                print(json.dumps((await ask_to_activate(registry, args.name)).as_dict(), indent=2))
            case "drop":
                print(json.dumps((await ask_to_drop(registry, args.name)).as_dict(), indent=2))
    finally:
        await registry.aclose()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m rag.spaces", description=__doc__.split("\n\n")[0])
    actions = parser.add_subparsers(dest="action", required=True)
    actions.add_parser("list", help="every space, its state and progress")
    add = actions.add_parser("add", help="a new space for another embedder (JSON of embedder settings)")
    add.add_argument("embedder", help='e.g. \'{"embedding_model": "..."}\' or \'{"embedder": "openai", ...}\'')
    add.add_argument("--name", help="the space's name (default: from its model's)")
    for action in ("activate", "drop"):
        actions.add_parser(action, help=f"{action} a space").add_argument("name")
    args = parser.parse_args(argv)
    try:
        asyncio.run(_run(args))
    except RAGError as exc:
        print(f"{exc.error_type}: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
