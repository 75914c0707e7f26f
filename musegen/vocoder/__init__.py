"""A neural vocoder trained on the user's own audio: feature frames -> waveform (no Lightning on import)."""
from musegen.vocoder.checkpoint import VOCODER_FORMAT, load_vocoder
from musegen.vocoder.network import Vocoder

__all__ = ["VOCODER_FORMAT", "Vocoder", "load_vocoder"]
