"""`hastelm serve` (filled in by the server work)."""


def serve() -> None:
    """Run the OpenAI-compatible server."""
    raise SystemExit("hastelm serve is not built yet")
