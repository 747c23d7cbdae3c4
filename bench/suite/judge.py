"""LLM judge for open-ended answers on the paper's 1-10 scale.

Single-answer grading in the MT-Bench style: the judge sees the instruction and the answer and
must reply with ``[[rating]]``. Two back ends: a local Hugging Face model (``kind = "hf"``) or
any OpenAI-compatible chat-completions server (``kind = "openai"``, plain HTTP, the key read
from the environment variable named by ``api_key_env``). Replies that carry no rating in 1-10
are counted as unparsed and reported, never silently dropped or guessed.
"""

from __future__ import annotations

import json
import os
import re
import urllib.request
from collections.abc import Sequence
from typing import Any, Protocol

JUDGE_KEYS: dict[str, dict[str, set[str]]] = {
    "hf": {"required": {"kind", "model"}, "allowed": {"kind", "model", "max_new_tokens"}},
    "openai": {"required": {"kind", "base_url", "model"},
               "allowed": {"kind", "base_url", "model", "api_key_env", "max_new_tokens", "timeout_s"}},
}

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


class OpenAIJudge:
    """Any OpenAI-compatible ``/chat/completions`` endpoint, temperature 0."""

    def __init__(self, base_url: str, model: str, api_key_env: str | None = None, max_new_tokens: int = 32,
                 timeout_s: float = 60.0) -> None:
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model, self.max_new_tokens, self.timeout_s = model, max_new_tokens, timeout_s
        self.key = os.environ.get(api_key_env, "") if api_key_env else ""
        if api_key_env and not self.key:
            raise ValueError(f"judge: environment variable {api_key_env} (eval.judge.api_key_env) is not set")
        self.name = f"openai:{model}"

    def replies(self, prompts: Sequence[str]) -> list[str]:
        out = []
        for prompt in prompts:
            body = json.dumps({"model": self.model, "temperature": 0, "max_tokens": self.max_new_tokens,
                               "messages": [{"role": "user", "content": prompt}]}).encode()
            headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {self.key}"} if self.key else {})}
            request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:  # noqa: S310 - configured URL
                reply = json.loads(response.read())
            out.append(reply["choices"][0]["message"]["content"] or "")
        return out


def build_judge(config: dict[str, Any]) -> Judge:
    if config["kind"] == "hf":
        return HFJudge(config["model"], max_new_tokens=int(config.get("max_new_tokens", 32)))
    return OpenAIJudge(config["base_url"], config["model"], config.get("api_key_env"),
                       int(config.get("max_new_tokens", 32)), float(config.get("timeout_s", 60.0)))


def judge_answers(judge: Judge, questions: Sequence[str], answers: Sequence[str]) -> dict[str, Any]:
    """Mean rating over the parsed replies, with counts of parsed and unparsed replies."""
    replies = judge.replies([judge_prompt(q, a) for q, a in zip(questions, answers)])
    ratings = [parse_rating(r) for r in replies]
    parsed = [r for r in ratings if r is not None]
    return {"score": sum(parsed) / len(parsed) if parsed else None, "parsed": len(parsed),
            "unparsed": len(ratings) - len(parsed), "judge": judge.name}
