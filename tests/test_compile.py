"""torch.compile(fullgraph=True) of the A2Net head on the Triton path: forward and backward equal eager."""

import pytest
import torch
from torch import nn

from a2net.layers import FeatureCorrelation
from a2net.model import FeatureRegression
from a2net.ops import TRITON_CALLS


class Head(nn.Module):
    """Correlation -> OAC -> BN/ReLU -> 7x7 conv -> position code -> attention -> linear."""

    def __init__(self, feature_size, output_dim=6, channels=16, fused=False):
        super().__init__()
        self.fused = fused
        self.correlation = FeatureCorrelation(input_precision="ieee")
        self.regression = FeatureRegression(output_dim, feature_size, channels=channels, input_precision="ieee")

    def forward(self, source, target):
        if self.fused:  # A2Net's default: correlation and OAC in one op
            return self.regression.forward_features(source, target)
        return self.regression(self.correlation(source, target), source_size=tuple(source.shape[2:]))


@pytest.mark.parametrize("fused", [False, True], ids=["unfused", "fused"])
def test_compiled_head_forward_and_backward_match_eager(triton_backend, fused):
    torch._dynamo.reset()
    torch.manual_seed(0)
    head = Head((8, 9), fused=fused).train()
    source = torch.randn(2, 12, 8, 9, requires_grad=True)
    target = torch.randn(2, 12, 8, 9, requires_grad=True)

    def run(module):
        theta = module(source, target)
        grads = torch.autograd.grad(theta.square().sum(), [source, target, *module.parameters()])
        return theta, grads

    eager_state = {k: v.clone() for k, v in head.state_dict().items()}
    before = dict(TRITON_CALLS)
    theta_eager, grads_eager = run(head)
    head.load_state_dict(eager_state)  # BatchNorm running stats moved: restore them
    compiled = torch.compile(head, fullgraph=True)
    theta_compiled, grads_compiled = run(compiled)
    torch.testing.assert_close(theta_compiled, theta_eager, rtol=1e-4, atol=1e-5)
    for g_c, g_e in zip(grads_compiled, grads_eager, strict=True):
        torch.testing.assert_close(g_c, g_e, rtol=1e-4, atol=1e-5)
    for op in (("correlation_oac",) if fused else ("correlation", "offset_aware_correlation")) + ("attention_pool",):
        assert TRITON_CALLS[op] >= before.get(op, 0) + 2, f"{op}: the Triton path did not run in eager and compiled"
    explain = torch._dynamo.explain(head)(source, target)
    assert explain.graph_break_count == 0, explain.break_reasons


def test_compiled_head_on_the_pytorch_path(torch_backend):
    """The CPU path (the reference ops) compiles with fullgraph=True too, forward and backward."""
    torch._dynamo.reset()
    torch.manual_seed(1)
    head = Head((7, 8), fused=True).eval()
    source, target = torch.randn(2, 12, 7, 8), torch.randn(2, 12, 7, 8)
    compiled = torch.compile(head, fullgraph=True)
    theta_e = head(source, target)
    theta_c = compiled(source, target)
    torch.testing.assert_close(theta_c, theta_e, rtol=1e-4, atol=1e-5)
    g_e = torch.autograd.grad(theta_e.sum(), head.regression.oac.weight)[0]
    g_c = torch.autograd.grad(theta_c.sum(), head.regression.oac.weight)[0]
    torch.testing.assert_close(g_c, g_e, rtol=1e-4, atol=1e-6)
