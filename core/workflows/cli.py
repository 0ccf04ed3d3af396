"""The ``mmvae`` command line: everything the workbench does, headless.

    mmvae demo-data OUT                      write the demo MR/US cohort (NIfTI + manifest)
    mmvae train CONFIG.yaml [--out RUN]      train a model described by a run YAML
    mmvae resume RUN [--epochs N]            continue a stopped or crashed run
    mmvae impute RUN DATA --out OUT          fill every subject's missing modalities (NIfTI)
    mmvae evaluate RUN DATA --out FILE       metrics beside mean and k-NN baselines (JSON or CSV)
    mmvae report RUN [DATA] --out FILE.html  self-contained HTML report: curves, latent space, synthesis
    mmvae models                             list the registered models
    mmvae info DATA [--strict]               the cohort report: every file checked, every problem named

Ctrl-C during training stops after the current step and saves a checkpoint (resume later);
a second Ctrl-C cancels at once, keeping the last checkpoint.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

__all__ = ["main", "build_parser"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def _cmd_demo_data(args: argparse.Namespace) -> int:
    from core.data import demo

    demo.run_from_args(args)
    return EXIT_OK


def _install_interrupt_handler(control: object) -> None:
    presses = {"n": 0}

    def handler(signum: int, frame: FrameType | None) -> None:
        presses["n"] += 1
        if presses["n"] == 1:
            print("\nStopping after this step and saving a checkpoint (Ctrl-C again to cancel)...", file=sys.stderr)
            control.request_stop()
        else:
            print("\nCancelling; the last checkpoint is kept.", file=sys.stderr)
            control.request_cancel()

    signal.signal(signal.SIGINT, handler)


def _report(result: object) -> int:
    from core.training.distributed import is_main_process

    if not is_main_process():
        return EXIT_OK if result.status in ("completed", "early_stopped", "stopped") else EXIT_FAILED
    print(f"{result.status}: {result.epochs_completed} epochs"
          + (f", best validation loss {result.best_validation_loss:.5g} (epoch {result.best_epoch})"
             if result.best_validation_loss is not None else ""))
    if result.message:
        print(result.message)
    if result.run_dir is not None:
        print(f"run folder: {result.run_dir}")
    return EXIT_OK if result.status in ("completed", "early_stopped", "stopped") else EXIT_FAILED


def _training_callbacks(quiet: bool) -> list:
    from core.training import TqdmProgress
    from core.training.distributed import is_main_process

    return [TqdmProgress(disable=quiet or not is_main_process())]


def _distributed(run: object) -> int:
    """Run ``run(context)`` inside the process group torchrun describes (a no-op without torchrun)."""
    from core.training.distributed import init_distributed, shutdown_distributed

    context, created = init_distributed()
    try:
        return run(context)
    finally:
        if created:
            shutdown_distributed()


def _cmd_train(args: argparse.Namespace) -> int:
    from core.training import TrainingControl
    from core.training.distributed import broadcast_object
    from core.workflows.runs import default_run_dir, load_run_config, load_run_data, train_run

    config = load_run_config(args.config)
    if args.epochs is not None:
        config.training.num_epochs = args.epochs
    if args.device is not None:
        config.training.device = args.device

    def run(context: object) -> int:
        # Every rank must write into the folder rank 0 chose (the default name holds a timestamp).
        run_dir = Path(broadcast_object(context, str(Path(args.out) if args.out else default_run_dir(config.name))))
        control = TrainingControl()
        _install_interrupt_handler(control)
        loaded = load_run_data(config)
        if context.is_main:
            _print_preparation_issues(loaded, args.strict)
            print(f"training {config.model_name} -> {run_dir}" + (f" on {context.world_size} processes" if context.enabled else ""))
        return _report(train_run(config, run_dir, _training_callbacks(args.quiet), control, loaded=loaded))

    return _distributed(run)


def _cmd_resume(args: argparse.Namespace) -> int:
    from core.training import TrainingControl
    from core.workflows.runs import resume_run

    def run(context: object) -> int:
        control = TrainingControl()
        _install_interrupt_handler(control)
        return _report(resume_run(args.run, _training_callbacks(args.quiet), control, num_epochs=args.epochs))

    return _distributed(run)


def _cmd_impute(args: argparse.Namespace) -> int:
    from core.progress import ProgressReporter
    from core.workflows.impute import NOT_GENERATED_FILE, first_not_generated_reason, impute_run

    written = impute_run(
        args.run,
        args.data,
        args.out,
        n_samples=args.samples,
        uncertainty=args.uncertainty,
        device=args.device,
        progress=ProgressReporter(description="imputing", bar=not args.quiet),
    )
    print(f"wrote {len(written)} synthesized volumes to {args.out}")
    skipped = Path(args.out) / NOT_GENERATED_FILE
    if skipped.is_file():
        reasons = json.loads(skipped.read_text(encoding="utf-8"))
        print(f"not generated: {sum(len(v) for v in reasons.values())} volumes of {len(reasons)} subjects "
              f"({first_not_generated_reason(reasons)}); see {skipped}")
    return EXIT_OK


def _cmd_models(args: argparse.Namespace) -> int:
    from core.models import available, get_model_class

    for name in available():
        cls = get_model_class(name)
        incomplete = "incomplete data: yes" if cls.supports_incomplete_data else "incomplete data: no"
        print(f"{name:<8} {incomplete:<20} {cls.summary}")
    return EXIT_OK


def _cmd_share(args: argparse.Namespace) -> int:
    from core.workflows.sharing import export_shared_model

    folder = export_shared_model(args.run, args.out)
    print(f"wrote the shared model to {folder} (model card: {folder / 'README.md'}); upload that folder to a model hub")
    return EXIT_OK


def _print_issue_summary(issues: Sequence[object], strict: bool) -> int:
    """The last lines of a report on stderr; EXIT_FAILED when an error (or, with ``strict``, a warning) remains."""
    errors = [i for i in issues if i.level == "error" or (strict and i.level == "warning")]
    warnings = [i for i in issues if i.level == "warning" and not strict]
    if errors:
        print(f"{len(errors)} error(s)" + (" (--strict: warnings count as errors)" if strict else "")
              + ": the files named above are treated as missing; fix them or remove them from the cohort.", file=sys.stderr)
        return EXIT_FAILED
    if warnings:
        print(f"{len(warnings)} warning(s); the cohort is usable (--strict refuses it).", file=sys.stderr)
    return EXIT_OK


def _cmd_info(args: argparse.Namespace) -> int:
    from core.data.dataset import missingness_summary
    from core.data.quality import check_cohort
    from core.data.sources import DataConfig, ensure_demo_cohort, load_data

    if str(args.data).lower().endswith((".h5", ".hdf5")):
        loaded = load_data(DataConfig(source=args.data))
        print(loaded.dataset)
        print(missingness_summary(loaded.dataset))
        issues = list(loaded.records.issues)
        for issue in issues:
            print(f"  {issue}")
        return _print_issue_summary(issues, args.strict)
    source = ensure_demo_cohort({}) if args.data == "demo" else Path(args.data)
    _, report = check_cohort(source, strict=args.strict, check_voxels=not args.headers_only)
    print(report)
    return _print_issue_summary(report.issues, args.strict)


def _print_preparation_issues(loaded: object, strict: bool) -> None:
    """What preparing the data found, in the cohort report's words, before training starts."""
    from core.data.errors import Issue

    issues = [i for i in loaded.records.issues if isinstance(i, Issue) and i.level in ("error", "warning")]
    for issue in issues:
        print(f"  {issue}", file=sys.stderr)
    if issues and strict:
        raise ValueError(f"--strict: the data has {len(issues)} error(s) or warning(s) (listed above); nothing was trained.")


def _command_in(argv: Sequence[str]) -> str:
    """The subcommand ``argv`` names ("" for none: ``mmvae --help``); the global options take no value."""
    return next((a for a in argv if not a.startswith("-")), "")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The ``mmvae`` parser. demo-data, evaluate and report take their arguments from their modules, which
    import torch and scikit-learn: only ``command``'s are added (every command's when None), so that
    ``mmvae --help`` and the light commands start in well under a second."""

    def wanted(name: str) -> bool:
        return command is None or command == name

    parser = argparse.ArgumentParser(prog="mmvae", description="Multimodal VAEs on partially observed medical images.")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")
    parser.add_argument("--version", action="version", version=_version())
    commands = parser.add_subparsers(dest="command", required=True)

    demo_parser = commands.add_parser("demo-data", help="write the demo MR/US cohort")
    if wanted("demo-data"):
        from core.data import demo

        demo.add_arguments(demo_parser)
        demo_parser.set_defaults(func=_cmd_demo_data)

    train = commands.add_parser("train", help="train a model from a run YAML")
    train.add_argument("config", help="run YAML (data, model, training)")
    train.add_argument("--out", help="run folder (default: runs/<name>-<time>)")
    train.add_argument("--epochs", type=int, help="override training.num_epochs")
    train.add_argument("--device", help="override training.device (auto, cpu, cuda, mps)")
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    train.add_argument("--strict", action="store_true", help="refuse to train when the data has any warning")
    train.set_defaults(func=_cmd_train)

    resume = commands.add_parser("resume", help="continue a stopped or crashed run")
    resume.add_argument("run", help="run folder")
    resume.add_argument("--epochs", type=int, help="train up to this many epochs in total")
    resume.add_argument("--quiet", action="store_true")
    resume.set_defaults(func=_cmd_resume)

    impute = commands.add_parser("impute", help="synthesize every subject's missing modalities")
    impute.add_argument("run", help="run folder (its final_model is used)")
    impute.add_argument("data", help="cohort folder, manifest CSV or HDF5 cache")
    impute.add_argument("--out", required=True, help="output folder for NIfTI volumes and sidecars")
    impute.add_argument("--samples", type=int, default=1, help="posterior samples averaged per volume (default 1)")
    impute.add_argument("--uncertainty", action="store_true", help="also write the voxel-wise std over the samples")
    impute.add_argument("--device", default="auto")
    impute.add_argument("--quiet", action="store_true")
    impute.set_defaults(func=_cmd_impute)

    models = commands.add_parser("models", help="list the registered models")
    models.set_defaults(func=_cmd_models)

    evaluate = commands.add_parser("evaluate", help="measure a run's imputation, coherence, likelihood and latents")
    if wanted("evaluate"):
        from core.workflows import evaluate as evaluation

        evaluation.add_arguments(evaluate)
        evaluate.set_defaults(func=evaluation.run_from_args)

    report = commands.add_parser("report", help="write a run's HTML report (curves, latent space, synthesis, metrics)")
    if wanted("report"):
        from core.workflows import report as reporting

        reporting.add_arguments(report)
        report.set_defaults(func=reporting.run_from_args)

    share = commands.add_parser("share", help="write a run's final model as a folder a model hub accepts, with a model card")
    share.add_argument("run", help="run folder")
    share.add_argument("out", help="new folder for the shared model (must not exist)")
    share.set_defaults(func=_cmd_share)

    info = commands.add_parser("info", help="summarise a cohort")
    info.add_argument("data", help="cohort folder, manifest CSV, HDF5 cache, or 'demo'")
    info.add_argument("--strict", action="store_true", help="warnings are errors (exit status 1)")
    info.add_argument("--headers-only", action="store_true", help="read headers only (faster; misses NaN, "
                      "constant and truncated compressed volumes)")
    info.set_defaults(func=_cmd_info)
    return parser


def _version() -> str:
    import core

    return f"mmvae-workbench {core.__version__}"


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(_command_in(argv)).parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.debug else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_FAILED
    except (ValueError, FileNotFoundError, FileExistsError, RuntimeError, OSError) as error:
        if args.debug:
            raise
        from core.config import ConfigError

        kind = "configuration error" if isinstance(error, ConfigError) else "error"
        print(f"{kind}: {error}", file=sys.stderr)
        return EXIT_USAGE if isinstance(error, ConfigError) else EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
