"""The token head: a language model over codebook tokens, one token per ``frames_per_token`` frames.

Groups of consecutive frames are quantised to a k-means codebook (musegen.model.codebook); a small
unidirectional GRU, started from the backbone's state, predicts the next segment's tokens one
group at a time, each step reading the previous group's token. It defines a distribution over what comes next and
samples from it with the usual language-model controls: temperature, top-k, top-p and min-p
truncation and classifier-free guidance on the log-probabilities, a temperature of its own for
the choice of pitch class, and a minimum length for a pitch class once the music changes to it.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from musegen.model.codebook import Codebook
from musegen.model.conditioning import guide
from musegen.model.heads import Head, HeadInput, Noise, Sampling

log = logging.getLogger(__name__)


class TokenHead(Head):
    """Autoregressive decoder over the tokens of the next ``segment_frames`` frames.

    A token stands for ``frames_per_token`` (P) consecutive frames: the codebook quantises the first
    ``out_dim`` dimensions of P frames at once (all of them when chroma is predicted), so the head
    predicts exactly what the model outputs. With P > 1 the decoder takes a decision every P frames
    and the rollout K / P steps; consecutive frames are so alike that a codebook of twice the entries
    quantises pairs more finely than single frames (docs/BENCHMARKS.md). Token groups are aligned to the end of
    the context, which generation and training windows both fill from the right. Step 0 reads the
    token of the context's last P frames, or a learned start token when any of them is padding; step
    k reads the token of group k - 1. A token's input vector is a learned embedding plus a projection of its
    centroid, so tokens that sound alike start alike and rare tokens still get a sensible input.
    The backbone state sets the initial hidden state and is added to every step's input, with a
    learned position embedding (the state describes the segment as a whole, not one frame).
    A k-means centroid averages its frames, so the rare loud frames of attacks are pulled towards
    quieter ones: tokens flatten the music's dynamics. Two remedies: ``energy_weight`` weighs MFCC 0
    in the codebook's distance (tokens then spend their resolution on loudness, less on pitch and
    timbre), and ``loudness_levels`` adds a second, residual token per step: the difference between
    the frames' MFCC 0 and their token's, quantised to that many levels and predicted after the token
    (conditioned on it), so a token keeps its pitch and timbre and its loudness is chosen apart.
    The levels do not feed back into the token stream (neither the decoder's input nor the context the
    backbone reads): fed back, they cost the prompted instrument. Each level is predicted from the
    decoder's state, its token and the *continuation level* (the one that would keep the previous
    frame's loudness through this token), and a token that repeats keeps its level in sampling:
    drawn anew at every frame, levels flip between neighbours, which the audio hears as onsets.
    ``envelope_frames`` instead keeps the tokens as they are and gives back the shape of a note: the
    training frames' mean offset from their token by how many frames their note (its pitch class) has
    lasted (loud at the start, decaying after), added to the finished generation (``finish``), so the
    model never reads it.
    """

    def __init__(self, state_dim: int, feature_dim: int, out_dim: int, segment_frames: int, context_frames: int,
                 n_mfcc: int, codebook_size: int, kmeans_iters: int = 25, kmeans_samples: int = 200_000,
                 seed: int = 0, hidden: int = 128, embed: int = 64, dropout: float = 0.1,
                 label_smoothing: float = 0.0, quantised_context: bool = False,
                 frames_per_token: int = 1, energy_weight: float = 1.0, loudness_levels: int = 0,
                 envelope_frames: int = 0) -> None:
        super().__init__(state_dim, feature_dim, out_dim, segment_frames, context_frames, n_mfcc)
        for key, value, ok, rule in (
            ("codebook_size", codebook_size, codebook_size >= 2, ">= 2"),
            ("kmeans_iters", kmeans_iters, kmeans_iters >= 1, ">= 1"),
            ("kmeans_samples", kmeans_samples, kmeans_samples >= codebook_size, f">= codebook_size ({codebook_size})"),
            ("hidden", hidden, hidden >= 1, ">= 1"),
            ("embed", embed, embed >= 1, ">= 1"),
            ("dropout", dropout, 0.0 <= dropout < 1.0, "in [0, 1)"),
            ("label_smoothing", label_smoothing, 0.0 <= label_smoothing < 1.0, "in [0, 1)"),
            ("energy_weight", energy_weight, energy_weight > 0, "> 0"),
            ("loudness_levels", loudness_levels, isinstance(loudness_levels, int) and loudness_levels != 1
             and loudness_levels >= 0, "0 (off) or an int >= 2"),
            ("envelope_frames", envelope_frames, isinstance(envelope_frames, int) and envelope_frames >= 0
             and not (envelope_frames and loudness_levels),
             "0 (off) or an int >= 1, and 0 with loudness_levels (the levels choose each frame's loudness themselves)"),
            ("frames_per_token", frames_per_token, isinstance(frames_per_token, int) and frames_per_token >= 1
             and segment_frames % frames_per_token == 0 and context_frames % frames_per_token == 0,
             f"an int >= 1 dividing segment_frames ({segment_frames}) and context_frames ({context_frames})"),
        ):
            if not ok:
                raise ValueError(f"model.head.{key} must be {rule}, got {value}")
        if out_dim > feature_dim:
            raise ValueError(f"out_dim ({out_dim}) cannot exceed feature_dim ({feature_dim})")
        self.kmeans_iters, self.kmeans_samples, self.seed = kmeans_iters, kmeans_samples, seed
        self.label_smoothing, self.quantised_context = label_smoothing, quantised_context
        self.vocab, self.frames_per_token = codebook_size, frames_per_token
        self.steps = segment_frames // frames_per_token
        self.start_id = codebook_size   # the extra input token of an empty context
        weights = torch.ones(frames_per_token, out_dim)
        weights[:, 0] = energy_weight   # MFCC 0, each frame's log energy
        self.codebook = Codebook(codebook_size, out_dim * frames_per_token, weights.flatten())
        self.token_embed = nn.Embedding(codebook_size + 1, embed)
        self.centroid_in = nn.Linear(out_dim * frames_per_token, embed, bias=False)
        self.pos_embed = nn.Parameter(torch.zeros(self.steps, embed))
        self.state_in = nn.Linear(state_dim, embed)
        self.h0 = nn.Linear(state_dim, hidden)
        self.gru = nn.GRU(embed, hidden, batch_first=True)
        self.drop = nn.Dropout(dropout)
        self.out = nn.Linear(hidden, codebook_size)
        self.loudness_levels = loudness_levels
        if loudness_levels:
            self.levels = Codebook(loudness_levels, frames_per_token)   # residual MFCC 0 of a token's P frames
            self.level_prev = nn.Embedding(loudness_levels + 1, embed)   # the continuation level, + the start level
            self.level_in = nn.Linear(hidden, embed)
            self.level_token = nn.Embedding(codebook_size, embed)
            self.level_out = nn.Linear(embed, loudness_levels)
        self.envelope_frames = envelope_frames
        if envelope_frames:
            self.register_buffer("envelope", torch.zeros(envelope_frames, out_dim))

    def prepare(self, clips: Sequence[torch.Tensor]) -> None:
        """Fit the codebook on the groups of P consecutive frames of normalised training clips
        ([T_i, feature_dim] each); a fitted codebook is kept (fine-tuning and resumed runs must keep
        the vocabulary the weights were trained on)."""
        if bool(self.codebook.fitted):
            log.info("token head: codebook already fitted, kept")
            return
        p = self.frames_per_token
        groups = torch.cat([self._groups(c[len(c) % p:]) for c in clips])
        self.codebook.fit(groups, self.kmeans_iters, self.seed, self.kmeans_samples)
        if self.loudness_levels:
            residual = self._residual(groups, self.codebook.encode(groups))
            # another seed: with as many samples as the codebook's, the same subset would hold only its centroids
            self.levels.fit(residual, self.kmeans_iters, self.seed + 1, self.kmeans_samples)
        if self.envelope_frames:
            self._fit_envelope([c[len(c) % p:] for c in clips])

    def _fit_envelope(self, clips: Sequence[torch.Tensor]) -> None:
        """``envelope`` [E, out_dim]: the mean of the training frames less their tokens' centroids, by
        how many frames their note has lasted (frames from E - 1 on share the last row)."""
        sums = torch.zeros(self.envelope_frames, self.out_dim, dtype=torch.float64)
        counts = torch.zeros(self.envelope_frames, dtype=torch.float64)
        for clip in clips:
            tokens = self._tokens(clip)
            residual = clip[:, : self.out_dim] - self._decode(tokens, None)
            lasted = self._lasted(self._notes(tokens)).clamp(max=self.envelope_frames - 1)
            sums.index_add_(0, lasted, residual.double())
            counts += torch.bincount(lasted, minlength=self.envelope_frames).double()
        self.envelope.copy_((sums / counts.clamp(min=1)[:, None]).to(self.envelope))
        log.info("token head: note envelope of %d frames, MFCC 0 from %+.2f to %+.2f (normalised units)",
                 self.envelope_frames, self.envelope[0, 0].item(), self.envelope[-1, 0].item())

    def _notes(self, tokens: torch.Tensor) -> torch.Tensor:
        """[...]: what tells the notes of tokens [...] apart: their pitch class, or without chroma the
        token itself (a token change within a pitch class is the same note getting louder or quieter)."""
        return self.pitch_classes()[tokens] if self.out_dim > self.n_mfcc else tokens

    def _context_notes(self, context: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """[rows, C / P]: the notes (``_notes``) of a context's tokens [rows, C, >= out_dim] (mask [rows, C]),
        -1 for a token whose frames hold padding."""
        full = mask.reshape(len(mask), -1, self.frames_per_token).all(-1)
        return torch.where(full, self._notes(self._tokens(context)), -1)

    def _lasted(self, notes: torch.Tensor) -> torch.Tensor:
        """Frames [..., S * P] of notes [..., S] (``_notes``): how many frames the note of each frame has
        lasted before it (0 at its first frame)."""
        steps = torch.arange(notes.shape[-1], device=notes.device)
        starts = torch.ones_like(notes, dtype=torch.bool)
        starts[..., 1:] = notes[..., 1:] != notes[..., :-1]
        run_start = torch.where(starts, steps, 0).cummax(-1).values
        p = self.frames_per_token
        frames = ((steps - run_start) * p)[..., None] + torch.arange(p, device=notes.device)
        return frames.flatten(-2)

    def finish(self, frames: torch.Tensor, context: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """With ``envelope_frames``, each frame moved by the note envelope at how long its note has
        lasted, counted on from the context: a centroid averages the frames of a note's attack and of
        its decay, the envelope puts the typical shape back. Applied to the finished generation, not
        in the rollout, so the context the model reads stays centroids."""
        if not self.envelope_frames:
            return frames
        notes = torch.cat([self._context_notes(context, mask), self._notes(self._tokens(frames))], dim=1)
        lasted = self._lasted(notes)[:, context.shape[1]:].clamp(max=self.envelope_frames - 1)
        return frames + self.envelope[lasted]

    def read_context(self, context: torch.Tensor) -> torch.Tensor:
        """With ``quantised_context``, the context's predicted dimensions replaced by their centroids
        (without loudness levels): generation feeds back centroids, so training then reads the frames
        it will read there (and a reference clip to continue is read the same way). Off, the backbone
        reads real frames in training and centroids in generation; checkpoints without the key were
        trained that way."""
        if not self.quantised_context:
            return context
        return torch.cat([self._decode(self._tokens(context), None), context[..., self.out_dim:]], dim=-1)

    def loss(self, x: HeadInput, target: torch.Tensor) -> dict[str, torch.Tensor]:
        """Teacher-forced cross-entropy of the target's tokens; ``bits_per_frame`` is the plain
        (unsmoothed) cross-entropy in bits per frame (a token's bits / P), the number to compare
        across runs, codebooks and token lengths; with loudness levels it counts the levels' bits too
        (``loudness_bits_per_frame`` on their own)."""
        tokens = self._tokens(target)
        levels = self._levels(target, tokens)
        logits, level_logits = self._teacher_forced(x, tokens, levels)
        loss, ce = self._cross_entropy(logits, tokens)
        out = {}
        if levels is not None:
            level_loss, level_ce = self._cross_entropy(level_logits, levels)
            loss, ce = loss + level_loss, ce + level_ce
            out["loudness_bits_per_frame"] = level_ce / (math.log(2) * self.frames_per_token)
        return {"loss": loss, "bits_per_frame": ce / (math.log(2) * self.frames_per_token), **out}

    def _cross_entropy(self, logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(the training loss, with label smoothing, and the plain cross-entropy, detached) in nats."""
        logits, flat = logits.flatten(0, 1), targets.flatten()
        loss = F.cross_entropy(logits, flat, label_smoothing=self.label_smoothing)
        ce = loss if self.label_smoothing == 0 else F.cross_entropy(logits.detach(), flat)
        return loss, ce.detach()

    def mean(self, x: HeadInput, target: torch.Tensor | None = None) -> torch.Tensor:
        """Expected frame softmax(logits) @ centroids [B, K, out_dim], for the skill metric.

        With ``target`` it is teacher-forced: step k's expectation given the true frames before
        it, i.e. a one-frame-ahead forecast, easier than a regressor's whole-segment forecast. Without
        a target (the Head interface) each step reads the most likely token of the step before, a
        forecast of the whole segment from the context alone, comparable to MSEHead.mean.
        """
        if target is not None:
            tokens = self._tokens(target)
            logits, level_logits = self._teacher_forced(x, tokens, self._levels(target, tokens))
        else:
            _, _, logits, level_logits = self._rollout(x, lambda step_logits: step_logits.argmax(-1),
                                                       lambda step_logits: step_logits.argmax(-1))
        frames = self._frames(logits.softmax(-1) @ self.codebook.centroids)
        if level_logits is not None:   # the expected loudness given the token read (true or most likely)
            frames = self._add_levels(frames, level_logits.softmax(-1) @ self.levels.centroids)
        return frames

    def sample(self, x: HeadInput, sampling: Sampling, noise: Noise) -> torch.Tensor:
        """Sample the next segment token by token: [n, K, out_dim] centroids (plus their loudness levels).

        Under guidance the 2n rows run together; each step combines row i's and row n + i's
        log-probabilities with ``guide``, draws one token per item and feeds it to both rows.
        """
        hold = _NoteHold(self, x, sampling.min_note_frames) if (sampling.min_note_frames or 1) > 1 else None

        def pick(step_logits: torch.Tensor) -> torch.Tensor:
            tok = self.next_token(step_logits, sampling, noise, None if hold is None else hold.allowed())
            if hold is not None:
                hold.advance(tok)
            return tok

        # Levels are drawn with the same guidance and temperature, untruncated: a handful of levels, all
        # plausible loudnesses of the token drawn.
        level_sampling = Sampling(sampling.guidance, sampling.temperature)
        tokens, levels, _, _ = self._rollout(x, pick, lambda step_logits: self.next_token(step_logits, level_sampling,
                                                                                          noise))
        n = tokens.shape[0] // 2 if sampling.guidance is not None else tokens.shape[0]
        return self._decode(tokens[:n], None if levels is None else levels[:n])

    def next_token(self, logits: torch.Tensor, sampling: Sampling, noise: Noise,
                   allowed: torch.Tensor | None = None) -> torch.Tensor:
        """One step's tokens [rows] from its logits [rows, V] (2n rows under guidance: the chosen
        token of item i is returned for rows i and n + i).

        ``min_p`` keeps the tokens at least min_p times as likely as the most likely one under the
        conditional model, before guidance, temperature and top-k/top-p. Guidance multiplies each
        token's probability by (p_cond / p_uncond) ** (g - 1): a token that is rare without the text
        and merely unlikely with it gains the most, and at every frame such tokens add up to a wrong
        note here and there. The floor lets guidance choose among the continuations the conditional
        model finds plausible without promoting the ones it does not; relative to the favourite, it
        still keeps many candidates where the model is unsure (a note's start) and few where it is
        sure (inside a held note). ``allowed`` [rows, V] (``min_note_frames``) removes the other tokens
        after guidance and min_p, unless it would remove every token left in a row.
        """
        logp = logits.log_softmax(-1)
        plausible = logp   # the distribution whose favourites set min_p's floor: the conditional one
        if sampling.guidance is not None:
            n = logp.shape[0] // 2
            plausible = logp[:n]
            logp = guide(logp[:n], logp[n:], sampling.guidance)
        if sampling.min_p:
            floor = plausible.max(-1, keepdim=True).values + math.log(sampling.min_p)
            logp = logp.masked_fill(plausible < floor, -math.inf)
        if allowed is not None:
            held = logp.masked_fill(~allowed[: logp.shape[0]], -math.inf)
            logp = torch.where(torch.isfinite(held).any(-1, keepdim=True), held, logp)
        if sampling.temperature == 0:
            tok = logp.argmax(-1)
        else:
            tok = _sample_from(self._tempered(logp, sampling), sampling.top_k, sampling.top_p, noise)
        return torch.cat([tok, tok]) if sampling.guidance is not None else tok

    def _tempered(self, logp: torch.Tensor, sampling: Sampling) -> torch.Tensor:
        """Log-probabilities [rows, V] divided by the temperature, or, with ``pitch_temperature``,
        factorised into the choice of a pitch class and the choice of a token within it, each
        with its own temperature: log p(class) / pitch_temperature + log p(token | class) / temperature.

        Note length and timbre pull one temperature in opposite directions: a cooler sampler
        holds notes longer but settles into an average timbre that no longer sounds like the
        prompted instrument (docs/BENCHMARKS.md). The classes are ``pitch_classes``; 0 keeps the
        likeliest class and samples the token within it; equal to ``temperature`` it is plain sampling.
        """
        if sampling.pitch_temperature is None:
            return logp / sampling.temperature
        logp = logp.log_softmax(-1)   # a guided combination is not normalised
        classes = self.pitch_classes()
        mass = torch.zeros(logp.shape[0], self.out_dim - self.n_mfcc, dtype=logp.dtype, device=logp.device)
        class_logp = mass.index_add_(1, classes, logp.exp()).log()   # [rows, chroma bins]
        within = torch.where(torch.isfinite(logp), logp - class_logp[:, classes], -math.inf)
        if sampling.pitch_temperature == 0:
            best = class_logp.argmax(-1, keepdim=True)
            return torch.where(classes == best, within / sampling.temperature, -math.inf)
        return class_logp[:, classes] / sampling.pitch_temperature + within / sampling.temperature

    def pitch_classes(self) -> torch.Tensor:
        """[V]: each token's pitch class, the chroma bin of its centroid (summed over its P frames)
        that stands highest above its training mean, in normalised units."""
        if self.out_dim <= self.n_mfcc:
            raise ValueError("pitch_temperature and min_note_frames need a model that predicts chroma "
                             "(model.predict_chroma=true)")
        chroma = self.codebook.centroids.reshape(self.vocab, self.frames_per_token, self.out_dim)[..., self.n_mfcc:]
        return chroma.sum(1).argmax(-1)

    def _require_fitted(self) -> None:
        if not bool(self.codebook.fitted):
            raise RuntimeError("the token head's codebook is not fitted: call prepare(clips) before training")

    def _groups(self, frames: torch.Tensor) -> torch.Tensor:
        """Token-sized vectors [..., T / P, P * out_dim] of frames [..., T, >= out_dim], T a multiple of P."""
        x = frames[..., : self.out_dim]
        return x.reshape(*x.shape[:-2], -1, self.frames_per_token * self.out_dim)

    def _tokens(self, frames: torch.Tensor) -> torch.Tensor:
        """Tokens [..., T / P] of frames [..., T, >= out_dim], T a multiple of P."""
        self._require_fitted()
        return self.codebook.encode(self._groups(frames))

    def _frames(self, groups: torch.Tensor) -> torch.Tensor:
        """Frames [..., S * P, out_dim] of token-sized vectors [..., S, P * out_dim] (centroids)."""
        return groups.reshape(*groups.shape[:-2], -1, self.out_dim)

    def _residual(self, groups: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """[..., P]: MFCC 0 of each frame of the groups [..., P * out_dim] less their tokens' [...]."""
        shape = (*groups.shape[:-1], self.frames_per_token, self.out_dim)
        return (groups.reshape(shape) - self.codebook.decode(tokens).reshape(shape))[..., 0]

    def _levels(self, frames: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor | None:
        """Loudness levels [..., T / P] of frames [..., T, >= out_dim] given their tokens (None when off)."""
        if not self.loudness_levels:
            return None
        return self.levels.encode(self._residual(self._groups(frames), tokens))

    def _add_levels(self, frames: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        """Frames [..., S * P, out_dim] with each group's residual MFCC 0 [..., S, P] added."""
        return torch.cat([frames[..., :1] + residual.reshape(*frames.shape[:-1], 1), frames[..., 1:]], dim=-1)

    def _decode(self, tokens: torch.Tensor, levels: torch.Tensor | None) -> torch.Tensor:
        """Frames [..., S * P, out_dim] of tokens [..., S] and their loudness levels (or None)."""
        frames = self._frames(self.codebook.decode(tokens))
        return frames if levels is None else self._add_levels(frames, self.levels.decode(levels))

    def _start_tokens(self, x: HeadInput) -> tuple[torch.Tensor, torch.Tensor | None]:
        """([B], [B] or None): the token (and loudness level) of the context's last P frames, the start
        token (level) where any of them is padding (contexts are filled from the right, so padding comes first)."""
        p = self.frames_per_token
        last = x.context[:, -p:]
        tokens = self._tokens(last)
        levels = self._levels(last, tokens)
        full = x.mask[:, -p:].all(1)
        tokens = torch.where(full, tokens[:, 0], torch.full_like(tokens[:, 0], self.start_id))
        if levels is not None:
            levels = torch.where(full, levels[:, 0], torch.full_like(levels[:, 0], self.loudness_levels))
        return tokens, levels

    def _token_inputs(self) -> torch.Tensor:
        """[V + 1, embed]: every token's input vector (the start token has no centroid)."""
        centroids = F.pad(self.codebook.centroids, (0, 0, 0, 1))
        return self.token_embed.weight + self.centroid_in(centroids)

    def _level_logits(self, h: torch.Tensor, prev_tokens: torch.Tensor, prev_levels: torch.Tensor,
                      tokens: torch.Tensor, loudness: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """Logits [..., L] of the loudness level given the decoder's state [..., hidden], the token drawn
        [...] and the continuation level of the token and level before it [...]."""
        hold = self.level_prev(self._continuation(prev_tokens, prev_levels, tokens, loudness))
        return self.level_out(torch.tanh(self.level_in(self.drop(h)) + self.level_token(tokens) + hold))

    def _loudness_tables(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(MFCC 0 of each token's P frames [V + 1, P], each level's residual [L + 1, P]); the start
        token and the start level read 0."""
        mfcc0 = F.pad(self.codebook.centroids, (0, 0, 0, 1)).reshape(-1, self.frames_per_token, self.out_dim)[..., 0]
        return mfcc0, F.pad(self.levels.centroids, (0, 0, 0, 1))

    def _continuation(self, prev_tokens: torch.Tensor, prev_levels: torch.Tensor, tokens: torch.Tensor,
                      tables: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """[...]: the level that would hold the loudness of the previous group's last frame through the
        token drawn (the start level L after the start token); ``tables`` from ``_loudness_tables``."""
        mfcc0, level = tables
        loudness = mfcc0[prev_tokens, -1] + level[prev_levels, -1]
        held = self.levels.encode(loudness[..., None] - mfcc0[tokens])
        return torch.where(prev_tokens == self.start_id, torch.full_like(held, self.loudness_levels), held)

    def _teacher_forced(self, x: HeadInput, tokens: torch.Tensor,
                        levels: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits [B, K, V] of each target token given the true tokens before it, and logits [B, K, L]
        of each target level given its true token and the true token and level before it as well
        (None without levels)."""
        start, start_level = self._start_tokens(x)
        inputs = torch.cat([start[:, None], tokens[:, :-1]], dim=1)
        steps = self._token_inputs()[inputs] + self.state_in(x.state)[:, None] + self.pos_embed
        out, _ = self.gru(steps, torch.tanh(self.h0(x.state))[None])
        if levels is None:
            return self.out(self.drop(out)), None
        prev_levels = torch.cat([start_level[:, None], levels[:, :-1]], dim=1)
        return self.out(self.drop(out)), self._level_logits(out, inputs, prev_levels, tokens, self._loudness_tables())

    def _rollout(self, x: HeadInput, pick: Callable[[torch.Tensor], torch.Tensor],
                 pick_level: Callable[[torch.Tensor], torch.Tensor]) -> tuple[torch.Tensor, ...]:
        """Run the decoder K / P steps, each reading the token ``pick`` chose from the step before (and
        the loudness level ``pick_level`` chose given it, kept from the step before where the token
        repeats): (tokens [B, K / P], levels [B, K / P] or None, logits [B, K / P, V], level logits
        [B, K / P, L] or None).

        The GRU cell is written out (the same equations and weights as ``self.gru``) so that the
        state and position part of every step's input projection is computed once per segment:
        a step is then a handful of small matrix products, which keeps a rollout fast on one thread.
        """
        self._require_fitted()
        w_ih, w_hh = self.gru.weight_ih_l0, self.gru.weight_hh_l0
        b_ih, b_hh = self.gru.bias_ih_l0, self.gru.bias_hh_l0
        hidden = self.gru.hidden_size
        table = self._token_inputs()
        gi_fixed = F.linear(self.state_in(x.state)[:, None] + self.pos_embed, w_ih, b_ih)   # [B, K / P, 3H]
        h = torch.tanh(self.h0(x.state))
        tok, lev = self._start_tokens(x)
        loudness = None if lev is None else self._loudness_tables()
        tokens, levels, logits, level_logits = [], [], [], []
        for k in range(self.steps):
            gi = torch.addmm(gi_fixed[:, k], table[tok], w_ih.T)
            gh = torch.addmm(b_hh, h, w_hh.T)
            r, z = torch.sigmoid(gi[:, :2 * hidden] + gh[:, :2 * hidden]).chunk(2, 1)
            n = torch.tanh(torch.addcmul(gi[:, 2 * hidden:], r, gh[:, 2 * hidden:]))
            h = n + z * (h - n)
            step_logits = self.out(self.drop(h))
            prev_tok, tok = tok, pick(step_logits)
            tokens.append(tok)
            logits.append(step_logits)
            if lev is not None:
                level_logits.append(self._level_logits(h, prev_tok, lev, tok, loudness))
                lev = torch.where(tok == prev_tok, lev, pick_level(level_logits[-1]))
                levels.append(lev)
        if lev is None:
            return torch.stack(tokens, 1), None, torch.stack(logits, 1), None
        return torch.stack(tokens, 1), torch.stack(levels, 1), torch.stack(logits, 1), torch.stack(level_logits, 1)


class _NoteHold:
    """``min_note_frames``: once the pitch class changes, it holds at least that many frames.

    Tracks each row's pitch class (``TokenHead.pitch_classes``) and how many frames it has lasted,
    counted through the context (its trailing frames of the class of its last token) and the tokens
    drawn since; while a class has lasted fewer frames than the minimum, only tokens of that class may
    follow. An empty context leaves the first token free.
    """

    def __init__(self, head: TokenHead, x: HeadInput, min_frames: int) -> None:
        self.classes, self.p, self.min_frames = head.pitch_classes(), head.frames_per_token, min_frames
        notes = head._context_notes(x.context, x.mask)   # [rows, C / P]: pitch classes (the model predicts chroma)
        self.current = notes[:, -1]   # -1: no class yet, any may start
        self.lasted = torch.where(self.current >= 0, head._lasted(notes)[:, -1] + 1, min_frames)

    def allowed(self) -> torch.Tensor:
        """[rows, V]: the tokens each row may draw next."""
        free = (self.lasted >= self.min_frames)[:, None]
        return free | (self.classes[None] == self.current[:, None])

    def advance(self, tokens: torch.Tensor) -> None:
        """Count the drawn tokens [rows] in."""
        drawn = self.classes[tokens]
        self.lasted = torch.where(drawn == self.current, self.lasted + self.p, torch.full_like(self.lasted, self.p))
        self.current = drawn


def _sample_from(logits: torch.Tensor, top_k: int | None, top_p: float | None, noise: Noise) -> torch.Tensor:
    """Draw one index per row of logits [rows, V] after top-k, then nucleus, truncation.

    The nucleus is the smallest set of the most likely tokens whose probability (renormalised after
    top-k) reaches top_p; the most likely token always stays. The draw is an inverse-CDF lookup with
    one uniform per row, limited to the kept prefix of the sorted tokens: a few small operations per
    step, which matters in a rollout of thousands of steps.
    """
    order = None
    if top_k is not None and top_k < logits.shape[-1]:
        logits, order = logits.topk(top_k, dim=-1)
    elif top_p is not None and top_p < 1.0:
        logits, order = logits.sort(dim=-1, descending=True)
    cdf = logits.softmax(-1).cumsum(-1)
    last = torch.full_like(cdf[:, :1], cdf.shape[1] - 1, dtype=torch.long)
    if top_p is not None and top_p < 1.0:
        # Token j is kept while the mass of the tokens before it is below top_p.
        last = (cdf[:, :-1] < top_p).sum(-1, keepdim=True)
    u = noise.rand(1).to(cdf) * cdf.gather(1, last)
    idx = torch.minimum(torch.searchsorted(cdf, u, right=True), last)
    return (idx if order is None else order.gather(1, idx)).squeeze(1)
