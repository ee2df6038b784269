import pytest
import torch

from switchkd.models.projectors import PROJECTORS, LDPv2, build_projector


def test_ldpv2_maps_576_clip_tokens_to_144():
    proj = build_projector("ldpv2", 1024, 64)
    out = proj(torch.randn(2, 576, 1024))
    assert out.shape == (2, 144, 64)
    assert proj.num_output_tokens(576) == 144


def test_ldpv2_weight_names_match_mobilevlm_v2():
    names = {n for n, _ in LDPv2(8, 16).named_parameters()}
    assert names == {
        "mlp.mlp.0.weight",
        "mlp.mlp.0.bias",
        "mlp.mlp.2.weight",
        "mlp.mlp.2.bias",
        "peg.peg.0.weight",
        "peg.peg.0.bias",
    }


def test_ldpv2_position_injection_is_residual_depthwise_conv():
    proj = LDPv2(4, 6, grid=2)
    x = torch.randn(1, 16, 4)
    with torch.no_grad():
        proj.peg.peg[0].weight.zero_()
        proj.peg.peg[0].bias.zero_()
    # With a zero conv the output is the pooled feature MLP alone: check against a hand pooling.
    feats = proj.mlp(x).transpose(1, 2).reshape(1, 6, 4, 4)
    pooled = feats.reshape(1, 6, 2, 2, 2, 2).mean(dim=(3, 5))
    torch.testing.assert_close(proj(x), pooled.flatten(2).transpose(1, 2))


def test_ldpv2_rejects_non_square_grid():
    with pytest.raises(ValueError, match="square token grid"):
        build_projector("ldpv2", 8, 8)(torch.randn(1, 577, 8))
    with pytest.raises(ValueError, match="square token grid"):
        LDPv2(8, 8).num_output_tokens(577)


def test_mlp2x_gelu_keeps_tokens_and_checks_width():
    proj = build_projector("mlp2x_gelu", 8, 16)
    assert proj(torch.randn(3, 5, 8)).shape == (3, 5, 16)
    with pytest.raises(AssertionError, match="width 8"):
        proj(torch.randn(3, 5, 9))


def test_identity_needs_equal_widths():
    assert build_projector("identity", 8, 8)(torch.ones(1, 2, 8)).shape == (1, 2, 8)
    with pytest.raises(ValueError, match="equal widths"):
        build_projector("identity", 8, 16)


def test_unknown_projector_lists_valid_names():
    with pytest.raises(ValueError) as err:
        build_projector("mlp", 8, 8)
    for name in PROJECTORS:
        assert name in str(err.value)
