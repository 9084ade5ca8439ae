"""faiss-gpu (built on its own CUDA 12 runtime) and torch (CUDA 13) loaded in ONE process, both
computing on the GPU, interleaved: what `ssondo cluster` after extraction in one session does."""

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.gpu


def _blobs(n_per: int, d: int, k: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((k, d)) * 10.0
    labels = np.repeat(np.arange(k), n_per)
    return (centers[labels] + rng.standard_normal((len(labels), d))).astype(np.float32), labels


def _matmul_on_the_gpu(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    a, b = (
        torch.randn(256, 128, generator=g, dtype=torch.float64),
        torch.randn(128, 64, generator=g, dtype=torch.float64),
    )
    got = (a.cuda() @ b.cuda()).cpu()  # float64: no TF32, no reduced precision
    torch.cuda.synchronize()
    torch.testing.assert_close(got, a @ b)


def test_faiss_gpu_kmeans_and_torch_matmul_in_one_process():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    import faiss

    from ssondo_cache.kmeans import kmeans

    versions = f"torch {torch.__version__} (CUDA {torch.version.cuda}), faiss {faiss.__version__}"
    _matmul_on_the_gpu(0)  # torch first: its CUDA context exists before FAISS loads its runtime
    assert faiss.get_num_gpus() > 0, f"torch sees a GPU but FAISS does not ({versions})"
    X, truth = _blobs(500, 32, 4)
    km = faiss.Kmeans(32, 4, niter=20, seed=1, gpu=True)
    km.train(X)
    # without a usable GPU, Kmeans(gpu=True) keeps its CPU IndexFlatL2 and says nothing
    assert type(km.index).__name__ != "IndexFlatL2", f"FAISS k-means ran on the CPU ({versions})"
    _, found = km.index.search(X, 1)
    # each true cluster is one found cluster, and the four are different: the blobs are 10 sigma apart
    mapping = {int(t): set(found[truth == t, 0].tolist()) for t in range(4)}
    assert all(len(v) == 1 for v in mapping.values()) and len(set.union(*mapping.values())) == 4, mapping
    ours = kmeans(X, 4, seed=0, device="cuda")  # ssondo's k-means, through its one device resolver
    assert ours.device.startswith("cuda") and len(np.unique(ours.labels)) == 4
    _matmul_on_the_gpu(1)  # torch still computes correctly after FAISS used the GPU
