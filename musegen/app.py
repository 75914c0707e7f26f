"""The web app: ``python -m musegen.app ckpt=PATH [port=7860] [host=127.0.0.1]`` (conf/app.yaml).

A Gradio page over musegen.api: a prompt, an optional recording to continue and the sampling settings
in; a player per variation, their mel spectrograms, piano rolls of their MIDI transcriptions and the
files generate.py writes out. The model is loaded once, at start. One generation runs at a time and
the others wait in Gradio's queue: the rollout already uses the cores it is given, so two at once
would each take twice as long. A user's mistake (an unreadable upload, a value out of range) is a
message in the page, never a traceback; Stop ends a generation at its next segment.
"""
from __future__ import annotations

import logging
import tempfile
import threading
from pathlib import Path
from typing import Any

import gradio as gr
import hydra
from omegaconf import DictConfig

from musegen.api import MusicModel, load
from musegen.apps.errors import USER_ERRORS, describe, user_errors
from musegen.apps.generate import typed, writable_folder
from musegen.cli import CONFIG_PATH
from musegen.figures import piano_rolls, spectrograms

log = logging.getLogger("musegen.app")

#: conf/app.yaml's scalar arguments: (type, whether null is allowed), checked before the model is loaded
ARGUMENTS: dict[str, tuple[type, bool]] = {
    "ckpt": (str, False), "vocoder": (str, True), "host": (str, False), "port": (int, False),
    "device": (str, False), "threads": (int, True), "max_duration": (float, False),
    "max_variations": (int, False), "out": (str, True),
}


class Stopped(Exception):
    """Raised from the progress callback once the page's Stop was pressed: the rollout ends at its next
    segment instead of running on, unseen, in the worker thread that Gradio's cancel cannot stop."""


def build_app(model: MusicModel, out: Path, max_duration: float = 60.0, max_variations: int = 4) -> gr.Blocks:
    """The page for `model`, writing each generation's files under `out`, queued one generation at a
    time. Launching is the caller's (``python -m musegen.app``, or a test on a free port)."""
    sampling = model.generator.sampling()      # the checkpoint's defaults: where the sliders start
    stops: dict[str, threading.Event] = {}     # per browser session: Stop pressed during its generation

    def generate(prompt: str, reference: str | None, duration: float, guidance: float, temperature: float,
                 seed: float, variations: float, request: gr.Request,
                 progress: gr.Progress = gr.Progress()) -> list[Any]:  # noqa: B008 - Gradio's injection
        stop = stops[request.session_hash] = threading.Event()

        def report(done: int, total: int) -> None:
            if stop.is_set():
                raise Stopped(f"stopped after {done} of {total} segments")
            progress((done, total), desc="generating", unit="segments")

        try:
            music = model.generate((prompt or "").strip() or None, duration=duration, audio=reference,
                                   guidance=guidance, temperature=temperature, seed=int(seed),
                                   num_samples=int(variations), progress=report)
            written = music.save(out)
        except USER_ERRORS as err:
            message = describe(err)
            if reference is not None:  # the upload's own name, not Gradio's cache path
                message = message.replace(reference, Path(reference).name)
            log.warning("refused: %s", message)
            raise gr.Error(message, print_exception=False) from None
        except Stopped as err:  # the page keeps what it showed before
            log.info("%s", err)
            gr.Info(f"{str(err).capitalize()}.")
            return [gr.skip()] * len(outputs)
        finally:
            if stops.get(request.session_hash) is stop:
                del stops[request.session_hash]
        labels = [f"{i + 1}: {p or 'unconditional'} (seed {meta['seed']})"
                  for i, (p, meta) in enumerate(zip(music.prompts, music.metadata))]
        shown = [gr.Audio(value=files["wav"], label=label, visible=True) for files, label in zip(written, labels)]
        hidden = [gr.Audio(value=None, visible=False) for _ in range(max_variations - len(shown))]
        rolls = [files.get("mid") for files in written]
        return [*shown, *hidden, spectrograms(music.waveforms, music.sample_rate, labels),
                piano_rolls(rolls, labels) if all(rolls) else None,
                [path for files in written for path in files.values()]]

    def request_stop(request: gr.Request) -> None:
        if request.session_hash in stops:
            stops[request.session_hash].set()

    with gr.Blocks(title="musegen", analytics_enabled=False, delete_cache=(3600, 3600)) as app:
        gr.Markdown(f"# musegen\nMusic from a text prompt, optionally continuing a recording of yours "
                    f"(checkpoint `{model.sources['checkpoint']}`).")
        with gr.Row():
            with gr.Column(scale=1):
                prompt = gr.Textbox(label="Prompt (empty: unconditional)", placeholder="calm piano melody",
                                    elem_id="prompt")
                reference = gr.Audio(label="Reference audio to continue (optional)", type="filepath",
                                     sources=["upload"], elem_id="reference")
                duration = gr.Slider(1, max_duration, value=min(10.0, max_duration), step=0.5,
                                     label="Duration (s)", elem_id="duration")
                guidance = gr.Slider(0, max(10, sampling["guidance"]), value=sampling["guidance"], step=0.1,
                                     elem_id="guidance",
                                     label="Guidance (0 ignores the prompt; higher follows it more closely)")
                temperature = gr.Slider(0, max(2, sampling["temperature"]), value=sampling["temperature"], step=0.05,
                                        elem_id="temperature",
                                        label="Temperature (0: the most likely continuation)")
                seed = gr.Number(0, precision=0, label="Seed", elem_id="seed")
                variations = gr.Slider(1, max_variations, value=1, step=1, label="Variations (seeds seed, seed+1, ...)",
                                       elem_id="variations")
                with gr.Row():
                    run = gr.Button("Generate", variant="primary", elem_id="generate")
                    stop = gr.Button("Stop", variant="stop", elem_id="stop")
            with gr.Column(scale=2):
                players = [gr.Audio(label=f"Variation {i + 1}", type="filepath", interactive=False, visible=i == 0,
                                    elem_id=f"variation-{i}",
                                    waveform_options=gr.WaveformOptions(show_recording_waveform=False))
                           for i in range(max_variations)]
                spectrogram = gr.Plot(label="Mel spectrogram", elem_id="spectrogram")
                roll = gr.Plot(label="Piano roll (MIDI transcription)", elem_id="piano-roll")
                files = gr.File(label="Files (as generate.py writes them)", file_count="multiple", interactive=False,
                                elem_id="files")
        outputs = [*players, spectrogram, roll, files]
        event = run.click(generate, [prompt, reference, duration, guidance, temperature, seed, variations], outputs,
                          api_name="generate", show_progress_on=players[0])
        stop.click(request_stop, None, None, cancels=[event], queue=False)
    return app.queue(default_concurrency_limit=1)


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="app")
def main(cfg: DictConfig) -> None:
    """Load the checkpoint (a mistake in it or in the arguments is one line, exit status 2), then serve
    the page until interrupted."""
    with user_errors("musegen.app"):
        args = {name: typed(name, cfg[name], kind, nullable) for name, (kind, nullable) in ARGUMENTS.items()}
        if args["max_variations"] < 1:
            raise ValueError(f"max_variations must be >= 1, got {args['max_variations']}")
        if args["out"] is not None:
            writable_folder("out", Path(args["out"]))
        model = load(args["ckpt"], device=args["device"], vocoder=args["vocoder"], threads=args["threads"],
                     synth=cfg.synth, export=cfg.export, max_duration=args["max_duration"])
    with tempfile.TemporaryDirectory(prefix="musegen-app-") as tmp:
        out = Path(args["out"] or tmp)
        app = build_app(model, out, max_duration=args["max_duration"], max_variations=args["max_variations"])
        app.launch(server_name=args["host"], server_port=args["port"], allowed_paths=[str(out)])


if __name__ == "__main__":
    main()
