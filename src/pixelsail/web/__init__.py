"""The web demo (``pixelsail serve``): upload or pick an image, add visual prompts, ask, see masks."""
from pixelsail.web.server import DemoApp, DemoServer, Limits

__all__ = ["DemoApp", "DemoServer", "Limits"]
