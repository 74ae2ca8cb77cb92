"""model/compiled.py: element-wise chains compiled where PyTorch can, run as written where it cannot."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F

from cgcnn_lab.model.compiled import MaybeCompiled


def _gate(x: torch.Tensor) -> torch.Tensor:
    return torch.sigmoid(x[..., :4]) * F.softplus(x[..., 4:])


def test_the_compiled_chain_computes_the_function():
    x = torch.randn(3, 50, 8, generator=torch.Generator().manual_seed(0))
    chain = MaybeCompiled(_gate)
    torch.testing.assert_close(chain(x), _gate(x))
    torch.testing.assert_close(chain(x[:, :17]), _gate(x[:, :17]))  # another shape: the same compilation
    assert not chain.failed


def test_a_failed_compilation_runs_the_function_itself_with_one_warning(monkeypatch):
    def no_compiler(fn, **kwargs):
        def compiled(*args):
            raise RuntimeError("InvalidCxxCompiler: No working C++ compiler found")
        return compiled

    monkeypatch.setattr(torch, "compile", no_compiler)
    chain = MaybeCompiled(_gate)
    x = torch.randn(2, 10, 8)
    with pytest.warns(RuntimeWarning, match="_gate.*No working C\\+\\+ compiler.*uncompiled"):
        torch.testing.assert_close(chain(x), _gate(x))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # said once
        torch.testing.assert_close(chain(x), _gate(x))
    assert chain.failed
