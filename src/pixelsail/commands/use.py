"""Commands that use a trained model: segment, ask, describe, chat, serve, demo.

Every command takes ``--model DIR`` (default: the shipped shapes model). A bad input ends with one line on
stderr naming the problem and exit status 2.
"""
from __future__ import annotations

import json
import sys
import time
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, List, Optional

import numpy as np
import typer
from PIL import Image

from pixelsail.imageio import ImageInputError, load_image
from pixelsail.model_check import ModelFileWarning
from pixelsail.predictor import InputError, Predictor, Result

ModelOpt = typer.Option(None, "--model", help="model directory (default: the shipped shapes model)")
DeviceOpt = typer.Option("cpu", "--device", help="torch device, e.g. cpu or cuda")
BoxOpt = typer.Option(None, "--box", help="box prompt x0,y0,x1,y1 in pixels (repeatable)")
PointOpt = typer.Option(None, "--point", help="point prompt x,y in pixels (repeatable)")
MaskOpt = typer.Option(None, "--mask", help="mask prompt: a PNG, non-zero = inside (repeatable)")


class UsageError(Exception):
    """A command-line value that cannot be used (reported as one line, exit 2)."""


@contextmanager
def _one_line_errors() -> Iterator[None]:
    try:
        yield
    except (InputError, ImageInputError, UsageError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None


def _numbers(text: str, n: int, what: str) -> list[float]:
    parts = text.replace(" ", "").split(",")
    try:
        values = [float(p) for p in parts]
    except ValueError:
        values = []
    if len(values) != n:
        raise UsageError(f"{what} {text!r} must be {n} comma-separated numbers")
    return values


def _mask_file(path: str) -> np.ndarray:
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"mask file not found: {p}")
    try:
        with Image.open(p) as im:
            return np.asarray(im.convert("L")) > 0
    except OSError as e:
        raise UsageError(f"mask file {p} is not a readable image: {e}") from None


def collect_prompts(boxes: Optional[List[str]], points: Optional[List[str]], masks: Optional[List[str]]) -> list:
    """Prompts in the order boxes, points, masks (each in the order given): <vp_0>, <vp_1>, ..."""
    prompts: list = [_numbers(b, 4, "--box") for b in boxes or []]
    prompts += [_numbers(p, 2, "--point") for p in points or []]
    prompts += [_mask_file(m) for m in masks or []]
    return prompts


def _predictor(model: Optional[Path], device: str, **kwargs) -> Predictor:
    """Load the model; what its files' check warns about is printed as one ``warning: ...`` line each."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ModelFileWarning)
        predictor = Predictor(model, device=device, **kwargs)
    for w in caught:
        if issubclass(w.category, ModelFileWarning):
            typer.echo(f"warning: {w.message}", err=True)
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return predictor


def _print_result(result: Result) -> None:
    typer.echo(result.text)
    empty = set(result.empty_masks)
    for i, (m, s) in enumerate(zip(result.masks, result.mask_scores)):
        typer.echo(f"  mask {i}: {result.empty_mask_text if i in empty else f'{int(m.sum())} px'}, score {s:.2f}")
    for note in result.answer_notes:
        typer.echo(f"  note: {note}")
    typer.echo(f"  ({result.seconds:.2f} s{', image prefix reused' if result.prefix_reused else ''})", err=True)


def _save_overlay(result: Result, out: Optional[Path]) -> None:
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(result.overlay()).save(out)
        typer.echo(f"  overlay -> {out}", err=True)


def segment(image: str = typer.Argument(..., help="image file"),
            text: str = typer.Argument(..., help='referring expression, e.g. "the red circle"'),
            out: Optional[Path] = typer.Option(None, "-o", "--out", help="write the overlay PNG here"),
            masks_json: Optional[Path] = typer.Option(None, "--masks-json", help="write text + masks (COCO RLE)"),
            mask_png_dir: Optional[Path] = typer.Option(None, "--mask-png-dir", help="write mask_<i>.png files"),
            model: Optional[Path] = ModelOpt, device: str = DeviceOpt) -> None:
    """Segment what a referring expression names."""
    with _one_line_errors():
        pixels, _ = load_image(image), Predictor.segment_question(text)  # bad inputs fail before the model loads
        result = _predictor(model, device).segment(pixels, text)
    _print_result(result)
    _save_overlay(result, out)
    if masks_json is not None:
        masks_json.parent.mkdir(parents=True, exist_ok=True)
        masks_json.write_text(json.dumps(result.to_dict(), indent=1))
    if mask_png_dir is not None:
        mask_png_dir.mkdir(parents=True, exist_ok=True)
        for i, m in enumerate(result.masks):
            Image.fromarray(m.astype(np.uint8) * 255).save(mask_png_dir / f"mask_{i}.png")


def ask(image: str = typer.Argument(..., help="image file"),
        question: str = typer.Argument(..., help='e.g. "What colour is <vp_0>?"'),
        box: Optional[List[str]] = BoxOpt, point: Optional[List[str]] = PointOpt, mask: Optional[List[str]] = MaskOpt,
        out: Optional[Path] = typer.Option(None, "-o", "--out", help="write the overlay PNG here"),
        model: Optional[Path] = ModelOpt, device: str = DeviceOpt) -> None:
    """Ask a question, optionally about visual prompts (numbered boxes, then points, then masks)."""
    with _one_line_errors():
        pixels, prompts = load_image(image), collect_prompts(box, point, mask)
        result = _predictor(model, device).ask(pixels, question, prompts=prompts)
    _print_result(result)
    _save_overlay(result, out)


def describe(image: str = typer.Argument(..., help="image file"),
             box: Optional[List[str]] = BoxOpt, point: Optional[List[str]] = PointOpt,
             mask: Optional[List[str]] = MaskOpt,
             out: Optional[Path] = typer.Option(None, "-o", "--out", help="write the overlay PNG here"),
             model: Optional[Path] = ModelOpt, device: str = DeviceOpt) -> None:
    """Describe one region given as --box, --point or --mask."""
    with _one_line_errors():
        pixels, prompts = load_image(image), collect_prompts(box, point, mask)
        if len(prompts) != 1:
            raise UsageError(f"describe needs exactly one of --box, --point or --mask (got {len(prompts)})")
        result = _predictor(model, device).describe(pixels, prompts[0])
    _print_result(result)
    _save_overlay(result, out)


CHAT_HELP = """commands: :box x0,y0,x1,y1 | :point x,y | :mask FILE  add a visual prompt (<vp_0>, <vp_1>, ...)
          :clear  drop the prompts   :reset  forget the conversation   :quit"""


def chat(image: str = typer.Argument(..., help="image file"),
         save_dir: Optional[Path] = typer.Option(None, "--save-dir", help="write turn_<i>.png overlays here"),
         model: Optional[Path] = ModelOpt, device: str = DeviceOpt) -> None:
    """Talk about one image; reads questions from stdin (one per line), so it also works when piped."""
    with _one_line_errors():
        pixels = load_image(image)
        session = _predictor(model, device).chat(pixels)
    interactive = sys.stdin.isatty()
    if interactive:
        typer.echo(CHAT_HELP)
    pending: list = []
    turn = 0
    while True:
        if interactive:
            typer.echo("> ", nl=False)
        line = sys.stdin.readline()
        if not line:
            break
        line = line.strip()
        if not line:
            continue
        try:
            if line in (":quit", ":q", ":exit"):
                break
            if line == ":clear":
                pending, session.prompts = [], {}
                continue
            if line == ":reset":
                session.reset()
                pending = []
                continue
            if line.startswith(":"):
                cmd, _, arg = line.partition(" ")
                kinds = {":box": "box", ":point": "point", ":mask": "mask"}
                if cmd not in kinds:
                    raise UsageError(f"unknown command {cmd!r}\n{CHAT_HELP}")
                pending += collect_prompts([arg] if cmd == ":box" else None, [arg] if cmd == ":point" else None,
                                           [arg] if cmd == ":mask" else None)
                typer.echo(f"  <vp_{len(pending) - 1}> added")
                continue
            result = session.send(line, prompts=dict(enumerate(pending)) if pending else None)
        except (InputError, ImageInputError, UsageError) as e:
            typer.echo(f"error: {e}", err=True)
            continue
        _print_result(result)
        if save_dir is not None:
            _save_overlay(result, save_dir / f"turn_{turn}.png")
        turn += 1


def serve(host: str = typer.Option("127.0.0.1", help="address to listen on"),
          port: int = typer.Option(7860, help="port (0: any free port)"),
          samples: int = typer.Option(8, help="how many shapes scenes to offer as sample images"),
          max_upload_mb: float = typer.Option(8.0, help="largest accepted upload"),
          max_pixels: int = typer.Option(2048 * 2048, help="largest accepted image (width x height)"),
          queue: int = typer.Option(8, help="requests that may wait for the model; more get 503"),
          sessions: int = typer.Option(32, help="visitors kept at once (least recently used dropped)"),
          model: Optional[Path] = ModelOpt, device: str = DeviceOpt) -> None:
    """Serve the web demo. Memory stays bounded: sessions x max-pixels images plus a few cached image prefixes."""
    from pixelsail.web import DemoApp, DemoServer, Limits

    try:  # the port first: a second server on the same port is told so before it spends seconds loading a model
        server = DemoServer(None, host, port)
    except OSError as e:
        typer.echo(f"error: cannot listen on {host}:{port}: {e.strerror or e} (is another server running there? "
                   "pick another --port)", err=True)
        raise typer.Exit(2) from None
    try:
        with _one_line_errors():
            predictor = _predictor(model, device, max_pixels=max_pixels)
    except typer.Exit:
        server.server_close()
        raise
    server.app = DemoApp(predictor, samples=sample_scenes(samples),
                         limits=Limits(max_upload_bytes=int(max_upload_mb * 1024 * 1024), queue_size=queue,
                                       max_sessions=sessions))
    typer.echo(f"pixelsail demo on {server.url}  (Ctrl-C to stop)")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        server.app.close()


def sample_scenes(n: int, split: str = "test", image_size: int = 128) -> list[tuple[str, np.ndarray]]:
    """Shapes scenes the model never trained on (the test split), as (name, image) pairs."""
    from pixelsail.data.shapes import generate_scene

    return [(f"shapes {split} #{i}", generate_scene(split, i, image_size=image_size).image) for i in range(n)]


def demo(out: Path = typer.Option(Path("outputs/demo"), "-o", "--out",
                                  help="directory for demo.png + answers.json (or a .png file for the grid only)"),
         n: int = typer.Option(3, help="number of scenes"),
         model: Optional[Path] = ModelOpt, device: str = DeviceOpt) -> None:
    """Generate a few shapes scenes, segment / ask / describe on each, print answers and timings, save a grid."""
    from pixelsail.data.shapes import (MCQ_LETTERS, SHAPES, attribute_referrals, generate_scene, make_rng,
                                       mcq_question, no_target_referral, region_caption, relation_referrals,
                                       vt_res_options)
    from pixelsail.viz import image_grid

    t0 = time.perf_counter()
    with _one_line_errors():
        predictor = _predictor(model, device)
    typer.echo(f"model loaded in {time.perf_counter() - t0:.2f} s")
    tiles, captions, records = [], [], []
    first, followups = [], []
    for i in range(n):
        scene = generate_scene("test", i)
        objs = sorted(scene.visible_objects, key=lambda o: -o.area)
        big, small = objs[0], objs[-1]
        ys, xs = np.nonzero(small.mask)
        point = (float(xs[len(xs) // 2]) + 0.5, float(ys[len(ys) // 2]) + 0.5)
        refs = {r.targets[0].index: r.expression for r in attribute_referrals(scene)}
        # the second mask: a relation ("the circle left of the red diamond") where the scene has one, else the
        # smallest object
        relation = next((r for r in relation_referrals(scene) if r.targets[0].index != big.index), None)
        second = (relation.expression, relation.targets[0]) if relation else (
            refs.get(small.index, "the " + small.phrase()), small)
        # a multiple choice about the boxed object's shape: the right one among three others, in a fixed shuffle
        shapes = [str(s) for s in make_rng(0, "test", i, 8).permutation([s for s in SHAPES if s != big.shape])[:3]]
        shapes.insert(i % 4, big.shape)
        choice = mcq_question("What shape is <vp_0>?", shapes)
        # (what to show, how to run it, the answer the scene implies); each pair shares one image prefix
        runs = [
            (refs.get(big.index, "the " + big.phrase()), lambda e: predictor.segment(scene.image, e),
             "a mask of the " + big.phrase()),
            (second[0], lambda e: predictor.segment(scene.image, e), "a mask of the " + second[1].phrase()),
            ("What colour is <vp_0>?", lambda q: predictor.ask(scene.image, q, prompts=[big.bbox]), big.color),
            (choice, lambda q: predictor.ask(scene.image, q, prompts=[big.bbox]),
             f"({MCQ_LETTERS[shapes.index(big.shape)]}) {big.shape}"),
            ("describe <vp_0>", lambda _: predictor.describe(scene.image, point), region_caption(scene, small)),
        ]
        # an object the scene does not have: the answer should come without a mask, and say so
        absent = no_target_referral(scene, make_rng(0, "test", i, 7)).expression
        runs.append((absent, lambda e: predictor.segment(scene.image, e), "no mask: the scene has no such object"))
        # a visual-text referral: "the other" object of the boxed one's colour (or shape), where the scene has one
        options = sorted(vt_res_options(scene), key=lambda o: o[0] != "colour")
        if options:
            kind, marked, target = options[0]
            runs.append((f"Segment the object with the same {kind} as <vp_0>.",
                         lambda q, box=marked.bbox: predictor.ask(scene.image, q, prompts=[box]),
                         "a mask of the " + target.phrase()))
        for request, run, expected in runs:
            result = run(request)
            (followups if result.prefix_reused else first).append(result.seconds)
            records.append({"scene": scene.image_id, "request": request, "expected": expected, **result.to_dict()})
            empty = f", {len(result.empty_masks)} empty" if result.empty_masks else ""
            typer.echo(f"scene {i}  {request!r} -> {result.text!r}\n    expected: {expected}; "
                       f"{len(result.masks)} mask(s){empty}; {result.seconds * 1000:.0f} ms"
                       f"{' (prefix reused)' if result.prefix_reused else ''}")
            tiles.append(result.overlay())
            found = " (nothing found)" if result.empty or (not result.masks and result.no_target) else ""
            captions.append(f"{request}\n-> {result.text}{found}")
        if not options:
            tiles.append(scene.image)
            captions.append("(no two objects share a colour\nor shape: no visual-text referral)")
    sheet = image_grid(tiles, captions, ncols=7, tile_size=192)
    grid_path = out if out.suffix.lower() == ".png" else out / "demo.png"
    grid_path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(grid_path)
    typer.echo(f"grid -> {grid_path}")
    if grid_path != out:
        (out / "answers.json").write_text(json.dumps(records, indent=1))
        typer.echo(f"answers -> {out / 'answers.json'}")
    if first and followups:
        ratio = np.mean(followups) / np.mean(first)
        typer.echo(f"mean latency: new image/prompts {np.mean(first) * 1000:.0f} ms, same image prefix reused "
                   f"{np.mean(followups) * 1000:.0f} ms (ratio {ratio:.2f})")
    typer.echo(f"total {time.perf_counter() - t0:.1f} s")


def register(app: typer.Typer) -> None:
    for fn in (segment, ask, describe, chat, serve, demo):
        app.command(fn.__name__)(fn)
