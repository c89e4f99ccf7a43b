"""``charlm_transformer``: a character-level language model on frozen Python source.

Data (:mod:`tasks.data.charlm`): about 1 MB of the Python 3.11.7 standard library, split by file
(train 805,716 characters, valid 107,523, test 115,552), 96 distinct characters.

Model: a decoder-only transformer in plain torch: a token embedding and a learned position
embedding (width ``width``), ``layers`` pre-norm blocks (layer norm, causal multi-head
self-attention with ``heads`` heads, residual; layer norm, MLP width -> 4 width -> width with
GELU, residual), a final layer norm and a linear head over the vocabulary. At the defaults
(width 64, 2 layers, 4 heads, context 64) it has 116,576 parameters.

Training batches: ``batch_size`` windows of ``context + 1`` characters at uniformly random
offsets of the training split (an order fixed by the run's seed); the loss is the mean
cross-entropy of the next character over every position, in nats per character.

Evaluation: the whole split cut into non-overlapping windows of ``context + 1`` characters
that advance by ``context`` (each character after the split's first is predicted exactly
once, from 0 to ``context - 1`` characters of context; the last partial window, fewer than
``context + 1`` characters, is dropped): ``loss`` is the mean nats per predicted character,
``accuracy`` the fraction of next characters predicted exactly (argmax).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from harness.errors import UsageError
from harness.registry import register_task
from tasks.base import SPLITS, TARGET_RULE, Batch, Params, Target, Task
from tasks.data.charlm import load_charlm_corpus

EVAL_WINDOWS = 256  # windows per forward pass in evaluate()


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention where position t sees positions <= t."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(y.transpose(1, 2).reshape(b, t, c))


class Block(nn.Module):
    """A pre-norm transformer block: attention then MLP, each with a residual connection."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(width)
        self.attn = CausalSelfAttention(width, heads)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(
            nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class CharTransformer(nn.Module):
    """Decoder-only transformer: (batch, time) character ids -> (batch, time, vocab) logits."""

    def __init__(self, vocab: int, context: int, width: int, layers: int, heads: int) -> None:
        super().__init__()
        self.tokens = nn.Embedding(vocab, width)
        self.positions = nn.Embedding(context, width)
        self.blocks = nn.Sequential(*(Block(width, heads) for _ in range(layers)))
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, vocab)
        for embedding in (self.tokens, self.positions):
            nn.init.normal_(embedding.weight, std=0.02)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(ids.shape[1], device=ids.device)
        x = self.tokens(ids) + self.positions(positions)
        return self.head(self.norm(self.blocks(x)))


def _positive(name: str, value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise UsageError(f"charlm_transformer: {name} must be a positive integer, got {value!r}")
    return value


#: the configuration the declared targets hold for: the defaults (width 64, 2 layers, 4 heads,
#: context 64, batch 32), as in the `lm` suite
LM_RULE = f"{TARGET_RULE}; from results/lm (the lm suite's configuration: the task's defaults)"


@register_task("charlm_transformer")
class CharLmTransformer(Task):
    """Character-level LM on 1 MB of Python stdlib source, 2-layer width-64 transformer."""

    default_steps = 2000
    metrics = ("loss", "accuracy")
    # From the `lm` suite's committed results by TARGET_RULE (docs/workloads.md; `python -m
    # harness.results.targets results/lm/results.csv` recomputes them)
    targets = (
        Target(split="train", value=1.24, steps=2000, rule=LM_RULE),  # adamw_cosine
        Target(split="valid", value=1.55, steps=2000, rule=LM_RULE),  # adamw_cosine
    )

    def __init__(
        self,
        *,
        device: str | torch.device = "cpu",
        batch_size: int = 32,
        context: int = 64,
        width: int = 64,
        layers: int = 2,
        heads: int = 4,
    ) -> None:
        super().__init__(device=device, batch_size=batch_size)
        self.context = _positive("context", context)
        self.width = _positive("width", width)
        self.layers = _positive("layers", layers)
        self.heads = _positive("heads", heads)
        if width % heads:
            raise UsageError(
                f"charlm_transformer: width ({width}) must be a multiple of heads ({heads})"
            )
        texts, vocabulary = load_charlm_corpus()
        self.vocabulary = vocabulary
        index = {char: i for i, char in enumerate(vocabulary)}
        self._data = {
            split: torch.tensor([index[c] for c in texts[split]], dtype=torch.long).to(self.device)
            for split in SPLITS
        }
        self._model = self.build_model().to(self.device)
        self._param_names = tuple(name for name, _ in self._model.named_parameters())

    def build_model(self) -> nn.Module:
        """A freshly initialised model (uses the global torch RNG, seeded by the caller)."""
        return CharTransformer(
            len(self.vocabulary), self.context, self.width, self.layers, self.heads
        )

    @property
    def param_names(self) -> tuple[str, ...]:
        """The model's parameter names, in the order of the params tuple."""
        return self._param_names

    def split_size(self, split: str) -> int:
        """Characters in ``split``."""
        self.check_split(split)
        return int(self._data[split].shape[0])

    def init_params(self, seed: int) -> Params:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = self.build_model()
        return tuple(p.detach().to(self.device) for p in model.parameters())

    def logits(self, params: Params, ids: torch.Tensor) -> torch.Tensor:
        named = dict(zip(self._param_names, params, strict=True))
        return functional_call(self._model, named, (ids,))

    def loss(self, params: Params, batch: Batch) -> torch.Tensor:
        inputs, targets = batch
        logits = self.logits(params, inputs)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))

    def batches(self, split: str, seed: int) -> Iterator[Batch]:
        """Endless batches of windows at uniformly random offsets of ``split``, fixed by
        ``seed``: ``(inputs, targets)``, both (batch_size, context) character ids."""
        self.check_split(split)
        data = self._data[split]
        generator = torch.Generator().manual_seed(seed)
        span = torch.arange(self.context + 1)
        while True:
            starts = torch.randint(
                0, data.shape[0] - self.context, (self.batch_size,), generator=generator
            )
            windows = data[(starts[:, None] + span).to(self.device)]
            yield windows[:, :-1], windows[:, 1:]

    def eval_windows(self, split: str) -> torch.Tensor:
        """The non-overlapping evaluation windows of ``split``: (n, context + 1) ids."""
        data = self._data[split]
        n = (data.shape[0] - 1) // self.context
        starts = torch.arange(n, device=self.device) * self.context
        return data[starts[:, None] + torch.arange(self.context + 1, device=self.device)]

    @torch.no_grad()
    def evaluate(self, params: Params, split: str) -> dict[str, float]:
        self.check_split(split)
        windows = self.eval_windows(split)
        total = torch.zeros((), dtype=torch.float64, device=self.device)
        correct = torch.zeros((), dtype=torch.long, device=self.device)
        for start in range(0, windows.shape[0], EVAL_WINDOWS):
            chunk = windows[start : start + EVAL_WINDOWS]
            logits = self.logits(params, chunk[:, :-1]).reshape(-1, len(self.vocabulary))
            targets = chunk[:, 1:].reshape(-1)
            total += F.cross_entropy(logits, targets, reduction="sum").double()
            correct += (logits.argmax(dim=1) == targets).sum()
        count = windows.shape[0] * self.context
        return {"loss": float(total) / count, "accuracy": float(correct) / count}
