"""The input device of `listen`: checked before the stream starts, watched while it runs, reopened when it dies.

PortAudio says little when the audio server goes away mid-stream: the stream just stops (or, on some back ends,
stays "active" with no more callbacks). So the stream is watched from outside: it must stay active and deliver
audio at least every `stall_seconds`. When it does not, it is closed and reopened (PortAudio re-initialized, so a
restarted audio server is found again) until `reopen_seconds` have passed; then DeviceLost is raised.
"""
from __future__ import annotations

import threading
import time
from pathlib import Path


class DeviceLost(OSError):
    """The input stream died and could not be reopened."""


def portaudio_error():
    import sounddevice as sd

    return sd.PortAudioError


def query_input(device) -> dict:
    """The device's info, or a ValueError that says what is wrong: no such device, or no audio system at all."""
    import sounddevice as sd

    try:
        return sd.query_devices(device, "input")
    except (sd.PortAudioError, ValueError) as e:
        try:
            inputs = [d for d in sd.query_devices() if d["max_input_channels"] > 0]
        except sd.PortAudioError:
            inputs = []
        if not inputs:
            raise ValueError(f"no audio input found ({e}): is an audio server (PulseAudio, PipeWire) running and a "
                             "microphone connected?") from None
        if device is None:
            raise ValueError(f"no default input device ({e}): choose one with --device (see --list-devices)") from None
        raise ValueError(f"--device {device}: no such input device ({e}); see --list-devices") from None


def check_rate(device, rate: int) -> None:
    """Raise ValueError when the device cannot capture mono float32 at `rate`."""
    import sounddevice as sd

    try:
        sd.check_input_settings(device=device, channels=1, dtype="float32", samplerate=rate)
    except (sd.PortAudioError, ValueError) as e:
        raise ValueError(f"--samplerate {rate}: the input device cannot capture at this rate ({e})") from None


def open_recording(path, rate: int):
    """The --record file, opened for writing now, so that a bad path is an error before the stream starts."""
    import soundfile as sf

    folder = Path(path).resolve().parent
    if not folder.is_dir():
        raise ValueError(f"--record {path}: folder {folder} does not exist")
    try:
        return sf.SoundFile(path, "w", samplerate=rate, channels=1, subtype="PCM_16")
    except (sf.LibsndfileError, RuntimeError, OSError, TypeError) as e:
        raise ValueError(f"--record {path}: cannot write a WAV there ({e})") from None


class InputDevice:
    """A PortAudio input stream that calls `callback(block)` and knows when it has stopped delivering audio."""

    def __init__(self, device, rate: int, callback, stall_seconds: float = 5.0, start_seconds: float = 30.0):
        self.device, self.rate, self.callback = device, rate, callback
        self.stall_seconds, self.start_seconds = stall_seconds, start_seconds
        self.stream = None
        self.last_audio: float | None = None  # monotonic time of the last block, None before the first
        self.opened_at = 0.0
        self.overflows = 0

    def _on_audio(self, indata, frames, time_info, status):  # audio thread: copy and return, never block
        if status.input_overflow:
            self.overflows += 1
        self.last_audio = time.monotonic()
        self.callback(indata)

    def open(self) -> None:
        import sounddevice as sd

        self.last_audio = None
        self.opened_at = time.monotonic()
        self.stream = sd.InputStream(device=self.device, channels=1, samplerate=self.rate, dtype="float32",
                                     callback=self._on_audio)
        self.stream.start()

    def problem(self) -> str | None:
        """Why the stream is not delivering audio, or None while it is."""
        now = time.monotonic()
        if self.stream is None or not self.stream.active:
            return "the input stream stopped (the audio server or the device went away)"
        if self.last_audio is None:
            if now - self.opened_at > self.start_seconds:
                return f"no audio arrived in the {self.start_seconds:g} s after the stream opened"
        elif now - self.last_audio > self.stall_seconds:
            return f"no audio for {now - self.last_audio:.1f} s (the audio server or the device stopped)"
        return None

    def close(self, timeout: float = 5.0) -> None:
        """Close the stream; on a dead server PortAudio may block, so give up waiting after `timeout` seconds."""
        stream, self.stream = self.stream, None
        if stream is None:
            return

        def close():
            try:
                stream.close(ignore_errors=True)
            except Exception:  # a dead stream may fail to close; it is being replaced anyway
                pass

        closer = threading.Thread(target=close, daemon=True)
        closer.start()
        closer.join(timeout)

    def reopen(self, reopen_seconds: float, stop: threading.Event, attempt_every: float = 1.0) -> bool:
        """Close the dead stream and open it again until audio flows; False after `reopen_seconds` (or on stop)."""
        import sounddevice as sd

        self.close()
        deadline = time.monotonic() + reopen_seconds
        while time.monotonic() < deadline and not stop.is_set():
            try:
                sd._terminate()  # re-initialize PortAudio: its device list is from before the server died
                sd._initialize()
                self.open()
                while time.monotonic() < deadline and not stop.is_set():
                    if self.last_audio is not None and self.stream.active:
                        return True
                    if not self.stream.active:
                        break
                    stop.wait(0.05)
                self.close()
            except (portaudio_error(), OSError, ValueError):
                self.close()
            stop.wait(attempt_every)
        return False
