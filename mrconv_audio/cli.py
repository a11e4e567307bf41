"""`mrconv-audio` command line: thin wrappers that parse arguments and call the library."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .cpu import tune_allocator


def cmd_info(args) -> int:
    from .checkpoint import load_pretrained
    from .evaluate import default_model_dir
    from .model import MRConvClassifier, MRConvConfig

    if args.preset:
        model_dir, model = None, MRConvClassifier(MRConvConfig.preset(args.preset))
    else:  # the whole checkpoint is checked (config against weights before allocating), not the config alone
        model_dir = Path(args.model) if args.model else default_model_dir()
        model = load_pretrained(model_dir)
    cfg, merged = model.config, model.reparameterized
    info = {
        "config": cfg.to_dict(),
        "reparameterized": merged,
        "parameters": sum(p.numel() for p in model.parameters()),
        "branch_lengths": model.blocks[0].conv.lengths,
    }
    if not merged:
        info["parameters_merged"] = sum(p.numel() for p in model.reparameterize().parameters())
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        print(describe(model, info, model_dir, args.preset))
    return 0


def plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def describe(model, info: dict, model_dir: Path | None, preset: str | None) -> str:
    """`mrconv-audio info`: what a user asks of a keyword spotter (classes, rates, size, accuracy), readable."""
    cfg = model.config
    low, high = model.rate_range()
    if model_dir is None:
        lines = [f"preset {preset} (untrained: a configuration for `mrconv-audio train --preset {preset}`)"]
    else:
        lines = [f"{model_dir.name}  ({model_dir.resolve()})"]
    front = (f"log-mel front end ({cfg.n_mels} bands, {cfg.f_min:g}-{cfg.f_max:g} Hz), " if cfg.frontend == "logmel"
             else "raw waveform in, ")
    lines += [
        f"  classes ({len(cfg.labels)}): {', '.join(cfg.labels)}",
        f"  {'trains' if model_dir is None else 'trained'} at {cfg.sample_rate} Hz, {cfg.clip_seconds:g} s window; "
        f"runs at {low:g} to {high:g} Hz",
        f"  {front}{cfg.depth} MRConv blocks of width {cfg.d_model}, {cfg.kernel} kernels, "
        f"{'bidirectional' if cfg.bidirectional else 'causal'}",
        f"  parameters: {info['parameters']:,}" + (f" ({info['parameters_merged']:,} merged for inference)"
                                                   if "parameters_merged" in info else " (merged for inference)"),
    ]
    if model_dir is not None:
        weights = model_dir / "model.safetensors"
        if weights.is_file():
            lines.append(f"  weights: {weights.stat().st_size / 1e6:.2f} MB")
        lines += accuracy_lines(model_dir, cfg.sample_rate)
        if (model_dir / "MODEL_CARD.md").is_file():
            lines.append(f"  model card: {model_dir / 'MODEL_CARD.md'}")
    lines.append("  (--json for every field)")
    return "\n".join(lines)


def accuracy_lines(model_dir: Path, model_rate: int) -> list[str]:
    """Accuracy from the evaluation.json next to the model (written by `evaluate --json`), if there is one."""
    path = model_dir / "evaluation.json"
    if not path.is_file():
        return ["  accuracy: not evaluated (no evaluation.json; `mrconv-audio evaluate --json` writes one)"]
    evaluation = json.loads(path.read_text())
    rows = [r for r in evaluation.get("results", []) if r.get("mode") == "kernel"]
    if not rows:
        return []
    where = ", ".join(Path(root).name for root in evaluation.get("data_root", [])) or evaluation.get("folder", "?")
    home = next((r for r in rows if r["rate"] == model_rate), rows[0])
    others = [r["accuracy"] for r in rows]
    return [f"  accuracy: {100 * home['accuracy']:.2f}% at {home['rate']} Hz on the {evaluation.get('split', '')} "
            f"split of {where} (n={home['n']}); {100 * min(others):.2f}-{100 * max(others):.2f}% over "
            f"{len(rows)} rates from {min(r['rate'] for r in rows)} to {max(r['rate'] for r in rows)} Hz"]


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


def load_model(path, backend: str = "torch"):
    """The model in `path`, or the shipped one. torch: the PyTorch model, merged for inference; onnx: the exported
    file (`path` itself, or the folder's model.onnx) run by onnxruntime, without torch; auto: onnx for a .onnx file
    or where torch is not installed, else torch."""
    if backend == "auto":
        import importlib.util

        exported = path is not None and str(path).endswith(".onnx")
        backend = "onnx" if exported or importlib.util.find_spec("torch") is None else "torch"
    if backend == "onnx":
        from .onnx_model import OnnxModel

        return OnnxModel(path)
    from .evaluate import default_model_dir
    from .model import MRConvClassifier

    return MRConvClassifier.from_pretrained(path or default_model_dir()).reparameterize()


# The app (app/) is reached only from here, lazily: the library itself never imports it.
def cmd_listen(args) -> int:
    try:
        import sounddevice  # noqa: F401  (needs the PortAudio library, which pip does not install)
    except OSError as e:
        raise OSError(f"{e}: install PortAudio first (Debian/Ubuntu: sudo apt-get install libportaudio2; "
                      "Fedora: sudo dnf install portaudio; macOS: brew install portaudio)") from None
    from app.listen import list_devices, run_listen

    if args.list_devices:
        print(list_devices())
        return 0
    device = int(args.device) if args.device and args.device.isdigit() else args.device
    run_listen(load_model(args.model, args.backend), device=device, samplerate=args.samplerate, threshold=args.threshold,
               hop=args.hop, record=args.record, compute_device=args.compute_device, duration=args.duration,
               mode=args.mode)
    return 0


def cmd_detect(args) -> int:
    from tqdm import tqdm

    from app.listen import detect_file

    from .inputfile import file_problem, shown

    if problem := file_problem(args.file):  # before loading the model; a FIFO is never opened
        raise FileNotFoundError(f"{shown(args.file)}: {problem}")
    bar = None

    def progress(done: int, total: int) -> None:  # a bar on stderr; tqdm leaves it out when that is not a terminal
        nonlocal bar
        if bar is None:
            bar = tqdm(total=total, desc="detect", leave=False, disable=None, file=sys.stderr,
                       bar_format="{desc}: {percentage:3.0f}%|{bar}| {elapsed}<{remaining}")
        bar.update(done - bar.n)

    try:
        result = detect_file(load_model(args.model, args.backend), args.file, hop=args.hop, threshold=args.threshold,
                             mode=args.mode, compute_device=args.compute_device, progress=progress)
    finally:
        if bar is not None:
            bar.close()
    for warning in result["warnings"]:
        print(f"mrconv-audio detect: warning: {args.file}: {warning}", file=sys.stderr)
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        print(f"{result['file']}: {result['duration']} s at {result['sample_rate']} Hz, "
              f"{plural(len(result['detections']), 'detection')}")
        for d in result["detections"]:
            print(f"  {d['time']:8.2f} s  {d['label']:<12} {d['score']:.2f}")
    return 0


def cmd_export(args) -> int:
    from .evaluate import default_model_dir
    from .export import export_model

    report = export_model(args.model or default_model_dir(), args.rate, args.out, args.int8, args.conv)
    for path, row in report["files"].items():
        print(f"{path}: {row['bytes'] / 1e6:.2f} MB, logits within {row['max_relative_error']:.1e} (relative) of "
              f"PyTorch at {args.rate} Hz")
    return 0


def cmd_demo(args) -> int:
    from app.demo import launch

    from .evaluate import default_model_dir

    launch(load_model(args.model), args.model or default_model_dir(), host=args.host, port=args.port,
           share=args.share, compute_device=args.compute_device)
    return 0


BACKENDS = ("auto", "torch", "onnx")
BACKEND_HELP = ("torch: the PyTorch model; onnx: an exported model (--model FILE.onnx, or a folder's model.onnx) on "
                "onnxruntime, no torch needed; auto: onnx for a .onnx file or where torch is not installed, else torch")


class HelpFormatter(argparse.HelpFormatter):
    """Every option's help ends with its default, unless the help text already says it or there is none to say."""

    def _get_help_string(self, action):
        text = action.help or ""
        if (action.option_strings and action.default not in (None, False, argparse.SUPPRESS)
                and "default" not in text and not isinstance(action, argparse._HelpAction)):
            text += " (default: %(default)s)"
        return text


class Parser(argparse.ArgumentParser):
    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)


def add_engine_options(p, hop: float, source: str) -> None:
    """The streaming engine's options, shared by listen and detect; `source` names where the audio comes from."""
    p.add_argument("--model", help="model folder, or an exported .onnx file (default: the shipped model)")
    p.add_argument("--threshold", type=float, default=0.6, help="smoothed keyword probability that fires a detection")
    p.add_argument("--hop", type=float, default=hop, help="seconds between classifications")
    p.add_argument("--mode", default="kernel", choices=["kernel", "input"],
                   help=f"kernel: run the model at the {source}'s rate; input: resample the audio to the model's rate")
    p.add_argument("--compute-device", default="auto", help="auto (CUDA, MPS, CPU), cpu, cuda, ...")
    p.add_argument("--backend", default="auto", choices=BACKENDS, help=BACKEND_HELP)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="mrconv-audio", description="Keyword spotting with MRConv on raw audio. Every subcommand "
                    "but train uses the shipped model (models/kws12-mrconv) unless --model is given.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("info", help="describe a model folder (default: the shipped model) or a preset")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--model", help="model folder (config.json + model.safetensors; default: the shipped model)")
    group.add_argument("--preset", help="describe this untrained preset instead (sc35-paper, logmel, ...)")
    p.add_argument("--json", action="store_true", help="print every field as JSON instead of the summary")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("data", help="dataset tools")
    data_sub = p.add_subparsers(dest="data_command", required=True)
    d = data_sub.add_parser("download", help="download and unpack Speech Commands (checksum-verified, resumable)")
    d.add_argument("--root", required=True, help="folder to unpack into (created; must be empty or absent)")
    d.add_argument("--version", default="0.02", choices=["0.02", "0.01"], help="dataset release")
    d.set_defaults(func=cmd_download)
    d = data_sub.add_parser("synthesize", help="spoken words from espeak-ng voices, in the Speech Commands layout")
    d.add_argument("--out", required=True, help="folder to write (created; must be empty or absent)")
    d.add_argument("--per-keyword", type=int, default=100, help="clips of each of the 10 keywords")
    d.add_argument("--per-other-word", type=int, default=10, help="clips of each other word (for _unknown_)")
    d.add_argument("--seed", type=int, default=0, help="random seed for voices, speeds and pitches")
    d.set_defaults(func=cmd_synthesize)

    p = sub.add_parser("train", help="train a classifier on a local Speech Commands root; several GPUs or "
                                     "processes: torchrun --nproc-per-node N -m mrconv_audio.cli train ...")
    p.add_argument("--preset", default="sc35-paper", help="model preset (see `mrconv-audio info --preset NAME`)")
    p.add_argument("--task", default="sc35", choices=["sc35", "kws12"], help="35 words, or 10 keywords + silence "
                   "+ unknown")
    p.add_argument("--data-root", required=True, action="append",
                   help="Speech Commands root; repeat to join several (each clip keeps its root's split)")
    p.add_argument("--out", required=True, help="run folder (metrics.jsonl, best/, resume state)")
    p.add_argument("--epochs", type=int, default=40, help="passes over the training split")
    p.add_argument("--batch-size", type=int, default=16, help="clips per optimizer step, the global batch: under torchrun the processes share "
                   "it (16 over 2 GPUs: 8 each)")
    p.add_argument("--lr", type=float, default=0.005, help="peak learning rate (AdamW, cosine after warm-up)")
    p.add_argument("--kernel-lr", type=float, default=0.001, help="learning rate of the kernel parameters")
    p.add_argument("--weight-decay", type=float, default=0.05, help="AdamW weight decay (not on kernels)")
    p.add_argument("--warmup-epochs", type=float, default=1.0, help="linear warm-up length in epochs")
    p.add_argument("--seed", type=int, default=0, help="random seed (initialization, order, augmentation)")
    p.add_argument("--sample-rate", type=int, default=16000, help="training rate (clips are resampled to it)")
    p.add_argument("--device", default="auto", help="auto (CUDA, MPS, CPU), cpu, cuda, cuda:1, mps")
    p.add_argument("--no-augment", action="store_true", help="no augmentation (noise, shift, gain, speed)")
    p.add_argument("--no-speed", action="store_true", help="no speed perturbation")
    p.add_argument("--checkpoint-every", type=int, default=0, metavar="STEPS",
                   help="also save the resume state every STEPS steps within an epoch (0: only at epoch ends)")
    p.add_argument("--cache-dir", help="preprocessing cache (default: ~/.cache/mrconv-audio)")
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
    source.add_argument("--folder", help="folder of <label>/*.wav at any rates (other words count as _unknown_)")
    p.add_argument("--split", default="test", choices=["train", "validation", "test"], help="split of --data-root")
    p.add_argument("--task", help="task of --data-root (default: inferred from the model's labels)")
    p.add_argument("--rates", type=int, nargs="+", help="sample rates in Hz (default: 8000 11025 16000 22050 32000 "
                   "44100 48000 for --data-root, each file's own rate for --folder)")
    p.add_argument("--input-resample", default="decimate", choices=["decimate", "sinc"],
                   help="how audio is brought to a lower rate: naive decimation where the factor is whole, or sinc")
    p.add_argument("--mode", choices=["kernel", "input"], help="kernel: run the model at the audio's rate; input: "
                   "resample the audio to the model's rate (default: both; kernel with --stream)")
    p.add_argument("--json", dest="json_out", metavar="OUT.json", help="write results as JSON here (default: none)")
    p.add_argument("--plot", metavar="OUT.png", help="write accuracy-vs-rate plot (PNG) here (default: none)")
    p.add_argument("--batch-size", type=int, default=64, help="clips per forward pass")
    p.add_argument("--cache-dir", help="preprocessing cache (default: ~/.cache/mrconv-audio)")
    p.add_argument("--device", default="auto", help="auto (CUDA, MPS, CPU), cpu, cuda, ...")
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
    p.add_argument("--record", metavar="OUT.wav", help="also save what was heard (default: nothing is saved)")
    p.add_argument("--duration", type=float, help="stop after this many seconds (default: until Ctrl-C)")
    add_engine_options(p, hop=0.25, source="device")
    p.set_defaults(func=cmd_listen)

    p = sub.add_parser("detect", help="keyword detections with timestamps in a recording")
    p.add_argument("file", help="audio file (WAV, FLAC, ...) at any rate the model runs at")
    p.add_argument("--json", action="store_true", help="print the detections as JSON instead of a table")
    add_engine_options(p, hop=0.1, source="file")
    p.set_defaults(func=cmd_detect)

    p = sub.add_parser("export", help="export a model to ONNX at one input rate (runs on onnxruntime, without torch)")
    p.add_argument("--model", help="model folder (default: the shipped model)")
    p.add_argument("--rate", type=int, default=16000, help="input sample rate in Hz the exported file runs at")
    p.add_argument("--out", required=True, metavar="OUT.onnx", help="file to write")
    p.add_argument("--int8", metavar="OUT.int8.onnx", help="also write an int8 variant (dynamic quantization of the "
                   "pointwise layers) here (default: none)")
    p.add_argument("--conv", default="matmul", choices=["matmul", "conv", "fft"],
                   help="MRConv layers as per-channel Toeplitz MatMuls, depthwise Convs or FFTs "
                   "(benchmarks/onnx_speed.py)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("demo", help="Gradio web demo (live microphone, clips, model view, predict API)")
    p.add_argument("--model", help="model folder (default: the shipped model)")
    p.add_argument("--host", default="127.0.0.1", help="address to serve on (127.0.0.1: this machine only; "
                   "0.0.0.0: every network interface)")
    p.add_argument("--port", type=int, default=7860, help="port to serve on")
    p.add_argument("--share", action="store_true", help="ask Gradio for a public share link (off by default)")
    p.add_argument("--compute-device", default="auto", help="auto (CUDA, MPS, CPU), cpu, cuda, ...")
    p.set_defaults(func=cmd_demo)
    return parser


# Dependencies of the full install that the light one (README, "Deployment") does not have.
FULL_INSTALL_MODULES = ("torch", "torchaudio", "safetensors", "gradio", "matplotlib")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    tune_allocator()
    try:
        return args.func(args)
    except (ValueError, OSError) as e:  # bad input, missing files, network: one clear line, no traceback
        print(f"mrconv-audio {args.command}: error: {e}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as e:
        if e.name not in FULL_INSTALL_MODULES:
            raise
        print(f"mrconv-audio {args.command}: error: this needs {e.name}, which the light install leaves out (listen "
              "and detect run exported models without it); install the full package: pip install mrconv-audio",
              file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
