"""LLM judge for open-ended answers on the paper's 1-10 scale.

Single-answer grading in the MT-Bench style: the judge sees the instruction and the answer and
must reply with ``[[rating]]``. Two back ends: a local Hugging Face model (``kind = "hf"``) or
any OpenAI-compatible chat-completions server (``kind = "openai"``, plain HTTP, the key read
from the environment variable named by ``api_key_env``; a deadline per request, no redirects,
retries on 429 and 5xx, a probe before training). Replies that carry no rating in 1-10
are counted as unparsed and reported, never silently dropped or guessed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import http.client
import json
import os
import re
import socket
import threading
import time
import urllib.error
import urllib.parse
from collections.abc import Sequence
from typing import Any, Protocol

from pluggable.options import Options


@dataclasses.dataclass(frozen=True, kw_only=True)
class HFJudgeOptions(Options):
    """``eval.judge`` of a local judge model."""

    kind: str
    model: str  # a backbone name, a hub id or a local folder
    max_new_tokens: int = 32

    def __post_init__(self) -> None:
        self.check(self.max_new_tokens > 0, "max_new_tokens", "an integer > 0")


ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclasses.dataclass(frozen=True, kw_only=True)
class OpenAIJudgeOptions(Options):
    """``eval.judge`` of an OpenAI-compatible server."""

    kind: str
    base_url: str
    model: str
    api_key_env: str | None = None  # the NAME of the environment variable holding the key, never the key
    max_new_tokens: int = 32
    timeout_s: float = 60.0

    def __post_init__(self) -> None:
        self.check(self.base_url.startswith(("http://", "https://")), "base_url", "an http:// or https:// URL")
        self.check(self.max_new_tokens > 0, "max_new_tokens", "an integer > 0")
        self.check(self.timeout_s > 0, "timeout_s", "a number of seconds > 0")
        if self.api_key_env is not None and not ENV_NAME.match(self.api_key_env):
            # the value is not repeated: it may be the key itself, given by mistake
            raise ValueError("bad value for option 'api_key_env' (not shown); allowed: the name of an environment "
                             "variable that holds the key (letters, digits, '_'), not the key itself")
        if self.api_key_env is not None and not os.environ.get(self.api_key_env):
            raise ValueError(f"option 'api_key_env': environment variable {self.api_key_env} is not set")


JUDGE_OPTIONS: dict[str, type[Options]] = {"hf": HFJudgeOptions, "openai": OpenAIJudgeOptions}

TEMPLATE = (
    "[Instruction]\nPlease act as an impartial judge and evaluate the quality of the response provided by an "
    "AI assistant to the user question displayed below. Consider helpfulness, relevance, accuracy, depth and "
    "level of detail. Be as objective as possible. Rate the response on a scale of 1 to 10 by strictly "
    'following this format: "[[rating]]", for example: "Rating: [[5]]".\n\n'
    "[Question]\n{question}\n\n[The Start of Assistant's Answer]\n{answer}\n[The End of Assistant's Answer]"
)
_BRACKETS = re.compile(r"\[\[\s*(\d+(?:\.\d+)?)\s*\]\]")
_RATING = re.compile(r"[Rr]ating\s*[:=]\s*(\d+(?:\.\d+)?)")


def judge_prompt(question: str, answer: str) -> str:
    return TEMPLATE.format(question=question.strip(), answer=answer.strip())


def parse_rating(reply: str) -> float | None:
    """The rating in a judge reply (``[[7]]`` first, else ``Rating: 7``), or None if absent or
    outside 1-10."""
    for pattern in (_BRACKETS, _RATING):
        m = pattern.search(reply)
        if m:
            value = float(m.group(1))
            return value if 1.0 <= value <= 10.0 else None
    return None


class Judge(Protocol):
    name: str

    def replies(self, prompts: Sequence[str]) -> list[str]: ...


class HFJudge:
    """A local causal LM (path, hub id, or a model object for tests), greedy decoding."""

    def __init__(self, model: Any, tokenizer: Any = None, max_new_tokens: int = 32, name: str | None = None) -> None:
        if isinstance(model, str):
            from bench.backbones.registry import device, load_backbone
            from bench.engine.precision import Precision

            name = name or model
            on = device()
            precision = Precision.from_config("bf16-pure" if on.type == "cuda" else "fp32", on)
            model, tokenizer = load_backbone(model, precision.param_dtype, 0, precision.device)
        self.model, self.tokenizer, self.max_new_tokens = model, tokenizer, max_new_tokens
        self.name = f"hf:{name or type(model).__name__}"

    def replies(self, prompts: Sequence[str]) -> list[str]:
        import torch

        out = []
        on = next(self.model.parameters()).device
        was_training = self.model.training
        self.model.eval()
        for prompt in prompts:
            if getattr(self.tokenizer, "chat_template", None):
                text = self.tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                                          add_generation_prompt=True)
            else:
                text = prompt + "\n"
            ids = self.tokenizer(text, return_tensors="pt", add_special_tokens=False).to(on)
            with torch.no_grad():
                gen = self.model.generate(**ids, max_new_tokens=self.max_new_tokens, do_sample=False,
                                          pad_token_id=self.tokenizer.pad_token_id)
            out.append(self.tokenizer.decode(gen[0, ids["input_ids"].shape[1]:], skip_special_tokens=True))
        self.model.train(was_training)
        return out


class JudgeError(RuntimeError):
    """The judge could not answer; the message names the judge and its URL."""


class OpenAIJudge:
    """Any OpenAI-compatible ``/chat/completions`` endpoint, temperature 0.

    Each request has one overall deadline (``timeout_s``: connecting, the headers and the whole
    body together, so a server that trickles its reply cannot hold a run); redirects are refused,
    so the key is sent to the configured host only; a 429 or 5xx reply, or a dropped
    connection, is retried ``RETRIES`` times with exponential backoff. Every error names the
    judge and its URL."""

    RETRIES = 3
    BACKOFF_S = 1.0  # first wait; doubles after each retry

    def __init__(self, base_url: str, model: str, api_key_env: str | None = None, max_new_tokens: int = 32,
                 timeout_s: float = 60.0) -> None:
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model, self.max_new_tokens, self.timeout_s = model, max_new_tokens, timeout_s
        self.key = os.environ.get(api_key_env, "") if api_key_env else ""
        if api_key_env and not self.key:
            raise ValueError(f"judge: environment variable {api_key_env} (eval.judge.api_key_env) is not set")
        self.name = f"openai:{model}"
        parts = urllib.parse.urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"judge: eval.judge.base_url = {base_url!r}: allowed: an http:// or https:// URL")
        self.parts = parts

    def _post(self, body: bytes) -> bytes:
        """One request within one deadline over connecting, the status line, the headers and the
        body: when it passes, a watchdog shuts the socket down, so no read can wait past it."""
        headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {self.key}"} if self.key else {})}
        deadline = time.monotonic() + self.timeout_s
        kind = http.client.HTTPSConnection if self.parts.scheme == "https" else http.client.HTTPConnection
        conn = kind(self.parts.hostname, self.parts.port, timeout=self.timeout_s)
        expired = threading.Event()
        sockets: list[socket.socket] = []  # the connected socket (http.client drops its own reference once the
        # response arrives, while the body is still read from it)

        def expire() -> None:
            expired.set()
            for sock in sockets or ([conn.sock] if conn.sock is not None else []):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

        watchdog = threading.Timer(self.timeout_s, expire)
        watchdog.daemon = True
        watchdog.start()
        try:
            conn.connect()
            sockets.append(conn.sock)
            path = self.parts.path + (f"?{self.parts.query}" if self.parts.query else "")
            conn.request("POST", path, body=body, headers=headers)
            response = conn.getresponse()
            data = response.read()
        except (OSError, http.client.HTTPException) as e:
            if expired.is_set() or time.monotonic() >= deadline:
                raise TimeoutError(f"the reply took longer than timeout_s = {self.timeout_s:g} s") from None
            raise ConnectionError(f"{type(e).__name__}: {e}") from None
        finally:
            watchdog.cancel()
            conn.close()
        if expired.is_set():
            raise TimeoutError(f"the reply took longer than timeout_s = {self.timeout_s:g} s")
        if 300 <= response.status < 400:  # a redirect would carry the key to another host: refused
            raise urllib.error.HTTPError(self.url, response.status, f"redirect to {response.getheader('Location')} "
                                         "refused", response.headers, None)
        if response.status >= 400:
            raise urllib.error.HTTPError(self.url, response.status, response.reason, response.headers, None)
        return data

    def ask(self, prompt: str) -> str:
        """The judge's reply to one prompt, with retries; ``JudgeError`` when it cannot be had."""
        body = json.dumps({"model": self.model, "temperature": 0, "max_tokens": self.max_new_tokens,
                           "messages": [{"role": "user", "content": prompt}]}).encode()
        wait = self.BACKOFF_S
        for attempt in range(self.RETRIES + 1):
            try:
                reply = json.loads(self._post(body))
                return reply["choices"][0]["message"]["content"] or ""
            except urllib.error.HTTPError as e:
                retry, problem = e.code == 429 or e.code >= 500, f"HTTP {e.code} {e.reason}"
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as e:
                retry, problem = not isinstance(e, TimeoutError), f"{type(e).__name__}: {getattr(e, 'reason', e)}"
            except (ValueError, KeyError, IndexError, TypeError) as e:
                retry, problem = False, f"a reply that is not a chat completion ({type(e).__name__}: {e})"
            if not retry or attempt == self.RETRIES:
                tries = f" after {attempt + 1} tries" if attempt else ""
                raise JudgeError(f"judge {self.name} at {self.url}: {problem}{tries}")
            time.sleep(wait)
            wait *= 2
        raise AssertionError("unreachable")

    def probe(self) -> None:
        """One short request before any training: an unreachable or misconfigured judge fails
        the run before it spends anything."""
        self.ask("Reply with: Rating: [[5]]")

    def replies(self, prompts: Sequence[str]) -> list[str]:
        return [self.ask(prompt) for prompt in prompts]


def build_judge(options: Options) -> Judge:
    """The judge that ``eval.judge``'s parsed options describe."""
    if isinstance(options, HFJudgeOptions):
        return HFJudge(options.model, max_new_tokens=options.max_new_tokens)
    assert isinstance(options, OpenAIJudgeOptions)
    return OpenAIJudge(options.base_url, options.model, options.api_key_env, options.max_new_tokens, options.timeout_s)


def judge_answers(judge: Judge, questions: Sequence[str], answers: Sequence[str]) -> dict[str, Any]:
    """Mean rating over the parsed replies, with counts of parsed and unparsed replies, and each
    answer's rating in order (None where the reply could not be parsed)."""
    replies = judge.replies([judge_prompt(q, a) for q, a in zip(questions, answers)])
    ratings = [parse_rating(r) for r in replies]
    parsed = [r for r in ratings if r is not None]
    return {"score": sum(parsed) / len(parsed) if parsed else None, "parsed": len(parsed),
            "unparsed": len(ratings) - len(parsed), "judge": judge.name, "ratings": ratings}
