"""`multimae pseudolabel`: turn a folder of rgb images into a multi-modal dataset with teacher models."""

from __future__ import annotations

import json
import os
from pathlib import Path

import typer

from ..errors import ConfigError

HELP = """Make depth, semseg, normals, edges, ... for the images below RGB_DIR
with teacher models and write them, with the images, in the layout that
`multimae pretrain --data OUT` reads (OUT/<split>/<modality>/<key>.<ext>),
plus OUT/pseudolabel.json: teachers, classes, settings and versions.

\b
Teachers, --teacher MOD=NAME[:ARG][,KEY=VALUE...] (`multimae plugins`):
  multimae:CKPT         a multimae checkpoint that predicts MOD from rgb
  hf:DIR|ORG/NAME       a transformers depth or segmentation model: a
                        folder, or a hub id through the hub's cache
                        (pip install 'multimae\\[hf]'; output=depth|disparity)
  normals-from-depth    analytic normals of depth (default for normals;
                        fov=DEG, default 60, or focal=PX)
  edges[:canny|:sobel]  OpenCV edges of rgb (default for edges)

\b
The paper's teachers: DPT trained on Omnidata for depth
  --teacher depth=hf:DIR,output=depth  (a DPTForDepthEstimation folder)
and Mask2Former on the 133 COCO panoptic classes for semseg
  --teacher semseg=hf:DIR  (Mask2FormerForUniversalSegmentation; its
  class names go to the manifest). Relative-depth models (Intel DPT,
  Depth Anything) predict inverse depth, their default output=disparity.

Resumable: outputs already written and readable are kept, so a re-run
finishes what an interrupted run left. Nothing is replaced without
--overwrite."""


def plugin_teachers_help() -> str:
    """The teachers that installed plugins add, for the help text (the built-ins are described above)."""
    from ..plugin.registry import get_registry

    registry = get_registry()
    rows = []
    for name, teacher in sorted(registry.teachers().items()):
        origin = registry.origin("teachers", name) or {}
        if origin.get("distribution") not in ("multimae", None):
            makes = ", ".join(teacher.produces) or "any"
            rows.append(f"  {name:<21} {teacher.description or 'makes ' + makes} ({origin['distribution']})")
    return "\n\n\b\nTeachers from plugins:\n" + "\n".join(rows) if rows else ""


def register(app: typer.Typer) -> None:
    @app.command("pseudolabel", help=HELP + plugin_teachers_help(),
                 short_help="Make depth, semseg, normals, ... for an rgb folder with teacher models.")
    def pseudolabel_command(
        rgb_dir: Path = typer.Argument(..., help="Folder of rgb images (searched recursively)."),
        out: Path = typer.Option(..., "--out", help="Dataset folder to write (may already hold modalities)."),
        modalities: str = typer.Option(..., "--modalities", help="Modalities to make, e.g. depth,semseg,normals."),
        teacher: list[str] = typer.Option(None, "--teacher", help="MOD=NAME[:ARG][,KEY=VALUE...] (repeatable), "
                                          "e.g. depth=hf:models/dpt."),
        split: str = typer.Option("train", "--split", help="Split folder to write under OUT."),
        batch_size: int = typer.Option(8, "--batch-size"),
        workers: int = typer.Option(2, "--workers", help="Threads reading and writing files."),
        device: str = typer.Option("auto", "--device", help="auto | cpu | cuda."),
        rgb_mode: str = typer.Option("copy", "--rgb", help="How images enter the dataset: copy | link | symlink."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Remake and replace existing outputs."),
        skip_bad: bool = typer.Option(False, "--skip-bad", help="Skip (and list) unreadable images."),
        quiet: bool = typer.Option(False, "--quiet"),
        as_json: bool = typer.Option(False, "--json", help="Print a JSON summary."),
    ) -> None:
        if device not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"--device {device}: expected auto, cpu or cuda")
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn

        from ..infer.pseudolabel import parse_teacher_options, pseudolabel
        from .output import progress

        names = [name.strip() for name in modalities.split(",") if name.strip()]
        specs = parse_teacher_options(teacher or [])
        columns = ("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
                   TextColumn("{task.fields[rate]}"), TimeRemainingColumn())
        with progress(quiet or as_json, *columns) as bar:
            handle = bar.add_task("pseudo-labelling", total=None, rate="")

            def advance(done: int, total: int, rate: float) -> None:
                bar.update(handle, completed=done, total=total, rate=f"{rate:.1f} img/s")

            summary = pseudolabel(rgb_dir, out, names, specs, split, batch_size, workers, device, rgb_mode,
                                  overwrite, advance, skip_bad)
        if os.environ.get("RANK", "0") != "0":  # under torchrun, rank 0 reports for all
            return
        if as_json:
            typer.echo(json.dumps(summary))
        elif not quiet:
            skipped = f", {summary['skipped']} skipped" if summary["skipped"] else ""
            done = f", {summary['already_done']} already done" if summary["already_done"] else ""
            rate = f" ({summary['images_per_s']:.1f} images/s)" if summary["labelled"] else ""
            typer.echo(f"{summary['labelled']} image(s) labelled{done}{skipped}: "
                       f"{', '.join(summary['modalities'])} -> {summary['out']}{rate}")
        for line in summary["skipped_files"]:
            typer.echo(f"skipped: {line}", err=True)
