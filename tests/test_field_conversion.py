"""T1 conversion between field strengths through tissue anchors (phyjax.physics.tissues)."""

import jax
import numpy as np
import pytest

from phyjax.physics.tissues import convert_t1, tissue_parameters


@pytest.mark.parametrize("b_from,b_to", [(1.5, 3.0), (3.0, 1.5), (3.0, 7.0), (1.5, 7.0)])
def test_pure_tissues_and_two_tissue_mixtures_map_exactly(b_from, b_to):
    src, dst = tissue_parameters(b_from), tissue_parameters(b_to)
    for name in ("wm", "gm", "csf"):
        assert float(convert_t1(src[name].t1, b_from, b_to)) == pytest.approx(dst[name].t1, rel=1e-6)
    # Partial-volume mixtures of adjacent tissues, mixed independently at each field.
    for a, b in (("wm", "gm"), ("gm", "csf")):
        for w in (0.1, 0.5, 0.9):
            t_src = w * src[a].t1 + (1 - w) * src[b].t1
            t_dst = w * dst[a].t1 + (1 - w) * dst[b].t1
            assert float(convert_t1(t_src, b_from, b_to)) == pytest.approx(t_dst, rel=1e-5)


def test_identity_round_trip_and_monotonic():
    t1 = np.linspace(0.3, 5.0, 200)
    np.testing.assert_allclose(convert_t1(t1, 3.0, 3.0), t1, rtol=1e-6)
    there = convert_t1(t1, 1.5, 3.0)
    np.testing.assert_allclose(convert_t1(there, 3.0, 1.5), t1, rtol=1e-5)
    assert np.all(np.diff(np.asarray(there)) > 0)
    # T1 grows with B0 for every brain tissue.
    assert np.all(np.asarray(there) > t1)


def test_differentiable_and_traced_field_strength():
    grad = jax.grad(lambda t: convert_t1(t, 1.5, 3.0))(0.6)
    wm15, gm15 = tissue_parameters(1.5)["wm"].t1, tissue_parameters(1.5)["gm"].t1
    wm3, gm3 = tissue_parameters(3.0)["wm"].t1, tissue_parameters(3.0)["gm"].t1
    assert float(grad) == pytest.approx((gm3 - wm3) / (gm15 - wm15), rel=1e-5)
    jitted = jax.jit(convert_t1)(np.float32(0.833), np.float32(1.5), np.float32(3.0))
    assert float(jitted) == pytest.approx(tissue_parameters(3.0)["gm"].t1, rel=1e-5)


def test_a_scanner_reported_b0_uses_its_nominal_table():
    # Siemens 3 T systems write MagneticFieldStrength 2.89362, 1.5 T ones 1.494.
    assert tissue_parameters(2.89362) == tissue_parameters(3.0)
    assert tissue_parameters(1.494) == tissue_parameters(1.5)
    gm15, gm3 = tissue_parameters(1.5)["gm"].t1, tissue_parameters(3.0)["gm"].t1
    assert float(convert_t1(gm15, 1.494, 2.89362)) == pytest.approx(gm3, rel=1e-6)


@pytest.mark.parametrize("b0", [0.55, 1.0, 2.0, 4.7, 9.4])
def test_a_b0_without_a_table_is_refused_not_snapped(b0):
    # Before: convert_t1 snapped 0.55-2.0 T to the 1.5 T anchors, silently.
    with pytest.raises(ValueError, match=f"B0 = {b0} T"):
        tissue_parameters(b0)
    with pytest.raises(ValueError, match="No tissue relaxation table"):
        convert_t1(0.9, b0, 3.0)
    with pytest.raises(ValueError, match="No tissue relaxation table"):
        convert_t1(0.9, 3.0, b0)


def test_field_strength_arrays_are_checked_element_by_element_and_traced_ones_pass():
    """A batch of protocols' B0 values is checked as a whole (before, an array could not be read
    as one float and went unchecked); a traced value beside a concrete one leaves the concrete
    one checked."""
    from phyjax.physics.tissues import check_field_strengths
    from phyjax.physics.tracing import concrete

    check_field_strengths(np.array([1.494, 2.89362, 3.0]), 7.0)
    with pytest.raises(ValueError, match="B0 = 1.0 T"):
        check_field_strengths(np.array([1.5, 1.0, 3.0]))
    with pytest.raises(ValueError, match="B0 = 2.0 T"):
        jax.jit(lambda b: convert_t1(0.9, b, 2.0))(np.float32(1.5))
    assert float(jax.jit(lambda b: convert_t1(0.9, b, 3.0))(np.float32(3.0))) == pytest.approx(
        0.9, rel=1e-6)
    seen = []
    jax.jit(lambda b: seen.append(concrete(b, 3.0)) or b)(1.5)
    assert seen == [None]
    with pytest.raises((TypeError, ValueError)):
        concrete("3T")                      # not a number: an error, not a skipped check
