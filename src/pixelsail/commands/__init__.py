"""CLI command groups; see pixelsail.cli."""
