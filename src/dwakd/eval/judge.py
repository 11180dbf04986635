"""Pairwise comparison of two models' answers by an LLM judge behind an OpenAI-compatible endpoint.

Input: two ``samples.jsonl`` files written by ``dwakd eval`` (rows ``{set, seed, key, text}``; a
row may also carry ``prompt``, ``references`` and ``output``, which is read before ``text``).
Rows are joined on ``(set, seed, key)``; the prompt comes from the row or, when missing, from the
test set file given with ``data`` (``key`` = the example's index in the file, the set name = the
file's stem, as ``dwakd eval`` names sets).

Protocol:
- **Position-swap debiasing**: every pair is judged twice, A shown first (order ``AB``) and B shown
  first (``BA``). The verdict of one order is ``1``, ``2`` or ``tie`` (the first / the second answer
  shown is better); combined per pair: A wins when both orders prefer A, loses when both prefer B,
  and ties otherwise (a tie in either order, or the two orders disagreeing: position bias).
- **Malformed answers**: a judge answer without exactly one verdict marker is recorded as
  ``invalid`` (raw text kept); a pair with an invalid order is left out of the table and counted.
- **Table**: win / tie / loss rates over the valid pairs with 95% Wilson score intervals, plus the
  win rate counting a tie as half a win (95% interval from the pairs' bootstrap [I]: the outcomes
  are three-valued).
- **Retries with backoff** on connection errors, timeouts, 429 and 5xx (``base * 2^attempt``
  seconds); other 4xx answers stop the run with a clear error.
- **Request budget**: at most ``max_requests`` HTTP requests (retries included) per run; when it is
  spent the run stops cleanly and a rerun resumes.
- **Resumable progress**: every judged (pair, order) is appended to ``judgements.jsonl`` (raw answer
  included) and fsynced; a rerun skips what is there (a torn last line from a crash is ignored).
"""

from __future__ import annotations

import json
import math
import os
import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from dwakd.errors import ConfigError, DataError

ORDERS = ("AB", "BA")
PROMPT_VERSION = 1
SYSTEM_PROMPT = (
    "You are an impartial judge. You compare two answers to the same user instruction and decide "
    "which one is more helpful, correct and relevant. Ignore answer length and the order in which "
    "the answers are shown."
)
USER_TEMPLATE = (
    "[Instruction]\n{prompt}\n\n[Answer 1]\n{first}\n\n[Answer 2]\n{second}\n\n"
    "Which answer is better? Reply with exactly one of [[1]], [[2]] or [[tie]]."
)
CHOICES = ("[[1]]", "[[2]]", "[[tie]]")
_MARK = re.compile(r"\[\[\s*(1|2|tie)\s*\]\]", re.IGNORECASE)


@dataclass
class Item:
    set: str
    seed: int | None
    key: int
    prompt: str
    answer_a: str
    answer_b: str

    @property
    def ident(self) -> tuple:
        return (self.set, self.seed, self.key)


@dataclass
class JudgeSettings:
    base_url: str
    model: str
    api_key: str = "none"
    max_requests: int | None = None
    max_retries: int = 4
    backoff_s: float = 1.0
    timeout_s: float = 120.0
    max_tokens: int = 16
    temperature: float = 0.0
    guided_choice: bool = False
    extra: dict = field(default_factory=dict)


class BudgetSpent(Exception):
    """The request budget ran out (progress so far is saved)."""


# ----------------------------------------------------------------------------- inputs
def _read_jsonl(path: Path) -> list[tuple[int, dict]]:
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    rows = []
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                rows.append((n, json.loads(line)))
            except json.JSONDecodeError as e:
                raise DataError(f"{path}, line {n}: not valid JSON ({e.msg})") from None
    return rows


def load_samples(path: str | Path) -> dict[tuple, dict]:
    """``(set, seed, key) -> row`` of a ``samples.jsonl``; the answer is ``output`` or ``text``."""
    path = Path(path)
    out: dict[tuple, dict] = {}
    for n, row in _read_jsonl(path):
        for k in ("set", "key"):
            if k not in row:
                raise DataError(f"{path}, line {n}: missing key '{k}'")
        answer = row.get("output", row.get("text"))
        if not isinstance(answer, str):
            raise DataError(f"{path}, line {n}: key 'output' (or 'text') must be a string")
        seed = row.get("seed")
        out[(str(row["set"]), None if seed is None else int(seed), int(row["key"]))] = {**row, "answer": answer}
    return out


def _record_prompt(rec) -> str:
    if rec.instruction:
        return rec.instruction + (f"\n\n{rec.context}" if rec.context else "")
    if rec.prompt:
        return rec.prompt
    if rec.messages:
        users = [m["content"] for m in rec.messages if m.get("role") == "user"]
        if users:
            return users[-1]
    raise DataError(f"{rec.source}, line {rec.line}: no instruction or prompt to show the judge")


def load_prompts(data_files) -> dict[str, list[str]]:
    """Set name (file stem) -> prompts in file order."""
    from dwakd.data.records import load_records

    prompts = {}
    for p in data_files or []:
        recs = load_records(str(p))
        prompts[Path(p).stem] = [_record_prompt(r) for r in recs]
    return prompts


def pair_items(a: dict, b: dict, prompts: dict[str, list[str]]) -> tuple[list[Item], int]:
    """Items present in both files (sorted), and how many keys only one file has."""
    common = sorted(set(a) & set(b), key=lambda k: (k[0], -1 if k[1] is None else k[1], k[2]))
    items = []
    for ident in common:
        ra, rb = a[ident], b[ident]
        prompt = ra.get("prompt") or rb.get("prompt")
        if not prompt:
            sset, _, key = ident
            if sset not in prompts:
                raise ConfigError(f"samples of set '{sset}' carry no prompt: give its test set file with --data "
                                  f"(a file named {sset}.jsonl)")
            if key >= len(prompts[sset]):
                raise DataError(f"set '{sset}': key {key} is past the end of its --data file ({len(prompts[sset])} records)")
            prompt = prompts[sset][key]
        items.append(Item(ident[0], ident[1], ident[2], prompt, ra["answer"], rb["answer"]))
    return items, len(set(a) ^ set(b))


# ----------------------------------------------------------------------------- verdicts
def parse_verdict(text: str | None) -> str:
    """``"1"``, ``"2"``, ``"tie"`` or ``"invalid"`` (no marker, or markers that disagree)."""
    if not text:
        return "invalid"
    found = {m.lower() for m in _MARK.findall(text)}
    if not found:
        bare = text.strip().strip(".").lower()
        found = {bare} if bare in ("1", "2", "tie") else set()
    return found.pop() if len(found) == 1 else "invalid"


def combine(v_ab: str, v_ba: str) -> str:
    """A's outcome from the two orders: ``win``, ``loss``, ``tie`` or ``invalid``."""
    if "invalid" in (v_ab, v_ba):
        return "invalid"
    a_first = {"1": "A", "2": "B", "tie": "="}[v_ab]
    b_first = {"1": "B", "2": "A", "tie": "="}[v_ba]
    if a_first == b_first == "A":
        return "win"
    if a_first == b_first == "B":
        return "loss"
    return "tie"


def wilson(k: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """95% Wilson score interval of a proportion ``k / n`` (``(nan, nan)`` for ``n == 0``)."""
    if n == 0:
        return (math.nan, math.nan)
    p = k / n
    den = 1 + z * z / n
    mid = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return (max(0.0, mid - half), min(1.0, mid + half))


def summarise(outcomes: list[str], *, bootstrap: int = 2000, seed: int = 0) -> dict:
    """Counts, rates with Wilson intervals, and the tie-as-half win rate with a bootstrap interval."""
    valid = [o for o in outcomes if o != "invalid"]
    n = len(valid)
    out = {"pairs": len(outcomes), "valid": n, "invalid": len(outcomes) - n}
    for name in ("win", "tie", "loss"):
        k = valid.count(name)
        out[name] = {"count": k, "rate": k / n if n else math.nan, "ci95": list(wilson(k, n))}
    score = [1.0 if o == "win" else 0.5 if o == "tie" else 0.0 for o in valid]
    if n:
        rng = random.Random(seed)
        means = sorted(sum(rng.choice(score) for _ in range(n)) / n for _ in range(bootstrap))
        ci = [means[int(0.025 * (bootstrap - 1))], means[int(math.ceil(0.975 * (bootstrap - 1)))]]
        out["win_rate_tie_half"] = {"rate": sum(score) / n, "ci95": ci}
    else:
        out["win_rate_tie_half"] = {"rate": math.nan, "ci95": [math.nan, math.nan]}
    return out


# ----------------------------------------------------------------------------- progress file
def read_progress(path: Path) -> dict[tuple, dict]:
    """(set, seed, key, order) -> judgement; a torn (unparsable) last line is ignored."""
    done = {}
    if not path.exists():
        return done
    lines = path.read_text(encoding="utf-8").splitlines()
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            if n == len(lines):
                break  # a crash mid-write: that judgement is simply redone
            raise DataError(f"{path}, line {n}: not valid JSON (the progress file is damaged)") from None
        done[(row["set"], row["seed"], row["key"], row["order"])] = row
    return done


def _append(path: Path, row: dict) -> None:
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(row, ensure_ascii=False) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def _heal(path: Path) -> None:
    """Cut a torn last line (no trailing newline) so that appends start on a fresh line."""
    if path.exists():
        data = path.read_bytes()
        if data and not data.endswith(b"\n"):
            keep = data[: data.rfind(b"\n") + 1]
            with open(path, "wb") as fh:
                fh.write(keep)
                fh.flush()
                os.fsync(fh.fileno())


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


# ----------------------------------------------------------------------------- the client
class Judge:
    """Calls the endpoint through the ``openai`` client; counts requests against the budget."""

    def __init__(self, settings: JudgeSettings, *, sleep: Callable[[float], None] = time.sleep):
        import openai

        self._openai = openai
        self.s = settings
        self.client = openai.OpenAI(base_url=settings.base_url, api_key=settings.api_key,
                                    max_retries=0, timeout=settings.timeout_s)
        self.requests = 0
        self.sleep = sleep

    def _retryable(self, e: Exception) -> bool:
        o = self._openai
        if isinstance(e, (o.APIConnectionError, o.APITimeoutError)):
            return True
        return isinstance(e, o.APIStatusError) and (e.status_code == 429 or e.status_code >= 500)

    def ask(self, item: Item, order: str) -> tuple[str, int]:
        """The judge's raw answer for ``item`` shown in ``order``, and the attempts it took."""
        first, second = (item.answer_a, item.answer_b) if order == "AB" else (item.answer_b, item.answer_a)
        messages = [{"role": "system", "content": SYSTEM_PROMPT},
                    {"role": "user", "content": USER_TEMPLATE.format(prompt=item.prompt, first=first, second=second)}]
        extra = dict(self.s.extra)
        if self.s.guided_choice:
            extra["guided_choice"] = list(CHOICES)
        for attempt in range(self.s.max_retries + 1):
            if self.s.max_requests is not None and self.requests >= self.s.max_requests:
                raise BudgetSpent()
            self.requests += 1
            try:
                resp = self.client.chat.completions.create(
                    model=self.s.model, messages=messages, max_tokens=self.s.max_tokens,
                    temperature=self.s.temperature, extra_body=extra or None)
                return (resp.choices[0].message.content or ""), attempt + 1
            except self._openai.APIError as e:
                if not self._retryable(e) or attempt == self.s.max_retries:
                    status = getattr(e, "status_code", None)
                    raise ConfigError(f"judge endpoint {self.s.base_url}: request failed"
                                      f"{f' with HTTP {status}' if status else ''} after {attempt + 1} attempt(s): {e}") from None
                self.sleep(self.s.backoff_s * (2 ** attempt))
        raise AssertionError("unreachable")


def run_judge(items: list[Item], out_dir: str | Path, settings: JudgeSettings, *, names=("A", "B"),
              sleep: Callable[[float], None] = time.sleep, log=print) -> dict:
    """Judge every item in both orders (resuming from ``out_dir``); write and return the summary.

    ``summary["complete"]`` is False when the request budget ran out first.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"model": settings.model, "base_url": settings.base_url, "prompt_version": PROMPT_VERSION,
            "guided_choice": settings.guided_choice, "names": list(names)}
    meta_path, prog_path = out / "judge_meta.json", out / "judgements.jsonl"
    if meta_path.exists():
        old = json.loads(meta_path.read_text(encoding="utf-8"))
        diff = [k for k in ("model", "prompt_version", "guided_choice", "names") if old.get(k) != meta[k]]
        if diff:
            raise ConfigError(f"{out}: progress there was made with other settings ({', '.join(diff)}: "
                              f"{', '.join(str(old.get(k)) for k in diff)}); use another --out")
    else:
        write_atomic(meta_path, json.dumps(meta, indent=2) + "\n")
    _heal(prog_path)
    done = read_progress(prog_path)
    judge = Judge(settings, sleep=sleep)
    complete = True
    try:
        for item in items:
            for order in ORDERS:
                if (*item.ident, order) in done:
                    continue
                raw, attempts = judge.ask(item, order)
                row = {"set": item.set, "seed": item.seed, "key": item.key, "order": order,
                       "verdict": parse_verdict(raw), "raw": raw, "attempts": attempts, "model": settings.model}
                _append(prog_path, row)
                done[(*item.ident, order)] = row
    except BudgetSpent:
        complete = False
        log(f"request budget ({settings.max_requests}) spent; rerun the same command to resume")
    outcomes = []
    for item in items:
        ab, ba = done.get((*item.ident, "AB")), done.get((*item.ident, "BA"))
        if ab and ba:
            outcomes.append(combine(ab["verdict"], ba["verdict"]))
    summary = {"A": names[0], "B": names[1], "judge_model": settings.model, "complete": complete,
               "items": len(items), "judged": len(outcomes), "requests_this_run": judge.requests,
               **summarise(outcomes)}
    write_atomic(out / "judge_results.json", json.dumps(summary, indent=2, allow_nan=True) + "\n")
    write_atomic(out / "judge_results.md", results_markdown(summary) + "\n")
    return summary


def results_markdown(s: dict) -> str:
    def cell(d):
        lo, hi = d["ci95"]
        return "n/a" if math.isnan(d["rate"]) else f"{100 * d['rate']:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}]"

    head = ("| A | B | judge | pairs judged | A wins | ties | A loses | A win rate (tie = 1/2) | invalid |\n"
            "|---|---|---|---|---|---|---|---|---|\n")
    row = (f"| {s['A']} | {s['B']} | {s['judge_model']} | {s['valid']} | {cell(s['win'])} | {cell(s['tie'])} | "
           f"{cell(s['loss'])} | {cell(s['win_rate_tie_half'])} | {s['invalid']} |")
    note = ("\nEach pair judged in both orders (position swap); a pair counts as a win or loss only when both "
            "orders agree, else as a tie. Rates over valid pairs; 95% Wilson intervals (win rate: bootstrap).")
    if not s["complete"]:
        note += f"\nINCOMPLETE: {s['judged']} of {s['items']} pairs judged (request budget); rerun to resume."
    return head + row + "\n" + note
