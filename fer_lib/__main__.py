"""Command line: python -m fer_lib {synth,train,predict,classify,score,report,bench} --help."""
from __future__ import annotations

import argparse
import ast
import contextlib
import logging
import sys
import warnings
from dataclasses import fields
from pathlib import Path

from fer_lib import ConfigError
from fer_lib.data.layouts import DataError, load_dataset, load_test_faces
from fer_lib.data.synthetic import write_synthetic_dataset
from fer_lib.report.context import default_profile, load_context
from fer_lib.training.bench import run_bench
from fer_lib.training.finish import score_predictions, write_predictions
from fer_lib.training.runs import PROFILES, TrainConfig, config_for, run_key
from fer_lib.training.train import train

DEVICE_HELP = "cpu, cuda or auto (cuda when available; default)"
NO_WAIT_HELP = "when another process holds the run (or the report), stop with an error instead of waiting for it"


def cmd_synth(args) -> None:
    paths = write_synthetic_dataset(Path(args.out), args.n_train, args.n_test, args.seed)
    print("wrote " + ", ".join(str(p) for p in paths))


def cmd_train(args) -> None:
    dataset = load_dataset(args.data)
    overrides = {f.name: getattr(args, f.name) for f in fields(TrainConfig) if getattr(args, f.name, None) is not None}
    config = config_for(args.profile or default_profile(dataset), **overrides)
    # without --out the run cache's folder of these settings and faces: train finds it finished, or resumes it
    out = Path(args.out or Path(args.runs) / f"{dataset.name}-{run_key(dataset, config)}")
    print(f"run: {train(dataset, config, out, device=args.device, resume=not args.no_resume, wait=not args.no_wait)}")


def cmd_predict(args) -> None:
    faces = load_test_faces(args.data)
    counts = write_predictions(Path(args.run), faces, Path(args.out), device=args.device)
    print(f"wrote {args.out}: {len(faces)} rows; predicted class counts {counts}")


def cmd_classify(args) -> None:
    from fer_lib.photos.classify import run_classify

    sys.exit(run_classify(args.paths, Path(args.run), Path(args.out), device=args.device, fps=args.fps,
                          frames=args.frames))


def cmd_score(args) -> None:
    acc, n = score_predictions(Path(args.pred), Path(args.labels))
    print(f"accuracy {acc:.4f} on {n} faces")


def cmd_report(args) -> None:
    from fer_lib.report.build import NotebookFailed, build_report, notebook_paths

    notebook_paths(args.notebooks)  # an unknown notebook name stops here, before any training
    ctx = load_context(args.data or "", args.profile or "", args.runs, args.device, wait=not args.no_wait,
                       retrain=args.retrain)
    ctx.prepare()  # trains or resumes first if needed; the run's outputs for this data; the builder only renders
    try:
        build_report(ctx, out_root=Path(args.out), only=args.notebooks, params=dict(args.param) or None)
    except NotebookFailed as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)


def notebook_parameter(text: str) -> tuple[str, object]:
    """--param NAME=VALUE: a number or a string, as papermill's -p reads it."""
    name, sep, value = text.partition("=")
    if not sep or not name.isidentifier():
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE (such as faces_per_class=40), got {text!r}")
    with contextlib.suppress(ValueError, SyntaxError):
        value = ast.literal_eval(value)
    return name, value


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m fer_lib", description="Facial-expression recognition on "
                                     "FER2013 with the seed report's ResNet18: data, training, predictions, report.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("synth", help="draw synthetic faces into DIR/train.csv (label,feature), DIR/test.csv "
                                      "(id,feature) and DIR/test_labels.csv (id,label, for scoring)")
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--n-train", type=int, default=3500)
    p.add_argument("--n-test", type=int, default=700)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser("train", help="train the seed ResNet18; an interrupted run resumes from its last checkpoint")
    p.add_argument("--data", required=True, help="dataset directory or file (any supported layout)")
    p.add_argument("--out", help="run directory (default RUNS/<dataset>-<hash of settings and data>, reused when "
                                 "finished)")
    p.add_argument("--runs", default="runs", help="the run cache")
    p.add_argument("--no-resume", action="store_true", help="start over, removing a checkpoint or finished run first")
    p.add_argument("--no-wait", action="store_true", help=NO_WAIT_HELP)
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument("--profile", choices=sorted(PROFILES), default=None,
                   help="a named recipe (default: full for real data, synthetic for the demo data): quick (minutes, "
                        "a subset), full (60 epochs at 72 px with an average of the weights, about 100 min on 2 CPU "
                        "cores with native bf16), long (300 epochs at 96 px, for a GPU), smoke (seconds, tests); "
                        "the flags below override its settings")
    for f in fields(TrainConfig):  # one flag per setting, its help and choices from the field
        if "help" in f.metadata:  # (the augmentation settings are the profiles' own)
            kind = type(f.default)
            options = {"action": argparse.BooleanOptionalAction} if kind is bool else {"type": kind}
            p.add_argument(f"--{f.name.replace('_', '-')}", default=None, choices=f.metadata["choices"] or None,
                           help=f"{f.metadata['help']} (default {f.default!r} unless the profile sets it)", **options)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("predict", help="write id,label predictions (one row per test face) with a run's weights")
    p.add_argument("--run", required=True, help="a run folder, or a report's shipped model (report/fer2013/model)")
    p.add_argument("--data", required=True, help="test CSV (id,feature) or a dataset directory with a test split")
    p.add_argument("--out", default="predictions.csv")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("classify", help="find and classify the faces in your own photos and videos",
                       description="Finds the faces (dlib's HOG detector; a box is kept where its 68 landmarks "
                                   "form a plausible face), crops each as FER2013 frames its faces, and classifies "
                                   "it with the run's test-time views and calibration (a face whose top probability "
                                   "is below the run's threshold is marked uncertain, '?'). Writes "
                                   "OUT/<name>.faces.png|jpg per photo, OUT/<name>.tracks.png per video or folder of "
                                   "frames, and OUT/faces.csv (one row per face and frame). Exit status 0 when every "
                                   "file was read, 1 when one could not be (the others are still done), 2 when there "
                                   "is no model.")
    p.add_argument("paths", nargs="+", metavar="PATH", help="images, videos or folders (searched recursively)")
    p.add_argument("--run", default="report/fer2013/model",
                   help="a report's shipped model or a run folder (default report/fer2013/model)")
    p.add_argument("--out", default="classified", help="output folder (default ./classified)")
    p.add_argument("--fps", type=float, default=5.0, help="frames per second classified from a video (default 5)")
    p.add_argument("--frames", action="store_true",
                   help="each folder PATH is one clip: its images are frames, in name order, every one classified")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.set_defaults(func=cmd_classify)

    p = sub.add_parser("score", help="accuracy of a predictions file against id,label truth")
    p.add_argument("--pred", required=True)
    p.add_argument("--labels", required=True)
    p.set_defaults(func=cmd_score)

    p = sub.add_parser("report", help="train (or reuse) the run, execute the notebooks and render OUT/<dataset>/")
    p.add_argument("--data", default=None, help="dataset path (default: ./data, else the synthetic demo data)")
    p.add_argument("--profile", default=None, help="quick, full or long (default: full, or synthetic for the demo)")
    p.add_argument("--out", default="report")
    p.add_argument("--runs", default="runs", help="the run cache")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument("--notebooks", nargs="*", default=None,
                   help="rebuild only these notebooks (02, or names), keeping the other pages of the same run")
    p.add_argument("--no-wait", action="store_true", help=NO_WAIT_HELP)
    p.add_argument("--retrain", action="store_true",
                   help="train this data's own model even where a shipped model (report/*/model) would serve it")
    p.add_argument("--param", action="append", default=[], type=notebook_parameter, metavar="NAME=VALUE",
                   help="a notebook parameter for this build, e.g. faces_per_class=40 (Q4; repeatable)")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("bench", help="images/s of the training recipe, and CSV load time")
    p.add_argument("--data", default=None, help="a dataset to time the loading of")
    p.set_defaults(func=lambda args: run_bench(args.data))

    args = parser.parse_args(argv)
    warnings.simplefilter("default")
    try:
        args.func(args)
    except (DataError, ConfigError) as err:  # the user's input or settings: a message, not a traceback
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:  # Ctrl-C: every write is atomic and a report is swapped in whole, so say so
        logging.getLogger("asyncio").setLevel(logging.CRITICAL)  # not the stopped notebook's task, never awaited
        print("\ninterrupted: nothing half-written was kept (a report is as it was; a training resumes from its last "
              "epoch's checkpoint)", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
