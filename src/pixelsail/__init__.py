"""pixelsail: Pixel-SAIL, one transformer for pixel-grounded understanding."""
from pixelsail.config import PixelSailConfig

__version__ = "0.1.0"

__all__ = ["PixelSailConfig", "__version__"]
