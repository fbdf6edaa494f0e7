"""``copick inference cryoet-monai``: segment the runs of a copick project.

A ``copick.inference.commands`` entry point (setup.cfg), so with copick installed (the ``copick`` extra,
in an environment of its own: copick pins zarr < 3, see docs/copick.md) ``copick inference cryoet-monai
-c project.json --tomo-type wbp`` segments every run's ``wbp`` tomogram at 10 Å with the shipped model
(or ``--model``) and stores one multilabel segmentation per run through copick's API
(``run.new_segmentation(..., is_multilabel=True)`` + ``from_numpy``). Voxel values are our labels:
0 background, 1 microtubule, 2 ribosome, 3 double membrane, 4 single membrane, 5 carbon edge; the
segmentation's zarr group also names them (NGFF ``image-label`` metadata and ``cryoet_monai``).
``python -m cryoet_monai.integrations.copick`` runs the same command without copick's CLI.

Each run's tomogram is read from the finest level of its zarr store (whole when it fits in memory,
else slab by slab), segmented in memory and written only once its segmentation is complete; a run
that fails is one line and the others go on.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cryoet_monai import CLASS_NAMES, CLASSES, __version__

#: the one line printed when copick is not there (the entry point itself only loads under copick)
MISSING_COPICK = (
    "the copick integration needs copick: pip install 'cryoet-monai[copick]' in an environment of its "
    "own (copick pins zarr<3; see docs/copick.md and scripts/copick_env.sh)"
)

try:
    import click  # a dependency of copick
except ImportError as err:  # pragma: no cover - depends on the environment
    raise ImportError(MISSING_COPICK) from err

if TYPE_CHECKING:
    from copick.models import CopickRoot, CopickRun, CopickSegmentation, CopickTomogram

    from cryoet_monai.inference.engine import TomogramSegmenter

__all__ = ["IN_MEMORY_SHARE", "MISSING_COPICK", "RunOutcome", "Target", "build_segmenter", "exit_status",
           "find_tomogram", "label_attributes", "label_note", "main", "open_tomogram", "segment",
           "segment_run", "segment_runs", "write_segmentation"]

logger = logging.getLogger(__name__)


class CommandError(click.ClickException):
    """A problem with the command line, the project or the model: one line, exit status 2."""

    exit_code = 2


class MissingTomogram(LookupError):
    """The run has no tomogram of the requested type at the requested voxel spacing."""


@dataclass(frozen=True)
class Target:
    """Which copick segmentation the labels go to: ``{voxel}_{user_id}_{session_id}_{name}-multilabel``."""

    name: str
    user_id: str
    session_id: str


@dataclass(frozen=True)
class RunOutcome:
    """What happened to one run: ``status`` is ``segmented``, ``exists`` (kept, no ``--overwrite``),
    ``missing`` (no such tomogram, the run was not asked for by name) or ``failed``; ``message`` is its
    one line."""

    run: str
    status: str
    message: str


def _one_line(err: BaseException, typed: bool = False) -> str:
    """The first line of ``err``'s message, after its type name for errors other than ValueError/OSError
    (our own errors' type) or, with ``typed``, for any error."""
    from cryoet_monai.engines.errors import error_line  # imports torch: not when copick lists its commands

    line = error_line(err).removeprefix("error: ")
    return f"{type(err).__name__}: {line}" if typed and isinstance(err, (ValueError, OSError)) else line


def _import_copick() -> Any:
    try:
        import copick
    except ImportError as err:
        raise CommandError(MISSING_COPICK) from err
    return copick


def label_attributes(num_classes: int = len(CLASS_NAMES)) -> dict[str, Any]:
    """Zarr attributes naming our label values: NGFF ``image-label`` (colours and class names, as in our
    OME-Zarr outputs) and ``cryoet_monai`` (class names by value, package version)."""
    from cryoet_monai.io.omezarr import image_label_metadata

    names = CLASS_NAMES[:num_classes]
    return {
        # the same NGFF metadata as our OME-Zarr outputs (pure Python: works beside copick's zarr 2)
        "image-label": {"version": "0.4", **image_label_metadata(names, CLASSES.colors[:num_classes])},
        "cryoet_monai": {"class_names": list(names), "version": __version__},
    }


#: the share of the available memory a tomogram may take to be read whole (see :func:`open_tomogram`)
IN_MEMORY_SHARE = 0.25


def open_tomogram(tomogram: CopickTomogram) -> Any:
    """The finest multiscale level of ``tomogram``'s zarr store as a ``(Z, Y, X)`` volume.

    Read whole when it takes at most :data:`IN_MEMORY_SHARE` of the available memory: copick stores
    256³ chunks, so reading 16-slice slabs would decompress (in a project on the Data Portal: download)
    every chunk once per slab. A bigger one is a lazily sliced volume, read slab by slab.
    """
    import psutil  # a dependency of copick
    import zarr

    from cryoet_monai.io.omezarr import ZarrVolume

    group = zarr.open_group(tomogram.zarr(), mode="r")
    multiscales = group.attrs.get("multiscales") or [{}]
    # NGFF lists the levels from the finest to the coarsest
    datasets = multiscales[0].get("datasets") or [{"path": "0"}]
    level = str(datasets[0]["path"])
    if level not in group:
        raise ValueError(f"the tomogram's zarr store has no level '{level}'")
    array = group[level]
    if array.ndim != 3:
        raise ValueError(f"the tomogram is {array.ndim}-D with shape {array.shape}; expected (Z, Y, X)")
    if array.nbytes <= IN_MEMORY_SHARE * psutil.virtual_memory().available:
        return np.asarray(array[...])
    return ZarrVolume(array, (0, 1, 2))


def find_tomogram(run: CopickRun, tomo_type: str, voxel_spacing: float) -> tuple[CopickTomogram, float]:
    """``(tomogram, voxel size in Å)`` of ``run``, or :class:`MissingTomogram` saying what the run has."""
    vs = run.get_voxel_spacing(voxel_spacing)
    if vs is None:
        have = ", ".join(f"{v.voxel_size:g}" for v in run.voxel_spacings) or "none"
        raise MissingTomogram(f"no voxel spacing {voxel_spacing:g} Å (the run has: {have})")
    tomograms = vs.get_tomograms(tomo_type)
    if not tomograms:
        have = ", ".join(sorted({t.tomo_type for t in vs.tomograms})) or "none"
        raise MissingTomogram(f"no '{tomo_type}' tomogram at {vs.voxel_size:g} Å (there: {have})")
    return tomograms[0], float(vs.voxel_size)


def _existing(run: CopickRun, voxel_size: float, target: Target) -> list[CopickSegmentation]:
    return run.get_segmentations(user_id=target.user_id, session_id=target.session_id, name=target.name,
                                 voxel_size=voxel_size, is_multilabel=True)


def write_segmentation(run: CopickRun, labels: np.ndarray, voxel_size: float, target: Target,
                       overwrite: bool, num_classes: int) -> CopickSegmentation:
    """Store ``labels`` as ``target``'s multilabel segmentation of ``run`` (with our label names).

    Called only with finished labels: copick creates the store in ``new_segmentation``, so creating it
    earlier would leave an empty segmentation behind a failed run. A write that fails deletes the store
    (with ``overwrite``, the segmentation it was replacing is gone then too: it was half overwritten).
    """
    import zarr

    seg = run.new_segmentation(voxel_size=voxel_size, name=target.name, session_id=target.session_id,
                               is_multilabel=True, user_id=target.user_id, exist_ok=overwrite)
    try:
        seg.from_numpy(labels, dtype=np.uint8)
        zarr.open_group(seg.zarr(), mode="a").attrs.update(label_attributes(num_classes))
    except BaseException:
        seg.delete()  # a half-written store must not be listed as a result
        raise
    return seg


def segment_run(run: CopickRun, segmenter: TomogramSegmenter, tomo_type: str, voxel_spacing: float,
                target: Target, overwrite: bool = False) -> RunOutcome:
    """Segment one run's tomogram and store the labels; raises on failure (see :func:`segment_runs`)."""
    tomogram, voxel_size = find_tomogram(run, tomo_type, voxel_spacing)
    where = f"{target.user_id}/{target.session_id}/{target.name} at {voxel_size:g} Å"
    if not overwrite and _existing(run, voxel_size, target):
        return RunOutcome(run.name, "exists", f"{run.name}: {where} exists, kept (--overwrite replaces it)")
    volume = open_tomogram(tomogram)
    name = f"{run.name} {tomo_type}@{voxel_size:g}"  # names the run in the segmenter's messages
    labels, result = segmenter.segment_array(volume, voxel_size, name=name)
    write_segmentation(run, labels, voxel_size, target, overwrite, segmenter.num_classes)
    z, y, x = result["shape"]
    fractions = ", ".join(f"{k} {v:.2%}" for k, v in result["class_fractions"].items())
    inverted = " (contrast inverted)" if result["inverted"] else ""
    return RunOutcome(run.name, "segmented", f"{run.name}: {tomo_type} {z}x{y}x{x} in "
                      f"{result['seconds']:.1f} s{inverted} -> {where} (multilabel) | {fractions}")


def segment_runs(root: CopickRoot, segmenter: TomogramSegmenter, tomo_type: str, voxel_spacing: float,
                 target: Target, run_names: Sequence[str] = (), overwrite: bool = False) -> list[RunOutcome]:
    """Segment the runs named (default: all runs of ``root``), each independently: a run's error becomes
    its ``failed`` outcome and the next run goes on. A run without the tomogram is ``missing`` when all
    runs were asked for, ``failed`` when it was named."""
    named = [(name, root.get_run(name)) for name in dict.fromkeys(run_names)]
    selected = named if run_names else [(run.name, run) for run in root.runs]
    outcomes = []
    for name, run in selected:
        if run is None:
            outcome = RunOutcome(name, "failed", f"{name}: no such run in the project")
        else:
            outcome = _segment_or_report(run, segmenter, tomo_type, voxel_spacing, target, overwrite,
                                         named=bool(run_names))
        outcomes.append(outcome)
        failed = outcome.status == "failed"
        click.echo(f"ERROR  {outcome.message}" if failed else outcome.message, err=failed)
    return outcomes


def _segment_or_report(run: CopickRun, segmenter: TomogramSegmenter, tomo_type: str, voxel_spacing: float,
                       target: Target, overwrite: bool, named: bool) -> RunOutcome:
    """:func:`segment_run`, with its error turned into a one-line ``failed`` (or ``missing``) outcome."""
    try:
        return segment_run(run, segmenter, tomo_type, voxel_spacing, target, overwrite)
    except MissingTomogram as err:
        return RunOutcome(run.name, "failed" if named else "missing", f"{run.name}: {err}")
    except Exception as err:  # noqa: BLE001 - whatever goes wrong in one run is that run's error
        logger.debug("run %s failed", run.name, exc_info=True)
        message = _one_line(err)
        return RunOutcome(run.name, "failed", message if run.name in message else f"{run.name}: {message}")


def exit_status(outcomes: Sequence[RunOutcome]) -> int:
    """0 when every run asked for is segmented (or kept), runs merely lacking the tomogram aside; 1 when
    a run failed or none has a segmentation now (as ``cryoet-monai segment``: any failure is 1)."""
    if any(o.status == "failed" for o in outcomes):
        return 1
    return 0 if any(o.status in ("segmented", "exists") for o in outcomes) else 1


def build_segmenter(model: Path | None, overrides: dict[str, Any]) -> TomogramSegmenter:
    """The segmenter of the shipped bundle, a model folder (``--model DIR``, e.g. from ``finetune``) or
    a state_dict for the bundle's network (``--model FILE``), as ``cryoet-monai segment`` builds it."""
    from cryoet_monai.engines.errors import innermost_error
    from cryoet_monai.inference import cli

    config, model_overrides = cli.resolve_model(model)
    overrides = {**overrides, **model_overrides}
    try:
        return cli.build_segmenter(config, **overrides).get_parsed_content("segmenter")
    except (RuntimeError, ValueError, AssertionError, OSError) as err:
        # a bad model: one line, not ConfigParser's chain of wrapped tracebacks
        raise CommandError(_one_line(innermost_error(err))) from err


def _check_name(copick_name: str, what: str) -> str:
    from copick.util.escape import sanitize_name

    # copick would rename it (with only a warning), and a rerun would not find its own result again
    if sanitize_name(copick_name, suppress_warnings=True) != copick_name:
        raise CommandError(f"{what} '{copick_name}' is not a valid copick name (no spaces, underscores or "
                           "<>:\"/\\|?*); use dashes")
    return copick_name


def _open_project(copick: Any, config: str) -> CopickRoot:
    try:
        return copick.from_file(config)
    except Exception as err:  # noqa: BLE001 - pydantic, JSON and file errors alike: one line
        reason = _one_line(err, typed=True)
        raise CommandError(f"{config}: not a readable copick configuration ({reason})") from err


def label_note(root: CopickRoot, num_classes: int, seg_name: str) -> str | None:
    """A note when pickable objects of the project give some of our label values another name: copick
    tools name a multilabel segmentation's values after the objects' ``label``."""
    ours = {i: CLASS_NAMES[i] for i in range(1, num_classes)}
    conflicts = [f"{o.label} is '{o.name}'" for o in root.config.pickable_objects
                 if o.label in ours and o.name.replace("-", "_").lower() != ours[o.label]]
    if not conflicts:
        return None
    labels = ", ".join(f"{i} {name}" for i, name in ours.items())
    return (f"note: in this project's pickable objects label {'; '.join(conflicts)}; in the {seg_name} "
            f"segmentations the labels are ours: {labels}")


def _closing_line(outcomes: Sequence[RunOutcome], tomo_type: str, voxel_spacing: float) -> str | None:
    """The line after the runs' own lines when something went wrong."""
    failed = sum(o.status == "failed" for o in outcomes)
    if not outcomes:
        return "error: the project has no runs"
    if failed:
        return f"{failed} of {len(outcomes)} runs failed (see the messages above)."
    if exit_status(outcomes):
        return f"error: no run has a '{tomo_type}' tomogram at {voxel_spacing:g} Å"
    return None


@contextlib.contextmanager
def _copick_logging(debug: bool) -> Iterator[None]:
    """copick's console logging, set up as its own commands do, with our package's loggers at WARNING
    (DEBUG with ``--debug``): the engine's INFO lines (polarity, ...) would only repeat each run's line."""
    from copick.util.log import get_logger

    get_logger(__name__, debug=debug)
    ours = logging.getLogger("cryoet_monai")
    level = ours.level
    ours.setLevel(logging.DEBUG if debug else logging.WARNING)
    try:
        yield
    finally:
        ours.setLevel(level)


@click.command(name="cryoet-monai", context_settings={"show_default": True}, no_args_is_help=True,
               short_help="Segment microtubules, ribosomes, membranes and carbon edges.",
               epilog="labels: 0 background, 1 microtubule, 2 ribosome, 3 double membrane, "
               "4 single membrane, 5 carbon edge.")
@click.option("-c", "--config", type=click.Path(exists=True, dir_okay=False), envvar="COPICK_CONFIG",
              show_envvar=True, metavar="PATH", help="Path to the copick configuration file.")
@click.option("--run-names", "-r", multiple=True,
              help="Specific run names to process (default: all runs). Repeatable; pass -r once per run.")
@click.option("--tomo-type", default="wbp", help="Type of the tomograms to segment.")
@click.option("--voxel-spacing", type=click.FloatRange(min=0, min_open=True), default=10.0,
              help="Voxel spacing (Å) of the tomograms to segment; the model resamples to its own (10 Å).")
@click.option("--name", "seg_name", default="cryoet-monai",
              help="Name of the multilabel segmentations written.")
@click.option("--user-id", default="cryoet-monai", help="User ID of the segmentations written.")
@click.option("--session-id", default="0",
              help="Session ID of the segmentations written (copick: 0 = written by a tool).")
@click.option("--model", type=click.Path(exists=True, path_type=Path),
              help="A model folder (configs/ + models/model.pt, e.g. from 'cryoet-monai finetune') or a "
              "state_dict checkpoint for the shipped network (default: the shipped model).")
@click.option("--device", default=None, help="cpu, cuda, cuda:1 (default: a GPU if any, else cpu).")
@click.option("--tta", type=click.IntRange(0, 8), default=0,
              help="Test-time augmentation: average N of the 8 in-plane flips/rotations (0: off).")
@click.option("--batch-size", type=click.IntRange(min=1), default=None,
              help="Windows (slices) per forward pass.")
@click.option("--precision", type=click.Choice(["auto", "fp32", "bf16", "fp16"]), default="auto",
              help="Compute precision.")
@click.option("--invert", type=click.Choice(["auto", "yes", "no"]), default="auto",
              help="Contrast polarity: 'no' = dense material dark (the model's convention), 'yes' = dense "
              "bright, 'auto' = decided per tomogram by the model's confidence.")
@click.option("--overwrite/--no-overwrite", default=False,
              help="Replace existing segmentations (else keep them).")
@click.option("--debug/--no-debug", default=False, help="Enable debug logging (tracebacks of failed runs).")
@click.pass_context
def segment(ctx: click.Context, config: str | None, run_names: tuple[str, ...], tomo_type: str,
            voxel_spacing: float, seg_name: str, user_id: str, session_id: str, model: Path | None,
            device: str | None, tta: int, batch_size: int | None, precision: str, invert: str,
            overwrite: bool, debug: bool) -> None:
    """Segment the tomograms of a copick project with cryoet-monai's model.

    Writes one multilabel segmentation per run (voxel values 0-5, see below) next to the tomogram, at
    its voxel spacing. Runs that fail are reported and skipped; the exit status is 1 when any run failed
    or nothing was segmented.

    \b
    Examples:
      copick inference cryoet-monai -c project.json --tomo-type wbp --voxel-spacing 10
      copick inference cryoet-monai -c project.json -r TS_001 -r TS_002 --model my_finetuned_model/
    """
    copick = _import_copick()
    if not config:
        raise CommandError("no copick project: give -c/--config or set COPICK_CONFIG")
    target = Target(_check_name(seg_name, "--name"), _check_name(user_id, "--user-id"),
                    _check_name(session_id, "--session-id"))
    root = _open_project(copick, config)
    overrides: dict[str, Any] = {"precision": precision, "invert": invert, "tta": tta or False,
                                 "progress": sys.stderr.isatty()}
    if device is not None:
        overrides["device"] = device
    if batch_size is not None:
        overrides["sw_batch_size"] = batch_size
    # after opening the project: importing copick's storage modules resets the logging to INFO
    with _copick_logging(debug):
        segmenter = build_segmenter(model, overrides)
        note = label_note(root, segmenter.num_classes, target.name)
        if note:
            click.echo(note, err=True)
        outcomes = segment_runs(root, segmenter, tomo_type, voxel_spacing, target, run_names, overwrite)
    closing = _closing_line(outcomes, tomo_type, voxel_spacing)
    if closing:
        click.echo(closing, err=True)
    ctx.exit(exit_status(outcomes))

def main(argv: Sequence[str] | None = None) -> None:
    """``python -m cryoet_monai.integrations.copick``: the command without copick's CLI."""
    segment.main(args=list(argv) if argv is not None else None,
                 prog_name="python -m cryoet_monai.integrations.copick")


if __name__ == "__main__":
    main()
