"""Fréchet and kernel distances (through torchmetrics) against closed forms and brute force in
numpy; precision / recall / density / coverage against their definitions looped out."""

import numpy as np
import pytest
import torch

pytest.importorskip("torchmetrics")

from zigma.evaluate.metrics import frechet_distance, kernel_distance, metric_label, prdc  # noqa: E402


def gaussian(rng, n, mean, cov):
    return torch.from_numpy(rng.multivariate_normal(mean, cov, size=n))


def fd_closed_form(mu1, s1, mu2, s2):
    """|mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2)); tr (S1 S2)^(1/2) is the sum of the square
    roots of the eigenvalues of the symmetric S1^(1/2) S2 S1^(1/2)."""
    w, v = np.linalg.eigh(s1)
    root1 = v @ np.diag(np.sqrt(w)) @ v.T
    middle = np.linalg.eigvalsh(root1 @ s2 @ root1)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.sqrt(middle).sum())


def test_fd_of_diagonal_gaussians_is_the_closed_form():
    # Diagonal: FD = |mu1 - mu2|^2 + sum (sqrt(var1) - sqrt(var2))^2.
    rng = np.random.default_rng(0)
    mu1, mu2 = np.array([0.0, 1.0, -2.0]), np.array([0.5, 1.0, 0.0])
    var1, var2 = np.array([1.0, 4.0, 0.25]), np.array([2.0, 1.0, 0.25])
    exact = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(var1) - np.sqrt(var2)) ** 2).sum()
    n = 200_000
    real = gaussian(rng, n, mu1, np.diag(var1))
    fake = gaussian(rng, n, mu2, np.diag(var2))
    # The sample estimate's spread at this N is about 0.01 (a few standard errors allowed).
    assert frechet_distance(real, fake) == pytest.approx(exact, abs=0.04)


def test_fd_of_full_covariance_gaussians_is_the_closed_form():
    rng = np.random.default_rng(1)
    d = 4
    a, b = rng.normal(size=(d, d)), rng.normal(size=(d, d))
    s1, s2 = a @ a.T + 0.5 * np.eye(d), b @ b.T + 0.5 * np.eye(d)
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    real = gaussian(rng, 200_000, mu1, s1)
    fake = gaussian(rng, 200_000, mu2, s2)
    exact = fd_closed_form(mu1, s1, mu2, s2)
    assert frechet_distance(real, fake) == pytest.approx(exact, rel=0.02)
    # On the samples' own means and (unbiased) covariances the formula is met to rounding.
    r, f = real.numpy(), fake.numpy()
    plug_in = fd_closed_form(r.mean(0), np.cov(r.T), f.mean(0), np.cov(f.T))
    assert frechet_distance(real, fake) == pytest.approx(plug_in, rel=1e-7)


def test_fd_is_zero_for_identical_sets_and_symmetric():
    rng = np.random.default_rng(2)
    x = gaussian(rng, 500, np.zeros(5), np.eye(5))
    y = gaussian(rng, 400, np.ones(5), 2 * np.eye(5))
    assert abs(frechet_distance(x, x)) < 1e-8
    assert frechet_distance(x, y) == pytest.approx(frechet_distance(y, x), rel=1e-8)
    # float32 input gives the same value: torchmetrics computes in float64 either way.
    assert frechet_distance(x.float(), y.float()) == pytest.approx(
        frechet_distance(x.float().double(), y.float().double()), rel=1e-12
    )


def mmd2_unbiased_loops(x, y):
    """Unbiased MMD^2 with k(a, b) = (a.b / D + 1)^3, summed pair by pair."""
    d = x.shape[1]

    def k(a, b):
        return (float(np.dot(a, b)) / d + 1.0) ** 3

    m, n = len(x), len(y)
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(n)) / (m * n)
    return xx + yy - 2 * xy


def test_kd_with_one_subset_of_all_samples_is_the_unbiased_mmd():
    rng = np.random.default_rng(3)
    real = gaussian(rng, 40, np.zeros(6), np.eye(6))
    fake = gaussian(rng, 40, 0.7 * np.ones(6), 1.5 * np.eye(6))
    mean, std = kernel_distance(real, fake, subsets=1, subset_size=40)
    assert mean == pytest.approx(mmd2_unbiased_loops(real.numpy(), fake.numpy()), rel=1e-9)
    assert std == 0.0


def test_kd_is_seeded_and_leaves_the_global_rng_alone():
    rng = np.random.default_rng(4)
    real = gaussian(rng, 300, np.zeros(3), np.eye(3))
    fake = gaussian(rng, 300, 0.3 * np.ones(3), np.eye(3))
    torch.manual_seed(123)
    first = kernel_distance(real, fake, subsets=5, subset_size=50, seed=7)
    after = torch.rand(3)
    torch.manual_seed(123)
    assert torch.equal(torch.rand(3), after)  # the call drew nothing from the global RNG
    assert kernel_distance(real, fake, subsets=5, subset_size=50, seed=7) == first
    assert kernel_distance(real, fake, subsets=5, subset_size=50, seed=8) != first
    # A subset size above the set sizes is capped at them.
    assert kernel_distance(real, fake, subsets=1, subset_size=10_000) == kernel_distance(
        real, fake, subsets=1, subset_size=300
    )


def prdc_loops(real, fake, k):
    """Naeem et al. 2020's definitions, one point at a time."""

    def dist(a, b):
        return float(np.sqrt(((a - b) ** 2).sum()))

    def radius(points, i):
        others = sorted(dist(points[i], points[j]) for j in range(len(points)) if j != i)
        return others[k - 1]

    r = [radius(real, i) for i in range(len(real))]
    s = [radius(fake, j) for j in range(len(fake))]
    n, m = len(real), len(fake)
    inside = [[dist(fake[j], real[i]) < r[i] for i in range(n)] for j in range(m)]
    return {
        "precision": sum(any(row) for row in inside) / m,
        "recall": sum(any(dist(real[i], fake[j]) < s[j] for j in range(m)) for i in range(n)) / n,
        "density": sum(sum(row) for row in inside) / (k * m),
        "coverage": sum(any(inside[j][i] for j in range(m)) for i in range(n)) / n,
    }


@pytest.mark.parametrize("k", [1, 3])
def test_prdc_matches_the_definitions_looped_out(k):
    rng = np.random.default_rng(5 + k)
    real = torch.from_numpy(rng.normal(size=(25, 3)))
    fake = torch.from_numpy(rng.normal(0.4, 1.2, size=(18, 3)))
    got = prdc(real, fake, k=k, chunk=7)  # chunks that do not divide the sets
    want = prdc_loops(real.numpy(), fake.numpy(), k)
    assert got == pytest.approx(want, abs=1e-12)
    assert 0 < got["precision"] < 1 and 0 < got["coverage"] < 1  # the test is not degenerate


def test_prdc_of_identical_and_of_far_apart_sets():
    rng = np.random.default_rng(9)
    x = torch.from_numpy(rng.normal(size=(200, 4)))
    same = prdc(x, x, k=5)
    assert same["precision"] == same["recall"] == same["coverage"] == 1.0
    # Each real ball holds its centre and k - 1 neighbours strictly inside (the k-th is on its
    # edge, decided by rounding): k containments per ball, density 1.
    assert same["density"] == pytest.approx(1.0, abs=0.02)
    far = prdc(x, x + 100.0, k=5)
    assert far == {"precision": 0.0, "recall": 0.0, "density": 0.0, "coverage": 0.0}


@pytest.mark.parametrize("fn", [frechet_distance, kernel_distance, prdc])
def test_bad_inputs_are_refused_with_one_line(fn):
    good = torch.randn(20, 4, dtype=torch.float64)
    with pytest.raises(ValueError, match="differ in dimension"):
        fn(good, torch.randn(20, 5))
    with pytest.raises(ValueError, match="at least"):
        fn(good, good[:1])
    nan = good.clone()
    nan[3, 1] = float("nan")
    with pytest.raises(ValueError, match="1 fake feature rows hold NaN or inf"):
        fn(good, nan)
    with pytest.raises(ValueError, match=r"\[N, D\]"):
        fn(good[0], good)
    with pytest.raises(TypeError):
        fn(good.numpy(), good)


def test_prdc_needs_more_samples_than_k_and_a_valid_k():
    x = torch.randn(5, 2)
    with pytest.raises(ValueError, match="at least 6"):
        prdc(x, torch.randn(10, 2), k=5)
    with pytest.raises(ValueError, match="k must be"):
        prdc(x, x, k=0)
    with pytest.raises(ValueError, match="subsets"):
        kernel_distance(x, x, subsets=0)


def test_metric_labels_never_call_a_proxy_fid():
    assert metric_label("fd", "inception-2015-12-05") == "FID"
    assert metric_label("KID", "inception-2015-12-05") == "KID"
    assert metric_label("fd", "inception-2015-12-05-fp16copy") == "FD-inception-2015-12-05-fp16copy"
    assert metric_label("fd", "dinov2-vitl14") == "FDD"
    assert metric_label("fd", "dinov2-h32-l2-p4") == "FD-dinov2-h32-l2-p4"
    assert metric_label("fd", "i3d-kinetics400-stylegan-v") == "FVD"
    assert metric_label("fd", "FD-shapes-classifier") == "FD-shapes-classifier"
    assert metric_label("kd", "FD-shapes-classifier") == "KD-shapes-classifier"
    assert metric_label("fd", "FVD-proxy-moving-shapes") == "FVD-proxy-moving-shapes"
    assert metric_label("fd", "frame-FD-moving-shapes") == "frame-FD-moving-shapes"
    assert metric_label("kd", "FVD-proxy-moving-shapes") == "KD-FVD-proxy-moving-shapes"
    assert metric_label("coverage", "shapes-classifier") == "coverage-shapes-classifier"
    assert metric_label("precision", "inception-2015-12-05") == "precision-inception-2015-12-05"
    with pytest.raises(ValueError, match="unknown metric"):
        metric_label("is", "inception-2015-12-05")


def test_missing_torchmetrics_names_the_extra(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "torchmetrics.image.fid", None)  # import now fails
    with pytest.raises(ImportError, match=r'pip install "zigma\[eval\]"'):
        frechet_distance(torch.randn(5, 2), torch.randn(5, 2))


# ---------------------------------------------------------------- the protocol record

INCEPTION = {"name": "inception-2015-12-05", "sha256": "7ff4a85c" + "0" * 56, "dim": 2048,
             "resize": "bilinear to 299x299", "modality": "image"}  # fmt: skip


def test_protocol_round_trips_through_json_and_prints_one_line(tmp_path):
    from zigma.evaluate.protocol import SAMPLE_CONVERSION, Protocol

    p = Protocol(metric="KID", extractor=INCEPTION, num_fake=1000, num_real=500, real="shapes",
                 real_split="test", seed=3, value=0.0123, std=0.001,
                 settings={"subsets": 100, "subset_size": 500}, checkpoint="runs/a",
                 sampler="heun", steps=50, nfe=99, guidance=3.0, commit="a" * 40)  # fmt: skip
    assert Protocol.from_json(p.to_json()) == p
    assert Protocol.read(p.write(tmp_path / "kid.json")) == p
    line = str(p)
    assert "\n" not in line
    for part in ("KID 0.0123", "inception-2015-12-05", "1000 fake vs 500 real (shapes:test)",
                 "heun", "NFE 99", "cfg 3", "seed 3", "subset_size=500"):  # fmt: skip
        assert part in line
    assert p.conversion == SAMPLE_CONVERSION and "127.5" in p.conversion


def test_protocol_refuses_incomplete_or_unknown_fields():
    from zigma.config import ConfigError
    from zigma.evaluate.protocol import Protocol

    base = dict(metric="FID", extractor=INCEPTION, num_fake=10, num_real=10, real="shapes",
                real_split="test", seed=0)  # fmt: skip
    with pytest.raises(ValueError, match="lacks sha256"):
        Protocol(**{**base, "extractor": {k: v for k, v in INCEPTION.items() if k != "sha256"}})
    with pytest.raises(ValueError, match="video extractors only"):
        Protocol(**base, frames=16)
    with pytest.raises(ValueError, match="num_fake must be >= 1"):
        Protocol(**{**base, "num_fake": 0})
    text = Protocol(**base).to_json().replace('"seed"', '"sed"')
    with pytest.raises(ConfigError, match="unknown Protocol key 'sed'"):
        Protocol.from_json(text)


def test_source_commit_is_this_checkouts_head():
    import subprocess
    from pathlib import Path

    from zigma.evaluate import protocol

    src = Path(protocol.__file__).parent
    tracked = subprocess.run(["git", "-C", str(src), "ls-files", "--error-unmatch", "protocol.py"],
                             capture_output=True, check=False)  # fmt: skip
    if tracked.returncode != 0:
        pytest.skip("zigma does not run from a git checkout here")
    head = subprocess.run(["git", "-C", str(src), "rev-parse", "HEAD"], capture_output=True,
                          text=True, check=True).stdout.strip()  # fmt: skip
    assert protocol.source_commit() in (head, head + "-dirty")
