"""The ``otcl`` command: ``otcl study`` (the main job) and ``otcl check`` (a self-test).

``otcl study`` tests the paper's claims at small scale (random embeddings; MNIST-1D, a
latent-recovery testbed or sklearn digits; synthetic multi-domain data) on paired seeds and writes
``report.md``, ``results.json`` and PNG figures. ``otcl check`` runs the solver and loss
identities on every available backend and exits with status 1 if any fails. Bad arguments
(including an ``--out`` directory that cannot be written) exit with status 2 and a usage message
before any work starts; without PyTorch both commands, and ``otcl study`` without another package
of the ``study`` extra, print one line naming the extra to install and exit with status 2.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from collections.abc import Sequence
from pathlib import Path

__all__ = ["build_parser", "main"]


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _seed(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {value}")
    return value


def _sections(text: str) -> tuple[str, ...]:
    from otcl.experiments.config import SECTIONS

    names = tuple(dict.fromkeys(p.strip() for p in text.split(",") if p.strip()))
    bad = [n for n in names if n not in SECTIONS]
    if not names or bad:
        raise argparse.ArgumentTypeError(
            f"expected a comma-separated subset of {', '.join(SECTIONS)}, got {text!r}"
        )
    return names


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``otcl`` command."""
    from otcl import __version__
    from otcl.experiments.config import DATASETS

    parser = argparse.ArgumentParser(
        prog="otcl",
        description="Contrastive losses as entropic / unbalanced optimal-transport alignment.",
    )
    parser.add_argument("--version", action="version", version=f"otcl {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    study = sub.add_parser(
        "study",
        help="reproduce the paper's claims at toy scale; write a report, results and plots",
        description=(
            "Run the study: (1) the loss/OT equivalences on random embeddings on every "
            "backend, (2) contrastive training (MNIST-1D by default; --dataset picks the latent-"
            "recovery testbed, sklearn digits or CIFAR-10) with INCE, GCA-INCE, RINCE, "
            "GCA-RINCE and GCA-UOT in a standard and a noisy-view setting, on paired seeds with "
            "95% confidence intervals, (3) a domain-aware "
            "target plan on synthetic multi-domain data. Writes report.md, results.json and PNG "
            "figures into --out."
        ),
    )
    size = study.add_mutually_exclusive_group()
    size.add_argument("--quick", dest="size", action="store_const", const="quick",
                      help="the default size: a few minutes on two CPU cores")
    size.add_argument("--full", dest="size", action="store_const", const="full",
                      help="more seeds, longer training, more settings and a denser sweep")
    size.add_argument("--tiny", dest="size", action="store_const", const="tiny",
                      help="smoke test of the whole pipeline in seconds (numbers mean nothing)")
    study.set_defaults(size="quick", command_parser=study)
    study.add_argument("--dataset", choices=DATASETS, default="mnist1d",
                       help="data of the contrastive section (default: mnist1d); cifar10 reads "
                            "the python-pickle batches from --data-dir")
    study.add_argument("--data-dir", default=None, metavar="DIR",
                       help="directory holding CIFAR-10's data_batch_1..5 and test_batch")
    study.add_argument("--out", default="study-out", metavar="DIR",
                       help="output directory (default: study-out)")
    study.add_argument("--seed", type=_seed, default=0, help="base random seed (default: 0)")
    study.add_argument("--seeds", type=_positive_int, default=None, metavar="K",
                       help="paired seeds per loss and per domain-sweep value (default: from "
                            "the size)")
    study.add_argument("--epochs", type=_positive_int, default=None, metavar="N",
                       help="training epochs of the contrastive section (default: from the size)")
    study.add_argument("--device", choices=("cpu", "cuda"), default=None,
                       help="torch device for training (default: cpu; for cifar10, cuda when "
                            "available)")
    study.add_argument("--sections", type=_sections, default=None, metavar="LIST",
                       help="comma-separated subset of equivalences,contrastive,domain")
    study.add_argument("--threads", type=_positive_int, default=None, metavar="N",
                       help="torch/BLAS threads (default: 1, fastest for these small models)")
    study.add_argument("--jobs", type=_positive_int, default=None, metavar="N",
                       help="worker processes for the training runs (default: up to 2 of the "
                            "CPUs; the numbers do not depend on it)")
    study.add_argument("--no-progress", dest="progress", action="store_false",
                       help="do not draw progress bars")

    check = sub.add_parser(
        "check",
        help="self-test of the solver and loss identities on the available backends",
        description=(
            "Run the Sinkhorn invariants (marginals, kernel vs log domain, agreement with POT "
            "when installed) and the loss equivalences on NumPy, torch (CPU) and, where "
            "present, torch CUDA and CuPy. Exit status 0 when every check passes, 1 otherwise."
        ),
    )
    check.add_argument("--device", choices=("all", "cpu", "cuda"), default="all",
                       help="which backends to test (default: all that are available)")
    check.add_argument("--seed", type=_seed, default=0, help="random seed (default: 0)")
    check.set_defaults(command_parser=check)
    return parser


# the study's third-party packages: import name -> name on PyPI (torch is checked by main)
_STUDY_PACKAGES = {"scipy": "scipy", "sklearn": "scikit-learn", "matplotlib": "matplotlib"}


def _module_missing(name: str) -> bool:
    """True when module ``name`` cannot be imported (also when ``sys.modules[name]`` is ``None``,
    for which ``find_spec`` returns ``None``)."""
    try:
        return importlib.util.find_spec(name) is None
    except (ImportError, ValueError):
        return True


def _missing_study_packages(args: argparse.Namespace) -> list[str]:
    """PyPI names of the ``study`` extra's packages that this run needs but cannot import.

    tqdm is needed only for the progress bars and mnist1d only when the contrastive section
    runs on the ``mnist1d`` dataset.
    """
    from otcl.experiments.config import SECTIONS

    needed = dict(_STUDY_PACKAGES)
    if args.progress:
        needed["tqdm"] = "tqdm"
    if args.dataset == "mnist1d" and "contrastive" in (args.sections or SECTIONS):
        needed["mnist1d"] = "mnist1d"
    return [pypi for module, pypi in needed.items() if _module_missing(module)]


def _run_study(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """``otcl study``; ``parser`` is the subcommand's parser (its usage errors exit with 2)."""
    missing = _missing_study_packages(args)
    if missing:
        print(f'otcl study needs {", ".join(missing)}: pip install "otcl[study]"',
              file=sys.stderr)
        return 2

    from otcl.experiments.config import preset
    from otcl.experiments.study import (
        MissingFeatureError,
        check_features,
        prepare_out_dir,
        run_study,
    )

    if args.device is None:
        args.device = "cpu"
        if args.dataset == "cifar10":
            import torch

            args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            parser.error("--device cuda: torch sees no CUDA device here; use --device cpu")
    if args.dataset == "cifar10":
        if args.data_dir is None:
            parser.error("--dataset cifar10 needs --data-dir DIR (the python-pickle batches)")
        names = [f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]
        root = Path(args.data_dir)
        if (root / "cifar-10-batches-py").is_dir():
            root = root / "cifar-10-batches-py"
        missing = [n for n in names if not (root / n).is_file()]
        if missing:
            parser.error(f"--data-dir {args.data_dir}: missing {', '.join(missing)}")
    elif args.data_dir is not None:
        parser.error("--data-dir is only used with --dataset cifar10")
    cfg = preset(args.size).replace(seed=args.seed, device=args.device, dataset=args.dataset,
                                    data_dir=args.data_dir)
    if args.seeds is not None:
        cfg = cfg.replace(n_seeds=args.seeds, domain_seeds=args.seeds, cifar_seeds=args.seeds)
    if args.epochs is not None:
        cfg = cfg.replace(epochs=args.epochs, cifar_epochs=args.epochs, latent_epochs=args.epochs)
    if args.sections is not None:
        cfg = cfg.replace(sections=args.sections)
    command = "otcl " + " ".join(sys.argv[1:]) if sys.argv[1:2] == ["study"] else None
    try:
        check_features(cfg.sections)
        try:
            prepare_out_dir(args.out)
        except OSError as exc:
            parser.error(f"--out {args.out}: cannot write to this directory "
                         f"({exc.strerror or exc})")
        jobs = args.jobs or (1 if args.device == "cuda" else max(1, min(2, os.cpu_count() or 1)))
        run_study(cfg, args.out, progress=args.progress, threads=args.threads, jobs=jobs,
                  command=command or f"otcl study --{args.size} --seed {args.seed}")
    except MissingFeatureError as exc:
        print(f"otcl study: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"otcl study: cannot write to {args.out!r}: {exc}", file=sys.stderr)
        return 1
    return 0


def _run_check(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from otcl.experiments.selfcheck import available_backends, format_table, run_checks

    device = None if args.device == "all" else args.device
    if not available_backends(device):
        parser.error(f"--device {args.device}: no backend of that kind is available here")
    records = run_checks(device, seed=args.seed)
    print(format_table(records))
    if device != "cpu" and not available_backends("cuda"):
        print("\n(no CUDA device here: torch-cuda and CuPy were not tested)")
    failed = [r for r in records if not r.passed]
    print()
    if failed:
        print(f"FAILED: {len(failed)} of {len(records)} checks.")
        return 1
    print(f"OK: all {len(records)} checks passed (skipped checks count as passed).")
    return 0


_EXTRAS = {"study": "study", "check": "torch"}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``otcl`` command; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if _module_missing("torch"):
        extra = _EXTRAS[args.command]
        print(f'otcl {args.command} needs PyTorch: pip install "otcl[{extra}]"', file=sys.stderr)
        return 2
    try:
        # errors found after parsing are usage errors of the subcommand, with its usage line
        if args.command == "study":
            return _run_study(args, args.command_parser)
        return _run_check(args, args.command_parser)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
