"""FID/KID, PSNR/SSIM, reference statistics and MACs (ackd_fast.metrics), checked against closed forms, scipy and
pytorch-fid's own pipeline."""

import urllib.error

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import linalg
from torch import nn

from ackd_fast import metrics
from ackd_fast.data import to_tensor, to_uint8
from ackd_fast.evaluation import ImageFiles, evaluate_generator, image_stats


def _spd(rng, d):
    a = rng.standard_normal((d, d))
    return a @ a.T / d + 0.1 * np.eye(d)


def test_frechet_distance_matches_the_closed_form_for_commuting_covariances(np_rng):
    rng = np_rng
    d = 7
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    s1, s2 = rng.uniform(0.1, 3, d), rng.uniform(0.1, 3, d)
    # diagonal covariances commute: Tr(S1 + S2 - 2 (S1 S2)^1/2) = sum (sqrt(s1) - sqrt(s2))^2
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(s1) - np.sqrt(s2)) ** 2)
    assert metrics.frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2)) == pytest.approx(expected, rel=1e-9)
    assert metrics.frechet_distance(mu1, np.diag(s1), mu1, np.diag(s1)) == pytest.approx(0, abs=1e-9)


def test_frechet_distance_matches_scipy_sqrtm_for_general_covariances(np_rng):
    rng = np_rng
    d = 16
    mu1, mu2, s1, s2 = rng.standard_normal(d), rng.standard_normal(d), _spd(rng, d), _spd(rng, d)
    # Tr (S1 S2)^1/2 through the symmetric form S1^1/2 S2 S1^1/2, whose square root scipy takes without trouble
    r1 = linalg.sqrtm(s1).real
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2) - 2 * np.trace(linalg.sqrtm(r1 @ s2 @ r1).real)
    assert metrics.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-7)


def test_feature_stats_match_numpy_mean_and_cov_over_uneven_batches(np_rng):
    rng = np_rng
    x = rng.standard_normal((103, 9)) * rng.uniform(0.5, 4, 9) + 100  # a large mean: the update must stay exact
    stats = metrics.FeatureStats(keep_features=True)
    for chunk in np.split(x, [1, 40, 41, 90]):
        stats.update(torch.from_numpy(chunk))
    out = stats.result()
    np.testing.assert_allclose(out["mu"], x.mean(0), rtol=1e-12)
    np.testing.assert_allclose(out["sigma"], np.cov(x, rowvar=False), rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(out["features"], x.astype(np.float32))
    assert out["n"] == 103
    with pytest.raises(ValueError, match="at least 2"):
        metrics.FeatureStats().result()


def test_kid_is_near_zero_for_one_distribution_and_positive_for_shifted_ones(np_rng):
    rng = np_rng
    a, b = rng.standard_normal((400, 32)), rng.standard_normal((400, 32))
    same, same_std = metrics.kernel_inception_distance(a, b, subsets=20, subset_size=200)
    shifted, _ = metrics.kernel_inception_distance(a, b + 0.5, subsets=20, subset_size=200)
    assert abs(same) < 3 * same_std + 1e-3
    assert shifted > 10 * max(abs(same), same_std)
    with pytest.raises(ValueError, match="at least 2"):
        metrics.kernel_inception_distance(a[:1], b)


def test_kid_matches_the_unbiased_mmd_written_out(np_rng):
    rng = np_rng
    x, y = rng.standard_normal((6, 4)), rng.standard_normal((6, 4)) + 0.3
    k = lambda p, q: (p @ q / 4 + 1) ** 3
    m = 6
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / m**2
    # one subset of all the features: a permutation, which the estimator does not see
    kid, std = metrics.kernel_inception_distance(x, y, subsets=1, subset_size=m)
    assert kid == pytest.approx(xx + yy - 2 * xy, rel=1e-10) and std == 0


def test_psnr_ssim_by_torchmetrics_agree_with_the_definitions():
    g = torch.Generator().manual_seed(int(torch.randint(0, 2**31, ())))
    real = torch.randint(0, 256, (3, 3, 24, 20), dtype=torch.uint8, generator=g)
    fake = (real.int() + torch.randint(-20, 21, real.shape, generator=g)).clamp(0, 255).to(torch.uint8)
    psnr, ssim = metrics.psnr_ssim(fake, real)
    mse = ((fake.double() - real.double()) ** 2).mean((1, 2, 3))
    np.testing.assert_allclose(psnr, (10 * torch.log10(255**2 / mse)).numpy(), rtol=1e-6)
    assert metrics.psnr_ssim(real, real)[1] == pytest.approx([1, 1, 1])
    assert all(-1 <= s < 1 for s in ssim)
    with pytest.raises(TypeError, match="uint8"):
        metrics.psnr_ssim(fake.float(), real)
    with pytest.raises(ValueError, match="shape"):
        metrics.psnr_ssim(fake[:2], real)


def test_quantize_truncates_like_tensor2im_and_to_uint8_inverts_to_tensor():
    x = torch.tensor([-1.5, -1.0, 0.0, 0.999, 1.0, 2.0]).view(1, 1, 1, 6)
    assert metrics.quantize(x).flatten().tolist() == [0, 0, 127, 254, 255, 255]  # 127.5 -> 127, 254.87 -> 254
    pixels = np.arange(256, dtype=np.uint8).reshape(16, 16)
    im = Image.fromarray(np.stack([pixels] * 3, -1))
    assert torch.equal(to_uint8(to_tensor(im)), torch.from_numpy(pixels).expand(3, 16, 16))


def test_stats_files_round_trip_and_published_files_load(tmp_path, np_rng):
    rng = np_rng
    stats = {"mu": rng.standard_normal(5), "sigma": _spd(rng, 5), "features": rng.standard_normal((4, 5))}
    metrics.save_stats(tmp_path / "ours.npz", stats, {"split": "test", "images": 4})
    back = metrics.load_stats(tmp_path / "ours.npz")
    np.testing.assert_array_equal(back["sigma"], stats["sigma"])
    assert back["protocol"] == {"split": "test", "images": 4} and back["features"].shape == (4, 5)
    assert not (tmp_path / "ours.npz.tmp").exists()
    np.savez(tmp_path / "published.npz", mu=stats["mu"].astype(np.float32), sigma=stats["sigma"])  # GAN Compression's
    assert metrics.load_stats(tmp_path / "published.npz")["features"] is None
    np.savez(tmp_path / "bad.npz", mean=stats["mu"])
    with pytest.raises(ValueError, match=r"lacks \['mu', 'sigma'\]"):
        metrics.load_stats(tmp_path / "bad.npz")
    with pytest.raises(FileNotFoundError, match=r"missing\.npz"):
        metrics.load_stats(tmp_path / "missing.npz")


# ------------------------------------------------------------------------------ Inception, end to end


def test_load_inception_reads_a_local_file_through_pytorch_fid(random_inception_file, random_inception_sha256):
    net = metrics.load_inception(random_inception_file, sha256=random_inception_sha256)
    saved = torch.load(random_inception_file)
    first_conv = net.blocks[0][0].conv.weight
    assert torch.equal(first_conv, saved["Conv2d_1a_3x3.conv.weight"])
    assert not metrics.weights_are_published(random_inception_file)


# 6 images give a singular covariance: pytorch-fid warns and retries with eps on the diagonal, as it should
@pytest.mark.filterwarnings("ignore::scipy.linalg.LinAlgWarning")
def test_fid_end_to_end_matches_pytorch_fid_on_image_files(tmp_path, random_inception_file, random_inception_sha256):
    """Our streaming path (generator output -> quantize -> features -> running stats) gives the statistics that
    pytorch-fid's own file-based pipeline gives for the same images written as PNGs."""
    from pytorch_fid.fid_score import calculate_activation_statistics

    inception = metrics.load_inception(random_inception_file, sha256=random_inception_sha256)
    images = torch.rand(6, 3, 40, 36) * 2.2 - 1.1  # [-1, 1] and beyond: clamped like tensor2im's callers

    class Fixed(nn.Module):  # a "generator" that returns the images, so the test knows every pixel
        paired = True

        def forward(self, a):
            return images[a[:, 0, 0, 0].long()]

    class Inputs(torch.utils.data.Dataset):
        paired = False

        def __len__(self):
            return len(images)

        def __getitem__(self, i):
            return {"A": torch.full((3, 2, 2), float(i))}

    files = []
    for i, im in enumerate(metrics.quantize(images)):
        files.append(tmp_path / f"{i}.png")
        Image.fromarray(im.permute(1, 2, 0).numpy()).save(files[-1])
    mu_ref, sigma_ref = calculate_activation_statistics(files, inception, batch_size=4, dims=2048, num_workers=0)
    ours = image_stats(ImageFiles(files), inception, batch_size=4)
    np.testing.assert_allclose(ours["mu"], mu_ref, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(ours["sigma"], sigma_ref, rtol=1e-3, atol=1e-5)

    scores = evaluate_generator(Fixed(), Inputs(), batch_size=4, inception=inception, reference=ours,
                                kid_subsets=3, kid_subset_size=4)
    assert scores["fid"] == pytest.approx(0, abs=1e-3) and scores["images"] == 6
    assert "psnr" not in scores and abs(scores["kid"]) < 1


def test_missing_inception_weights_name_both_options(tmp_path, monkeypatch):
    missing = tmp_path / "nowhere.pth"
    with pytest.raises(metrics.InceptionWeightsError, match=r"nowhere\.pth"):
        metrics.load_inception(missing)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "hub"))  # an empty torch hub cache
    with pytest.raises(metrics.InceptionWeightsError) as e:
        metrics.load_inception(download=False)
    assert "--inception-weights" in str(e.value) and str(tmp_path / "hub") in str(e.value)

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(metrics.InceptionWeightsError, match=r"download failed.*--inception-weights"):
        metrics.load_inception()
    bad = tmp_path / "bad.pth"
    torch.save({"not": torch.zeros(1)}, bad)
    with pytest.raises(ValueError, match="is not pytorch-fid's Inception state dict"):
        metrics.load_inception(bad, sha256=metrics.file_sha256(bad))


def test_count_macs_differs_from_flop_counter_only_on_transposed_convs():
    from torch.utils.flop_counter import FlopCounterMode

    plain = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, groups=4), nn.Flatten(), nn.LazyLinear(5))
    x = torch.zeros(2, 3, 11, 9)
    plain(x)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        plain(x)
    assert metrics.count_macs(plain, x) == counter.get_total_flops() // 2
    up = nn.ConvTranspose2d(6, 4, 3, stride=2, padding=1, output_padding=1)  # 5x7 -> 10x14
    assert metrics.count_macs(up, torch.zeros(1, 6, 5, 7)) == 4 * 10 * 14 * 6 * 9  # per output element


@pytest.mark.parametrize("kv_tokens", [1, 37, 300])
def test_flop_counter_counts_the_cpus_fused_attention_forward_and_backward(kv_tokens):
    """torch's registry leaves out the CPU's flash attention; ours charges it as torch charges the CUDA kernels:
    4 * B * H * Nq * Nkv * d forward (Q K^T and P V), 2.5 times that backward."""
    b, h, nq, d = 2, 3, 19, 8
    q = torch.randn(b, h, nq, d, requires_grad=True)
    k = torch.randn(b, h, kv_tokens, d, requires_grad=True)
    v = torch.randn(b, h, kv_tokens, d, requires_grad=True)
    forward = 4 * b * h * nq * kv_tokens * d
    with metrics.flop_counter() as counter:
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    assert counter.get_total_flops() == forward
    with metrics.flop_counter() as counter:
        out.sum().backward()
    assert counter.get_total_flops() == forward * 5 // 2
    with pytest.raises(ValueError, match="convention must be"):
        metrics.flop_counter("macs")


def test_measure_latency_reports_each_dtype_and_batch():
    rows = metrics.measure_latency(nn.Conv2d(3, 3, 3, padding=1), 16, batch_sizes=(1, 2), warmup=1, runs=3)
    assert [(r["dtype"], r["batch"]) for r in rows] == [("fp32", 1), ("fp32", 2), ("bf16", 1), ("bf16", 2)]
    assert all(r["median_ms"] > 0 and r["images_per_s"] > 0 and r["device"] for r in rows)
    with pytest.raises(ValueError, match="fp16"):
        metrics.measure_latency(nn.Identity(), 8, dtypes=("fp16",))
