"""The biasing text Qwen3-ASR reads in its system turn, from the server's and the request's parts."""

from __future__ import annotations

from typing import Any, Iterable, Optional

# Long contexts slow every step (they are part of each prompt). Names come before terms, as the
# Wyoming spec ranks them, so terms are the first to be cut.
MAX_CONTEXT_CHARS = 2000


def build_context(
    server_context: str = "",
    request_context: Any = None,
    names: Optional[Iterable[str]] = None,
    terms: Optional[Iterable[str]] = None,
) -> str:
    parts = []
    if server_context and server_context.strip():
        parts.append(server_context.strip())
    text = _context_text(request_context)
    if text:
        parts.append(text)
    for label, values in (("Names", names), ("Terms", terms)):
        items = [v.strip() for v in (values or []) if isinstance(v, str) and v.strip()]
        if items:
            parts.append(f"{label}: " + ", ".join(dict.fromkeys(items)))
    return "\n".join(parts)[:MAX_CONTEXT_CHARS]


def _context_text(context: Any) -> str:
    """`transcribe.context` when it carries text: a string, or a mapping with a `text` string."""
    if isinstance(context, str):
        return context.strip()
    if isinstance(context, dict) and isinstance(context.get("text"), str):
        return context["text"].strip()
    return ""
