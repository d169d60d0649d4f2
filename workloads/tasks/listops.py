"""ListOps (Nangia & Bowman 2018), as generated for the Long Range Arena (Tay et al. 2021).

Tokens: the digits 0-9 are tokens 0-9 (a digit's token is its value), then the openers
``[MAX [MIN [MED [SM``, the closer ``]``, PAD and CLS (``TOKENS`` lists the names by id).
A sequence is PAD up to the expression (in prefix form), then CLS at the last position n−1.
The target, one of 10 classes, is the expression's value, asked at CLS only;
``distances`` is -1 everywhere (the answer depends on the whole expression).

Operators: MAX, MIN; MED, the median as LRA computes it, ``int(np.median(args))``: the middle
value for an odd count, the mean of the two middle values rounded down for an even count;
SM, the sum mod 10.

The tree (LRA's generator): a node at depth < max_depth is a digit with probability value_p,
otherwise an operator drawn uniformly with 2 .. max_args arguments (uniform); at max_depth it
is a digit. The root is depth 1 and always an operator here (LRA draws it like any node and its
minimum length then rejects the lone digits, so nothing changes for min_len >= 2).
Note on value_p: LRA's code writes ``if random() > VALUE_P: digit`` with VALUE_P = 0.25, so its
nodes are digits with probability 0.75 (value_p = 0.75 here). The default here is 0.25, bushier
trees, which reach hundreds of tokens at depth 4 and so make the task long at n = 256 .. 1024
while shallow enough for a small model; LRA itself uses max_depth = max_args = 10.

Length: like LRA, trees are drawn until one has min_len .. n - 1 tokens (LRA: strictly
between its min and max length); min_len = 0 means n // 4. A tree is abandoned as soon as it
can no longer fit, so a draw costs at most n tokens. Construction checks that the parameters
can reach min_len and that at least 1% of draws are accepted (a fixed-seed probe), so
`generate` never loops for long.
"""

from __future__ import annotations

import functools
import random
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from attnbench.workloads.shape import require_int
from attnbench.workloads.tasks.base import IGNORE, Task, TaskBatch, require_number

MAX, MIN, MED, SM = 10, 11, 12, 13
OPERATORS = (MAX, MIN, MED, SM)
CLOSE, PAD, CLS = 14, 15, 16
TOKENS = (*(str(d) for d in range(10)), "[MAX", "[MIN", "[MED", "[SM", "]", "PAD", "CLS")
NUM_CLASSES = 10
MAX_DEPTH_LIMIT = 100  # the generator recurses once per level
PROBE_DRAWS, PROBE_ACCEPTED = 400, 4  # construction needs >= 4 of 400 fixed-seed draws accepted (1%)
CHANCE_SAMPLE = 2000


def apply_op(op: int, args: list[int]) -> int:
    """The value of operator token `op` over its argument values."""
    if not args:
        raise ValueError(f"{TOKENS[op]} has no arguments")
    if op == MAX:
        return max(args)
    if op == MIN:
        return min(args)
    if op == MED:
        ordered = sorted(args)
        mid = len(ordered) // 2
        return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) // 2
    if op == SM:
        return sum(args) % 10
    raise ValueError(f"token {op} is not an operator")


def encode(expression: str, seq_len: int) -> Tensor:
    """``"[MAX 2 9 [MIN 4 7 ] 0 ]"`` -> (seq_len,) tokens: PAD, the expression, CLS."""
    ids = {name: i for i, name in enumerate(TOKENS)}
    try:
        body = [ids[word] for word in expression.split()]
    except KeyError as exc:
        raise ValueError(f"unknown ListOps token {exc.args[0]!r}") from None
    if len(body) > seq_len - 1:
        raise ValueError(f"expression of {len(body)} tokens does not fit n-1 = {seq_len - 1}")
    return torch.tensor(_row(body, seq_len), dtype=torch.int64)


def _row(body: list[int], seq_len: int) -> list[int]:
    """PAD first, CLS last: the answer is read where every design sees the whole expression
    before it (a causal one too), and the expression ends next to it."""
    return [PAD] * (seq_len - 1 - len(body)) + [*body, CLS]


def evaluate(row: list[int]) -> int:
    """Parse one token row (PAD..., prefix expression, CLS) with an explicit stack and evaluate it."""
    stack: list[tuple[int, list[int]]] = []
    result: int | None = None
    if not row or row[-1] != CLS:
        raise ValueError("the row does not end with CLS")
    start = 0
    while start < len(row) - 1 and row[start] == PAD:
        start += 1
    for i, token in enumerate(row[start:-1], start):
        if token == PAD:
            raise ValueError(f"PAD inside the expression at position {i}")
        if token in OPERATORS:
            stack.append((token, []))
            continue
        if token == CLOSE:
            if not stack:
                raise ValueError(f"unmatched ] at position {i}")
            op, args = stack.pop()
            value = apply_op(op, args)
        elif 0 <= token <= 9:
            value = token
        else:
            raise ValueError(f"unexpected token {token} at position {i}")
        if stack:
            stack[-1][1].append(value)
        elif result is None:
            result = value
        else:
            raise ValueError(f"a second expression starts before position {i}")
    if stack or result is None:
        raise ValueError("the expression is incomplete")
    return result


@dataclass(frozen=True)
class ListOpsParams:
    max_depth: int = 4  # the root is depth 1; nodes at max_depth are digits
    max_args: int = 10
    value_p: float = 0.25  # probability that a node above max_depth is a digit
    min_len: int = 0  # shortest expression accepted, in tokens; 0 = n // 4

    def __post_init__(self) -> None:
        require_int("max_depth", self.max_depth, 2)
        if self.max_depth > MAX_DEPTH_LIMIT:
            raise ValueError(f"max_depth must be <= {MAX_DEPTH_LIMIT}, got {self.max_depth}")
        require_int("max_args", self.max_args, 2)
        require_number("value_p", self.value_p, 0.0, 1.0)
        require_int("min_len", self.min_len, 0)


class _TooLong(Exception):
    pass


def _draw(rng: random.Random, params: ListOpsParams, max_len: int) -> tuple[list[int], int] | None:
    """One tree as tokens and its value, or None once it cannot fit in max_len tokens."""
    out: list[int] = []

    def node(depth: int) -> int:
        if depth > 1 and (depth >= params.max_depth or rng.random() < params.value_p):
            digit = rng.randrange(10)
            out.append(digit)
            return digit
        op = OPERATORS[rng.randrange(len(OPERATORS))]
        out.append(op)
        args = []
        for _ in range(rng.randint(2, params.max_args)):
            args.append(node(depth + 1))
            # The `depth` brackets still open each need a closer.
            if len(out) + depth > max_len:
                raise _TooLong
        out.append(CLOSE)
        return apply_op(op, args)

    try:
        value = node(1)
    except _TooLong:
        return None
    return out, value


def max_length(params: ListOpsParams) -> int:
    """The longest expression the tree rules allow: every node above max_depth an operator with max_args."""
    length = 1
    for _ in range(params.max_depth - 1):
        length = 2 + params.max_args * length
    return length


class ListOpsTask(Task):
    """ListOps; chance = the majority class's share among 2000 expressions drawn with seed 0 for
    these parameters and this n (estimated once per parameters and n, then cached)."""

    name: ClassVar[str] = "listops"
    summary: ClassVar[str] = "LRA ListOps: evaluate a nested MAX/MIN/MED/SM expression, answer at CLS (last position)"
    Params: ClassVar[type] = ListOpsParams

    def __init__(self, params: ListOpsParams, seq_len: int) -> None:
        super().__init__(params, seq_len)
        n = seq_len
        if n < 5:
            raise ValueError(f"listops: n must be >= 5 (CLS and the shortest expression '[OP d d ]'), got {n}")
        self.min_len = params.min_len or n // 4
        self.max_len = n - 1
        if self.min_len > self.max_len:
            raise ValueError(f"listops: min_len={self.min_len} exceeds n-1 = {self.max_len}")
        longest = max_length(params)
        if self.min_len > longest:
            raise ValueError(
                f"listops: max_depth={params.max_depth}, max_args={params.max_args} allow at most {longest} tokens, "
                f"below min_len={self.min_len} (n={n}); raise max_depth or max_args, or lower min_len"
            )
        rng, accepted = random.Random(0), 0
        for _ in range(PROBE_DRAWS):
            accepted += self._accept(_draw(rng, params, self.max_len)) is not None
            if accepted >= PROBE_ACCEPTED:
                break
        else:
            raise ValueError(
                f"listops: only {accepted} of {PROBE_DRAWS} expressions drawn with max_depth={params.max_depth}, "
                f"max_args={params.max_args}, value_p={params.value_p} have {self.min_len}..{self.max_len} tokens "
                f"(need 1%); lower min_len or change the tree parameters"
            )

    def _accept(self, drawn: tuple[list[int], int] | None) -> tuple[list[int], int] | None:
        if drawn is None or len(drawn[0]) < self.min_len:
            return None
        return drawn

    @property
    def vocab_size(self) -> int:
        return len(TOKENS)

    @property
    def num_classes(self) -> int:
        return NUM_CLASSES

    def chance(self) -> float:
        return _majority_share(self.params, self.seq_len)

    def generate(self, batch: int, generator: torch.Generator) -> TaskBatch:
        self._check_batch(batch)
        n = self.seq_len
        # The trees are drawn in Python; its RNG is seeded from the torch generator, which this advances.
        rng = random.Random(int(torch.randint(0, 2**62, (1,), generator=generator)))
        tries = 1000 * (batch + 1)  # construction saw >= 1% accepted: 10x the expected draws
        rows, values = [], []
        while len(rows) < batch:
            tries -= 1
            if tries < 0:
                raise ValueError(f"listops: too few expressions of {self.min_len}..{self.max_len} tokens drawn")
            drawn = self._accept(_draw(rng, self.params, self.max_len))
            if drawn is None:
                continue
            body, value = drawn
            rows.append(_row(body, n))
            values.append(value)
        tokens = torch.tensor(rows, dtype=torch.int64)
        targets = torch.full((batch, n), IGNORE, dtype=torch.int64)
        targets[:, -1] = torch.tensor(values, dtype=torch.int64)
        distances = torch.full((batch, n), -1, dtype=torch.int64)
        return TaskBatch(tokens=tokens, targets=targets, distances=distances)

    def solve(self, tokens: Tensor) -> Tensor:
        out = torch.full(tokens.shape, IGNORE, dtype=torch.int64)
        out[:, -1] = torch.tensor([evaluate(row) for row in tokens.tolist()], dtype=torch.int64)
        return out


@functools.lru_cache(maxsize=64)
def _majority_share(params: ListOpsParams, seq_len: int) -> float:
    task = ListOpsTask(params, seq_len)
    answers = task.generate(CHANCE_SAMPLE, torch.Generator().manual_seed(0)).targets[:, -1]
    return float(torch.bincount(answers, minlength=NUM_CLASSES).max()) / CHANCE_SAMPLE
