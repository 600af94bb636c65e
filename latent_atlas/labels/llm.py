"""LLM chat clients, the LLM labeler and the LLM detection scorer.

Two clients with one method, `complete_many(prompts, max_tokens) -> list[Completion]`, order kept:
- `LocalChatClient`: SmolLM2-135M-Instruct offline through transformers (chat template, greedy
  generate, batched with left padding), the embedded default;
- `OpenAIChatClient`: any OpenAI-compatible endpoint (OpenAI, vLLM, Ollama, llama.cpp server)
  through the official `openai` SDK, asynchronous under a semaphore, with our own retry loop
  (the SDK's own retries are off so that every attempt is counted and the backoff is seeded).
A request that still fails after its retries comes back as `Completion(error=...)` instead of
raising, so one bad cluster never throws away the labels of the others.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import email.utils
import logging
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, Sequence

from latent_atlas.labels.prompts import (PROMPT_VERSION, copies_worked_example, detection_messages, echoes_instruction,
                                         explain_messages, parse_detection, parse_explanation)
from latent_atlas.labels.records import Draft, Example, LabelRequest, Labeler

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Completion:
    """One chat completion, or why there is none."""

    text: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: str | None = None  # None on success; else the last failure, in words (never a secret)
    attempts: int = 1  # requests sent for it, retries included


class ChatClient(Protocol):
    name: str  # 'local-llm', 'openai': goes into the labeler's metadata
    model: str

    def complete_many(self, prompts: list[list[dict]], max_tokens: int) -> list[Completion]: ...


class LocalChatClient:
    """SmolLM2-135M-Instruct (or a local causal-LM directory) on CPU or GPU, greedy and offline.

    The model loads on the first call; `max_new_tokens` caps every generation (CPU cost grows with
    it), whatever `max_tokens` a caller asks for."""

    name = "local-llm"

    def __init__(self, model_name: str = "smollm2-135m", cache_dir: Path | None = None, device: str = "cpu",
                 max_new_tokens: int = 48, seed: int = 0, batch_size: int = 4):
        from latent_atlas.data.models import SMOLLM2

        self.model_name = model_name
        self.model = "SmolLM2-135M-Instruct" if model_name == SMOLLM2 else Path(model_name).name
        self.cache_dir = cache_dir
        self.device = device
        self.max_new_tokens = max_new_tokens
        self.seed = seed
        self.batch_size = batch_size  # prompts generated together (left-padded to the longest)
        self._loaded = None

    def __repr__(self) -> str:
        return f"LocalChatClient(model={self.model!r}, device={self.device!r})"

    def _load(self):
        if self._loaded is None:
            import torch
            from transformers import AutoModelForCausalLM, AutoTokenizer

            from latent_atlas.data.models import model_directory
            from latent_atlas.data.paths import model_cache_dir

            directory = model_directory(self.model_name, Path(self.cache_dir or model_cache_dir()))
            tokenizer = AutoTokenizer.from_pretrained(directory)
            tokenizer.padding_side = "left"  # generation continues from the right end of every row
            if tokenizer.pad_token is None:
                tokenizer.pad_token = tokenizer.eos_token
            model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).to(self.device).eval()
            self._loaded = (model, tokenizer)
        return self._loaded

    def complete_many(self, prompts: list[list[dict]], max_tokens: int) -> list[Completion]:
        import torch

        model, tokenizer = self._load()
        torch.manual_seed(self.seed)
        out: list[Completion] = []
        for start in range(0, len(prompts), self.batch_size):
            batch = prompts[start:start + self.batch_size]
            try:
                out += self._generate(model, tokenizer, batch, min(max_tokens, self.max_new_tokens))
            except (RuntimeError, ValueError) as exc:  # e.g. out of memory: that batch fails, not the run
                out += [Completion(error=f"local generation failed: {type(exc).__name__}: {exc}")] * len(batch)
        return out

    @staticmethod
    def _generate(model, tokenizer, batch: list[list[dict]], max_new: int) -> list[Completion]:
        import torch

        texts = [tokenizer.apply_chat_template(m, add_generation_prompt=True, tokenize=False) for m in batch]
        inputs = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
        with torch.inference_mode():
            # Plain greedy: no_repeat_ngram_size would stop the loops a 135M model falls into on long
            # answers, but transformers counts the prompt's n-grams too and so bans the worked
            # examples' "Label: ... Explanation:" format (tried: labels became "1. The new policy will").
            generated = model.generate(**inputs, max_new_tokens=max_new, do_sample=False,
                                       pad_token_id=tokenizer.pad_token_id)
        new = generated[:, inputs["input_ids"].shape[1]:]
        completions = []
        for row, mask in zip(new, inputs["attention_mask"]):
            ids = row.tolist()
            if tokenizer.eos_token_id in ids:
                ids = ids[:ids.index(tokenizer.eos_token_id) + 1]
            text = tokenizer.decode(ids, skip_special_tokens=True).strip()
            completions.append(Completion(text, int(mask.sum()), len(ids),
                                          None if text else "empty completion"))
        return completions


class _Secret:
    """Holds the API key so that no repr, log line or traceback of ours can show it."""

    def __init__(self, value: str):
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "'***'"

    __str__ = __repr__


class _Retryable(Exception):
    """A failed attempt worth repeating; `wait` is the server's Retry-After, if it sent one."""

    def __init__(self, reason: str, wait: float | None = None):
        super().__init__(reason)
        self.wait = wait


def _retry_after(response) -> float | None:
    """Seconds from a Retry-After (seconds or HTTP date) or retry-after-ms header, capped at 60."""
    headers = getattr(response, "headers", None) or {}
    try:
        if headers.get("retry-after-ms"):
            return min(float(headers["retry-after-ms"]) / 1000, 60.0)
        value = headers.get("retry-after")
        if value is None:
            return None
        try:
            return min(max(float(value), 0.0), 60.0)
        except ValueError:
            when = email.utils.parsedate_to_datetime(value).timestamp()
            return min(max(when - time.time(), 0.0), 60.0)
    except (TypeError, ValueError):
        return None


class OpenAIChatClient:
    """Chat completions from any OpenAI-compatible endpoint, `concurrency` requests at a time.

    Retried with exponential backoff (`backoff` * 2**attempt, seeded jitter), Retry-After honoured:
    HTTP 429 and 5xx, timeouts, connection errors, malformed responses and empty completions.
    Other 4xx (bad key, unknown model) fail at once: repeating them cannot help."""

    name = "openai"

    def __init__(self, base_url: str, model: str, api_key: str, concurrency: int = 4, timeout: float = 30.0,
                 max_retries: int = 4, backoff: float = 0.5, seed: int = 0, temperature: float = 0.0):
        if concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {concurrency}")
        if max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {max_retries}")
        self.base_url = base_url
        self.model = model
        self._api_key = _Secret(api_key or "")
        self.concurrency = concurrency
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff = backoff
        self.seed = seed  # seeds the backoff jitter of each request
        self.temperature = temperature

    def __repr__(self) -> str:
        return f"OpenAIChatClient(base_url={self.base_url!r}, model={self.model!r}, concurrency={self.concurrency})"

    def _redact(self, text: str) -> str:
        key = self._api_key.reveal()
        return text.replace(key, "***") if key else text

    def complete_many(self, prompts: list[list[dict]], max_tokens: int) -> list[Completion]:
        work = self._complete_all(prompts, max_tokens)
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(work)
        # Called from inside an event loop (a notebook, an async asset): run ours in a thread.
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            return pool.submit(asyncio.run, work).result()

    async def _complete_all(self, prompts: list[list[dict]], max_tokens: int) -> list[Completion]:
        import openai

        # A fresh client per call: an AsyncOpenAI's connection pool belongs to the loop that made it.
        async with openai.AsyncOpenAI(base_url=self.base_url, api_key=self._api_key.reveal(),
                                      timeout=self.timeout, max_retries=0) as client:
            semaphore = asyncio.Semaphore(self.concurrency)
            return list(await asyncio.gather(*(self._complete(client, semaphore, i, m, max_tokens)
                                               for i, m in enumerate(prompts))))

    async def _complete(self, client, semaphore, index: int, messages: list[dict], max_tokens: int) -> Completion:
        rng = random.Random(f"{self.seed}:{index}")
        reason = ""
        for attempt in range(self.max_retries + 1):
            try:
                async with semaphore:
                    return self._read(await self._request(client, messages, max_tokens), attempt + 1)
            except _Retryable as failure:
                reason = self._redact(str(failure))
                if attempt == self.max_retries:
                    break
                wait = failure.wait if failure.wait is not None else self.backoff * 2 ** attempt * (1 + rng.random())
                log.info("request %d: %s; retry %d/%d in %.2fs", index, reason, attempt + 1, self.max_retries, wait)
                await asyncio.sleep(wait)
            except Exception as exc:  # noqa: BLE001 - a non-retryable failure of one request only
                reason = self._redact(f"{type(exc).__name__}: {exc}")
                log.warning("request %d failed: %s", index, reason)
                return Completion(error=reason, attempts=attempt + 1)
        log.warning("request %d failed after %d attempts: %s", index, self.max_retries + 1, reason)
        return Completion(error=f"{reason} (after {self.max_retries + 1} attempts)", attempts=self.max_retries + 1)

    async def _request(self, client, messages: list[dict], max_tokens: int):
        import json

        import openai

        try:
            return await client.chat.completions.create(model=self.model, messages=messages,
                                                        max_tokens=max_tokens, temperature=self.temperature)
        except openai.RateLimitError as exc:
            raise _Retryable("HTTP 429 rate limited", _retry_after(exc.response)) from None
        except openai.InternalServerError as exc:
            raise _Retryable(f"HTTP {exc.status_code} server error", _retry_after(exc.response)) from None
        except openai.APITimeoutError:
            raise _Retryable(f"timed out after {self.timeout}s") from None
        except openai.APIConnectionError as exc:
            raise _Retryable(f"connection error: {type(exc.__cause__ or exc).__name__}") from None
        except (json.JSONDecodeError, openai.APIResponseValidationError) as exc:
            raise _Retryable(f"malformed response: {type(exc).__name__}") from None

    @staticmethod
    def _read(response, attempts: int) -> Completion:
        choices = getattr(response, "choices", None)  # a non-JSON body comes back as a bare str
        if not choices:
            raise _Retryable("malformed response: no choices")
        message = getattr(choices[0], "message", None)
        text = (getattr(message, "content", None) or "").strip()
        if not text:
            raise _Retryable("empty completion")
        usage = getattr(response, "usage", None)
        return Completion(text, int(getattr(usage, "prompt_tokens", 0) or 0),
                          int(getattr(usage, "completion_tokens", 0) or 0), None, attempts)


class LabelingFailed(RuntimeError):
    """Some requests found no label. `drafts` holds the ones that did (None where not), so a caller
    can keep them; `failed` maps each failed request's index to its error."""

    def __init__(self, requests: Sequence[LabelRequest], drafts: list[Draft | None], failed: dict[int, str]):
        self.drafts = drafts
        self.failed = failed
        names = [(f"node {requests[i].node_id}" if requests[i].node_id else f"cluster {requests[i].centroid_id}")
                 + f": {error}" for i, error in failed.items()]
        super().__init__(f"{len(failed)} of {len(requests)} labels failed (no fallback configured): "
                         + "; ".join(names))


class LLMLabeler:
    """Names clusters by asking a chat client (local or OpenAI-compatible), one request per cluster.

    Requests that fail (after the client's retries) go to `fallback` when given; its drafts carry
    usage['fallback'] = 1 so that a cache can tell them from LLM labels. Without a fallback the run
    ends with `LabelingFailed`, naming the clusters, once every other request has finished."""

    def __init__(self, client: ChatClient, name: str, prompt_version: str = PROMPT_VERSION,
                 fallback: Labeler | None = None, few_shot: bool = True, max_tokens: int = 64):
        self.client = client
        self.name = name
        self.model = client.model
        self.prompt_version = prompt_version
        self.fallback = fallback
        self.few_shot = few_shot
        self.max_tokens = max_tokens  # per label; 'Label: ...' + two sentences fit in ~60 tokens

    def __repr__(self) -> str:
        return f"LLMLabeler(name={self.name!r}, client={self.client!r}, fallback={self.fallback!r})"

    def label(self, requests: Sequence[LabelRequest]) -> list[Draft]:
        completions = self.client.complete_many([explain_messages(r, self.few_shot) for r in requests],
                                                self.max_tokens)
        drafts: list[Draft | None] = []
        failed: dict[int, str] = {}
        for i, completion in enumerate(completions):
            label, explanation = parse_explanation(completion.text) if completion.error is None else ("", "")
            usage = {"prompt_tokens": completion.prompt_tokens, "completion_tokens": completion.completion_tokens,
                     "requests": completion.attempts}
            if not label or copies_worked_example(label, requests[i]) or echoes_instruction(label):
                # a small model may echo the prompt
                failed[i] = completion.error or (f"copied the prompt: {label!r}" if label
                                                 else f"unreadable answer {completion.text[:80]!r}")
                drafts.append(None)
            else:
                drafts.append(Draft(label, explanation or f"{label}.", usage))
        if failed and self.fallback is not None:
            log.warning("%d of %d labels failed; labeling them with %s", len(failed), len(requests), self.fallback.name)
            indices = sorted(failed)
            for i, draft in zip(indices, self.fallback.label([requests[i] for i in indices])):
                spent = completions[i]
                usage = {**draft.usage, "fallback": 1, "requests": spent.attempts + draft.usage.get("requests", 0)}
                drafts[i] = Draft(draft.label, draft.explanation, usage)
        elif failed:
            raise LabelingFailed(requests, drafts, failed)
        return drafts  # type: ignore[return-value] - every entry is a Draft here


def balanced_accuracy(predicted: Sequence[bool], actual: Sequence[bool], z: float = 1.96) -> tuple[float, float, float]:
    """(balanced accuracy, low, high): the mean of the hit rates on members and on non-members,
    with a 95% interval from each rate's variance (Agresti-Caffo: one success and one failure
    added per class, so a perfect score on few examples still gets a wide interval)."""
    rates, variance = [], 0.0
    for cls in (True, False):
        hits = [p == a for p, a in zip(predicted, actual) if a == cls]
        if not hits:
            raise ValueError(f"balanced accuracy needs {'members' if cls else 'non-members'}; got none")
        rates.append(sum(hits) / len(hits))
        adjusted = (sum(hits) + 1) / (len(hits) + 2)
        variance += adjusted * (1 - adjusted) / (len(hits) + 2)
    value = sum(rates) / 2
    half = z * math.sqrt(variance) / 2
    return value, max(0.0, value - half), min(1.0, value + half)


def judge_windows(client: ChatClient, explanation: str, examples: list[Example], seed: int = 0,
                  batch_size: int = 10, few_shot: bool = True, max_tokens: int = 40
                  ) -> tuple[list[bool | None], dict[str, int]]:
    """Delphi's judge: the client sees `explanation` and batches of windows (shuffled, memberships
    hidden, the token in question marked) and says which fit. Returns one answer per example
    (None where its batch's answer could not be read) and the usage (requests, tokens)."""
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    completions = client.complete_many([detection_messages(explanation, [examples[j] for j in b], few_shot)
                                        for b in batches], max_tokens)
    answers: list[bool | None] = [None] * len(examples)
    for batch, completion in zip(batches, completions):
        said = parse_detection(completion.text, len(batch)) if completion.error is None else None
        for j, answer in zip(batch, said or [None] * len(batch)):
            answers[j] = answer
    usage = {"requests": sum(c.attempts for c in completions),
             "prompt_tokens": sum(c.prompt_tokens for c in completions),
             "completion_tokens": sum(c.completion_tokens for c in completions)}
    return answers, usage


def detection_score(client: ChatClient, explanation: str, examples: list[Example], is_member: list[bool],
                    seed: int = 0, batch_size: int = 10, few_shot: bool = True, max_tokens: int = 40) -> dict:
    """`judge_windows` summed up: value (balanced accuracy of its answers against `is_member`),
    low, high (95%), n (windows with a readable answer), requests, unreadable and tokens."""
    if len(examples) != len(is_member):
        raise ValueError(f"examples ({len(examples)}) and is_member ({len(is_member)}) differ in length")
    answers, usage = judge_windows(client, explanation, examples, seed, batch_size, few_shot, max_tokens)
    predicted = [a for a in answers if a is not None]
    actual = [m for a, m in zip(answers, is_member) if a is not None]
    result = {"n": len(actual), "unreadable": len(answers) - len(actual), **usage}
    if not any(actual) or all(actual):
        return {**result, "value": float("nan"), "low": 0.0, "high": 1.0}  # no evidence either way
    value, low, high = balanced_accuracy(predicted, actual)
    return {**result, "value": value, "low": low, "high": high}
