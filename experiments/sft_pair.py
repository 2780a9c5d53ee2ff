"""The SFT pair on 2 CPU cores: a base causal LM (recipes/chat-base), supervised fine-tuning on it
(recipes/chat-sft, translation requests from the Tatoeba pairs), and what SFT changed on held-out
conversations (Tatoeba's test split, never trained on by either):

- the loss over the assistant's tokens (end-of-turn included), base vs SFT;
- greedy answers: chrF (sacrebleu) and exact match against the reference, per direction;
- the share of answers that end with the end-of-turn token before the token limit;
- three sample conversations.

The base model is asked through the same template (its vocabulary grown by the two chat tokens,
new rows at the mean of the old ones, as the SFT run starts). Resumable: finished runs are reused,
interrupted ones resume. Writes docs/results/sft_pair.{json,md}.

    python experiments/sft_pair.py [--items 400] [--max-new-tokens 64]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import rotary
from rotary import atomic_write_text, cpu_model

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "docs" / "results"


def finished(run: Path) -> bool:
    state = run / "best" / "trainer_state.json"
    recipe = run / "recipe.yaml"
    if not state.is_file() or not recipe.is_file():
        return False
    import yaml

    steps = yaml.safe_load(recipe.read_text())["max_steps"]
    newest = sorted((run / "checkpoints").glob("step-*"))
    return bool(newest) and int(newest[-1].name.split("-")[1]) >= steps


def train(recipe: str, run: Path, extra: list[str]) -> float:
    """Train (or resume, or reuse) a built-in recipe into ``run``; returns the wall seconds spent now."""
    if finished(run):
        return 0.0
    cmd = [sys.executable, "-m", "rotary", "train", recipe, "--output-dir", str(run), "--progress", "false", *extra]
    if (run / "checkpoints").is_dir():
        cmd.append("--resume")
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True)
    return time.perf_counter() - t0


def train_seconds(run: Path) -> float:
    """The loop's own wall time from its log (``trained N steps in S s``), summed over resumes."""
    import re

    log = (run / "train.log").read_text(encoding="utf-8")
    return sum(float(m) for m in re.findall(r"trained \d+ steps in ([\d.]+)s", log))


def answers(pre: Any, items: list[list[dict[str, str]]], max_new: int) -> list[dict[str, Any]]:
    out = []
    for messages in items:
        done = pre.chat(messages[:-1], max_new, temperature=0)
        out.append({"prompt": messages[-2]["content"], "reference": messages[-1]["content"], "answer": done.text,
                    "stopped": done.finish_reason == "stop"})
    return out


def scores(rows: list[dict[str, Any]]) -> dict[str, Any]:
    import sacrebleu

    out: dict[str, Any] = {}
    for direction, prefix in (("zh-en", "Translate into English"), ("en-zh", "把这句话翻译成中文")):
        mine = [r for r in rows if r["prompt"].startswith(prefix)]
        if not mine:
            continue
        hyps, refs = [r["answer"].strip() for r in mine], [r["reference"] for r in mine]
        tokenize = {"tokenize": "zh"} if direction == "en-zh" else {}
        out[direction] = {
            "items": len(mine),
            "chrF": round(sacrebleu.corpus_chrf(hyps, [refs]).score, 2),
            "BLEU": round(sacrebleu.corpus_bleu(hyps, [refs], **tokenize).score, 2),
            "exact_match": round(sum(h == r for h, r in zip(hyps, refs)) / len(mine), 4),
        }
    out["stop_share"] = round(sum(r["stopped"] for r in rows) / len(rows), 4)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=Path, default=ROOT / "runs")
    ap.add_argument("--items", type=int, default=200, help="held-out conversations to answer (test split)")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    args = ap.parse_args()
    base_run, sft_run = args.runs / "chat-base", args.runs / "chat-sft"
    train("chat-base", base_run, [])
    train("chat-sft", sft_run, ["--init-from", str(base_run)])

    import torch

    torch.set_num_threads(2)
    sft = rotary.load(sft_run, device="cpu")
    base_model = rotary.load(base_run, device="cpu").model
    base_model.grow_vocab(sft.tokenizer.vocab_size)  # the chat tokens, as the SFT run started
    base = rotary.Pretrained(base_model, sft.tokenizer, base_run, {"task": "causal_lm"})
    test = rotary.load_conversations("tatoeba-instruct").split("test")
    # answerable: the prompt and the answer's budget fit the context (the same items for both models)
    fits = [m for m in test if len(sft.chat_prompt(m[:-1])) + args.max_new_tokens <= sft.context]
    step = max(1, len(fits) // args.items)
    items = fits[::step][:args.items]
    result: dict[str, Any] = {
        "machine": cpu_model(), "command": "python experiments/sft_pair.py "
        f"--items {args.items} --max-new-tokens {args.max_new_tokens}",
        "train_seconds": {"chat-base": round(train_seconds(base_run), 1), "chat-sft": round(train_seconds(sft_run), 1)},
        "test_conversations": len(test), "answered": len(items), "max_new_tokens": args.max_new_tokens,
    }
    for name, pre in (("base", base), ("sft", sft)):
        t0 = time.perf_counter()
        loss = rotary.assistant_token_metrics(pre.model, sft.tokenizer, test)
        rows = answers(pre, items, args.max_new_tokens)
        result[name] = {"assistant_loss": round(loss["loss"], 4), "assistant_accuracy": round(loss["accuracy"], 4),
                        "scored_tokens": loss["tokens"], "loss_conversations": loss["conversations"], **scores(rows),
                        "eval_seconds": round(time.perf_counter() - t0, 1),
                        "samples": rows[:3] + [r for r in rows if not r["prompt"].startswith("Translate")][:1]}
    OUT.mkdir(parents=True, exist_ok=True)
    atomic_write_text(OUT / "sft_pair.json", json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    atomic_write_text(OUT / "sft_pair.md", render(result))
    print(render(result))


def render(r: dict[str, Any]) -> str:
    lines = ["# SFT pair: chat-base -> chat-sft (translation requests from Tatoeba)", "",
             f"`{r['command']}` on {r['machine']}. Training wall time: chat-base {r['train_seconds']['chat-base']} s, "
             f"chat-sft {r['train_seconds']['chat-sft']} s. Held out: Tatoeba's test split "
             f"({r['sft']['loss_conversations']} of its {r['test_conversations']} conversations that fit the 128-token "
             f"context for the loss; {r['answered']} answered greedily, up to {r['max_new_tokens']} new tokens).", "",
             "| model | assistant-token loss | accuracy | zh→en chrF | zh→en exact | en→zh chrF | en→zh exact | "
             "ends its turn |", "|---|---|---|---|---|---|---|---|"]
    for name in ("base", "sft"):
        m = r[name]
        zh, en = m.get("zh-en", {}), m.get("en-zh", {})
        lines.append(f"| {name} | {m['assistant_loss']:.3f} | {m['assistant_accuracy']:.3f} | {zh.get('chrF', '-')} | "
                     f"{zh.get('exact_match', '-')} | {en.get('chrF', '-')} | {en.get('exact_match', '-')} | "
                     f"{m['stop_share']:.1%} |")
    lines += ["", "The base model is asked through the same ChatML template (it never saw one; its "
              "stops are mostly its own end-of-text token, which also ends a turn): "
              "SFT trains the assistant's tokens and the end-of-turn token only. "
              "Goal for ending the turn: at least 95%.", "", "Sample conversations (SFT model, greedy):", ""]
    for s in r["sft"]["samples"][:3]:
        lines.append(f"- user: {s['prompt']}  \n  assistant: {s['answer']}  \n  reference: {s['reference']}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
