"""pixelsail: Pixel-SAIL, one transformer for pixel-grounded understanding."""
from pixelsail.config import PixelSailConfig

__version__ = "0.1.0"


def __getattr__(name: str):
    # heavy modules load on first use so `import pixelsail` (and the CLI's --help) stays fast
    if name == "PixelSail":
        from pixelsail.model import PixelSail

        return PixelSail
    if name == "Predictor":
        from pixelsail.predictor import Predictor

        return Predictor
    raise AttributeError(f"module 'pixelsail' has no attribute {name!r}")


__all__ = ["PixelSail", "PixelSailConfig", "Predictor", "__version__"]
