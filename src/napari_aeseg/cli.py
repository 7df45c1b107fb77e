"""The ``aeseg`` command line: the same engine as the napari plugin, for batch work.

Every error a user can cause ends as one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

# OpenMP worker threads that sleep instead of spinning between parallel regions: measured 3x
# faster training on a busy 2-core machine (benchmarks/README.md); set before torch loads
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np

from . import __version__
from .core.errors import AesegError, InvalidInputError

EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse's usage errors: one line too, exit 2
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _tile_value(text: str):
    if text == "auto":
        return "auto"
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"'{text}' is not 'auto' or pixels like 256 or 32,256,256"
        ) from None
    return values[0] if len(values) == 1 else tuple(values)


def _spacing_value(text: str):
    from .core.postprocess import parse_voxel_size

    if text in ("auto", "none"):
        return text
    try:
        values = parse_voxel_size(text)
    except InvalidInputError:
        values = ()
    if not values or not all(math.isfinite(v) and v > 0 for v in values):
        raise argparse.ArgumentTypeError(
            f"'{text}' is not 'auto', 'none' or positive sizes like 2,0.5,0.5 (Z,Y,X)"
        )
    return values


def _finite(text: str) -> float:
    """A float option that refuses nan and inf (argparse's float takes them)."""
    value = float(text)
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


class _DefaultsShown(argparse.HelpFormatter):
    """Help that ends each option with its default, where there is one to show."""

    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default
        if (
            not action.option_strings
            or default is None
            or default is False
            or default == argparse.SUPPRESS
            or "default" in text
            or isinstance(default, list)
        ):
            return text
        return f"{text} (default: %(default)s)" if text else "default: %(default)s"


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="aeseg",
        description="Denoise (and segment) images with autoencoders trained on your own data.",
    )
    p.add_argument("--version", action="version", version=f"napari-aeseg {__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    # every command's help shows the defaults (e.g. that training runs 2000 steps)
    _add = sub.add_parser
    sub.add_parser = lambda *a, **k: _add(*a, formatter_class=_DefaultsShown, **k)

    t = sub.add_parser(
        "train-denoiser", help="train a denoiser on noisy (or clean, for dae) images"
    )
    t.add_argument("images", nargs="+", metavar="IMAGE", help="noisy images to learn from")
    t.add_argument("--out", required=True, metavar="MODEL", help="model file to write (.aeseg)")
    t.add_argument(
        "--mode",
        choices=["n2v2", "n2v", "dae"],
        default="n2v2",
        help="self-supervised blind spot (n2v2, n2v) or synthetic noise on clean images (dae)",
    )
    t.add_argument(
        "--noise",
        action="append",
        metavar="KIND:LEVEL",
        help="synthetic noise for --mode dae: gaussian:0.1, poisson:30, salt_pepper:0.01 (repeatable)",
    )
    t.add_argument("--axes", help="axes of the images, e.g. YX, ZYX, TYX, YXC (default: guessed)")
    t.add_argument(
        "--steps", type=int, default=2000, help="training steps (minutes to an hour on a CPU)"
    )
    t.add_argument("--patch", type=int, default=64, help="patch size in Y and X")
    t.add_argument("--patch-z", type=int, default=16, help="patch size in Z (3D data)")
    t.add_argument("--batch", type=int, default=None, help="patches per step (16; 4 in 3D)")
    t.add_argument("--depth", type=int, default=2, help="down-sampling levels of the network")
    t.add_argument("--channels", type=int, default=32, help="base channels of the network")
    t.add_argument("--lr", type=_finite, default=1e-3, help="learning rate")
    t.add_argument(
        "--optimizer", choices=["adam", "adamw", "sgd", "rmsprop"], default="adam", help="optimiser"
    )
    t.add_argument("--loss", choices=["mse", "l1"], default="mse", help="training loss")
    t.add_argument(
        "--scheduler",
        choices=["cosine", "plateau", "constant"],
        default="cosine",
        help="learning-rate schedule",
    )
    t.add_argument("--resume", metavar="MODEL", help="continue training this model file")
    _device_seed(t, seed=True)

    d = sub.add_parser("denoise", help="denoise images with a trained model")
    d.add_argument("model", metavar="MODEL", help="a denoiser model file (.aeseg)")
    d.add_argument("images", nargs="+", metavar="IMAGE", help="images to denoise")
    d.add_argument("--out", required=True, metavar="DIR", help="folder for <stem>.tif outputs")
    d.add_argument("--axes", help="axes of the images (default: the model's)")
    d.add_argument("--tile", type=_tile_value, default="auto", help="'auto' or pixels")
    d.add_argument("--overlap", type=_tile_value, default="auto", help="'auto' or pixels")
    d.add_argument(
        "--tta", action="store_true", help="average over mirrored tiles (4x slower in 2D, cleaner)"
    )
    _device_seed(d, seed=False)

    s = sub.add_parser("train-segmenter", help="train a segmenter from a few labels")
    s.add_argument("images", nargs="+", metavar="IMAGE", help="images the labels belong to")
    s.add_argument(
        "--labels",
        nargs="+",
        required=True,
        metavar="LABELS",
        help="one label image per image: scribbles (0 = none, 1 = background, "
        "2 = foreground / class k+1) or instance masks",
    )
    s.add_argument("--out", required=True, metavar="MODEL", help="model file to write (.aeseg)")
    s.add_argument(
        "--encoder",
        default="none",
        metavar="DENOISER_MODEL",
        help="denoiser whose network initialises the segmenter's (see --transfer), or 'none'",
    )
    s.add_argument(
        "--transfer",
        choices=["encoder+decoder", "encoder"],
        default="encoder+decoder",
        help="with --encoder: start the decoder from the denoiser too (default), or only the "
        "encoder",
    )
    s.add_argument(
        "--denoise-with",
        metavar="DENOISER_MODEL",
        help="train on the images denoised by this model (the model records it; segment "
        "them with the same --denoise-with)",
    )
    s.add_argument(
        "--labels-kind",
        choices=["scribbles", "instances"],
        default="scribbles",
        help="scribbles (0 unlabeled, 1 background, 2.. classes) or instance masks",
    )
    s.add_argument(
        "--regions",
        nargs="+",
        metavar="MASK",
        help="one mask per label image, nonzero where its labels are complete: a few fully "
        "labeled crops inside otherwise unlabeled images (outside, pixels count as not "
        "annotated)",
    )
    s.add_argument(
        "--target",
        choices=["instances", "semantic"],
        default="instances",
        help="instances (nuclei, cells) or semantic classes",
    )
    s.add_argument(
        "--class-names",
        default=None,
        help="semantic classes 1, 2, 3... by name, comma-separated (e.g. "
        "'background,tumour,stroma'; a name with a comma in double quotes); the model "
        "keeps them",
    )
    s.add_argument(
        "--joint",
        action="store_true",
        help="also train a blind-spot denoising output (DenoiSeg-style)",
    )
    s.add_argument("--axes", help="axes of the images, e.g. YX, ZYX, TYX (default: guessed)")
    s.add_argument(
        "--steps",
        type=int,
        default=400,
        help="training steps; from a denoiser, fewer when the labels cover a small area",
    )
    s.add_argument(
        "--no-step-limit",
        action="store_true",
        help="train all --steps from a denoiser even when the labels cover a small area",
    )
    s.add_argument("--patch", type=int, default=64, help="patch size in Y and X")
    s.add_argument("--patch-z", type=int, default=16, help="patch size in Z (3D data)")
    s.add_argument("--batch", type=int, default=8, help="patches per step")
    s.add_argument("--lr", type=_finite, default=1e-3, help="learning rate")
    s.add_argument("--channels", type=int, default=32, help="base channels (no encoder only)")
    s.add_argument("--depth", type=int, default=2, help="depth (no encoder only)")
    _device_seed(s, seed=True)

    g = sub.add_parser("segment", help="segment images with a trained segmenter")
    g.add_argument("model", metavar="MODEL", help="a segmenter model file (.aeseg)")
    g.add_argument("images", nargs="+", metavar="IMAGE", help="images to segment")
    g.add_argument(
        "--out",
        required=True,
        metavar="DIR",
        help="writes <stem>_labels.tif, <stem>_prob.tif and <stem>_uncertainty.tif",
    )
    g.add_argument("--denoise-with", metavar="DENOISER_MODEL", help="denoise first with this model")
    g.add_argument("--axes", help="axes of the images (default: the model's)")
    g.add_argument("--tile", type=_tile_value, default="auto", help="'auto' or pixels")
    g.add_argument("--overlap", type=_tile_value, default="auto", help="'auto' or pixels")
    g.add_argument("--truth", nargs="+", metavar="GT", help="ground-truth labels: print metrics")
    g.add_argument(
        "--tta",
        action="store_true",
        help="average the probabilities over mirrored tiles (4x slower in 2D)",
    )
    g.add_argument(
        "--spacing",
        type=_spacing_value,
        default="auto",
        metavar="Z,Y,X",
        help="voxel size along the spatial axes (Z,Y,X or Y,X, any unit), so that objects of "
        "anisotropic stacks are split by distances in space; 'auto' (default): as the file "
        "records it (ImageJ, OME-TIFF, OME-Zarr), else cubic voxels; 'none': cubic voxels",
    )
    _device_seed(g, seed=False)

    e = sub.add_parser("evaluate", help="AP@0.5, F1 and IoU of predictions against ground truth")
    e.add_argument("pred", nargs="+", metavar="PRED")
    e.add_argument("--truth", nargs="+", required=True, metavar="GT")
    e.add_argument("--threshold", type=_finite, default=0.5, help="IoU threshold of a match")
    e.add_argument(
        "--axes",
        default=None,
        help="axes of the label files, e.g. TYX: objects are matched frame by frame along T "
        "and S (default: as the files record them, else one 2D or 3D image)",
    )
    e.add_argument(
        "--semantic",
        action="store_true",
        help="class maps (values 1..K as in the scribbles; 0 in the truth is not scored): "
        "IoU per class, mean IoU and accuracy instead of matched objects (--axes and "
        "--threshold do not apply)",
    )
    e.add_argument("--json", action="store_true", help="print JSON")

    i = sub.add_parser("info", help="describe a model file")
    i.add_argument("model", metavar="MODEL")
    i.add_argument("--json", action="store_true", help="print the full config as JSON")

    m = sub.add_parser(
        "demo", help="train and denoise on the bundled sample; open napari if possible"
    )
    m.add_argument("--out", default="aeseg-demo", metavar="DIR")
    m.add_argument("--steps", type=int, default=400, help="denoiser training steps")
    m.add_argument("--seg-steps", type=int, default=200, help="segmenter training steps")
    m.add_argument("--no-viewer", action="store_true", help="never open napari")
    m.add_argument(
        "--no-corrections",
        action="store_true",
        help="one round of scribbles only (by default a second round adds corrections where "
        "the first result is wrong, as a user would)",
    )
    _device_seed(m, seed=True)
    return p


def _device_seed(parser: argparse.ArgumentParser, *, seed: bool) -> None:
    parser.add_argument("--device", default="auto", help="auto, cuda, mps or cpu")
    if seed:
        parser.add_argument("--seed", type=int, default=0, help="random seed (same seed, same run)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def _progress_bar(total: int, desc: str, quiet: bool, unit: str = "step"):
    from ._console import progress_bar

    return progress_bar(total, desc, quiet=quiet, unit=unit)


def _train(args) -> int:
    from .core.denoiser import DenoiserModel
    from .core.training import DenoiserTrainer, make_denoiser_config

    files = [_read_valid(p) for p in args.images]
    axes = args.axes or files[0].axes
    model = DenoiserModel.load(args.resume) if args.resume else None
    if model is not None:
        config = model.config.model_copy(deep=True)
        config.training.steps = model.trained_steps + args.steps
        axes = axes or config.axes
        defaults = build_parser().parse_args(["train-denoiser", "-", "--out", "-"])
        ignored = [o for o, d in RESUME_KEEPS.items() if getattr(args, d) != getattr(defaults, d)]
        if ignored and not args.quiet:
            print(
                f"--resume continues with the model's own settings; ignored: {', '.join(ignored)}",
                file=sys.stderr,
            )
    else:
        config = make_denoiser_config(
            files[0].data.shape,
            mode=args.mode,
            axes=axes,
            noise=args.noise,
            steps=args.steps,
            patch_size=args.patch,
            patch_size_z=args.patch_z,
            batch_size=args.batch,
            depth=args.depth,
            base_channels=args.channels,
            learning_rate=args.lr,
            optimizer=args.optimizer,
            loss=args.loss,
            scheduler=args.scheduler,
            seed=args.seed,
        )
    _check_output_file(args.out)
    trainer = DenoiserTrainer(
        [f.data for f in files], config, device=args.device, model=model, name=Path(args.out).stem
    )
    if not args.quiet:
        print(
            f"training {config.mode} on {len(files)} image(s), axes {config.axes}, "
            f"device {trainer.device.type}",
            file=sys.stderr,
        )
    bar = _progress_bar(trainer.total_steps - trainer.step, "train", args.quiet)
    gen = trainer.run()
    try:
        while True:
            p = next(gen)
            bar.update(1)
            post = {"loss": f"{p.train_loss:.4g}"}
            if p.best_val_loss is not None:
                post["val"] = f"{p.best_val_loss:.4g}"
            bar.set_postfix(post, refresh=False)
    except StopIteration as done:
        result = done.value
    except KeyboardInterrupt:
        bar.close()
        print("interrupted: saving the best weights so far", file=sys.stderr)
        result = trainer.result()
    bar.close()
    path = result.save(args.out)
    if not args.quiet:
        print(f"saved {path} (best validation loss {trainer.best_val:.4g})", file=sys.stderr)
    return 0


def _check_output_file(path: str) -> None:
    from .core.errors import OutputError

    folder = Path(path).parent
    if Path(path).is_dir():
        raise OutputError(
            f"cannot write '{path}': it is a folder; give a file name, e.g. "
            f"'{Path(path) / 'model.aeseg'}'"
        )
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"cannot write '{path}': '{folder}' is a file, not a folder")
    if not folder.is_dir():
        raise OutputError(f"cannot write '{path}': folder '{folder}' does not exist")
    if not os.access(folder, os.W_OK):
        raise OutputError(f"cannot write '{path}': folder '{folder}' is not writable")
    from .core.model_io import MODEL_SUFFIX

    if not str(path).lower().endswith(MODEL_SUFFIX):  # napari and the widgets look for it
        raise OutputError(
            f"a model file's name ends with {MODEL_SUFFIX}: give e.g. "
            f"'{Path(path).with_suffix(MODEL_SUFFIX)}', not '{path}'"
        )


def _check_tiling(model, layout, args) -> None:
    """Refuse bad ``--tile`` / ``--overlap`` values for an image before any work is done."""
    from .core.devices import resolve_device
    from .core.tiling import resolve_tiling

    resolve_tiling(
        layout.spatial_shape,
        tile=args.tile,
        overlap=args.overlap,
        divisor=model.config.architecture.divisor,
        device=resolve_device(args.device),
        patch=model.training_patch(layout.spatial_dims),
    )


def _warn_intensities(args, model, f, axes: str) -> None:
    """One stderr line when a file's intensities are far from the model's training data."""
    note = model.intensity_note(f.data, axes)
    if note:  # (even with --quiet: the results may be useless)
        print(f"aeseg {args.command}: warning: {f.path.name}: {note}", file=sys.stderr)


def _voxel_size(args, f, layout) -> tuple[tuple[str, float], ...] | None:
    """``(axis, size)`` pairs of an image's spatial axes from ``--spacing`` or the file."""
    from .core.postprocess import relative_spacing, spatial_spacing

    axes = layout.spatial_axes
    if args.spacing == "none":
        return None
    if args.spacing == "auto":
        recorded = f.spacing or {}
        missing = [a for a in axes if a not in recorded]
        if missing:
            if "Z" in axes and not args.quiet:
                what = (
                    "voxel size" if len(missing) == len(axes) else f"size for {', '.join(missing)}"
                )
                print(
                    f"{f.path.name}: the file records no {what}; voxels are taken as cubes "
                    f"(--spacing {','.join(axes)} to give it)",
                    file=sys.stderr,
                )
            return None
        try:
            values = spatial_spacing(recorded, axes)
        except InvalidInputError as exc:
            raise InvalidInputError(
                f"{f.path.name}: the voxel size it records is unusable ({exc}); give "
                f"--spacing {','.join(axes)} or --spacing none"
            ) from None
        if not args.quiet and relative_spacing(values, len(axes)) is not None:
            sizes = ", ".join(f"{a} {v:g}" for a, v in zip(axes, values, strict=True))
            print(f"{f.path.name}: voxel size {sizes} (from the file)", file=sys.stderr)
    else:
        try:
            values = spatial_spacing(args.spacing, axes)
        except InvalidInputError as exc:
            raise InvalidInputError(f"--spacing for {f.path.name}: {exc}") from None
    return tuple(zip(axes, values, strict=True))


#: pixels of checked inputs kept in memory for the run; the rest are read again in turn
KEEP_INPUT_BYTES = 1 << 30


def _read_checked(paths, check) -> list:
    """Read and ``check`` every input before anything is written; return ``(file, check's
    result)`` pairs. The pixels of the first files (up to :data:`KEEP_INPUT_BYTES`) are kept;
    the others are read again by :func:`_pixels` when their turn comes, so a batch of large
    files never sits in memory all at once."""

    kept, out = 0, []
    for p in paths:
        f = _read_valid(p)
        extra = check(f)
        if kept + f.data.nbytes <= KEEP_INPUT_BYTES:
            kept += f.data.nbytes
            out.append((f, extra))
        else:
            out.append((Path(p), extra))
    return out


def _model_first(args, command: str) -> None:
    """Say so when the model file was given after the images, not before."""
    from .core.model_io import MODEL_SUFFIX

    late = [p for p in args.images if str(p).lower().endswith(MODEL_SUFFIX)]
    if late and not str(args.model).lower().endswith(MODEL_SUFFIX):
        raise InvalidInputError(
            f"the model file comes first: aeseg {command} {late[0]} {args.model} ... "
            f"(got '{args.model}' where the model goes)"
        )


def _read_valid(path):
    """An input image, refused with its file's name when it is empty, not numeric or holds
    NaN/Inf (in a batch of 50 files, 'image contains NaN' does not say which)."""
    from .core.data import check_image
    from .core.image_io import read_image

    f = read_image(path)
    check_image(f.data, name=f"'{f.path.name}'")
    return f


def _pixels(entry):
    from .core.image_io import read_image

    return read_image(entry) if isinstance(entry, Path) else entry


def _case_insensitive_files() -> bool:
    """Whether file names differing in case only name one file (macOS, Windows defaults)."""
    return sys.platform in ("darwin", "win32")


def _output_stems(paths, out_dir: Path, suffixes: tuple[str, ...], also=()) -> list[Path]:
    """``out_dir / <stem>`` for each input, refused before any work when two inputs share a
    stem or an output would overwrite an input (or one of the files ``also`` reads)."""
    stems = [out_dir / Path(p).stem for p in paths]
    seen: dict[str, str] = {}
    fold = _case_insensitive_files()  # a.tif and A.tif: one file on macOS and Windows
    for p, stem in zip(paths, stems, strict=True):
        key = stem.name.lower() if fold else stem.name
        if key in seen:
            raise InvalidInputError(
                f"'{seen[key]}' and '{p}' would both be written to {stem}{suffixes[0]}; "
                "give inputs with different names or run them one at a time"
            )
        seen[key] = str(p)
    inputs = {Path(p).resolve() for p in (*paths, *also)}
    for stem in stems:
        for suffix in suffixes:
            target = Path(f"{stem}{suffix}")
            if target.resolve() in inputs:
                raise InvalidInputError(
                    f"the output {target} would overwrite an input file; choose another "
                    "--out folder"
                )
    return stems


def _denoise(args) -> int:
    from .core.denoiser import DenoiserModel
    from .core.image_io import ensure_output_dir, in_integer_type, write_tiff

    stems = _output_stems(args.images, Path(args.out), (".tif",))
    _model_first(args, "denoise")
    model = DenoiserModel.load(args.model)

    def check(f):  # fail before any work if one input is unreadable or does not fit
        axes = args.axes or (f.axes if f.axes and len(f.axes) == f.data.ndim else None)
        layout = model.check_layout(f.data.shape, axes)
        _check_tiling(model, layout, args)
        _warn_intensities(args, model, f, layout.axes)
        return layout

    inputs = _read_checked(args.images, check)
    ensure_output_dir(args.out)
    for (entry, layout), stem in zip(inputs, stems, strict=True):
        f = _pixels(entry)
        result = _run_with_bar(
            model.iter_denoise(
                f.data,
                axes=layout.axes,
                tile=args.tile,
                overlap=args.overlap,
                device=args.device,
                tta=args.tta,
            ),
            f.path.name,
            args.quiet,
        )
        # the voxel size the file records goes with the result (segment reads it from there)
        spacing = {a: v for a, v in (f.spacing or {}).items() if a in layout.axes} or None
        unit = getattr(f.spacing, "unit", None)
        if layout.axes.endswith("C") and f.data.shape[-1] in (3, 4):  # colour: as it came
            result = in_integer_type(result, f.data.dtype)
        target = write_tiff(f"{stem}.tif", result, axes=layout.axes, spacing=spacing, unit=unit)
        if not args.quiet:
            print(f"wrote {target}", file=sys.stderr)
    return 0


def _run_with_bar(gen, desc: str, quiet: bool, unit: str = "tile"):
    """Exhaust a progress generator with a terminal bar; return its value."""
    bar = None
    try:
        while True:
            try:
                p = next(gen)
            except StopIteration as done:
                return done.value
            total = getattr(p, "total", None) or getattr(p, "total_steps", None)
            done_n = getattr(p, "done", None) or getattr(p, "step", 0)
            if bar is None:
                bar = _progress_bar(total, desc, quiet, unit=unit)
            loss = getattr(p, "train_loss", None)
            if loss is not None:
                bar.set_postfix(loss=f"{loss:.4g}", refresh=False)
            bar.update(done_n - bar.n)
    finally:
        if bar is not None:
            bar.close()


def _train_segmenter(args) -> int:
    from .core.denoiser import DenoiserModel
    from .core.image_io import read_image
    from .core.segmenter import (
        SegmenterTrainer,
        check_class_names,
        make_segmenter_config,
        missed_scribbles_note,
        parse_class_names,
        scribble_classes,
        shortened_note,
        undertrained_note,
    )

    if len(args.labels) != len(args.images):
        raise InvalidInputError(
            f"{len(args.images)} image(s) but {len(args.labels)} label file(s); give one per image"
        )
    if args.regions and len(args.regions) != len(args.labels):
        raise InvalidInputError(
            f"{len(args.labels)} label file(s) but {len(args.regions)} region mask(s); give one "
            "per label file"
        )
    files = [_read_valid(p) for p in args.images]
    labels = [read_image(p).data for p in args.labels]
    regions = [read_image(p).data != 0 for p in args.regions] if args.regions else None
    encoder = None if args.encoder.lower() == "none" else DenoiserModel.load(args.encoder)
    denoiser = DenoiserModel.load(args.denoise_with) if args.denoise_with else None
    axes = args.axes or files[0].axes
    images = [f.data for f in files]
    _check_output_file(args.out)  # before any long work
    class_names = parse_class_names(args.class_names)
    if class_names is not None:  # before any denoising
        if args.target != "semantic" or args.labels_kind != "scribbles":
            raise InvalidInputError(
                "--class-names names semantic classes painted as scribbles: use --target "
                "semantic (with --labels-kind scribbles)"
            )
        check_class_names(class_names, scribble_classes(labels, "semantic"))
    if denoiser is not None:
        for f in files:  # every image fits the denoiser before any is denoised
            layout = denoiser.check_layout(f.data.shape, args.axes or f.axes or axes)
            _warn_intensities(args, denoiser, f, layout.axes)
        images = [
            _run_with_bar(
                denoiser.iter_denoise(f.data, axes=args.axes or f.axes or axes, device=args.device),
                f"denoise {f.path.name}",
                args.quiet,
            )
            for f in files
        ]
    n_classes = None
    if args.labels_kind == "scribbles":
        n_classes = scribble_classes(labels, args.target)
    config = make_segmenter_config(
        files[0].data.shape,
        encoder=encoder,
        axes=axes,
        labels_kind=args.labels_kind,
        target=args.target,
        n_classes=n_classes,
        depth=args.depth,
        base_channels=args.channels,
        steps=args.steps,
        patch_size=args.patch,
        patch_size_z=args.patch_z,
        batch_size=args.batch,
        learning_rate=args.lr,
        joint_denoising=args.joint,
        seed=args.seed,
        denoised_with=None if denoiser is None else denoiser.name,
        denoised_digest=None if denoiser is None else denoiser.weights_digest(),
        class_names=class_names,
        **({"transfer": args.transfer} if encoder is not None else {}),
        **({"max_labeled_patches": None} if args.no_step_limit else {}),
    )
    trainer = SegmenterTrainer(
        images,
        labels,
        config,
        encoder=encoder,
        device=args.device,
        name=Path(args.out).stem,
        regions=regions,
    )
    if not args.quiet:
        start = "a denoiser's weights" if encoder is not None else "random weights"
        what = f"{config.n_classes} classes" if config.target == "semantic" else "instances"
        print(
            f"training a segmenter of {what} from {start} on {len(files)} image(s)"
            f"{'' if denoiser is None else f' denoised by {denoiser.name!r}'}, "
            f"axes {config.axes}, device {trainer.device.type}",
            file=sys.stderr,
        )
    if trainer.requested_steps is not None and not args.quiet:
        note = shortened_note(trainer)
        print(f"training{note} (--no-step-limit trains them all)", file=sys.stderr)
    model = _run_with_bar(trainer.run(), "train", args.quiet, unit="step")
    path = model.save(args.out)
    if not args.quiet:
        print(f"saved {path}", file=sys.stderr)
    warning = undertrained_note(model)
    if warning:  # (even with --quiet: the model is probably useless)
        print(f"aeseg train-segmenter: warning: {warning}", file=sys.stderr)
    if args.labels_kind == "scribbles" and sum(i.size for i in images) <= CHECK_SCRIBBLES_PIXELS:
        # how much of its own scribbles the model gets right (the loss can look fine while
        # a class is lost); seconds on a CPU, so only on images of moderate size
        if not args.quiet:
            print("checking the model on its scribbles...", file=sys.stderr)
        for i, (f, image, lab) in enumerate(zip(files, images, labels, strict=True)):
            try:
                if regions is not None:  # (scribbles outside the regions were not learnt)
                    lab = np.where(regions[i], lab, 0)
                result = model.segment(image, axes=config.axes, device=args.device)
                missed = missed_scribbles_note(
                    result.labels, lab, target=config.target, class_names=class_names
                )
            except (AesegError, MemoryError, ValueError) as exc:  # the model is saved
                print(
                    f"aeseg train-segmenter: note: {f.path.name} not checked: {exc}",
                    file=sys.stderr,
                )
                continue
            if missed:
                print(f"aeseg train-segmenter: warning: {f.path.name}: {missed}", file=sys.stderr)
    return 0


#: training images up to this many pixels in all are segmented after training to check the
#: scribbles (a 2048 x 2048 image took 12.5 s on one CPU thread, 4096 x 4096 52 s)
CHECK_SCRIBBLES_PIXELS = 1 << 22


def _segment(args) -> int:
    from .core.denoiser import DenoiserModel
    from .core.image_io import ensure_output_dir, read_image, write_tiff
    from .core.metrics import score_segmentation
    from .core.model_io import atomic_write_bytes
    from .core.segmenter import SegmenterModel, csv_field, denoising_note

    if args.truth and len(args.truth) != len(args.images):
        raise InvalidInputError("give one --truth file per image")
    stems = _output_stems(
        args.images,
        Path(args.out),
        ("_labels.tif", "_prob.tif", "_uncertainty.tif", "_classes.csv"),
        also=args.truth or (),
    )
    _model_first(args, "segment")
    model = SegmenterModel.load(args.model)
    denoiser = DenoiserModel.load(args.denoise_with) if args.denoise_with else None
    note = denoising_note(model, denoiser)
    if note:  # (even with --quiet: the results are probably poor)
        print(f"aeseg segment: warning: {note}", file=sys.stderr)
    truth_files = iter(args.truth or [])

    def check(f):  # every input is read and checked before anything is written
        axes = args.axes or (f.axes if f.axes and len(f.axes) == f.data.ndim else None)
        if denoiser is not None:
            try:
                _check_tiling(denoiser, denoiser.check_layout(f.data.shape, axes), args)
            except InvalidInputError as exc:
                raise InvalidInputError(f"denoiser '{args.denoise_with}': {exc}") from None
        layout = model.check_layout(f.data.shape, axes)
        _check_tiling(model, layout, args)
        # (after a denoiser, its output is in the image's range: the segmenter sees that)
        _warn_intensities(args, denoiser or model, f, layout.axes)
        spacing = _voxel_size(args, f, layout)
        # the unit of a voxel size read from the file goes with the outputs
        unit = getattr(f.spacing, "unit", None) if args.spacing == "auto" else None
        want = (
            *[layout.shape[layout.axes.index(a)] for a in layout.sample_axes],
            *layout.spatial_shape,
        )
        truth = next(truth_files, None)
        if truth is not None:
            shape = tuple(read_image(truth).data.shape)
            if shape != want:
                raise InvalidInputError(
                    f"--truth {truth} has shape {shape} but the labels of {f.path.name} have "
                    f"shape {want}"
                )
        return axes, layout, spacing, unit, truth

    inputs = _read_checked(args.images, check)
    ensure_output_dir(args.out)
    for (entry, (axes, layout, spacing, unit, truth)), stem in zip(inputs, stems, strict=True):
        f = _pixels(entry)
        data = f.data
        if denoiser is not None:
            data = _run_with_bar(
                denoiser.iter_denoise(
                    data, axes=axes, tile=args.tile, overlap=args.overlap, device=args.device
                ),
                f"denoise {f.path.name}",
                args.quiet,
            )
        space = None if spacing is None else dict(spacing)
        result = _run_with_bar(
            model.iter_segment(
                data,
                axes=axes,
                tile=args.tile,
                overlap=args.overlap,
                device=args.device,
                tta=args.tta,
                spacing=space,
            ),
            f"segment {f.path.name}",
            args.quiet,
        )
        # axes of the outputs (a stack of 2D slices, S, is a Z stack to ImageJ)
        out_axes = layout.sample_axes + layout.spatial_axes
        # one channel per class, where ImageJ keeps channels (after T and Z): Fiji opens
        # the probabilities as a calibrated hyperstack
        lead = sum(a in "TZS" for a in out_axes)
        probs = np.moveaxis(result.probabilities, 0, lead)
        prob_axes = out_axes[:lead] + "C" + out_axes[lead:]
        names = probability_names(model.config, result.probabilities.shape[0])
        for suffix, array, array_axes, channels in (
            ("labels", result.labels, out_axes, None),
            ("prob", probs, prob_axes, names),
            ("uncertainty", result.uncertainty, out_axes, None),
        ):
            write_tiff(
                f"{stem}_{suffix}.tif",
                array,
                axes=array_axes,
                spacing=space,
                unit=unit,
                channel_names=channels,
            )
        if model.config.class_names:  # what each value of the labels means
            rows = "".join(
                f"{i},{csv_field(n)}\n" for i, n in enumerate(model.config.class_names, 1)
            )
            atomic_write_bytes(f"{stem}_classes.csv", ("label,name\n" + rows).encode())
        else:  # one left by a named model before would describe the wrong classes
            Path(f"{stem}_classes.csv").unlink(missing_ok=True)
        if truth is not None:
            frames = len(layout.sample_axes)
            try:
                scores = score_segmentation(
                    read_image(truth).data,
                    result.labels,
                    target=model.config.target,
                    n_classes=model.config.n_classes,
                    frame_axes=frames,
                )
                named = {"names": model.config.class_names} if model.config.class_names else {}
                print(f"{f.path.name}: {scores.summary(**named)}")
                if getattr(scores, "note", None):
                    print(f"{f.path.name}: note: {scores.note}", file=sys.stderr)
            except InvalidInputError as exc:  # the results are written: say it, go on
                print(f"{f.path.name}: ground truth not scored: {exc}", file=sys.stderr)
        if not args.quiet:
            if model.config.target == "instances":
                n = np.count_nonzero(np.unique(result.labels))
                found = f"{n} object{'s' if n != 1 else ''}"
            else:
                found = f"{model.config.n_classes} classes"
            named = ", _classes.csv" if model.config.class_names else ""
            print(
                f"wrote {stem}_labels.tif ({found}) and _prob.tif, _uncertainty.tif{named}",
                file=sys.stderr,
            )
    return 0


def probability_names(config, n: int) -> list[str]:
    """Names of a segmenter's ``n`` probability channels: its classes, or for instances
    background, object (and boundary)."""
    if config.target == "semantic":
        names = list(config.class_names or [])
        return names if len(names) == n else [f"class {i}" for i in range(1, n + 1)]
    return ["background", "object", "boundary"][:n]


def _frame_axes(axes: str | None, shape: tuple[int, ...]) -> int:
    """How many leading axes of a label array are frames (T, S): matched one by one."""
    if axes is None:
        return 0
    from .core.data import check_axes_match

    axes = check_axes_match(shape, axes.upper())
    if "C" in axes:
        raise InvalidInputError(f"label files have no channel axis (axes '{axes}')")
    frames = len(axes) - len(axes.lstrip("ST"))
    if any(a in "ST" for a in axes[frames:]):
        raise InvalidInputError(f"put the frame axes (T, S) first in '{axes}'")
    return frames


def _evaluate(args) -> int:
    from .core.image_io import read_image
    from .core.metrics import (
        MAX_CLASSES,
        scattered_values_note,
        score_instances,
        score_semantic,
        zero_based_note,
    )

    if len(args.pred) != len(args.truth):
        raise InvalidInputError(
            f"{len(args.pred)} prediction(s) but {len(args.truth)} ground truth file(s)"
        )
    rows, summaries = [], []
    for p, t in zip(args.pred, args.truth, strict=True):
        truth, pred = read_image(t), read_image(p)
        names = None
        if args.semantic:
            scores = score_semantic(truth.data, pred.data)
            note = zero_based_note(truth.data, int(np.max(pred.data, initial=0)))
            if note:
                print(f"aeseg evaluate: note: {t}: {note}", file=sys.stderr)
            names = _class_table(p)
        else:
            recorded = [a for a in (pred.axes, truth.axes) if a and "C" not in a]
            frames = _frame_axes(args.axes or next(iter(recorded), None), pred.data.shape)
            scores = score_instances(
                truth.data, pred.data, threshold=args.threshold, frame_axes=frames
            )
            for f, name in ((pred, p), (truth, t)):
                note = scattered_values_note(f.data, f"'{name}'", frame_axes=frames)
                if note and int(np.max(f.data)) <= MAX_CLASSES:
                    note += "; if its values are classes, add --semantic"
                if note:
                    print(f"aeseg evaluate: note: {note}", file=sys.stderr)
        rows.append({"pred": p, "truth": t, **scores.as_dict()})
        summaries.append(f"{p}: {scores.summary(names) if names else scores.summary()}")
    keys = (
        ("mean_iou", "accuracy") if args.semantic else ("ap", "f1", "mean_matched_iou", "pixel_iou")
    )
    mean = {k: float(np.mean([r[k] for r in rows])) for k in keys}
    if args.json:
        print(json.dumps({"images": rows, "mean": mean}, indent=2))
        return 0
    print("\n".join(summaries))
    if len(rows) > 1:
        names = {"ap": "AP", "f1": "F1", "mean_matched_iou": "mean IoU", "pixel_iou": "pixel IoU"}
        names |= {"mean_iou": "mean IoU", "accuracy": "accuracy"}
        print("mean: " + "  ".join(f"{names[k]} {v:.3f}" for k, v in mean.items()))
    return 0


def _class_table(labels_path: str) -> list[str] | None:
    """The class names that ``segment`` wrote beside ``<stem>_labels.tif`` (in
    ``<stem>_classes.csv``), in order of their values 1..K, or None."""
    import csv

    path = Path(labels_path)
    if not path.stem.endswith("_labels"):
        return None
    table = path.with_name(path.stem.removesuffix("_labels") + "_classes.csv")
    try:
        with table.open(newline="", encoding="utf-8") as fh:
            rows = {int(r["label"]): r["name"] for r in csv.DictReader(fh)}
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if sorted(rows) != list(range(1, len(rows) + 1)):
        return None
    return [rows[k] for k in range(1, len(rows) + 1)]


def _info(args) -> int:
    from .api import load_model

    model = load_model(args.model)
    if args.json:
        print(json.dumps(json.loads(model.config.model_dump_json()), indent=2))
    else:
        print(model.describe())
        # weights' SHA-256 (first 12): which denoiser a segmenter came from, whatever names
        if model.kind == "denoiser":
            print(f"weights sha256 {model.weights_digest()[:12]}")
        else:
            c = model.config
            if c.encoder is not None and c.encoder.digest:
                print(f"started from denoiser '{c.encoder.name}', sha256 {c.encoder.digest[:12]}")
            if c.class_names:
                print("classes: " + ", ".join(f"{i} {n}" for i, n in enumerate(c.class_names, 1)))
            if c.denoised_with and c.denoised_digest:
                print(
                    f"trained on images denoised by '{c.denoised_with}', sha256 "
                    f"{c.denoised_digest[:12]}"
                )
        if model.history:
            vals = [v for _, _, v in model.history if v == v]
            if vals:
                print(f"best validation loss {min(vals):.4g}")
    return 0


def _demo(args) -> int:
    from .demo import run_demo

    run_demo(
        out=args.out,
        steps=args.steps,
        seg_steps=args.seg_steps,
        correction_rounds=not args.no_corrections,
        device=args.device,
        seed=args.seed,
        open_viewer=not args.no_viewer,
        quiet=args.quiet,
    )
    return 0


COMMANDS = {
    "train-denoiser": _train,
    "denoise": _denoise,
    "train-segmenter": _train_segmenter,
    "segment": _segment,
    "evaluate": _evaluate,
    "info": _info,
    "demo": _demo,
}


#: config fields as the command line names them, for validation messages ("batch_size: ...")
#: train-denoiser options that --resume does not change (the model's settings continue)
RESUME_KEEPS = {
    "--mode": "mode",
    "--noise": "noise",
    "--patch": "patch",
    "--patch-z": "patch_z",
    "--batch": "batch",
    "--depth": "depth",
    "--channels": "channels",
    "--lr": "lr",
    "--optimizer": "optimizer",
    "--loss": "loss",
    "--scheduler": "scheduler",
}

OPTION_NAMES = {
    "learning_rate": "--lr",
    "patch_size_z": "--patch-z",
    "patch_size": "--patch",
    "batch_size": "--batch",
    "base_channels": "--channels",
    "depth": "--depth",
    "steps": "--steps",
}


def _option_names(message: str) -> str:
    """A validation message with the config's field names replaced by the options' names."""
    import re

    for field, option in OPTION_NAMES.items():
        message = re.sub(rf"(^|; )(?:[\w.]+\.)?{field}: ", rf"\g<1>{option}: ", message)
    return message


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    start = time.perf_counter()
    try:
        code = COMMANDS[args.command](args)
    except AesegError as exc:
        print(f"aeseg {args.command}: error: {_option_names(str(exc))}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"aeseg {args.command}: interrupted", file=sys.stderr)
        return 130
    if not getattr(args, "quiet", True):
        print(f"done in {time.perf_counter() - start:.1f} s", file=sys.stderr)
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
