"""The Examples sections of the public docstrings run and print what they say."""

import doctest
import importlib

import pytest

MODULES = [
    "sklearn_lib._whitening",
    "sklearn_lib._interaction",
    "sklearn_lib._edges",
    "sklearn_lib._ablation",
    "sklearn_lib._graph",
    "sklearn_lib.adapters._torch",
    "sklearn_lib.adapters._transformer_lens",
    "sklearn_lib.tasks._modular_addition",
    "sklearn_lib.tasks._fourier",
    "sklearn_lib.tasks._text",
    "sklearn_lib.tasks._lm_models",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0, f"{name} has no examples"
    assert result.failed == 0
