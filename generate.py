"""Generate music from a checkpoint: WAV, MP3, MIDI and a JSON sidecar. Example:

    python generate.py ckpt=outputs/demo/RUN/checkpoints/last.ckpt prompt="calm piano melody" duration=30

Installed, the same command is `musegen-generate` (musegen.cli.generate), from any folder.
"""
from musegen.cli.generate import main

if __name__ == "__main__":
    main()
