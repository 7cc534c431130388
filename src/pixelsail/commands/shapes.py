"""``pixelsail shapes preview`` (a PNG grid of samples), ``shapes scene`` (one plain scene image) and ``shapes export``
(the real file formats)."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

# colours that no shape has, so a target mask stands out from the object under it
TARGET_COLORS = ((0, 255, 255), (255, 0, 255), (255, 255, 255), (0, 0, 0), (120, 255, 0), (255, 150, 200))
PROMPT_COLOR = (255, 255, 255)

shapes_app = typer.Typer(help="The procedural shapes world: look at it, export it.", no_args_is_help=True)


def sample_tile(sample, tile_size: int = 256):
    """One sample as a picture: target masks filled, visual prompts outlined and tagged, upscaled for reading."""
    import numpy as np
    from PIL import Image

    from pixelsail.viz import draw_prompts, overlay_masks

    colors = [TARGET_COLORS[i % len(TARGET_COLORS)] for i in range(len(sample.masks))]
    image = overlay_masks(sample.image, sample.masks, colors=colors, alpha=0.55)
    scale = max(1, tile_size // sample.image.shape[0])
    big = np.asarray(Image.fromarray(image).resize((image.shape[1] * scale, image.shape[0] * scale), Image.NEAREST))
    prompts = {k: np.kron(m, np.ones((scale, scale), dtype=bool)) for k, m in sample.prompts.items()}
    return draw_prompts(big, prompts, colors=[PROMPT_COLOR] * len(prompts), alpha=0.0) if prompts else big


def sample_caption(sample) -> str:
    lines = [f"[{sample.task}] {sample.image_id}"]
    for q, a in sample.turns:
        lines += [f"Q: {q}", f"A: {a}"]
    return "\n".join(lines)


@shapes_app.command("preview")
def preview(
    split: str = typer.Option("val", "--split", help="split name (train / val / test / test_perturbed / any other)"),
    n: int = typer.Option(12, "--n", min=1, max=200, help="number of samples"),
    out: Path = typer.Option(Path("shapes.png"), "-o", "--out", help="PNG file to write"),
    task: Optional[List[str]] = typer.Option(None, "--task", help="only these tasks (repeat); default: all"),
    seed: int = typer.Option(0, "--seed"),
    image_size: int = typer.Option(128, "--image-size", min=32),
    ncols: int = typer.Option(4, "--ncols", min=1),
) -> None:
    """Write a grid of samples with their masks overlaid and their questions and answers under each tile."""
    from pixelsail.data.shapes import ShapesDataset
    from pixelsail.viz import image_grid

    try:
        ds = ShapesDataset(split, tasks=task or None, image_size=image_size, size=n, seed=seed)
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None
    samples = [ds[i] for i in range(n)]
    grid = image_grid([sample_tile(s) for s in samples], [sample_caption(s) for s in samples], ncols=ncols)
    out.parent.mkdir(parents=True, exist_ok=True)
    grid.save(out)
    typer.echo(f"wrote {out} ({n} samples of split {split!r}, {grid.width}x{grid.height})")


@shapes_app.command("scene")
def scene_command(
    out: Path = typer.Option(Path("scene.png"), "-o", "--out", help="PNG file to write"),
    index: int = typer.Option(0, "--index", min=0, help="scene number within the split"),
    split: str = typer.Option("test", "--split", help="split name (test: scenes the shipped model never saw)"),
    seed: int = typer.Option(0, "--seed"),
    image_size: int = typer.Option(128, "--image-size", min=32),
) -> None:
    """Write one scene as a plain image (for segment / ask / describe / chat); list an expression and box per object."""
    from PIL import Image

    from pixelsail.data.shapes import attribute_referrals, generate_scene

    scene = generate_scene(split, index, seed=seed, image_size=image_size)
    out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(scene.image).save(out)
    typer.echo(f"wrote {out} (split {split!r} scene #{index}, {image_size}x{image_size})")
    named: dict[int, str] = {}  # each object's most specific unique expression, naming its shape if one does

    def rank(obj, expression: str) -> tuple[bool, int]:
        return obj.shape in expression, len(expression)

    for ref in attribute_referrals(scene):
        target = ref.targets[0]
        if target.index not in named or rank(target, ref.expression) > rank(target, named[target.index]):
            named[target.index] = ref.expression
    for obj in scene.visible_objects:
        if obj.index in named:
            typer.echo(f"  {named[obj.index]!r}  box {','.join(str(int(v)) for v in obj.bbox)}")


@shapes_app.command("export")
def export(
    out: Path = typer.Option(..., "--out", help="output directory"),
    split: List[str] = typer.Option(["val"], "--split", help="split to export (repeat for several)"),
    n: int = typer.Option(100, "--n", min=1, help="scenes per split"),
    seed: int = typer.Option(0, "--seed"),
    image_size: int = typer.Option(128, "--image-size", min=32),
) -> None:
    """Write REFER (refs(unc).p + instances.json), gRefCOCO (grefs(unc).json) and PerBench JSON files."""
    from rich.progress import Progress

    from pixelsail.data.export import export_shapes

    with Progress(transient=True) as bar:
        job = bar.add_task("exporting scenes", total=n * len(split))
        result = export_shapes(out, {s: n for s in split}, seed=seed, image_size=image_size,
                               progress=lambda done: bar.update(job, completed=done))
    for path in result.files:
        typer.echo(str(path))
    typer.echo(", ".join(f"{k}: {v}" for k, v in result.counts.items()))


def register(app: typer.Typer) -> None:
    app.add_typer(shapes_app, name="shapes")
