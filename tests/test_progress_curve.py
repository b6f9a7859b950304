"""The curve a training job keeps in its progress: bounded, its whole span, evenly spaced."""

from learning.train.progress import CURVE_POINTS, Curve


def test_a_long_run_keeps_its_whole_span_at_an_even_density():
    curve = Curve()
    for step in range(1, 10_001):
        points = curve.add(step, 1.0 / step)
    assert len(points) <= CURVE_POINTS and points[0] == [1, 1.0]
    steps = [s for s, _ in points]
    gaps = {b - a for a, b in zip(steps, steps[1:])}
    assert gaps == {curve.every} and steps[-1] > 10_000 - curve.every  # even, and up to the end


def test_a_short_run_keeps_every_point():
    curve = Curve()
    for step in range(5):
        curve.add(step, float(step))
    assert curve.points == [[s, float(s)] for s in range(5)]
