"""Call the service's MCP tools with the official SDK's client: list them, add a document, search, ask.

RAG_URL=http://127.0.0.1:8000 RAG_API_KEY=your-key .venv/bin/python examples/mcp_client.py
"""

from __future__ import annotations

import asyncio
import os

import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client


async def main() -> None:
    url = os.environ.get("RAG_URL", "http://127.0.0.1:8000")
    key = os.environ.get("RAG_API_KEY")
    http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {key}"} if key else {}, timeout=120)
    async with Client(streamable_http_client(f"{url}/mcp", http_client=http)) as client:
        tools = await client.list_tools()
        print("tools:", ", ".join(tool.name for tool in tools.tools))
        note = "The example owl hunts voles at dusk along the hedge."
        await client.call_tool("add_document", {"text": note, "document_id": "example-owl"})
        found = await client.call_tool("search_documents", {"query": "owl voles dusk", "top_k": 3})
        print("search:", found.structured_content)
        answer = await client.call_tool("ask", {"question": "When does the owl hunt?"})
        print("answer:", (answer.structured_content or {}).get("answer"))


if __name__ == "__main__":
    asyncio.run(main())
