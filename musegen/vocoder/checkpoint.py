"""Reading vocoder checkpoints as data, without Lightning: the file alone rebuilds the Vocoder.

A vocoder checkpoint is the one Lightning writes while training VocoderModule: ``hyper_parameters``
holds the feature settings, the network's hyper-parameters (``net``) and ``vocoder_format``;
``state_dict`` holds the weights and the input normalisation under ``vocoder.``.
"""
from __future__ import annotations

from pathlib import Path

from musegen.checkpoint import CheckpointError, read_weights
from musegen.features import FeatureConfig
from musegen.vocoder.network import Vocoder

#: Bumped whenever a vocoder checkpoint's tensors or hyper-parameters change meaning; older ones are refused.
VOCODER_FORMAT = 1
PREFIX = "vocoder."


def load_vocoder(path: str | Path, features: FeatureConfig | None = None) -> Vocoder:
    """The trained vocoder of a checkpoint file, in eval mode; CheckpointError for anything unusable,
    including, with `features` (a generator's), a vocoder built for other frames than those."""
    ckpt = read_weights(path)
    hp = ckpt.get("hyper_parameters") if isinstance(ckpt, dict) else None
    if not isinstance(hp, dict) or "state_dict" not in ckpt or "vocoder_format" not in hp:
        raise CheckpointError(f"checkpoint {path}: not a musegen vocoder checkpoint (no vocoder hyper-parameters)")
    if hp["vocoder_format"] != VOCODER_FORMAT:
        raise CheckpointError(f"checkpoint {path}: vocoder format {hp['vocoder_format']}, "
                              f"this musegen reads format {VOCODER_FORMAT}")
    state = {k[len(PREFIX):]: v for k, v in ckpt["state_dict"].items() if k.startswith(PREFIX)}
    try:
        vocoder = Vocoder(features=hp["features"], **hp["net"])
        vocoder.load_state_dict(state)
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        raise CheckpointError(f"checkpoint {path}: vocoder weights do not fit its hyper-parameters "
                              f"({str(err).splitlines()[0]})") from None
    if features is not None and vocoder.features != features:
        raise CheckpointError(f"vocoder={path}: built for other features than the checkpoint's "
                              f"({vocoder.features} vs {features})")
    return vocoder.eval()
