"""The ``siamgrad`` command line.

    siamgrad train [preset=NAME] [config=FILE] [key=value ...]
    siamgrad eval knn|linear|fewshot|finetune CHECKPOINT_OR_RUN [key=value ...] [--split val]
    siamgrad methods
    siamgrad export RUN [--out FILE] [--format torchvision|timm|state_dict]
    siamgrad analyze RUN                   plots + report.html of a run
    siamgrad analyze gradients CHECKPOINT_OR_RUN   gradient decomposition of every method, one batch
    siamgrad compare RUN RUN ... [--out DIR]
    siamgrad reproduce NAME [size=cpu|paper] [only=RUN,RUN] [seeds=K|A-B] [key=value ...]
    siamgrad reproduce claims [size=cpu] [seeds=K|A-B] [train=false] [doc=PATH]
    siamgrad reproduce tune [only=METHOD,...] [train=false] [doc=PATH]
    siamgrad config [key=value ...]        print the resolved config
    siamgrad presets                       list the YAML presets
    siamgrad data pack SRC DST [--shard-size N] [--no-shuffle] [--seed S] [--verify] [--overwrite]
                                           pack an image folder into WebDataset tar shards (data=shards)

Problems the user can fix are printed as one ``error:`` line (exit status 2), never a traceback.

Several processes: ``torchrun --nproc_per_node=N -m siamgrad train ...`` (``batch_size`` is the
global batch); errors of ranks other than 0 are prefixed with the rank.
"""

from __future__ import annotations

import argparse
import errno
import os
import signal
import sys
from pathlib import Path

from siamgrad.errors import SiamgradError

EPILOG = "settings are key=value (e.g. method=byol epochs=50 optim.lr=0.1); see `siamgrad config`"


def _cmd_train(args) -> int:
    from siamgrad.config import build_config
    from siamgrad.train.loop import train

    cfg = build_config(args.settings)
    result = train(cfg)
    print(result.summary())
    return 0


def _cmd_config(args) -> int:
    from siamgrad.config import build_config, dump_yaml, resolve
    from siamgrad.methods.from_config import method_options

    cfg = resolve(build_config(args.settings))
    method_options(cfg)  # the method's options are checked here as in every other command
    print(dump_yaml(cfg), end="")
    return 0


def _cmd_presets(args) -> int:
    from siamgrad.config import PRESET_DIR, available_presets

    for name in available_presets():
        first = (PRESET_DIR / f"{name}.yaml").read_text().splitlines()[0:1]
        desc = first[0].lstrip("# ").strip() if first and first[0].startswith("#") else ""
        print(f"{name:<24} {desc}")
    return 0


def _cmd_methods(args) -> int:
    from siamgrad import methods

    print(methods.format_table(methods.describe()))
    return 0


def _cmd_eval(args) -> int:
    from siamgrad.eval.checkpoint import evaluate_checkpoint, format_result

    res = evaluate_checkpoint(args.protocol, args.checkpoint, args.settings, split=args.split,
                              seeds=args.seeds, epochs=args.epochs, baselines=not args.no_baselines,
                              fractions=args.fractions)
    print(format_result(args.protocol, res))
    return 0


def _fractions(text: str) -> tuple[float, ...]:
    try:
        out = tuple(float(f) for f in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected fractions like 0.01,0.1, got {text!r}") from None
    if not out or not all(0 < f <= 1 for f in out):
        raise argparse.ArgumentTypeError(f"fractions must be in (0, 1], got {text!r}")
    return out


def _cmd_export(args) -> int:
    from siamgrad.export import export_backbone

    res = export_backbone(args.run, out=args.out, fmt=args.format)
    print(res.summary())
    return 0


def _cmd_analyze(args) -> int:
    if args.target == "gradients":
        if not args.more:
            raise SiamgradError("analyze gradients needs a checkpoint or run folder: "
                                "siamgrad analyze gradients runs/<run>")
        from siamgrad.diagnostics.analyze import gradient_table_for_checkpoint

        print(gradient_table_for_checkpoint(args.more[0], args.more[1:]))
        return 0
    from siamgrad.report.html import analyze_run

    for run in [args.target, *args.more]:
        print(analyze_run(run))
    return 0


def _cmd_compare(args) -> int:
    from siamgrad.report.html import compare_runs

    out = args.out or str(Path(args.runs[0]).parent / "compare")
    print(compare_runs(args.runs, out))
    return 0


def _cmd_reproduce(args) -> int:
    from siamgrad.experiments import claims, grids, runner

    if args.name in (None, "list"):
        for name in grids.available():
            exp = grids.find(name)
            print(f"{name:<18} {exp.description} (sizes: {', '.join(exp.sizes)})")
        print(f"{'claims':<18} train what the seed papers' claims need and write their verdicts (docs/claims.md)")
        print(f"{'tune':<18} the same small search for every method on the validation split (docs/tuning.md)")
        return 0
    if args.name == "claims":
        print(claims.run_claims(args.settings, out_dir=args.out))
        return 0
    if args.name == "tune":
        from siamgrad.experiments import tuning

        print(tuning.run_tuning(args.settings, out_dir=args.out))
        return 0
    print(runner.run_experiment(args.name, args.settings, out_dir=args.out, exp=grids.find(args.name)))
    return 0


def _cmd_data(args) -> int:
    from siamgrad.data.pack import pack_folder

    results = pack_folder(args.src, args.dst, shard_size=args.shard_size, shuffle=not args.no_shuffle,
                          seed=args.seed, verify=args.verify, overwrite=args.overwrite)
    for r in results:
        print(r.summary())
    print(f"train from them with: siamgrad train data=shards data.root={args.dst}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="siamgrad", description="Siamese self-supervised learning under one unified gradient.",
                                epilog=EPILOG)
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    t = sub.add_parser("train", help="pretrain an encoder (default: UniGrad on the embedded digits dataset)",
                       epilog=EPILOG)
    t.add_argument("settings", nargs="*", metavar="key=value")
    t.set_defaults(func=_cmd_train)
    c = sub.add_parser("config", help="print the resolved config for the given settings")
    c.add_argument("settings", nargs="*", metavar="key=value")
    c.set_defaults(func=_cmd_config)
    pr = sub.add_parser("presets", help="list the YAML presets (use with preset=NAME)")
    pr.set_defaults(func=_cmd_presets)
    m = sub.add_parser("methods", help="every method with its unified-gradient form")
    m.set_defaults(func=_cmd_methods)
    e = sub.add_parser("eval", help="evaluate a checkpoint: kNN, linear probe, few labels, fine-tuning "
                                    "(docs/evaluation.md); figures go into the run's results.json")
    e.add_argument("protocol", choices=["knn", "linear", "fewshot", "finetune"])
    e.add_argument("checkpoint", help="a .pt checkpoint or a run folder")
    e.add_argument("settings", nargs="*", metavar="key=value",
                   help="e.g. data.root=PATH if the data moved, eval.knn_k=20, device=cpu")
    e.add_argument("--split", choices=["test", "val"], default="test",
                   help="evaluate on the test split (default) or on a validation split carved from the "
                        "training images (20%% of every class, seeded), for choosing settings")
    e.add_argument("--seeds", type=int, help="fewshot: label subsets drawn per fraction (default 3)")
    e.add_argument("--fractions", type=_fractions, help="fewshot: label fractions, e.g. 0.01,0.1 (the default)")
    e.add_argument("--epochs", type=int, help="finetune: epochs (default 10)")
    e.add_argument("--no-baselines", action="store_true",
                   help="skip the random-init encoder (and raw pixels) scored beside the trained one")
    e.set_defaults(func=_cmd_eval)
    x = sub.add_parser("export", help="the trained backbone's weights alone (safetensors) for torchvision, "
                                      "timm or siamgrad, with a JSON of architecture and normalization")
    x.add_argument("run", help="a run folder or a .pt checkpoint")
    x.add_argument("--out", help="output file (.safetensors, or .pt/.pth) or folder "
                                 "(default: RUN/export/ARCH-FORMAT.safetensors)")
    x.add_argument("--format", choices=["torchvision", "timm", "state_dict"],
                   help="whose model the keys load into (default: torchvision for resnet18/34/50, timm for "
                        "timm:NAME, state_dict for siamgrad's small/tiny)")
    x.set_defaults(func=_cmd_export)
    a = sub.add_parser("analyze", help="plots and report.html of a run, or `analyze gradients CKPT`")
    a.add_argument("target", help="a run folder, or the word 'gradients'")
    a.add_argument("more", nargs="*", help="more run folders, or the checkpoint/run for 'gradients' "
                                           "followed by key=value settings")
    a.set_defaults(func=_cmd_analyze)
    cp = sub.add_parser("compare", help="several runs on the same plots and in one table")
    cp.add_argument("runs", nargs="+", help="run folders")
    cp.add_argument("--out", help="output folder (default: compare/ beside the first run)")
    cp.set_defaults(func=_cmd_compare)
    rp = sub.add_parser("reproduce", help="run a seed paper's experiment grid (`reproduce list` lists them)")
    rp.add_argument("name", nargs="?", help="experiment name, or 'list'")
    rp.add_argument("settings", nargs="*", metavar="key=value", help="size=cpu|paper, only=RUN,RUN (train only these runs of the grid) and any train setting")
    rp.add_argument("--out", default="runs/reproduce", help="output folder (default: runs/reproduce)")
    rp.set_defaults(func=_cmd_reproduce)
    dt = sub.add_parser("data", help="data tools: `data pack SRC DST` packs an image folder into tar shards")
    dsub = dt.add_subparsers(dest="data_command", metavar="TOOL", required=True)
    pk = dsub.add_parser("pack", help="pack an image folder (<class>/*.jpg or flat; split subfolders kept) "
                                      "into WebDataset tar shards with an index")
    pk.add_argument("src", help="the image folder")
    pk.add_argument("dst", help="an empty output folder")
    pk.add_argument("--shard-size", type=int, default=1000, help="images per shard (default 1000)")
    pk.add_argument("--no-shuffle", action="store_true", help="keep the sorted order (default: shuffled, seeded)")
    pk.add_argument("--seed", type=int, default=0, help="seed of the shuffle (default 0)")
    pk.add_argument("--verify", action="store_true", help="decode every image and leave out unreadable ones")
    pk.add_argument("--overwrite", action="store_true", help="replace the shards of an earlier pack in DST")
    pk.set_defaults(func=_cmd_data)
    return p


def _dist_errors() -> tuple[type[BaseException], ...]:
    try:
        from torch.distributed import DistError
    except ImportError:  # torch built without distributed support
        return ()
    return (DistError,)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 0
    rank = os.environ.get("RANK", "0") if os.environ.get("WORLD_SIZE", "1") not in ("", "1") else "0"
    prefix = "error: " if rank == "0" else f"error (rank {rank}): "
    try:
        return args.func(args)
    except SiamgradError as e:
        print(prefix + " ".join(str(e).split()), file=sys.stderr)
        return 2
    except _dist_errors() as e:  # another process of a torchrun job died or timed out
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        print(f"{prefix}lost contact with the other processes ({first}); the last checkpoint is intact, "
              "rerun the same command to resume", file=sys.stderr)
        return 1
    except OSError as e:  # a full disk or read-only mount met outside the atomic writers: still one line
        from siamgrad.checkpoint import write_error

        # (EACCES is left alone here: it may come from reading the data)
        err = write_error(e, None) if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS) else None
        if err is None:
            raise
        print(prefix + str(err), file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        signum = getattr(e, "signum", None)  # training's Interrupted: it saved and printed how to resume
        if signum is None:
            print("interrupted; nothing was saved since the last checkpoint", file=sys.stderr)
        return 128 + (signum or signal.SIGINT)


if __name__ == "__main__":
    sys.exit(main())
