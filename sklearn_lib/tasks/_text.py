"""Real English text for language-model experiments, cut into token windows.

The text is Debian's ``fortunes`` collection (``apt-get install fortunes``: about 2.6 MB of
quotations, jokes, definitions and short poems in 43 files under ``/usr/share/games/fortunes``;
``fortunes-min`` alone ships three of them). Each fortune (the text between two ``%`` lines) is
one *document*. The train / test split is drawn over documents with a seeded permutation, so no
fortune contributes tokens to both sides. Within a split the documents are tokenized one by
one, an end-of-text token is appended to each (when the tokenizer has one), the token lists are
concatenated in the split's order and the stream is cut into consecutive, non-overlapping
windows of ``n_positions`` tokens; the last, shorter window is dropped.

See ``docs/language_models.md`` for the choice of text and its licence.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.utils import check_random_state

__all__ = [
    "FORTUNES_DIR",
    "FORTUNES_INSTALL",
    "TextWindows",
    "load_fortunes",
    "load_text_windows",
    "make_token_windows",
    "split_documents",
]

#: Where Debian's ``fortunes`` and ``fortunes-min`` packages put their text files.
FORTUNES_DIR = Path("/usr/share/games/fortunes")
#: The command that installs the text (Debian and Ubuntu).
FORTUNES_INSTALL = "apt-get install fortunes"
# Documents tokenized per call of the tokenizer (the stream stops once enough windows exist).
_CHUNK_DOCUMENTS = 256
# Pictures drawn with characters, not English text.
_EXCLUDED_FILES = frozenset({"ascii-art"})


def _fortune_files(path: Path) -> list[Path]:
    """The text files of a fortune directory: those with a ``strfile`` index beside them."""
    files = sorted(
        p
        for p in path.iterdir()
        if p.is_file()
        and not p.is_symlink()
        and p.suffix not in {".dat", ".u8"}
        and p.with_name(p.name + ".dat").is_file()
        and p.name not in _EXCLUDED_FILES
    )
    return files


def load_fortunes(
    path: str | Path | None = None, *, files: Sequence[str] | None = None
) -> list[str]:
    """Read the documents (one per fortune) of Debian's ``fortunes`` collection.

    Parameters
    ----------
    path : str or Path, default=None
        Directory of the fortune files; ``None`` means ``/usr/share/games/fortunes``, where
        ``apt-get install fortunes`` puts them.
    files : sequence of str, default=None
        File names to read (``["literature", "riddles"]``); ``None`` reads every text file
        of the directory except ``ascii-art``, in sorted order.

    Returns
    -------
    documents : list of str
        The fortunes in file order, each stripped of surrounding white space; empty ones
        and repeats (a fortune already read, from the same or another file) are dropped.

    Raises
    ------
    FileNotFoundError
        When the directory or a requested file does not exist (the message names the
        install command).

    Examples
    --------
    >>> from sklearn_lib.tasks import load_fortunes
    >>> docs = load_fortunes(files=["literature"])  # doctest: +SKIP
    >>> docs[0].startswith("A banker is a fellow")  # doctest: +SKIP
    True
    """
    root = FORTUNES_DIR if path is None else Path(path)
    if not root.is_dir():
        raise FileNotFoundError(
            f"No fortune text found: {str(root)!r} is not a directory. Install Debian's "
            f"fortunes with `{FORTUNES_INSTALL}` (or pass path= a directory of fortune "
            f"files)."
        )
    if files is None:
        paths = _fortune_files(root)
    else:
        paths = [root / name for name in files]
        missing = [p.name for p in paths if not p.is_file()]
        if missing:
            raise FileNotFoundError(
                f"Fortune files {missing} not found in {str(root)!r}. Install them with "
                f"`{FORTUNES_INSTALL}` or choose files among "
                f"{[p.name for p in _fortune_files(root)]}."
            )
    if not paths:
        raise FileNotFoundError(
            f"No fortune files (a text file with a '.dat' index beside it) in {str(root)!r}. "
            f"Install them with `{FORTUNES_INSTALL}`."
        )
    documents: list[str] = []
    for p in paths:
        text = p.read_text(encoding="utf-8", errors="replace")
        parts = text.replace("\r\n", "\n").split("\n%\n")
        documents.extend(d.strip("\n%").strip() for d in parts)
    # A few fortunes are in two files; keeping the first copy keeps test documents out of
    # the training side.
    return list(dict.fromkeys(d for d in documents if d))


def split_documents(
    documents: Sequence[str], *, test_size: float = 0.1, random_state: Any = 0
) -> tuple[list[str], list[str]]:
    """Split documents into train and test sides with a seeded permutation.

    Parameters
    ----------
    documents : sequence of str
    test_size : float, default=0.1
        Fraction of the documents (rounded up) that go to the test side; in ``(0, 1)``.
    random_state : int, RandomState instance or None, default=0
        Seeds the permutation; the permuted order is also the order of each side.

    Returns
    -------
    train, test : list of str

    Examples
    --------
    >>> from sklearn_lib.tasks import split_documents
    >>> train, test = split_documents([f"doc {i}" for i in range(10)], test_size=0.2)
    >>> len(train), len(test)
    (8, 2)
    """
    if not isinstance(test_size, float | int) or not 0.0 < float(test_size) < 1.0:
        raise ValueError(
            f"test_size must be a float in the range (0, 1). Got {test_size!r} instead."
        )
    n = len(documents)
    n_test = int(np.ceil(test_size * n))
    if n < 2 or n_test >= n:
        raise ValueError(
            f"Cannot split {n} document(s) with test_size={test_size}: both sides need at "
            f"least one document. Pass more documents or a smaller test_size."
        )
    order = check_random_state(random_state).permutation(n)
    test = [documents[i] for i in order[:n_test]]
    train = [documents[i] for i in order[n_test:]]
    return train, test


def _encoder(tokenizer: Any) -> Callable[[list[str]], list[list[int]]]:
    """A batch encoder for a HuggingFace tokenizer, a ``tokenizers.Tokenizer`` or a callable."""
    if hasattr(tokenizer, "encode_batch"):  # tokenizers.Tokenizer
        return lambda docs: [e.ids for e in tokenizer.encode_batch(docs, add_special_tokens=False)]
    if hasattr(tokenizer, "batch_encode_plus") or hasattr(tokenizer, "pad_token_id"):
        # transformers PreTrainedTokenizerBase: no BOS/EOS added, we place end-of-text ourselves
        return lambda docs: list(tokenizer(docs, add_special_tokens=False)["input_ids"])
    if callable(tokenizer):
        return lambda docs: [list(tokenizer(d)) for d in docs]
    raise TypeError(
        f"tokenizer must be a transformers tokenizer, a tokenizers.Tokenizer or a callable "
        f"mapping a string to token ids. Got {type(tokenizer).__name__} instead."
    )


def _default_eos(tokenizer: Any) -> int | None:
    """The tokenizer's end-of-text id, or ``None`` when it has none."""
    eos = getattr(tokenizer, "eos_token_id", None)
    if eos is not None:
        return int(eos)
    if hasattr(tokenizer, "token_to_id"):  # tokenizers.Tokenizer
        for name in ("<|endoftext|>", "</s>", "<|im_end|>"):
            tid = tokenizer.token_to_id(name)
            if tid is not None:
                return int(tid)
    return None


def make_token_windows(
    documents: Sequence[str],
    tokenizer: Any,
    n_positions: int,
    *,
    n_sequences: int | None = None,
    eos_token_id: int | str | None = "auto",
) -> np.ndarray:
    """Tokenize documents and cut the token stream into windows of ``n_positions`` tokens.

    Parameters
    ----------
    documents : sequence of str
        Tokenized in order, one after the other.
    tokenizer : transformers tokenizer, tokenizers.Tokenizer or callable
        A callable maps one string to a list of token ids. Special tokens are not added.
    n_positions : int
        Tokens per window, at least 2 (a window holds inputs and their next-token labels).
    n_sequences : int, default=None
        Number of windows to return, the first ones of the stream; ``None`` returns all.
    eos_token_id : int, "auto" or None, default="auto"
        Appended after every document. ``"auto"`` takes the tokenizer's end-of-text token
        (``eos_token_id``, or ``<|endoftext|>`` / ``</s>`` of a ``tokenizers.Tokenizer``),
        none if it has none; ``None`` appends nothing.

    Returns
    -------
    windows : ndarray of shape (n_sequences, n_positions), dtype int64
        Consecutive, non-overlapping windows; the trailing tokens that do not fill a window
        are dropped.

    Raises
    ------
    ValueError
        When ``n_positions`` or ``n_sequences`` is not a positive int, or when the documents
        give fewer windows than ``n_sequences`` (the message says how many they give).

    Examples
    --------
    >>> from sklearn_lib.tasks import make_token_windows
    >>> by_chars = lambda text: [ord(c) for c in text]
    >>> make_token_windows(["abcde", "fgh"], by_chars, 3, eos_token_id=0)
    array([[ 97,  98,  99],
           [100, 101,   0],
           [102, 103, 104]])
    """
    for name, value, low in (("n_positions", n_positions, 2), ("n_sequences", n_sequences, 1)):
        if value is None and name == "n_sequences":
            continue
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < low:
            raise ValueError(
                f"{name} must be an int in the range [{low}, inf). Got {value!r} instead."
            )
    if isinstance(eos_token_id, str) and eos_token_id != "auto":
        raise ValueError(
            f"eos_token_id must be an int, 'auto' or None. Got {eos_token_id!r} instead."
        )
    eos = _default_eos(tokenizer) if eos_token_id == "auto" else eos_token_id
    tail = [] if eos is None else [int(eos)]
    encode = _encoder(tokenizer)
    documents = list(documents)
    needed = None if n_sequences is None else n_sequences * n_positions
    pieces, n_tokens = [], 0
    # Tokenize in chunks of documents and stop once the windows asked for are filled.
    for start in range(0, len(documents), _CHUNK_DOCUMENTS):
        ids = encode(documents[start : start + _CHUNK_DOCUMENTS])
        pieces.append(np.fromiter((t for doc in ids for t in (*doc, *tail)), dtype=np.int64))
        n_tokens += pieces[-1].size
        if needed is not None and n_tokens >= needed:
            break
    stream = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.int64)
    n_available = stream.size // n_positions
    if n_sequences is not None and n_sequences > n_available:
        raise ValueError(
            f"The {len(documents)} documents give {stream.size} tokens, that is "
            f"{n_available} windows of {n_positions} tokens, fewer than n_sequences="
            f"{n_sequences}. Ask for fewer or shorter windows, or pass more text."
        )
    n_out = n_available if n_sequences is None else int(n_sequences)
    return stream[: n_out * n_positions].reshape(n_out, n_positions).copy()


@dataclass(frozen=True)
class TextWindows:
    """Token windows of a document-level train / test split.

    Attributes
    ----------
    X_train, X_test : ndarray of shape (n_sequences, n_positions), dtype int64
        Token windows; the next-token labels of ``X[:, :-1]`` are ``X[:, 1:]``.
    documents_train, documents_test : list of str
        The documents of each side, in the order their tokens were cut.
    """

    X_train: np.ndarray
    X_test: np.ndarray
    documents_train: list[str]
    documents_test: list[str]


def load_text_windows(
    tokenizer: Any,
    n_positions: int = 64,
    *,
    n_train: int | None = None,
    n_test: int | None = None,
    test_size: float = 0.1,
    random_state: Any = 0,
    documents: Sequence[str] | None = None,
    path: str | Path | None = None,
) -> TextWindows:
    """Token windows of real English text, split by document into train and test sides.

    Reads Debian's ``fortunes`` (:func:`load_fortunes`) unless ``documents`` are given,
    splits them with :func:`split_documents` and cuts each side with
    :func:`make_token_windows`.

    Parameters
    ----------
    tokenizer : transformers tokenizer, tokenizers.Tokenizer or callable
        See :func:`make_token_windows`.
    n_positions : int, default=64
        Tokens per window.
    n_train, n_test : int, default=None
        Windows per side; ``None`` returns all full windows.
    test_size : float, default=0.1
        Fraction of the documents on the test side.
    random_state : int, RandomState instance or None, default=0
        Seeds the document split.
    documents : sequence of str, default=None
        Documents to use instead of the fortunes.
    path : str or Path, default=None
        Directory of the fortune files (see :func:`load_fortunes`).

    Returns
    -------
    windows : TextWindows

    Examples
    --------
    >>> from sklearn_lib.tasks import load_text_windows
    >>> by_chars = lambda text: [ord(c) for c in text]
    >>> docs = [f"document number {i}." for i in range(20)]
    >>> w = load_text_windows(by_chars, 8, documents=docs, test_size=0.25, n_test=4)
    >>> w.X_train.shape, w.X_test.shape
    ((34, 8), (4, 8))
    """
    docs = load_fortunes(path) if documents is None else list(documents)
    train, test = split_documents(docs, test_size=test_size, random_state=random_state)
    return TextWindows(
        X_train=make_token_windows(train, tokenizer, n_positions, n_sequences=n_train),
        X_test=make_token_windows(test, tokenizer, n_positions, n_sequences=n_test),
        documents_train=train,
        documents_test=test,
    )
