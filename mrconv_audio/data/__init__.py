"""Speech Commands data: reading the release's layout, the sc35 and kws12 tasks, a preprocessing cache,
augmentation and the downloader. Nothing here is imported by the model code."""
from .audio import AudioError, fit_length, load_audio, resample
from .speech_commands import TASKS, Example, SpeechCommands, task_labels

__all__ = ["AudioError", "Example", "SpeechCommands", "TASKS", "fit_length", "load_audio", "resample", "task_labels"]
