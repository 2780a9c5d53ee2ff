"""Supervised fine-tuning (task sft): the chat template, the loss mask, packing, vocabulary
growth, and the ways to use the result (pre.chat, rotary chat, serve, transformers)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from rotary import cli
from rotary.chat.template import DEFAULT_TEMPLATE, TURN_END, render
from rotary.data.sft import collate, encode_conversations
from rotary.errors import RotaryError
from rotary.labels import IGNORE_INDEX
from rotary.train.loop import train
from tests.train_support import make_recipe, write_corpus

CONTEXT = 128
CONVERSATIONS = [
    [{"role": "user", "content": f"say {i}"}, {"role": "assistant", "content": f"{i} and {i}"}] for i in range(40)
] + [
    [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"},
     {"role": "assistant", "content": "hello"}, {"role": "user", "content": f"count {i}"},
     {"role": "assistant", "content": f"{i}, {i + 1}"}] for i in range(20)
]


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def sft_recipe(root: Path, name: str, corpus: Path, base: Path, **overrides):
    data = {"corpus": str(corpus), "val_fraction": 0.2, **overrides.pop("data", {})}
    return make_recipe(root / name, corpus, task="sft", init_from=str(base), data=data, seq_len=CONTEXT,
                       model={"preset": "tiny", "max_seq_len": CONTEXT}, **overrides)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("sft")
    corpus = write_corpus(root / "corpus")
    train(make_recipe(root / "base", corpus, max_steps=2, checkpoint_interval=2, seq_len=CONTEXT,
                      model={"preset": "tiny", "max_seq_len": CONTEXT}))
    chats = write_jsonl(root / "chats.jsonl", [{"messages": m} for m in CONVERSATIONS])
    # long enough to learn the replies and to end them (a tiny model: seconds)
    train(sft_recipe(root, "sft", chats, root / "base", max_steps=150, eval_interval=50, checkpoint_interval=50))
    return root, chats


@pytest.fixture(scope="module")
def pre(runs):
    from rotary.infer.pretrained import load

    return load(runs[0] / "sft", device="cpu")


def test_the_template_renders_and_marks_spans_as_transformers_does(pre):
    from transformers.utils.chat_template_utils import render_jinja_template

    specials = pre.tokenizer.hf_special_tokens()
    for messages in (CONVERSATIONS[0], CONVERSATIONS[-1]):
        ours = render(DEFAULT_TEMPLATE, messages, special_tokens=specials)
        texts, spans = render_jinja_template([messages], chat_template=DEFAULT_TEMPLATE,
                                             return_assistant_tokens_mask=True, **specials)
        assert ours.text == texts[0] and ours.assistant_spans == [tuple(s) for s in spans[0]]
        assert [ours.text[a:b] for a, b in ours.assistant_spans] == [
            m["content"] + TURN_END for m in messages if m["role"] == "assistant"]


def test_the_saved_tokenizer_gives_transformers_the_same_ids_and_mask(runs, pre):
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(str(runs[0] / "sft" / "tokenizer"))
    assert hf.chat_template == pre.tokenizer.chat_template
    messages = CONVERSATIONS[-1]
    out = hf.apply_chat_template(messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    (ours,) = encode_conversations(pre.tokenizer, pre.tokenizer.chat_template, [messages])
    assert list(out["input_ids"]) == ours.ids.tolist()
    assert list(out["assistant_masks"]) == ours.scored.astype(int).tolist()
    prompt = hf.apply_chat_template(messages[:-1], add_generation_prompt=True, tokenize=True, return_dict=True)
    assert list(prompt["input_ids"]) == pre.chat_prompt(messages[:-1])


def test_the_loss_covers_each_assistant_turn_to_its_end_of_turn_and_nothing_else(pre):
    tok = pre.tokenizer
    bos = tok.token_to_id(tok.hf_special_tokens()["bos_token"])
    examples = encode_conversations(tok, tok.chat_template, CONVERSATIONS)
    for messages, e in zip(CONVERSATIONS, examples):
        assert e.ids[0] == bos and e.ids[1] != bos  # one BOS: the template's, none added by encoding
        targets = e.targets
        scored = np.flatnonzero(targets != IGNORE_INDEX)
        # the scored positions form one run per assistant turn, each ending at the end-of-turn id
        runs_ = np.split(scored, np.flatnonzero(np.diff(scored) > 1) + 1)
        answers = [m["content"] for m in messages if m["role"] == "assistant"]
        assert len(runs_) == len(answers)
        for run, answer in zip(runs_, answers):
            assert targets[run[-1]] == tok.end_of_turn_id
            assert tok.decode(targets[run].tolist()) == answer


def test_a_pad_id_equal_to_eos_never_hides_a_label(pre):
    """rotary's BPE tokenizer has no [PAD]: batches pad with the EOS id. An assistant turn that
    writes the EOS token itself keeps it as a label (the mask is by position, not by value);
    only the padding is ignored."""
    from rotary.tokenizer.tokenizer import EOT

    tok = pre.tokenizer
    assert tok.pad_id is None
    short = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": f"bye{EOT}"}]
    examples = encode_conversations(tok, tok.chat_template, [short, CONVERSATIONS[-1]])
    ids, targets, _, documents = collate(examples, tok.eos_id, packing=False, capacity=CONTEXT)
    labels = targets[0][targets[0] != IGNORE_INDEX].tolist()
    assert labels[-2:] == [tok.eos_id, tok.end_of_turn_id]
    assert (targets[0][documents[0] < 0] == IGNORE_INDEX).all() and (ids[0][documents[0] < 0] == tok.eos_id).all()


def test_packing_gives_the_unpacked_loss(pre):
    tok = pre.tokenizer
    examples = encode_conversations(tok, tok.chat_template, CONVERSATIONS[:5] + CONVERSATIONS[-3:])
    pad = tok.eos_id
    packed = collate(examples, pad, packing=True, capacity=CONTEXT)
    plain = collate(examples, pad, packing=False, capacity=CONTEXT)
    assert packed[0].shape[0] < plain[0].shape[0]  # fewer rows
    model = pre.model.eval()

    def stats(batch):
        ids, targets, positions, documents = batch
        return model(ids, targets=targets, position_ids=positions, document_ids=documents, return_stats=True)

    one_by_one = sum(stats(collate([e], pad, packing=False, capacity=CONTEXT)) for e in examples)
    torch.testing.assert_close(stats(packed), one_by_one, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(stats(plain), one_by_one, rtol=1e-5, atol=1e-4)
    # positions restart at every conversation
    ids, _, positions, documents = packed
    starts = (positions == 0) & (documents >= 0)
    assert int(starts.sum()) == len(examples)


def test_packed_training_ends_where_unpacked_training_ends(runs, pre):
    from safetensors.torch import load_file

    from rotary.infer.pretrained import load

    root, chats = runs
    for name, packing in (("sft6", False), ("sft6-packed", True)):
        train(sft_recipe(root, name, chats, root / "base", max_steps=6, eval_interval=3, checkpoint_interval=3,
                         data={"packing": packing}))
    a = load_file(str(root / "sft6" / "checkpoints" / "step-0000006" / "model.safetensors"))
    b = load_file(str(root / "sft6-packed" / "checkpoints" / "step-0000006" / "model.safetensors"))
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)
    packed = load(root / "sft6-packed", device="cpu", which="latest")
    unpacked = load(root / "sft6", device="cpu", which="latest")
    for messages in (CONVERSATIONS[1][:1], CONVERSATIONS[-1][:-1]):
        assert packed.chat(messages, 12, temperature=0).token_ids == unpacked.chat(messages, 12,
                                                                                   temperature=0).token_ids


def test_growing_the_vocabulary_keeps_every_old_logit(runs):
    from rotary.infer.pretrained import load

    base = load(runs[0] / "base", device="cpu").model.eval()
    ids = torch.randint(0, base.config.vocab_size, (2, 12))
    before = base(ids)
    base.grow_vocab(base.config.vocab_size + 3)
    after = base(ids)
    assert after.shape[-1] == before.shape[-1] + 3
    torch.testing.assert_close(after[..., :before.shape[-1]], before, rtol=0, atol=0)


def test_the_sft_run_starts_from_the_base_and_records_its_grown_vocabulary(runs, pre):
    log = (runs[0] / "sft" / "train.log").read_text()
    assert "(init_from)" in log and "vocabulary grown" in log
    base_vocab = json.loads((runs[0] / "base" / "best" / "config.json").read_text())["model"]["vocab_size"]
    assert pre.model.config.vocab_size == base_vocab + 2 == pre.tokenizer.vocab_size
    assert pre.task == "sft"


def test_rotary_chat_reads_stdin_and_answers_as_pre_chat(runs, pre, monkeypatch, capsys):
    monkeypatch.setattr("sys.stdin", io.StringIO("say 3\n/reset\n\nsay 4\n/exit\nsay 5\n"))
    assert cli.main(["chat", str(runs[0] / "sft"), "--temperature", "0", "--max-new-tokens", "8",
                     "--device", "cpu"]) == 0
    out = capsys.readouterr().out.splitlines()
    want = [pre.chat([{"role": "user", "content": q}], 8, temperature=0).text for q in ("say 3", "say 4")]
    assert out == [want[0], "(conversation reset)", want[1]]


def test_a_long_conversation_drops_its_oldest_turns(pre):
    from rotary.chat.session import ChatSession

    session = ChatSession(pre, system="be brief", max_new_tokens=8)
    dropped = []
    for i in range(6):
        session.ask(f"say {i} " * 3, on_dropped=dropped.append, temperature=0)
    assert sum(dropped) > 0 and session.messages()[0] == {"role": "system", "content": "be brief"}
    assert len(pre.chat_prompt(session.messages())) <= pre.context
    assert session.turns[0]["role"] == "user"


def test_transformers_chats_as_rotary_does_after_export_and_back(runs, pre, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert cli.main(["convert", str(runs[0] / "sft"), "--to", "hf", str(tmp_path / "hf")]) == 0
    hf_tok = AutoTokenizer.from_pretrained(str(tmp_path / "hf"))
    hf_model = AutoModelForCausalLM.from_pretrained(str(tmp_path / "hf")).eval()
    messages = CONVERSATIONS[-1][:-1]
    ids = hf_tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = hf_model.generate(**ids, max_new_tokens=12, do_sample=False)
    ours = pre.chat(messages, 12, temperature=0)
    theirs = out[0, ids["input_ids"].shape[1]:].tolist()
    stops = {pre.tokenizer.eos_id, pre.tokenizer.end_of_turn_id}
    assert [t for t in theirs if t not in stops] == ours.token_ids
    assert (theirs[-1] in stops) == (ours.finish_reason == "stop")
    # and back: a transformers chat model converted into rotary chats with its template and stops
    from rotary.infer.pretrained import load

    assert cli.main(["convert", str(tmp_path / "hf"), "--from-hf", str(tmp_path / "back")]) == 0
    back = load(tmp_path / "back", device="cpu")
    assert back.tokenizer.chat_template == pre.tokenizer.chat_template
    assert back.tokenizer.end_of_turn_id == pre.tokenizer.end_of_turn_id
    again = back.chat(messages, 12, temperature=0)
    assert (again.token_ids, again.finish_reason, again.text) == (ours.token_ids, ours.finish_reason, ours.text)


@pytest.mark.parametrize("rows, message", [
    ([{"messages": [{"role": "user", "content": "hi"}]}], "has no assistant turn"),
    ([{"messages": [{"role": "robot", "content": "hi"}, {"role": "assistant", "content": "x"}]}], "unknown role"),
    ([{"text": "just text"}], "a row needs messages"),
])
def test_bad_conversations_are_one_line_and_write_nothing(runs, tmp_path, capsys, rows, message):
    root, _ = runs
    bad = write_jsonl(tmp_path / "bad.jsonl", rows * 30)
    out = tmp_path / "run"
    assert cli.main(["train", "--task", "sft", "--init-from", str(root / "base"), "--data.corpus", str(bad),
                     "--output-dir", str(out), "--max-steps", "1"]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not out.exists()


def test_a_template_that_fails_and_a_conversation_over_the_context_are_refused(runs, tmp_path, capsys):
    root, chats = runs
    long = write_jsonl(tmp_path / "long.jsonl", [{"messages": m} for m in CONVERSATIONS]
                       + [{"prompt": "tell me " * 200, "response": "no"}])
    cases = [
        (["--data.chat_template", "{{ raise_exception('no such thing') }}{% generation %}x{% endgeneration %}",
          "--data.corpus", str(chats)], "chat template failed to render: no such thing"),
        (["--data.chat_template", "{% for m in messages %}{{ m['content'] }}{% endfor %}", "--data.corpus",
          str(chats)], "marks no assistant text"),
        (["--data.corpus", str(long)], "over the context"),
    ]
    for extra, message in cases:
        out = tmp_path / "run"
        assert cli.main(["train", "--task", "sft", "--init-from", str(root / "base"), "--output-dir", str(out),
                         "--max-steps", "1", "--seq-len", str(CONTEXT), *extra]) == 2, extra
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
        assert not out.exists()
    # data.drop_long leaves the long conversation out and says so
    out = tmp_path / "dropped"
    assert cli.main(["train", "--task", "sft", "--init-from", str(root / "base"), "--output-dir", str(out),
                     "--max-steps", "1", "--seq-len", str(CONTEXT), "--data.corpus", str(long),
                     "--data.drop_long", "true", "--progress", "false"]) == 0
    assert "conversations longer than the context" in (out / "train.log").read_text()


def test_the_trained_model_answers_and_ends_its_turn(pre):
    import re

    for i in (3, 7):  # the reply's form, then the end of the turn (150 steps of a tiny model)
        done = pre.chat([{"role": "user", "content": f"say {i}"}], 16, temperature=0)
        assert done.finish_reason == "stop" and re.fullmatch(r"\d+ and \d+", done.text), done


def test_serve_chat_completions_use_the_template_and_stop_at_end_of_turn(pre):
    import openai

    from rotary.infer.serve import create_app
    from tests.infer.test_serve import live

    with live(create_app(pre, slots=2, max_queue=8, model_name="chat")) as server:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60)
        messages = CONVERSATIONS[2][:-1]
        want = pre.chat(messages, 16, temperature=0)
        assert want.finish_reason == "stop"
        got = client.chat.completions.create(model="chat", messages=messages, max_tokens=16, temperature=0)
        assert got.choices[0].message.content == want.text and got.choices[0].finish_reason == "stop"
        assert got.usage.prompt_tokens == len(pre.chat_prompt(messages))
        assert got.usage.completion_tokens == len(want.token_ids) + 1  # the end-of-turn token counts
        stream = client.chat.completions.create(model="chat", messages=messages, max_tokens=16, temperature=0,
                                                stream=True)
        chunks = [c for c in stream if c.choices]
        assert "".join(c.choices[0].delta.content or "" for c in chunks) == want.text
        assert chunks[-1].choices[0].finish_reason == "stop"
        with pytest.raises(openai.BadRequestError):
            client.chat.completions.create(model="chat", messages=[{"role": "user", "content": "x" * 2000}],
                                           max_tokens=16)
        info = json.loads(__import__("urllib.request").request.urlopen(server.url + "/tokenizer_info").read())
        assert info["chat_template"] == pre.tokenizer.chat_template


def test_the_chat_guides_python_snippet_runs_as_written(runs, monkeypatch, capsys):
    import re

    guide = (Path(__file__).resolve().parents[2] / "docs" / "guides" / "chat.md").read_text(encoding="utf-8")
    (code,) = [b for b in re.findall(r"^```python\n(.*?)^```", guide, flags=re.S | re.M) if "pre.chat(" in b]
    monkeypatch.chdir(runs[0].parent)
    (runs[0].parent / "runs").mkdir(exist_ok=True)
    link = runs[0].parent / "runs" / "chat-sft"
    if not link.exists():
        link.symlink_to(runs[0] / "sft")
    exec(compile(code, "docs/guides/chat.md:python", "exec"), {})
    assert capsys.readouterr().out.strip()


def test_an_imported_tokenizer_keeps_its_chat_template(pre, tmp_path):
    from rotary.tokenizer import load_tokenizer

    hf = pre.tokenizer.to_hf()
    hf.chat_template = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    hf.save_pretrained(str(tmp_path / "hf"))  # transformers' own files (chat_template.jinja or the config)
    tok = load_tokenizer(tmp_path / "hf")
    assert tok.chat_template == hf.chat_template
    tok.save(tmp_path / "again")
    saved = json.loads((tmp_path / "again" / "tokenizer_config.json").read_text(encoding="utf-8"))
    assert saved["chat_template"] == hf.chat_template
    assert load_tokenizer(tmp_path / "again").chat_template == hf.chat_template


def test_a_run_without_a_template_is_told_what_to_do(runs):
    from rotary.infer.pretrained import load

    with pytest.raises(RotaryError, match="has no chat template"):
        load(runs[0] / "base", device="cpu").chat([{"role": "user", "content": "hi"}])


def test_rotary_eval_scores_an_sft_run_on_held_out_conversations(runs, pre, tmp_path, capsys):
    """`rotary eval` on an SFT run: the assistant-token loss as assistant_token_metrics computes
    it, and greedy answers scored by chrF, exact match and the share that end their turn."""
    import json

    from rotary import assistant_token_metrics
    from rotary.cli import main
    from rotary.data.sources.conversations import load_conversations

    root, chats = runs
    assert main(["eval", str(root / "sft"), "--corpus", str(chats), "--split", "train", "--device", "cpu",
                 "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    record = json.loads((tmp_path / "eval.json").read_text())
    train_split = load_conversations(str(chats)).split("train")
    want = assistant_token_metrics(pre.model, pre.tokenizer, train_split)
    assert record["loss"] == pytest.approx(want["loss"], rel=1e-6) and record["tokens"] == want["tokens"]
    # fewer than 100 conversations: every one whose prompt leaves room for 64 new tokens is
    # answered; the scores recomputed from pre.chat
    import sacrebleu

    fits = [m for m in train_split if len(pre.chat_prompt(m[:-1])) + 64 <= pre.context]
    answers = [pre.chat(m[:-1], 64, temperature=0) for m in fits]
    hyps, refs = [a.text.strip() for a in answers], [m[-1]["content"].strip() for m in fits]
    assert record["answered"] == len(fits) < 100 and len(fits) >= len(train_split) // 2
    assert record["chrF"] == pytest.approx(sacrebleu.corpus_chrf(hyps, [refs]).score)
    assert record["exact_match"] == pytest.approx(sum(h == r for h, r in zip(hyps, refs)) / len(hyps))
    assert record["ends_turn"] == pytest.approx(sum(a.finish_reason == "stop" for a in answers) / len(hyps))
    assert record["ends_turn"] > 0.9 and record["chrF"] > 20  # it learned the replies' form and their end
    assert "chrF" in printed and "ends_turn" in printed and "sample" in printed


def test_a_chitchat_chat_becomes_alternating_windows_opened_by_the_user():
    from rotary.data.sources.chitchat import WINDOW_TURNS, chat_windows

    def msg(sender: str, text: str) -> dict:
        return {"sender": sender, "text": text, "timestamp": ""}

    chat = {"messages": [[msg("a", "hi"), msg("a", "there")], [msg("b", "hello")], [msg("b", "again")],
                         [msg("a", " ")], *[[msg("ab"[i % 2], f"t{i}")] for i in range(9)]]}
    (first, second) = chat_windows(chat, "test")
    # consecutive turns of one person merge (b's two turns, and a's blank turn vanishes into nothing)
    assert first[:2] == [{"role": "user", "content": "hi\nthere"}, {"role": "assistant", "content": "hello\nagain"}]
    for window in (first, second):
        assert len(window) <= WINDOW_TURNS and window[0]["role"] == "user" and window[-1]["role"] == "assistant"
        assert all(a["role"] != b["role"] for a, b in zip(window, window[1:]))
    assert chat_windows({"messages": [[msg("a", "x")], [msg("a", "y")]]}, "test") == []  # one person: no chat


def test_the_chitchat_conversations_come_pinned_from_pypi():
    """The built-in multi-turn set: chitchat-dataset==0.9.0's 4,018 two-person chats in windows."""
    from rotary.data.sources.conversations import load_conversations

    data = load_conversations("chitchat")
    sizes = {s: len(data.split(s)) for s in ("train", "val", "test")}
    assert sizes == {"train": 21484, "val": 1179, "test": 1182}
    assert data.split("train")[0][0] == {"role": "user", "content": "Hello\nHow are you doing today?"}


def test_the_chatterbot_dialogues_come_pinned_from_pypi_in_english_and_chinese():
    from rotary.data.sources.chatterbot import dialogue_messages
    from rotary.data.sources.conversations import load_conversations

    assert dialogue_messages(["hi", "hello", "bye"]) == [{"role": "user", "content": "hi"},
                                                          {"role": "assistant", "content": "hello"}]
    assert dialogue_messages(["alone"]) == [] and dialogue_messages("q - a") == []
    data = load_conversations("chatterbot")
    every = [m for s in ("train", "val", "test") for m in data.split(s)]
    assert len(every) == 2026 + 467 - 1  # the English and Chinese dialogues, less the one flattened to a string
    assert any("\u4e00" <= ch <= "\u9fff" for m in every for ch in m[0]["content"])
    assert all(m[-1]["role"] == "assistant" and len(m) % 2 == 0 for m in every)


def test_an_offline_first_use_or_a_foreign_wheel_of_a_conversation_set_is_one_line(tmp_path, monkeypatch):
    import rotary.data.sources.chatterbot as cb
    from rotary.errors import RotaryError as Error

    monkeypatch.setenv("ROTARY_CACHE", str(tmp_path / "cache"))

    def offline(dest):
        raise Error("pip could not download chatterbot-corpus==1.3.3 (no network)")

    monkeypatch.setattr(cb, "_run_pip", offline)
    with pytest.raises(Error, match=r"chatterbot is not cached and pip could not download .*pip download --no-deps"):
        cb.chatterbot_wheel()
    monkeypatch.setattr(cb, "_run_pip", lambda dest: (dest / cb.WHEEL).write_bytes(b"not the wheel"))
    with pytest.raises(Error, match="is not the pinned one"):
        cb.chatterbot_wheel()
    assert not (tmp_path / "cache" / "chatterbot" / cb.WHEEL).exists()  # nothing half-kept


def test_the_xiehouyu_sayings_are_instructions_with_checkable_answers():
    """jionlp==1.5.31's 17,151 saying lines: 14,117 distinct first halves, each asking for its ending."""
    from rotary.data.sources.conversations import load_conversations
    from rotary.data.sources.xiehouyu import PROMPT, sayings

    assert sayings("一个巴掌\t拍不响\n一个模子出来的\t一个样\n一个模子出来的\t一模一样\n\t\n") == {
        "一个巴掌": ["拍不响"], "一个模子出来的": ["一个样", "一模一样"]}
    data = load_conversations("xiehouyu-instruct")
    every = [m for s in ("train", "val", "test") for m in data.split(s)]
    assert len(every) == 14117 and len(data.split("test")) > 600
    assert [{"role": "user", "content": PROMPT.format("一个巴掌")}, {"role": "assistant", "content": "拍不响"}] in every
