"""The demo server under load: how long a short clip waits behind clients sending the largest clips, and the
server's memory before, during and after the load, with and without handing the heap back when idle.

    python benchmarks/demo_load.py [--model DIR] [--rounds 2] [--variants trim no-trim] [--json demo_load.json]

Each server is `mrconv-audio demo` in its own process (the CLI's allocator settings included); "no trim" is the
same server with app.limits.trim_memory made a no-op. Per round: 4 clients each send a 60 s clip (16, 44.1, 48 and
96 kHz) asking for its detections, and a fifth sends a 1 s clip once they run. RSS (from /proc) is read before the
first round, at its peak (sampled every 0.1 s), and after each round once the server is idle. The last line
printed is the JSON.
"""
from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]
SERVER = """
import sys
import app.limits, app.demo
if sys.argv[1] == "no-trim":
    app.limits.trim_memory = lambda: False
    app.demo.trim_memory = app.limits.trim_memory
from mrconv_audio.cli import main
sys.exit(main(["demo", "--port", sys.argv[2]] + sys.argv[3:]))
"""


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clip(path: Path, seconds: float, rate: int) -> str:
    rng = np.random.default_rng(rate)
    sf.write(path, (0.05 * rng.standard_normal(round(seconds * rate))).astype(np.float32), rate)
    return str(path)


def serve(variant: str, model: str | None, rounds: int, folder: Path) -> dict:
    from gradio_client import Client, handle_file

    port = free_port()
    args = ["--model", model] if model else []
    proc = subprocess.Popen([sys.executable, "-c", SERVER, variant, str(port), *args], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}/"
        for _ in range(600):  # the server is up when its config answers
            try:
                Client(url, verbose=False)
                break
            except Exception:
                time.sleep(0.5)
        bigs = [clip(folder / f"big{r}.wav", 60, r) for r in (16000, 44100, 48000, 96000)]
        small = clip(folder / "small.wav", 1, 16000)
        idle_before = rss_mb(proc.pid)
        result = {"variant": variant, "rss_idle_before_mb": round(idle_before, 1), "rounds": []}
        for _ in range(rounds):
            peak, stop = [idle_before], threading.Event()

            def sample():
                while not stop.is_set():
                    peak.append(rss_mb(proc.pid))
                    time.sleep(0.1)

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            start = time.monotonic()
            jobs = [Client(url, verbose=False).submit(handle_file(b), True, api_name="/predict") for b in bigs]
            time.sleep(2.0)  # the large requests are uploaded and running (a benchmark, not a test: no event here)
            t = time.monotonic()
            Client(url, verbose=False).predict(handle_file(small), api_name="/predict")
            small_s = time.monotonic() - t
            scanned = [j.result()["scanned_seconds"] for j in jobs]
            big_s = time.monotonic() - start
            time.sleep(3.0)  # idle: the trim runs when the last request ends
            stop.set()
            sampler.join()
            result["rounds"].append({"small_clip_s": round(small_s, 2), "large_clips_s": round(big_s, 2),
                                     "scanned_s": scanned, "rss_peak_mb": round(max(peak), 1),
                                     "rss_idle_after_mb": round(rss_mb(proc.pid), 1)})
        return result
    finally:
        proc.terminate()
        proc.wait(60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="model folder (default: the shipped model)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--variants", nargs="+", default=["trim", "no-trim"], choices=["trim", "no-trim"])
    parser.add_argument("--json", help="also write the JSON here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        results = [serve(v, args.model, args.rounds, Path(folder)) for v in args.variants]
    for r in results:
        print(r["variant"], r["rss_idle_before_mb"], r["rounds"])
    out = json.dumps({"servers": results})
    if args.json:
        Path(args.json).write_text(out + "\n")
    print(out)


if __name__ == "__main__":
    main()
