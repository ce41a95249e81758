"""FID: the Frechet distance against a float64 scipy reference, its behaviour on real digits, resumable
class-balanced sample generation, reference statistics, grids, and SD-VAE latents (tiny random VAE)."""

import ast
import json
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch

from dyt.metrics.fid import (
    class_balanced_labels,
    class_grid,
    extract_features,
    feature_statistics,
    frechet_distance,
    generate_samples,
    reference_statistics,
    save_grid,
    to_uint8,
)


def scipy_fid(mu1, s1, mu2, s2):
    """pytorch-fid / ADM's formula with scipy's matrix square root, in float64."""
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean.real))


def random_stats(rng, d, n):
    f = rng.standard_normal((n, d)) @ rng.standard_normal((d, d)) + rng.standard_normal(d)
    return feature_statistics(f)


@pytest.mark.parametrize("d,n", [(8, 50), (64, 500), (64, 40)])  # (64, 40): rank-deficient covariances
def test_frechet_distance_matches_scipy_reference(d, n):
    rng = np.random.default_rng(d + n)
    (mu1, s1), (mu2, s2) = random_stats(rng, d, n), random_stats(rng, d, n)
    ours, ref = frechet_distance(mu1, s1, mu2, s2), scipy_fid(mu1, s1, mu2, s2)
    assert ours == pytest.approx(ref, rel=1e-6, abs=1e-6)
    assert frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0.0, abs=1e-7 * np.trace(s1))


def test_frechet_distance_rejects_mismatched_statistics():
    with pytest.raises(ValueError, match="mismatched"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


@pytest.mark.slow
def test_digit_fid_is_zero_on_itself_and_grows_with_noise():
    from dyt.data.images import DigitsDataset
    from dyt.metrics.features import DigitFeatures

    net, accuracy = DigitFeatures.fit()
    assert accuracy > 0.9  # a meaningful feature space
    images = DigitsDataset("train", normalize="minus_one_one").images
    ref = feature_statistics(extract_features(net, to_uint8(images)))
    g = torch.Generator().manual_seed(0)
    fids = [
        frechet_distance(
            *feature_statistics(
                extract_features(net, to_uint8(images + sigma * torch.randn(images.shape, generator=g)))
            ),
            *ref,
        )
        for sigma in (0, 0.2, 0.5, 1)
    ]
    assert fids[0] == pytest.approx(0.0, abs=1e-4)  # eigenvalue round-off of rank-deficient ReLU features
    assert fids[1] < fids[2] < fids[3], fids


def test_generate_samples_resumes_and_balances_classes(tmp_path):
    calls = []

    def generate(labels, generator):
        calls.append(labels.tolist())
        noise = torch.rand(len(labels), 1, 2, 2, generator=generator)
        return (labels.view(-1, 1, 1, 1).float() / 5 - 1) + 0 * noise

    first = generate_samples(generate, 23, 10, tmp_path, torch.device("cpu"), batch_size=4, chunk_size=10, seed=1)
    assert first.shape == (23, 2, 2, 1) and first.dtype == np.uint8
    assert sorted(x for c in calls for x in c) == sorted(class_balanced_labels(0, 23, 10).tolist())
    (tmp_path / "chunk_00001.npy").unlink()  # an interrupted run: only the missing chunk is redone
    calls.clear()
    again = generate_samples(generate, 23, 10, tmp_path, torch.device("cpu"), batch_size=4, chunk_size=10, seed=1)
    assert [x for c in calls for x in c] == list(range(10))
    np.testing.assert_array_equal(first, again)


def test_reference_statistics_from_npz_and_folder(tmp_path):
    from PIL import Image

    class Mean(torch.nn.Module):
        def forward(self, x):
            return x.float().flatten(2).mean(-1)

    np.savez(tmp_path / "ref.npz", mu=np.ones(3), sigma=np.eye(3))
    mu, sigma = reference_statistics(tmp_path / "ref.npz", Mean(), "cpu")
    assert mu.tolist() == [1, 1, 1] and sigma.tolist() == np.eye(3).tolist()
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (6, 4, 4, 3), dtype=np.uint8)
    (tmp_path / "imgs" / "a").mkdir(parents=True)
    for i, im in enumerate(images):
        Image.fromarray(im).save(tmp_path / "imgs" / "a" / f"{i}.png")
    cache = tmp_path / "stats.npz"
    mu, sigma = reference_statistics(tmp_path / "imgs", Mean(), "cpu", cache=cache)
    np.testing.assert_allclose(mu, images.reshape(6, -1, 3).mean(1).mean(0))
    assert cache.is_file()
    np.testing.assert_allclose(reference_statistics(tmp_path / "missing", Mean(), "cpu", cache=cache)[0], mu)
    with pytest.raises(FileNotFoundError, match="neither"):
        reference_statistics(tmp_path / "missing", Mean(), "cpu")


def test_class_grid_takes_the_first_per_class_of_each_class_in_order():
    samples = np.arange(30)  # class-balanced over 12 classes: sample i has label i % 12
    assert class_grid(samples, 12, 2).tolist() == [c + j * 12 for c in range(10) for j in range(2)]
    assert class_grid(samples, 3, 20).tolist() == [c + 3 * j for c in range(3) for j in range(10)]


def test_metrics_import_no_task():
    """Metrics take functions and arrays; a task imports metrics, never the other way round."""
    for path in (Path(__file__).resolve().parents[1] / "dyt" / "metrics").glob("*.py"):
        tree = ast.parse(path.read_text())
        names = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
        names += [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
        assert not [m for m in names if m.startswith("dyt.tasks")], f"{path.name} imports a task"


def test_save_grid(tmp_path):
    from PIL import Image

    path = save_grid(np.zeros((12, 8, 8, 1), dtype=np.uint8), tmp_path / "g.png", nrow=5, scale=2)
    assert Image.open(path).size == ((5 * 10 + 2) * 2, (3 * 10 + 2) * 2)


def tf1_resize_reference(img: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """TensorFlow 1.x resize_bilinear (align_corners=False) from its definition in TF's
    resize_bilinear_op.cc: output index i samples input position i * (in / out), both computed in float32
    as TF does (no half-pixel offset), between floor and floor + 1 (clamped). Interpolation in float64,
    written as one interpolation matrix per axis."""

    def matrix(n_in: int, n_out: int) -> np.ndarray:
        m = np.zeros((n_out, n_in))
        scale = np.float32(n_in) / np.float32(n_out)
        for i in range(n_out):
            src = np.float32(i) * scale
            lo = int(np.floor(src))
            frac = float(src - np.float32(lo))
            m[i, lo] += 1 - frac
            m[i, min(lo + 1, n_in - 1)] += frac
        return m

    return matrix(img.shape[-2], out_h) @ img @ matrix(img.shape[-1], out_w).T


@pytest.mark.parametrize("size", [(8, 8), (13, 21), (64, 64)])
def test_fid_resize_is_tensorflow1_bilinear(size):
    from dyt.metrics.features import resize_bilinear_tf1

    x = torch.randint(0, 256, (1, 3, *size), generator=torch.Generator().manual_seed(0)).float()
    ours = resize_bilinear_tf1(x, (299, 299))
    reference = tf1_resize_reference(x.numpy().astype(np.float64), 299, 299)
    np.testing.assert_allclose(ours.numpy(), reference, rtol=0, atol=1e-4)  # float32 rounding of 0..255
    half_pixel = torch.nn.functional.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
    assert (half_pixel - ours).abs().max() > 1.0  # the resize this replaced is measurably different


@pytest.mark.slow  # an Inception forward at 299 px: ~3 s on 2 cores
def test_inception_is_fed_tensorflow1_resized_images():
    """What the wheel's Inception receives: TF1-resized pixels mapped to (x - 128) / 128, as the TF graph
    (and torch-fidelity) feed it; its features follow."""
    from dyt.metrics.features import InceptionFeatures

    images = torch.randint(0, 256, (1, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    net = InceptionFeatures()
    inputs = []

    class Recorder(torch.nn.Module):  # a TorchScript module takes no hooks: wrap it
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            inputs.append(x)
            return self.inner(x)

    net.net = Recorder(net.net)
    feats = net(images)
    reference = (tf1_resize_reference(images.numpy().astype(np.float64), 299, 299) - 128) / 128
    np.testing.assert_allclose(inputs[0].numpy(), reference, rtol=0, atol=1e-6)
    assert feats.shape == (1, 2048) and torch.isfinite(feats).all()


# ---- SD-VAE latents with a tiny randomly initialised AutoencoderKL (no download) ----------------


@pytest.fixture
def tiny_vae_dir(tmp_path):
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    blocks = {"down_block_types": ("DownEncoderBlock2D",) * 4, "up_block_types": ("UpDecoderBlock2D",) * 4}
    vae = diffusers.AutoencoderKL(
        block_out_channels=(8, 8, 8, 8), layers_per_block=1, norm_num_groups=4, latent_channels=4, **blocks
    )
    vae.save_pretrained(tmp_path / "vae")
    return tmp_path / "vae"


def test_vae_encode_decode_shapes(tiny_vae_dir):
    from dyt.data.latents import decode, encode, load_vae

    vae = load_vae(str(tiny_vae_dir))
    z = encode(vae, torch.rand(2, 3, 32, 32) * 2 - 1)
    assert z.shape == (2, 4, 4, 4)  # 8x down-sampling, 4 channels: 256 px -> 32x32x4
    assert torch.equal(
        encode(vae, torch.zeros(1, 3, 32, 32), sample=False), encode(vae, torch.zeros(1, 3, 32, 32), sample=False)
    )
    x = decode(vae, z)
    assert x.shape == (2, 3, 32, 32) and x.abs().max() <= 1
    with pytest.raises(OSError, match="could not load the VAE"):
        load_vae(str(tiny_vae_dir.parent / "nowhere"))


def test_extract_latents_resumes_and_feeds_latent_dataset(tiny_vae_dir, tmp_path):
    from PIL import Image

    import scripts.extract_latents as ex
    from dyt.data.latents import LatentDataset

    rng = np.random.default_rng(0)
    for c in ("cat", "dog"):
        (tmp_path / "imgs" / c).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(tmp_path / "imgs" / c / f"{i}.png")
    out = ex.extract(
        str(tmp_path / "imgs"),
        str(tmp_path / "lat"),
        vae=str(tiny_vae_dir),
        image_size=32,
        batch_size=2,
        chunk_size=4,
        device="cpu",
        num_workers=0,
    )
    meta = json.loads((out / "meta.json").read_text())
    assert meta["num_chunks"] == 2 and meta["num_images"] == 6 and meta["classes"] == ["cat", "dog"]
    first = np.load(out / "chunk_00000.npy")
    (out / "chunk_00001.npy").unlink()
    ex.extract(
        str(tmp_path / "imgs"),
        str(out),
        vae=str(tiny_vae_dir),
        image_size=32,
        batch_size=2,
        chunk_size=4,
        device="cpu",
        num_workers=0,
    )
    np.testing.assert_array_equal(np.load(out / "chunk_00000.npy"), first)
    data = LatentDataset(out)
    assert len(data) == 6
    z, y = data[5]
    assert z.shape == (4, 4, 4) and z.dtype == torch.float32 and y.item() == 1
    assert LatentDataset(out, flip=False)[0][0].tolist() == torch.from_numpy(first[0, 0].astype(np.float32)).tolist()
    with pytest.raises(FileNotFoundError, match="extract latents first"):
        LatentDataset(tmp_path / "none")
