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
    "sklearn_lib._plotting",
    "sklearn_lib.adapters._torch",
    "sklearn_lib.adapters._check",
    "sklearn_lib.adapters._module",
    "sklearn_lib.adapters._transformer_lens",
    "sklearn_lib.tasks._modular_addition",
    "sklearn_lib.tasks._fourier",
    "sklearn_lib.tasks._presets",
    "sklearn_lib.tasks._text",
    "sklearn_lib.tasks._lm_models",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0, f"{name} has no examples"
    assert result.failed == 0


@pytest.mark.parametrize("package", ["sklearn_lib", "sklearn_lib.tasks"])
def test_public_names_resolve_lazily(package):
    """``__all__`` names import on first use (PEP 562) and show in ``dir()``."""
    module = importlib.import_module(package)
    assert module.__all__ == sorted(module._EXPORTS)
    for name in module.__all__:
        value = getattr(module, name)
        assert value is getattr(importlib.import_module(module._EXPORTS[name]), name)
        assert name in dir(module)
    with pytest.raises(AttributeError, match="has no attribute 'no_such_name'"):
        module.no_such_name  # noqa: B018
    namespace: dict = {}
    exec(f"from {package} import *", namespace)
    assert set(module.__all__) <= set(namespace)


def test_import_is_light():
    """``import sklearn_lib`` loads neither torch nor scikit-learn (the CLI's --help needs it)."""
    import subprocess
    import sys

    code = ("import sys, sklearn_lib, sklearn_lib.tasks; "
            "print([m for m in ('torch', 'sklearn', 'matplotlib') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=str(__import__("pathlib").Path(__file__).resolve().parents[1]))
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
