"""`mrconv-audio` command line: thin wrappers that parse arguments and call the library."""
from __future__ import annotations

import argparse
import json
import sys

from .cpu import tune_allocator


def cmd_info(args) -> int:
    from .checkpoint import read_config
    from .model import MRConvClassifier, MRConvConfig

    if args.model:
        meta = read_config(args.model)
        cfg, merged = meta["config"], meta.get("reparameterized", False)
    else:
        cfg, merged = MRConvConfig.preset(args.preset), False
    model = MRConvClassifier(cfg)
    info = {
        "config": cfg.to_dict(),
        "reparameterized": merged,
        "parameters": sum(p.numel() for p in model.parameters()),
        "branch_lengths": model.blocks[0].conv.lengths,
    }
    print(json.dumps(info, indent=2))
    return 0


def cmd_download(args) -> int:
    from .data.download import download

    download(args.root, args.version)
    return 0


def cmd_synthesize(args) -> int:
    from .data.synthetic import synthesize

    synthesize(args.out, per_keyword=args.per_keyword, per_other_word=args.per_other_word, seed=args.seed)
    return 0


def parse_overrides(pairs: list[str]) -> dict:
    """--set d_model=64 --set branch_norm=rescale -> {"d_model": 64, "branch_norm": "rescale"} (values as JSON)."""
    overrides = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise ValueError(f"--set expects KEY=VALUE, got {pair!r}")
        try:
            overrides[key] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key] = value
    return overrides


def cmd_train(args) -> int:
    from pathlib import Path

    from .train import TrainConfig, train

    out = Path(args.out)
    if (out / "state.safetensors").exists() and not args.resume:
        raise ValueError(f"{out} holds an earlier run; pass --resume to continue it or choose another --out")
    cfg = TrainConfig(
        data_root=args.data_root, out=args.out, preset=args.preset, task=args.task, epochs=args.epochs,
        batch_size=args.batch_size, lr=args.lr, kernel_lr=args.kernel_lr, weight_decay=args.weight_decay,
        warmup_epochs=args.warmup_epochs, seed=args.seed, sample_rate=args.sample_rate, device=args.device,
        augment=not args.no_augment, speed_perturbation=not args.no_speed, checkpoint_every=args.checkpoint_every,
        cache_dir=args.cache_dir, model_overrides=parse_overrides(args.set), init_from=args.init_from,
        extra_train=args.extra_train, workers=args.workers, amp=not args.no_amp, compile=args.compile,
    )
    train(cfg)
    return 0


def cmd_evaluate(args) -> int:
    if args.stream:
        from .stream_eval import run_stream_evaluation

        run_stream_evaluation(args, load_model(args.model))
        return 0
    from .evaluate import run_evaluation

    run_evaluation(args)
    return 0


def load_model(path):
    """The model in `path`, or the shipped one; merged for inference."""
    from .evaluate import default_model_dir
    from .model import MRConvClassifier

    return MRConvClassifier.from_pretrained(path or default_model_dir()).reparameterize()


# The app (app/) is reached only from here, lazily: the library itself never imports it.
def cmd_listen(args) -> int:
    from app.listen import list_devices, run_listen

    if args.list_devices:
        print(list_devices())
        return 0
    device = int(args.device) if args.device and args.device.isdigit() else args.device
    run_listen(load_model(args.model), device=device, samplerate=args.samplerate, threshold=args.threshold,
               hop=args.hop, record=args.record, compute_device=args.compute_device, duration=args.duration,
               mode=args.mode)
    return 0


def cmd_detect(args) -> int:
    from app.listen import detect_file

    result = detect_file(load_model(args.model), args.file, hop=args.hop, threshold=args.threshold, mode=args.mode,
                         compute_device=args.compute_device)
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        print(f"{result['file']}: {result['duration']} s at {result['sample_rate']} Hz, "
              f"{len(result['detections'])} detections")
        for d in result["detections"]:
            print(f"  {d['time']:8.2f} s  {d['label']:<12} {d['score']:.2f}")
    return 0


def cmd_demo(args) -> int:
    from app.demo import launch

    from .evaluate import default_model_dir

    launch(load_model(args.model), args.model or default_model_dir(), host=args.host, port=args.port,
           share=args.share, compute_device=args.compute_device)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mrconv-audio", description="Keyword spotting with MRConv on raw audio.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("info", help="describe a model folder or a preset")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--model", help="model folder (config.json + model.safetensors)")
    group.add_argument("--preset", default="sc35-paper", help="preset name (default: sc35-paper)")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("data", help="dataset tools")
    data_sub = p.add_subparsers(dest="data_command", required=True)
    d = data_sub.add_parser("download", help="download and unpack Speech Commands (checksum-verified, resumable)")
    d.add_argument("--root", required=True, help="folder to unpack into (created; must be empty or absent)")
    d.add_argument("--version", default="0.02", choices=["0.02", "0.01"])
    d.set_defaults(func=cmd_download)
    d = data_sub.add_parser("synthesize", help="spoken words from espeak-ng voices, in the Speech Commands layout")
    d.add_argument("--out", required=True, help="folder to write (created; must be empty or absent)")
    d.add_argument("--per-keyword", type=int, default=100, help="clips of each of the 10 keywords")
    d.add_argument("--per-other-word", type=int, default=10, help="clips of each other word (for _unknown_)")
    d.add_argument("--seed", type=int, default=0)
    d.set_defaults(func=cmd_synthesize)

    p = sub.add_parser("train", help="train a classifier on a local Speech Commands root; several GPUs or "
                                     "processes: torchrun --nproc-per-node N -m mrconv_audio.cli train ...")
    p.add_argument("--preset", default="sc35-paper", help="model preset (see `mrconv-audio info`)")
    p.add_argument("--task", default="sc35", choices=["sc35", "kws12"])
    p.add_argument("--data-root", required=True, action="append",
                   help="Speech Commands root; repeat to join several (each clip keeps its root's split)")
    p.add_argument("--out", required=True, help="run folder (metrics.jsonl, best/, resume state)")
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--batch-size", type=int, default=16,
                   help="the global batch: under torchrun the processes share it (16 over 2 GPUs: 8 each)")
    p.add_argument("--lr", type=float, default=0.005)
    p.add_argument("--kernel-lr", type=float, default=0.001)
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--warmup-epochs", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sample-rate", type=int, default=16000, help="training rate (clips are resampled to it)")
    p.add_argument("--device", default="auto", help="auto (CUDA, MPS, CPU), cpu, cuda, cuda:1, mps")
    p.add_argument("--no-augment", action="store_true")
    p.add_argument("--no-speed", action="store_true", help="no speed perturbation")
    p.add_argument("--checkpoint-every", type=int, default=0, metavar="STEPS",
                   help="also save the resume state every STEPS steps within an epoch")
    p.add_argument("--cache-dir", help="preprocessing cache (default ~/.cache/mrconv-audio)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a model config field, e.g. --set d_model=64 --set branch_norm=rescale")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--extra-train", action="append", default=[], metavar="DIR",
                   help="more training clips in the Speech Commands layout (e.g. from `data synthesize`); repeatable")
    p.add_argument("--workers", type=int, metavar="N",
                   help="DataLoader worker processes per training process (default: 0 on the CPU, up to 4 per GPU)")
    p.add_argument("--no-amp", action="store_true", help="train in float32 on CUDA (default: bf16 autocast)")
    p.add_argument("--compile", action="store_true", help="torch.compile the model (CUDA; first steps are slow)")
    p.add_argument("--init-from", metavar="MODEL_DIR",
                   help="fine-tune: start from this saved model (branch form, same task and rate); --preset is ignored")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="accuracy at many sample rates, kernel vs input resampling; or, with "
                                        "--stream, false accepts per hour and miss rate on a long stream")
    p.add_argument("--model", help="model folder (default: the shipped model)")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--data-root", action="append", help="Speech Commands root (with --split); repeatable")
    source.add_argument("--folder", help="folder of <label>/*.wav at any rates")
    p.add_argument("--split", default="test", choices=["train", "validation", "test"])
    p.add_argument("--task", help="task of --data-root (default: inferred from the model's labels)")
    p.add_argument("--rates", type=int, nargs="+", help="sample rates in Hz")
    p.add_argument("--input-resample", default="decimate", choices=["decimate", "sinc"])
    p.add_argument("--mode", choices=["kernel", "input"], help="default: both")
    p.add_argument("--json", dest="json_out", help="write results as JSON here")
    p.add_argument("--plot", help="write accuracy-vs-rate plot (PNG) here")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--cache-dir")
    p.add_argument("--device", default="auto")
    stream = p.add_argument_group("streaming (--stream)")
    stream.add_argument("--stream", action="store_true",
                        help="the split as one long stream through the live engine: FA/h and miss rate over thresholds")
    stream.add_argument("--minutes", type=float, help="stream length (default: every clip of the split once)")
    stream.add_argument("--hop", type=float, default=0.25, help="seconds between classifications")
    stream.add_argument("--threshold", type=float, default=0.6, help="the configured threshold to report")
    stream.add_argument("--seed", type=int, default=0, help="order, gaps and levels of the stream's clips")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("listen", help="live keyword spotting from a microphone")
    p.add_argument("--list-devices", action="store_true", help="list input devices and exit")
    p.add_argument("--device", help="input device index or name (default: the system's default input)")
    p.add_argument("--samplerate", type=int, help="capture rate in Hz (default: the device's native rate)")
    p.add_argument("--model", help="model folder (default: the shipped model)")
    p.add_argument("--threshold", type=float, default=0.6)
    p.add_argument("--hop", type=float, default=0.25, help="seconds between classifications")
    p.add_argument("--mode", default="kernel", choices=["kernel", "input"],
                   help="kernel: run the model at the device's rate; input: resample the audio to the model's rate")
    p.add_argument("--record", metavar="OUT.wav", help="also save what was heard")
    p.add_argument("--duration", type=float, help="stop after this many seconds (default: until Ctrl-C)")
    p.add_argument("--compute-device", default="auto", help="auto (CUDA, MPS, CPU), cpu, cuda, ...")
    p.set_defaults(func=cmd_listen)

    p = sub.add_parser("detect", help="keyword detections with timestamps in a recording")
    p.add_argument("file")
    p.add_argument("--model", help="model folder (default: the shipped model)")
    p.add_argument("--threshold", type=float, default=0.6)
    p.add_argument("--hop", type=float, default=0.1)
    p.add_argument("--mode", default="kernel", choices=["kernel", "input"])
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--compute-device", default="auto")
    p.set_defaults(func=cmd_detect)

    p = sub.add_parser("demo", help="Gradio web demo (live microphone, clips, model view, predict API)")
    p.add_argument("--model", help="model folder (default: the shipped model)")
    p.add_argument("--host", default="127.0.0.1", help="address to serve on (default: this machine only)")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--share", action="store_true", help="ask Gradio for a public share link (off by default)")
    p.add_argument("--compute-device", default="auto")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    tune_allocator()
    try:
        return args.func(args)
    except (ValueError, OSError) as e:  # bad input, missing files, network: one clear line, no traceback
        print(f"mrconv-audio {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
