from pixelsail.data.sample import TASKS, Sample

__all__ = ["Sample", "TASKS"]
