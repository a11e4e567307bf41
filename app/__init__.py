"""Applications on top of mrconv_audio.streaming: the live microphone view and the Gradio demo."""
