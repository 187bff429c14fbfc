"""Grounded decoding: inside ``<solution>`` a model writes only titles of a fixed item universe.

A 135M model asked for ten films mostly apologises or invents titles; an item it cannot name is
an item no metric can judge. Grounded decoding keeps every list line a real catalog item while
the model still chooses which one, and in which order.

The universe (:func:`universe_items`)
    ``"universe"`` mode: the ``n_popular`` most popular catalog items plus every item of the
    benchmark's **train** split (targets, seen items, removed targets). Validation and test
    targets are never looked at, so the universe leaks nothing. Only items whose display title
    ``"Title (Year)"`` parses and resolves back to the item itself are kept (so every grounded
    line is a catalog hit), and titles that would clash with the answer tags are left out.
    ``"candidates"`` mode: each row has its own universe, the candidate ids shown in its prompt.

The grammar (:class:`GroundedLogitsProcessor`)
    A completion is ``[<reasoning>free text</reasoning>\\n]<solution>\\n`` then title lines, each
    ``display + "\\n"`` token by token along a token trie (:class:`TokenTrie`), then
    ``</solution>`` and the end-of-turn token. At a line start the model may close the list only
    after ``min_items`` items, and must close it after ``max_items`` (``k``). A title is never
    written twice, nor a title of an item the user mentioned (the row's ``seen``): a trie branch
    is open only while it still leads to an allowed title. A reasoning block (when
    ``reasoning_tokens > 0``) is free text except that it cannot end the turn; after
    ``reasoning_tokens`` tokens the processor closes it. Grounded generation needs no stop
    string: the end-of-turn token follows ``</solution>`` at once. Everything the model is not
    allowed to write gets a logit of ``-inf``; among the allowed tokens the model's own scores
    decide (greedy, or sampling in RL rollouts).

    With ``screen`` (candidates mode), a **screen block** follows the reasoning block:
    ``<screen>``, one line per candidate in prompt order
    (:func:`~safecrs_core.train.prompts.screen_line`: ``"Saw (2004) [horror, thriller]:"``), each
    forced except its verdict, which the model writes: ``" yes"`` (leave the candidate out) or
    ``" no"``, then ``</screen>`` and the list. A candidate screened ``yes`` is blocked like a
    seen item. The block makes the model judge every candidate for the user's sensitivity, next
    to the item's genres, instead of picking titles to name; a model that was not trained on it
    should not decode with it.

The same processor serves validation (:func:`~safecrs_core.train.sft.evaluate_model`), evaluation
(:func:`~safecrs_core.evaluation.evaluate.generation_stage`) and the Safe-GDPO rollouts
(:class:`~safecrs_core.train.gdpo.SafeGDPOTrainer`), so what RL samples is what evaluation scores.
:class:`Grounding` holds the settings (they key every cache) and builds processors.

Tokens: titles are tokenised alone, ``display + "\\n"``; with a byte-level BPE whose
pre-tokenizer splits at newlines (SmolLM2's) this equals the tokenisation of the title inside a
whole completion, so SFT targets and grounded paths agree (:func:`check_tokenization`).
"""
from __future__ import annotations

import hashlib
import inspect
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Mapping, Sequence

import torch

from .prompts import (REASONING_CLOSE, REASONING_OPEN, SCREEN_CLOSE, SCREEN_OPEN, SCREEN_VERDICTS, SOLUTION_CLOSE,
                      SOLUTION_OPEN, screen_line)
from ..data.rows import column, ref_ids

MODES = ("universe", "candidates")
GROUNDING_VERSION = 1  # part of every key: change it when the grammar or universe rules change
NEG_INF = float("-inf")


# --------------------------------------------------------------------------------------------
# Universe


def universe_items(catalog, train_rows, n_popular: int = 5000) -> list[str]:
    """The universe of ``"universe"`` mode (module docstring): the ``n_popular`` most popular
    catalog items with a known year plus the items of ``train_rows`` (the train split only),
    restricted to items whose display title resolves back to themselves; sorted by popularity
    (ties by id)."""
    from .prompts import parse_completion

    if isinstance(n_popular, bool) or not isinstance(n_popular, int) or n_popular < 0:
        raise ValueError(f"n_popular must be an integer >= 0, got {n_popular!r}")
    items = catalog.items
    pop = items["popularity"].fillna(0.0)
    dated = pop[items["year"].notna()]
    top = dated.sort_values(ascending=False, kind="stable").head(n_popular).index.tolist() if n_popular else []
    train = set()
    for col in ("targets", "seen", "removed_targets"):
        for refs in column(train_rows, col, []):
            train.update(ref_ids(refs))
    ids = sorted((set(top) | train) & set(items.index))
    displays = [catalog.display(i) for i in ids]
    keep = []
    for i, d in zip(ids, displays):
        if d.lstrip().startswith("<") or "\n" in d:
            continue
        parsed = parse_completion(f"{SOLUTION_OPEN}\n{d}\n{SOLUTION_CLOSE}", resolver=catalog)
        if len(parsed) == 1 and parsed[0].item_id == i and parsed[0].display == d:
            keep.append(i)
    return sorted(keep, key=lambda i: (-float(pop[i]), i))


def fingerprint(values: Sequence[str]) -> str:
    """sha256 (16 hex digits) of a list of strings (a universe's ids)."""
    return hashlib.sha256("\n".join(values).encode("utf-8")).hexdigest()[:16]


# --------------------------------------------------------------------------------------------
# Token trie


class TokenTrie:
    """A trie over token sequences; each complete sequence carries a ``key`` (a display title).

    Nodes are integers (0 is the root). ``children[node]`` maps a token id to a node;
    ``terminal[node]`` is the key ending there; ``count[node]`` the keys below (and at) a node.
    """

    def __init__(self, sequences: Sequence[Sequence[int]], keys: Sequence[str]):
        if len(sequences) != len(keys):
            raise ValueError(f"{len(sequences)} token sequences for {len(keys)} keys")
        self.children: list[dict[int, int]] = [{}]
        self.count: list[int] = [0]
        self.terminal: dict[int, str] = {}
        self.path: dict[str, list[int]] = {}  # key -> nodes from the root's child to its terminal
        self._allowed: dict[int, torch.Tensor] = {}
        for seq, key in zip(sequences, keys):
            if key in self.path:
                continue
            if not len(seq):
                raise ValueError(f"empty token sequence for {key!r}")
            node, nodes = 0, []
            self.count[0] += 1
            for t in seq:
                if node in self.terminal:
                    raise ValueError(f"{key!r}: its token sequence extends another key's ({self.terminal[node]!r})")
                nxt = self.children[node].get(int(t))
                if nxt is None:
                    nxt = len(self.children)
                    self.children[node][int(t)] = nxt
                    self.children.append({})
                    self.count.append(0)
                node = nxt
                self.count[node] += 1
                nodes.append(node)
            if node in self.terminal or self.children[node]:
                raise ValueError(f"{key!r}: its token sequence is a prefix of another key's (or the same)")
            self.terminal[node] = key
            self.path[key] = nodes

    def __len__(self) -> int:
        return len(self.path)

    def allowed(self, node: int) -> torch.Tensor:
        """The token ids that continue ``node`` (a cached tensor)."""
        t = self._allowed.get(node)
        if t is None:
            t = torch.tensor(sorted(self.children[node]), dtype=torch.long)
            self._allowed[node] = t
        return t


class TitleTokens:
    """Token ids of ``display + "\\n"`` per display title, cached (one tokenizer call per batch
    of new titles)."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self._cache: dict[str, tuple[int, ...]] = {}

    def __call__(self, displays: Sequence[str]) -> list[tuple[int, ...]]:
        new = [d for d in dict.fromkeys(displays) if d not in self._cache]
        if new:
            enc = self.tokenizer([d + "\n" for d in new], add_special_tokens=False)["input_ids"]
            self._cache.update((d, tuple(e)) for d, e in zip(new, enc))
        return [self._cache[d] for d in displays]

    def trie(self, displays: Sequence[str]) -> TokenTrie:
        displays = list(dict.fromkeys(displays))
        return TokenTrie(self(displays), displays)


def check_tokenization(tokenizer, displays: Sequence[str]) -> float:
    """Share of ``displays`` whose tokens inside a completion (``<solution>\\n`` + the lines)
    equal their tokens alone (``display + "\\n"``); 1.0 for SmolLM2's tokenizer."""
    if not displays:
        return 1.0
    tt = TitleTokens(tokenizer)
    head = tokenizer(SOLUTION_OPEN + "\n", add_special_tokens=False)["input_ids"]
    ok = 0
    for d, alone in zip(displays, tt(list(displays))):
        whole = tokenizer(SOLUTION_OPEN + "\n" + d + "\n", add_special_tokens=False)["input_ids"]
        ok += tuple(whole[len(head):]) == alone and whole[:len(head)] == head
    return ok / len(displays)


# --------------------------------------------------------------------------------------------
# The processor

START, REASONING, FORCED, LINE, TITLE, EOS, DONE, VERDICT = range(8)
_ALL_BUT_EOS = torch.empty(0, dtype=torch.long)  # marker: a free reasoning token, anything but end-of-turn


@dataclass
class _Row:
    trie: TokenTrie
    blocked: dict[int, int]  # node -> blocked keys at or below it
    phase: int = START
    node: int = 0  # in the opener trie (START) or the title trie (TITLE)
    forced: tuple[int, ...] = ()  # tokens still to force (FORCED)
    then: int = LINE  # phase after the forced tokens
    reasoning: str = ""
    reasoning_len: int = 0
    items: int = 0
    named: list = field(default_factory=list)  # titles its reasoning left out (exclude_named)
    screen: list = field(default_factory=list)  # (title, line tokens) of its screen block, in order
    screened: int = 0  # screen lines with a verdict so far
    screened_out: list = field(default_factory=list)  # titles its screen block left out


class GroundedLogitsProcessor:
    """A transformers logits processor for one batch (module docstring). ``tries[r]``: row
    ``r``'s title trie (shared in universe mode); ``blocked[r]``: display titles row ``r`` may
    not write (its seen items). Rows are the batch rows in order (a row repeated for several
    samples appears once per copy). ``screens[r]`` (with a screen block): row ``r``'s candidates
    in prompt order as ``(display title, screen line)`` pairs. Works with greedy search and
    sampling, one new token per step; after the end-of-turn token a row is left alone."""

    def __init__(self, tokenizer, tries: Sequence[TokenTrie], blocked: Sequence[Sequence[str]] | None = None,
                 min_items: int = 1, max_items: int = 10, reasoning_tokens: int = 0, exclude_named: bool = False,
                 jump_forward: bool = False, screens: Sequence[Sequence[tuple[str, str]]] | None = None,
                 screen_bias: float = 0.0):
        self.tokenizer = tokenizer
        self.exclude_named = bool(exclude_named)
        self.jump_forward = bool(jump_forward)  # generate with jump_forward_generate (models.generate reads it)
        enc = lambda s: tuple(tokenizer(s, add_special_tokens=False)["input_ids"])  # noqa: E731
        self.open_solution = enc(SOLUTION_OPEN + "\n")
        self.close_solution = enc(SOLUTION_CLOSE)
        self.close_reasoning = enc(REASONING_CLOSE + "\n" + SOLUTION_OPEN + "\n")
        self.after_reasoning = enc("\n" + SOLUTION_OPEN + "\n")
        self.screens = screens is not None
        self.screen_bias = float(screen_bias)
        if self.screens:
            if reasoning_tokens <= 0:
                raise ValueError("a screen block follows the reasoning block: reasoning_tokens must be > 0")
            if len(screens) != len(tries):
                raise ValueError(f"{len(screens)} screen lists for {len(tries)} rows")
            self.verdicts = [enc(v) for v in SCREEN_VERDICTS]
            if any(len(v) != 1 for v in self.verdicts):
                raise ValueError(f"screen verdicts {SCREEN_VERDICTS} must be one token each, got {self.verdicts}")
            self.verdicts = [v[0] for v in self.verdicts]
            # whole strings where the model's text joins the grammar's (tokens may span the joint)
            self.open_screen = {"newline": enc(SCREEN_OPEN + "\n"), "": enc("\n" + SCREEN_OPEN + "\n"),
                                "close": enc(REASONING_CLOSE + "\n" + SCREEN_OPEN + "\n")}
            self.newline = enc("\n")
            self.close_screen = enc("\n" + SCREEN_CLOSE + "\n" + SOLUTION_OPEN + "\n")
        if tokenizer.eos_token_id is None:
            raise ValueError("grounded decoding needs a tokenizer with an end-of-turn (eos) token")
        self.eos = int(tokenizer.eos_token_id)
        openers = [self.open_solution] + ([enc(REASONING_OPEN)] if reasoning_tokens > 0 else [])
        self.openers = TokenTrie(openers, ["solution", "reasoning"][:len(openers)])
        self.min_items, self.max_items, self.reasoning_tokens = int(min_items), int(max_items), int(reasoning_tokens)
        if not 0 <= self.min_items <= self.max_items or self.max_items < 1:
            raise ValueError(f"need 0 <= min_items <= max_items and max_items >= 1, got {min_items}, {max_items}")
        blocked = [()] * len(tries) if blocked is None else blocked
        if len(blocked) != len(tries):
            raise ValueError(f"{len(blocked)} blocked lists for {len(tries)} rows")
        self.rows: list[_Row] = []
        for r, (trie, bl) in enumerate(zip(tries, blocked)):
            row = _Row(trie, {})
            for d in bl:
                self._block(row, d)
            if self.screens:
                row.screen = [(key, enc(line)) for key, line in screens[r] if key in trie.path]
            self.rows.append(row)
        self._length: int | None = None

    # -- state ---------------------------------------------------------------------------------

    @staticmethod
    def _block(row: _Row, key: str) -> None:
        nodes = row.trie.path.get(key)
        if nodes is None or row.blocked.get(nodes[-1]):
            return
        for n in [0] + nodes:
            row.blocked[n] = row.blocked.get(n, 0) + 1

    @staticmethod
    def _open(row: _Row, node: int) -> bool:
        return row.trie.count[node] > row.blocked.get(node, 0)

    def _force(self, row: _Row, tokens: Sequence[int], then: int) -> None:
        if tokens:
            row.phase, row.forced, row.then = FORCED, tuple(tokens), then
        else:
            self._enter(row, then)

    def _enter(self, row: _Row, phase: int) -> None:
        if phase == LINE:
            row.phase, row.node = LINE, 0
            if row.items >= self.max_items or not self._open(row, 0):
                self._force(row, self.close_solution, EOS)
        else:
            row.phase = phase

    def _expected(self, row: _Row, token: int) -> bool:
        """Whether ``token`` is one the row could write now. It is not when generation finished
        the row on its own (a stop string or the end-of-turn token inside a free reasoning
        block): ``generate`` then pads the row."""
        if row.phase == REASONING:
            return token != self.eos and token != self.tokenizer.pad_token_id
        if row.phase == FORCED:
            return token == row.forced[0]
        if row.phase == START:
            return token in self.openers.children[row.node]
        if row.phase == VERDICT:
            return token in self.verdicts
        if row.phase in (LINE, TITLE):
            return token in row.trie.children[row.node] or (row.phase == LINE and token == self.close_solution[0])
        return True

    def _step(self, row: _Row, token: int) -> None:
        """Advance ``row`` by the token just written."""
        if row.phase == DONE:
            return
        if not self._expected(row, token):
            row.phase = DONE
            return
        if row.phase == EOS:
            row.phase = DONE
        elif row.phase == FORCED:
            row.forced = row.forced[1:]
            if not row.forced:
                self._enter(row, row.then)
        elif row.phase == START:
            row.node = self.openers.children[row.node][token]
            key = self.openers.terminal.get(row.node)
            if key == "solution":
                self._enter(row, LINE)
            elif key == "reasoning":
                row.phase = REASONING
        elif row.phase == REASONING:
            row.reasoning_len += 1
            row.reasoning += self.tokenizer.decode([token], skip_special_tokens=False)
            at = row.reasoning.find(REASONING_CLOSE)
            if at >= 0:
                tail = row.reasoning[at + len(REASONING_CLOSE):]
                self._exclude_named(row, row.reasoning[:at])
                self._after_reasoning(row, newline="\n" in tail)
            elif row.reasoning_len >= self.reasoning_tokens:
                self._exclude_named(row, row.reasoning)
                self._after_reasoning(row, close=True)
        elif row.phase == VERDICT:
            if token == self.verdicts[1]:
                key = row.screen[row.screened][0]
                self._block(row, key)
                row.screened_out.append(key)
            row.screened += 1
            if row.screened < len(row.screen):
                self._force(row, self.newline + row.screen[row.screened][1], VERDICT)
            else:
                self._force(row, self.close_screen, LINE)
        elif row.phase == LINE and token == self.close_solution[0] and token not in row.trie.children[0]:
            self._force(row, self.close_solution[1:], EOS)
        else:  # LINE (a title's first token) or TITLE
            row.phase, row.node = TITLE, row.trie.children[row.node][token]
            key = row.trie.terminal.get(row.node)
            if key is not None:
                row.items += 1
                self._block(row, key)
                self._enter(row, LINE)

    def _after_reasoning(self, row: _Row, newline: bool = False, close: bool = False) -> None:
        """Leave the reasoning block: ``close``: the processor closes it (its token budget ran
        out); else the model closed it, ``newline``: and wrote the line break after it. Then the
        screen block (its first line forced, the model writes the verdict) or the list."""
        if not self.screens or not row.screen:
            self._force(row, self.close_reasoning if close else self.open_solution if newline else self.after_reasoning,
                        LINE)
            return
        head = self.open_screen["close" if close else "newline" if newline else ""]
        self._force(row, head + row.screen[0][1], VERDICT)

    def _exclude_named(self, row: _Row, reasoning: str) -> None:
        """With ``exclude_named``: block every title of the row's trie that its own reasoning
        wrote out in full (``"Title (Year)"``), so the list keeps what the reasoning says it
        leaves out."""
        if not self.exclude_named or not reasoning:
            return
        for key in row.trie.path:
            if key in reasoning:
                self._block(row, key)
                row.named.append(key)

    def allowed(self, r: int) -> torch.Tensor | None:
        """The tokens row ``r`` may write next (None: any token; the end-of-turn token is
        never allowed inside a reasoning block, which must lead to a list)."""
        row = self.rows[r]
        if row.phase == DONE:
            return None
        if row.phase == REASONING:
            return _ALL_BUT_EOS
        if row.phase == EOS:
            return torch.tensor([self.eos], dtype=torch.long)
        if row.phase == FORCED:
            return torch.tensor([row.forced[0]], dtype=torch.long)
        if row.phase == VERDICT:
            return torch.tensor(self.verdicts, dtype=torch.long)
        if row.phase == START:
            return self.openers.allowed(row.node)
        trie, node = row.trie, row.node
        if row.blocked.get(node):
            toks = torch.tensor(sorted(t for t, n in trie.children[node].items() if self._open(row, n)),
                                dtype=torch.long)
        else:
            toks = trie.allowed(node)
        if row.phase == LINE and row.items >= self.min_items:
            toks = torch.cat([toks, torch.tensor([self.close_solution[0]], dtype=torch.long)])
        return toks

    # -- stepping rows directly (jump-forward decoding) ----------------------------------------

    def advance(self, r: int, token: int) -> None:
        """Advance row ``r`` by a token it wrote (:func:`jump_forward_generate` steps rows itself
        instead of reading them back from ``input_ids``)."""
        self._step(self.rows[r], int(token))

    def forced_run(self, r: int, limit: int) -> list[int]:
        """The tokens row ``r`` must write next because the grammar leaves exactly one choice
        (the rest of a title once its prefix is unique, ``</reasoning>\\n<solution>\\n``,
        ``</solution>`` and the end-of-turn token), at most ``limit``; the row is advanced past them."""
        out: list[int] = []
        while len(out) < limit and self.rows[r].phase != DONE:
            allowed = self.allowed(r)
            if allowed is None or allowed is _ALL_BUT_EOS or len(allowed) != 1:
                break
            out.append(int(allowed[0]))
            self.advance(r, out[-1])
        return out

    def finished(self, r: int) -> bool:
        """Whether row ``r`` has ended (its end-of-turn token written)."""
        return self.rows[r].phase == DONE

    def apply(self, scores: torch.FloatTensor, rows: Sequence[int] | None = None) -> torch.FloatTensor:
        """``scores`` (one row per entry of ``rows``, default every row) with every token the
        grammar does not allow now set to ``-inf``; no row is advanced."""
        rows = range(len(self.rows)) if rows is None else rows
        mask = torch.full_like(scores, NEG_INF)
        for i, r in enumerate(rows):
            allowed = self.allowed(r)
            if allowed is None:
                mask[i] = 0.0
            elif self.screen_bias and self.rows[r].phase == VERDICT:
                mask[i, allowed.to(scores.device)] = 0.0
                mask[i, self.verdicts[1]] = self.screen_bias
            elif allowed is _ALL_BUT_EOS:
                mask[i] = 0.0
                mask[i, self.eos] = NEG_INF
            else:
                mask[i, allowed.to(scores.device)] = 0.0
        return scores + mask

    # -- transformers interface ----------------------------------------------------------------

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        n, length = input_ids.shape
        if n != len(self.rows):
            raise ValueError(f"the processor was built for {len(self.rows)} rows, the batch has {n}")
        if self._length is not None:
            if length != self._length + 1:
                raise RuntimeError("grounded decoding expects one new token per step (no beam search)")
            for row, t in zip(self.rows, input_ids[:, -1].tolist()):
                self._step(row, t)
        self._length = length
        return self.apply(scores)

    def written(self, r: int) -> int:
        """Items row ``r`` has written so far."""
        return self.rows[r].items


# --------------------------------------------------------------------------------------------
# Jump-forward decoding


PASS_OVERHEAD = 64  # a decoding pass's fixed cost in token-rows (SmolLM2-135M, 2 CPU cores, batch 30)


def pass_width(pending: Sequence[int], batch: int, max_chunk: int = 16, overhead: int = PASS_OVERHEAD) -> int:
    """The width of the next jump-forward pass: the ``w`` (1 to ``max_chunk``) that feeds the
    most pending tokens, ``sum(min(len, w))`` over the rows' pending runs ``pending``, per unit
    of a pass's cost, modelled as ``overhead + batch * w`` token-rows. Measured on 2 CPU cores
    at batch 30 with a 600-token cache: a one-token pass 0.35-0.39 s, each further token per row
    about 4.5 ms (0.135 s per unit of width), so a pass's overhead is worth about 60 token-rows."""
    if not pending:
        return 1
    best_w, best = 1, -1.0
    for w in range(1, min(max_chunk, max(pending)) + 1):
        rate = sum(min(p, w) for p in pending) / (overhead + batch * w)
        if rate > best:
            best_w, best = w, rate
    return best_w


def _unique_rows(input_ids: torch.LongTensor, attention_mask: torch.LongTensor):
    """``(unique, copies)``: the indices of the first of each distinct row (ids and mask) and, per
    row, the position of its copy among them; ``(None, None)`` when every row is distinct."""
    position: dict[tuple, int] = {}
    unique, copies = [], []
    for r, (ids, m) in enumerate(zip(input_ids.tolist(), attention_mask.tolist())):
        key = (tuple(ids), tuple(m))
        if key not in position:
            position[key] = len(unique)
            unique.append(r)
        copies.append(position[key])
    if len(unique) == len(copies):
        return None, None
    return torch.tensor(unique, dtype=torch.long), torch.tensor(copies, dtype=torch.long)


def jump_forward_generate(model, input_ids: torch.LongTensor, attention_mask: torch.LongTensor,
                          processor: GroundedLogitsProcessor, max_new_tokens: int, *, pad_token_id: int,
                          do_sample: bool = False, temperature: float | None = None, top_k: int | None = None,
                          top_p: float | None = None, max_chunk: int = 16,
                          pass_overhead: int = PASS_OVERHEAD, share_prompts: bool = True) -> torch.LongTensor:
    """Grounded decoding that writes every token the grammar forces without asking the model.

    Inside a list most tokens have no alternative: once a title's first token or two single it
    out among the candidates, the rest of it, the newline, ``</solution>`` and the end-of-turn
    token are fixed (about 100 of the 118-170 tokens of a book-profile answer). ``generate``
    still spends one forward pass per token on them. This loop (the *jump-forward* idea of
    constrained decoders such as SGLang's) asks the model only where the grammar leaves a
    choice, appends the forced run at once and feeds it to the model in one pass, as a prompt
    is fed: fewer, wider passes. Rows of a batch feed runs of different lengths (a row inside
    its free reasoning block feeds one token); shorter ones are padded inside the pass (masked,
    never attended to), so a wide pass costs every row its width. Each pass therefore takes the
    width that feeds the most pending tokens per unit of cost (:func:`pass_width`, with
    ``pass_overhead`` the fixed cost of a pass in token-rows), at most ``max_chunk``; longer
    runs continue in the next pass. The width depends only on the pending runs, so decoding
    stays deterministic. A finished row leaves the batch and its cache at once (``generate``
    keeps computing padded rows until the whole batch ends).

    ``share_prompts``: rows whose prompts are identical (token for token, padding included; the
    ``G`` copies of each prompt of an RL group) share one prompt pass, whose cache is then copied
    to each of them; what follows is the same as with separate passes.

    Same contract as ``model.generate`` with the processor in its ``logits_processor``: returns
    ``[input_ids | new tokens]`` with finished rows padded by ``pad_token_id``; greedy
    (``do_sample=False``) or sampling with transformers' temperature, top-k and top-p warpers.
    The choices are the same as ``generate``'s up to floating-point rounding of the wider
    passes (identical in float64, checked by a test). ``input_ids`` are left-padded prompts.
    Works with decoder-only models whose logits are ``output_embeddings(decoder(...))``
    (Llama, Qwen2, SmolLM2), with or without a PEFT adapter.
    """
    from transformers import LogitsProcessorList, TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    n, width = input_ids.shape
    if n != len(processor.rows):
        raise ValueError(f"the processor was built for {len(processor.rows)} rows, the batch has {n}")
    if max_new_tokens < 1 or max_chunk < 1:
        raise ValueError(f"max_new_tokens and max_chunk must be >= 1, got {max_new_tokens}, {max_chunk}")
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    decoder, head = base.get_decoder(), base.get_output_embeddings()
    # the KV cache argument is ``cache`` in transformers >= 5.2x, ``past_key_values`` before
    cache_arg = "cache" if "cache" in inspect.signature(decoder.forward).parameters else "past_key_values"
    warpers = LogitsProcessorList()
    if do_sample:
        if temperature is not None and temperature != 1.0:
            warpers.append(TemperatureLogitsWarper(temperature))
        if top_k:
            warpers.append(TopKLogitsWarper(top_k))
        if top_p is not None and top_p < 1.0:
            warpers.append(TopPLogitsWarper(top_p))
    device = input_ids.device
    written: list[list[int]] = [[] for _ in range(n)]
    pending: list[list[int]] = [[] for _ in range(n)]  # written, not yet fed to the model
    done = [False] * n
    alive = list(range(n))  # the rows still in the batch's tensors and cache, in their order
    last = torch.full((n,), width - 1, dtype=torch.long)  # each alive row's last fed position in the pass
    # identical prompts (the G copies of each prompt in an RL group) share one prompt pass
    uniq, copies = _unique_rows(input_ids, attention_mask) if share_prompts else (None, None)
    feed, feed_mask, mask, cache = input_ids, attention_mask, None, None
    while True:
        mask = feed_mask if mask is None else torch.cat([mask, feed_mask], dim=1)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, -feed.shape[1]:]
        shared = cache is None and uniq is not None  # the prompt pass, over each distinct prompt once
        rows = uniq.to(device) if shared else slice(None)
        out = decoder(input_ids=feed[rows], attention_mask=mask[rows], position_ids=positions[rows], use_cache=True,
                      **{cache_arg: cache})
        cache = getattr(out, "cache", None)
        if cache is None:
            cache = out.past_key_values
        states = out.last_hidden_state
        if shared:  # each row gets its prompt's cache and states
            cache.batch_select_indices(copies.to(device))
            states = states[copies.to(device)]
        deciding = [j for j, r in enumerate(alive) if not pending[r]]
        if deciding:
            at = torch.tensor(deciding, dtype=torch.long)
            hidden = states[at.to(device), last[at].to(device)]
            scores = processor.apply(head(hidden).float(), [alive[j] for j in deciding])
            if do_sample:
                scores = warpers(None, scores)
                chosen = torch.multinomial(torch.softmax(scores, dim=-1), 1).squeeze(1)
            else:
                chosen = scores.argmax(dim=-1)
            for j, t in zip(deciding, chosen.tolist()):
                r = alive[j]
                processor.advance(r, t)
                run = [t] + processor.forced_run(r, max_new_tokens - len(written[r]) - 1)
                written[r] += run
                if processor.finished(r) or len(written[r]) >= max_new_tokens:
                    done[r] = True  # what is left of its run needs no pass: nothing follows it
                else:
                    pending[r] = run
        keep = [j for j, r in enumerate(alive) if not done[r]]
        if not keep:
            break
        if len(keep) < len(alive):  # finished rows leave the batch (and the cache)
            at = torch.tensor(keep, dtype=torch.long)
            cache.batch_select_indices(at.to(device))
            mask, last, alive = mask[at.to(device)], last[at], [alive[j] for j in keep]
        w = pass_width([len(pending[r]) for r in alive], len(alive), max_chunk, pass_overhead)
        feed = torch.full((len(alive), w), pad_token_id, dtype=torch.long)
        feed_mask = torch.zeros((len(alive), w), dtype=attention_mask.dtype)
        for j, r in enumerate(alive):
            chunk, pending[r] = pending[r][:w], pending[r][w:]
            feed[j, :len(chunk)] = torch.tensor(chunk, dtype=torch.long)
            feed_mask[j, :len(chunk)] = 1
            last[j] = len(chunk) - 1
        feed, feed_mask = feed.to(device), feed_mask.to(device)
    longest = max(len(w) for w in written)
    new = torch.full((n, longest), pad_token_id, dtype=torch.long)
    for r, w in enumerate(written):
        new[r, :len(w)] = torch.tensor(w, dtype=torch.long)
    return torch.cat([input_ids, new.to(device)], dim=1)


def generate_with_processor(model, input_ids, attention_mask, processor, generate: Callable | None = None,
                            **kwargs):
    """``model.generate`` with ``processor`` as its logits processor, or
    :func:`jump_forward_generate` when the processor asks for it (``jump_forward``). ``kwargs``
    are ``generate``'s: ``max_new_tokens``, ``pad_token_id``, ``do_sample``, ``temperature``,
    ``top_k``, ``top_p`` or a ``generation_config`` holding them; stop strings are not needed
    (a grounded row ends with ``</solution>`` and the end-of-turn token). ``generate``: the
    ``generate`` to call (default ``model.generate``)."""
    if not getattr(processor, "jump_forward", False):
        from transformers import LogitsProcessorList
        return (generate or model.generate)(input_ids=input_ids, attention_mask=attention_mask,
                                            logits_processor=LogitsProcessorList([processor]), **kwargs)
    from transformers import GenerationConfig

    # resolved as generate resolves them: its arguments, then the generation_config passed, then
    # the model's own generation config, then transformers' defaults (top_k 50 when sampling)
    if kwargs.pop("use_cache", True) is False:  # True (or not given): the cache it always keeps
        raise NotImplementedError("jump-forward decoding always uses the KV cache; got use_cache=False")
    sources = [kwargs, kwargs.pop("generation_config", None), getattr(model, "generation_config", None),
               GenerationConfig._get_default_generation_params()]

    def get(name):
        for src in sources:
            value = src.get(name) if isinstance(src, dict) else getattr(src, name, None)
            if value is not None:
                return value
        return None

    names = ("max_new_tokens", "pad_token_id", "do_sample", "temperature", "top_k", "top_p", "min_p",
             "repetition_penalty")
    settings = {name: get(name) for name in names}
    unknown = sorted(set(kwargs) - set(names) - {"stop_strings", "tokenizer", "eos_token_id", "bos_token_id",
                                                 "cache_implementation", "disable_compile"})
    if settings["min_p"] is not None or settings["repetition_penalty"] != 1.0 or unknown:
        raise NotImplementedError(f"jump-forward decoding supports temperature, top_k and top_p; got min_p="
                                  f"{settings['min_p']}, repetition_penalty={settings['repetition_penalty']}, "
                                  f"other settings {unknown}")
    pad = settings["pad_token_id"]
    if pad is None:
        pad = processor.tokenizer.pad_token_id if processor.tokenizer.pad_token_id is not None else processor.eos
    return jump_forward_generate(model, input_ids, attention_mask, processor, settings["max_new_tokens"] or 20,
                                 pad_token_id=int(pad), do_sample=bool(settings["do_sample"]),
                                 temperature=settings["temperature"], top_k=settings["top_k"], top_p=settings["top_p"])


# --------------------------------------------------------------------------------------------
# Settings


@dataclass(frozen=True)
class Grounding:
    """Settings of grounded decoding (they key generations and training stages).

    ``mode``: ``"universe"`` (a fixed universe, :func:`universe_items` with ``n_popular``) or
    ``"candidates"`` (each row's own candidate ids). ``min_items``: items before ``</solution>``
    may be written; the list closes after ``k`` items. ``reasoning_tokens``: the longest
    reasoning block (0: none; the answer opens with ``<solution>``). ``exclude_named``: the list
    leaves out the titles its reasoning wrote out. ``jump_forward``: decode with
    :func:`jump_forward_generate` (forced tokens in one forward pass) instead of ``generate``.
    ``screen`` (candidates mode, after a reasoning block): the answer holds a screen block, one
    forced line per candidate in prompt order (:func:`~safecrs_core.train.prompts.screen_line`)
    on which the model writes only the verdict, ``yes`` (leave it out) or ``no``; the list never
    holds a candidate screened out. ``screen_bias``: added to the model's logit of ``yes`` at each
    verdict (0: its own choice). A model trained on targets where most candidates are kept says
    ``no`` at nearly every line when decoding greedily; the bias sets how sure it must be to
    leave one out (choose it on validation)."""

    mode: str = "universe"
    n_popular: int = 5000
    min_items: int = 1
    reasoning_tokens: int = 0
    exclude_named: bool = False
    jump_forward: bool = False
    screen: bool = False
    screen_bias: float = 0.0

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"grounding mode must be one of {MODES}, got {self.mode!r}")
        for name, low in (("n_popular", 0), ("min_items", 0), ("reasoning_tokens", 0)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise ValueError(f"grounding {name} must be an integer >= {low}, got {v!r}")
        for name in ("exclude_named", "jump_forward", "screen"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"grounding {name} must be true or false, got {getattr(self, name)!r}")
        if self.exclude_named and self.reasoning_tokens == 0:
            raise ValueError("exclude_named needs a reasoning block (reasoning_tokens > 0)")
        if self.screen and (self.reasoning_tokens == 0 or self.mode != "candidates"):
            raise ValueError("screen needs candidates mode and a reasoning block (reasoning_tokens > 0)")
        if isinstance(self.screen_bias, bool) or not isinstance(self.screen_bias, (int, float)) \
                or not -1e3 < self.screen_bias < 1e3:
            raise ValueError(f"grounding screen_bias must be a number, got {self.screen_bias!r}")
        if self.screen_bias and not self.screen:
            raise ValueError("screen_bias needs screen")

    def as_dict(self) -> dict:
        """The settings as a dict; ``exclude_named``, ``jump_forward``, ``screen`` and ``screen_bias`` only when on, so the
        keys of settings without them stay as they were."""
        out = asdict(self)
        for name in ("exclude_named", "jump_forward", "screen", "screen_bias"):
            if not out[name]:
                del out[name]
        return out

    @classmethod
    def from_value(cls, value: "Grounding | Mapping[str, Any] | None") -> "Grounding | None":
        """A :class:`Grounding` from itself, a dict of its fields (a notebook parameter) or None."""
        if value is None or isinstance(value, Grounding):
            return value
        if not isinstance(value, Mapping):
            raise TypeError(f"grounding must be a dict like {asdict(cls())} or None, got {value!r}")
        unknown = sorted(set(value) - set(asdict(cls())))
        if unknown:
            raise ValueError(f"unknown grounding settings {unknown}; known: {', '.join(asdict(cls()))}")
        return cls(**dict(value))

    def params(self, universe: Sequence[str] | None = None) -> dict:
        """What keys a grounded run: these settings, the grammar version and, in universe mode,
        a fingerprint of the universe."""
        out = {**self.as_dict(), "version": GROUNDING_VERSION}
        if universe is not None:
            out["universe"] = fingerprint(list(universe))
            out["universe_size"] = len(universe)
        return out


def grounding_settings(value: "Grounding | Mapping[str, Any] | None") -> dict | None:
    """Validated grounding settings as a plain dict of :class:`Grounding`'s fields (what
    training configs store and key); None stays None."""
    settings = Grounding.from_value(value)
    return None if settings is None else settings.as_dict()


@dataclass
class GroundedDecoder:
    """Builds :class:`GroundedLogitsProcessor` objects for batches of benchmark rows.

    ``settings``: a :class:`Grounding`; ``catalog`` names items; ``universe``: the item ids of
    universe mode (:func:`universe_items`); ``candidates(rows) -> id lists`` in candidates mode.
    ``k``: the list length (``max_items``)."""

    settings: Grounding
    catalog: Any
    tokenizer: Any
    k: int = 10
    universe: Sequence[str] | None = None
    candidates: Callable[[Sequence[Mapping]], list[list[str]]] | None = None

    def __post_init__(self):
        self.titles = TitleTokens(self.tokenizer)
        if self.settings.mode == "universe":
            if not self.universe:
                raise ValueError("universe mode needs the universe's item ids (grounding.universe_items)")
            self.universe = list(self.universe)
            self._trie = self.titles.trie([self.catalog.display(i) for i in self.universe])
        elif self.candidates is None:
            raise ValueError("candidates mode needs candidates(rows) -> candidate id lists")

    def params(self) -> dict:
        return self.settings.params(self.universe if self.settings.mode == "universe" else None)

    def candidate_ids(self, rows: Sequence[Mapping]) -> list[list[str]]:
        """Candidates mode: each row's candidate ids that the catalog names, in prompt order."""
        lists = self.candidates(rows)
        if len(lists) != len(rows):
            raise ValueError(f"candidates gave {len(lists)} lists for {len(rows)} rows")
        return [[i for i in ids if i in self.catalog] for ids in lists]

    def tries(self, rows: Sequence[Mapping], lists: Sequence[Sequence[str]] | None = None) -> list[TokenTrie]:
        if self.settings.mode == "universe":
            return [self._trie] * len(rows)
        lists = self.candidate_ids(rows) if lists is None else lists
        return [self.titles.trie([self.catalog.display(i) for i in ids]) for ids in lists]

    def processor(self, rows: Sequence[Mapping]) -> GroundedLogitsProcessor:
        """The processor for a batch of ``rows`` (dicts with ``seen``; in candidates mode what
        ``candidates`` needs), in batch order."""

        blocked = [[self.catalog.display(i) for i in sorted(ref_ids(r.get("seen"))) if i in self.catalog]
                   for r in rows]
        lists = self.candidate_ids(rows) if self.settings.mode == "candidates" else None
        screens = None
        if self.settings.screen:
            screens = [[(self.catalog.display(i), screen_line(self.catalog, i)) for i in ids] for ids in lists]
        return GroundedLogitsProcessor(self.tokenizer, self.tries(rows, lists), blocked,
                                       min_items=self.settings.min_items,
                                       max_items=self.k, reasoning_tokens=self.settings.reasoning_tokens,
                                       exclude_named=self.settings.exclude_named,
                                       jump_forward=self.settings.jump_forward, screens=screens,
                                       screen_bias=self.settings.screen_bias)


def decoder_for(settings: Grounding | Mapping | None, catalog, tokenizer, train_rows=None, k: int = 10,
                candidates: Callable | None = None) -> GroundedDecoder | None:
    """A :class:`GroundedDecoder` for ``settings`` (None: free decoding, returns None); universe
    mode builds its universe from ``train_rows`` (the benchmark's train split)."""
    settings = Grounding.from_value(settings)
    if settings is None:
        return None
    universe = None
    if settings.mode == "universe":
        if train_rows is None:
            raise ValueError("universe mode needs the train split (train_rows) to build its universe")
        universe = universe_items(catalog, train_rows, settings.n_popular)
    return GroundedDecoder(settings, catalog, tokenizer, k=k, universe=universe, candidates=candidates)


__all__ = ["Grounding", "grounding_settings", "GroundedDecoder", "GroundedLogitsProcessor", "TokenTrie", "TitleTokens", "decoder_for",
           "jump_forward_generate", "generate_with_processor", "pass_width",
           "universe_items", "check_tokenization", "fingerprint", "MODES"]
