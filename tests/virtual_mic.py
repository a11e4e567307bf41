"""A private PulseAudio server with a virtual microphone: whatever is played into the sink `vsink` arrives at
the default input, so sounddevice records real, real-time-paced audio without a sound card."""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path


class VirtualMic:
    def __init__(self, rate: int = 16000):
        self.rate = rate
        self.dir = Path(tempfile.mkdtemp(prefix="pa-"))
        os.chmod(self.dir, 0o700)
        self.env = {**os.environ, "XDG_RUNTIME_DIR": str(self.dir), "PULSE_SERVER": f"unix:{self.dir}/pulse.sock"}

    def start(self) -> "VirtualMic":
        """Raises RuntimeError with the reason when the server cannot start."""
        if shutil.which("pulseaudio") is None or shutil.which("paplay") is None:
            raise RuntimeError("pulseaudio/paplay not installed (apt-get install pulseaudio pulseaudio-utils)")
        cmd = ["pulseaudio", "--daemonize=yes", "--exit-idle-time=-1", "--disallow-exit", "-n",
               f"--load=module-native-protocol-unix auth-anonymous=1 socket={self.dir}/pulse.sock",
               f"--load=module-null-sink sink_name=vsink rate={self.rate} channels=1",
               "--load=module-remap-source master=vsink.monitor source_name=vmic",
               f"--log-target=file:{self.dir}/pa.log"]
        done = subprocess.run(cmd, env=self.env, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"pulseaudio did not start: {done.stderr.strip() or done.stdout.strip()}")
        for _ in range(50):
            if subprocess.run(["pactl", "info"], env=self.env, capture_output=True).returncode == 0:
                break
            time.sleep(0.1)
        else:
            raise RuntimeError("pulseaudio started but does not answer")
        subprocess.run(["pactl", "set-default-sink", "vsink"], env=self.env, check=True)
        subprocess.run(["pactl", "set-default-source", "vmic"], env=self.env, check=True)
        os.environ.update(XDG_RUNTIME_DIR=self.env["XDG_RUNTIME_DIR"], PULSE_SERVER=self.env["PULSE_SERVER"])
        return self

    def play(self, wav) -> subprocess.Popen:
        """Play a WAV into the virtual microphone, paced in real time."""
        return subprocess.Popen(["paplay", "--device=vsink", str(wav)], env=self.env)

    def kill(self) -> None:
        """The audio server dies (SIGKILL, no goodbye to its clients); start() brings up a new one."""
        import signal

        pid = int((self.dir / "pulse" / "pid").read_text().split()[0])
        os.kill(pid, signal.SIGKILL)
        for _ in range(100):  # until it is gone
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.05)

    def stop(self) -> None:
        subprocess.run(["pulseaudio", "--kill"], env=self.env, capture_output=True)
        shutil.rmtree(self.dir, ignore_errors=True)
