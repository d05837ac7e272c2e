import numpy as np
import pytest

from scap_ov.calibration.histogram import SignedLogHistogram


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(1)
    return (rng.standard_t(3, size=400_000) * 0.2 + 0.05).astype(np.float32)


@pytest.mark.parametrize("mode", [0.0, 0.05, -0.3])
@pytest.mark.parametrize("sparsity", [0.1, 0.4, 0.7, 0.95])
def test_threshold_matches_exact_quantile(data, mode, sparsity):
    h = SignedLogHistogram()
    h.update(data)
    tau = h.threshold(mode, sparsity)
    exact = np.quantile(np.abs(data.astype(np.float64) - mode), sparsity)
    assert tau == pytest.approx(exact, rel=5e-3)
    assert np.mean(np.abs(data - mode) <= tau) == pytest.approx(sparsity, abs=2e-3)


def test_streaming_equals_one_shot_and_merge(data):
    one, parts, merged = SignedLogHistogram(), SignedLogHistogram(), SignedLogHistogram()
    one.update(data)
    for chunk in np.array_split(data, 7):
        parts.update(chunk)
    other = SignedLogHistogram()
    merged.update(data[:1000])
    other.update(data[1000:])
    merged.merge(other)
    assert np.array_equal(one.counts, parts.counts)
    assert np.array_equal(one.counts, merged.counts)
    assert one.counts.nbytes == SignedLogHistogram().counts.nbytes  # fixed memory, whatever the data size


def test_median_std_and_kde_peak():
    rng = np.random.default_rng(2)
    x = np.concatenate([rng.normal(-1.0, 0.05, 200_000), rng.normal(2.0, 0.3, 100_000)]).astype(np.float32)
    h = SignedLogHistogram()
    h.update(x)
    assert h.quantile(0.5) == pytest.approx(np.median(x), abs=5e-3)
    assert h.std() == pytest.approx(x.std(), rel=1e-2)
    assert h.kde_peak(0.02) == pytest.approx(-1.0, abs=0.02)  # the taller, narrow mode


def test_nonfinite_values_do_not_corrupt_counts():
    h = SignedLogHistogram()
    h.update(np.array([np.nan, np.inf, -np.inf, 0.0, 1.0], dtype=np.float32))
    assert h.nan_count == 1
    assert h.total == 4
    assert h.fraction_within(0.0, 0.5) == pytest.approx(0.25)


def test_zero_sparsity_gives_zero_threshold(data):
    h = SignedLogHistogram()
    h.update(data)
    assert h.threshold(0.0, 0.0) == 0.0
