"""
Exact products of 0/1 bitmaps with int8 matrix multiplications, for the glyph PCA (glyph_embed.py):
the ink co-occurrence counts X^T X, and the projection X @ W of the bitmaps on the principal axes.
Integer sums are exact whatever order a CPU or GPU adds them in, so both give the same numbers on
every machine, and an int8 matmul runs ~4x the speed of a float32 one here (torch._int_mm: int8
operands, int32 sums). On a GPU they run there; on the CPU independent row blocks go to the threads.
"""
import numpy as np
import torch

from common import resolve_device, threaded


def padded(t, rows, cols):
    """t zero-padded at the bottom and right to [rows, cols] (t itself when it is that shape)."""
    r, c = t.shape
    return t if (r, c) == (rows, cols) else torch.nn.functional.pad(t, (0, cols - c, 0, rows - r))


def int_matmul(a, b):
    """a [M, K] @ b [K, N] int8 -> int32 [M, N], exact. Zero-padded to the shapes CUDA's int8 matmul
    accepts (M > 16, K and N multiples of 8, both contiguous: some transposed layouts fail there)
    on every device, so the CPU runs (and tests) the very code the GPU runs; zero rows and columns
    add nothing to the sums. A b padded once by the caller (padded) is not copied again."""
    (M, K), N = a.shape, b.shape[1]
    K8 = K + -K % 8
    a, b = padded(a, max(M, 17), K8).contiguous(), padded(b, K8, N + -N % 8).contiguous()
    return torch._int_mm(a, b)[:M, :N]


def gram_counts(X, chunk=8192, device="auto"):
    """X^T X [D, D] int64 of X [V, D] uint8 0/1: co-occurrence counts of ink pixels, exact (int32 sums
    of a chunk of rows at a time: at most chunk < 2^31 per entry). The matrix is symmetric: only the
    blocks on and above the diagonal (4 x 4 of them, 10/16 of the work) are multiplied, then
    mirrored. On the CPU the rows are split between the threads, each summing its own."""
    device = torch.device(resolve_device(device))
    V, D = X.shape
    step = 8 * -(-D // 32)                                  # 4 blocks a side, each a multiple of 8

    def part(rows):
        G = torch.zeros(D, D, dtype=torch.int64, device=device)
        for i in range(rows.start, rows.stop, chunk):
            x = torch.from_numpy(X[i:min(i + chunk, rows.stop)]).to(device, torch.int8)
            xt = x.T.contiguous()
            for j in range(0, D, step):
                G[j:j + step, j:] += int_matmul(xt[j:j + step], x[:, j:])
        return G

    workers = 1 if device.type == "cuda" else torch.get_num_threads()
    bounds = np.linspace(0, V, workers + 1).astype(int)
    G = sum(threaded(part, [range(a, b) for a, b in zip(bounds[:-1], bounds[1:])]))
    for j in range(0, D, step):                              # the blocks below the diagonal
        G[j + step:, j:j + step] = G[j:j + step, j + step:].T
    return G.cpu()


def fixed_point_digits(W):
    """W [D, n] float64 in fixed point: (digits [4, D, n] int8, w [4, n] float64, Wr [D, n] float64) with
    Wr = sum_d digits[d] * w[d] exactly. Each column is scaled by the power of two 2^s that puts its
    largest |entry| in [2^29, 2^30), rounded to integers q (so Wr is within 2^-30 of W's largest
    |entry| in that column), and q is written as 4 balanced base-256 digits in [-128, 127];
    w[d] = 256^d / 2^s."""
    _, e = np.frexp(np.abs(W).max(axis=0, initial=0.0))      # max |column| < 2^e
    scale = np.ldexp(1.0, 30 - e)
    q = np.rint(W * scale).astype(np.int32)                  # |q| <= 2^30
    Wr = q / scale
    digits = np.empty((4,) + W.shape, np.int8)
    for d in range(4):
        r = ((q + 128) & 255) - 128                          # q = r + 256 * q', r in [-128, 127]
        digits[d] = r
        q -= r
        q >>= 8
    assert not q.any(), "W does not fit 4 digits"
    return digits, np.stack([np.ldexp(1.0, 8 * d) / scale for d in range(4)]), Wr


def centred_unit_rows(X, mu, W, out=None, device="auto"):
    """(X - mu) @ W, each row L2-normalised, into out [V, n] float32 (allocated when None) for X [V, D]
    uint8 0/1, mu [D] and W [D, n] float64. With W in fixed point (fixed_point_digits), X @ digit is an
    int8 matmul whose int32 sums are exact, and the four products recombine exactly (integers below
    2^53 times powers of two) before the float64 centring and normalisation. The only rounding before
    those is W's own, to 2^-30: at most ~1e-9 in the normalised rows, below the float32 unit of their
    larger values (6e-8 at 0.5). The four int8 products take ~1/3 of the CPU time of one float64 matmul."""
    device = torch.device(resolve_device(device))
    (V, K), n = X.shape, W.shape[1]
    out = torch.empty(V, n, dtype=torch.float32) if out is None else out
    assert K * 128 * 257 < 2**31, "the int32 sums below would overflow"
    digits, w, Wr = fixed_point_digits(W)
    Q = np.zeros((K + -K % 8, 4 * n + -(4 * n) % 8), np.int8)  # padded once for int_matmul
    for d in range(4):
        Q[:K, d * n:(d + 1) * n] = digits[d]
    Q, w = torch.from_numpy(Q).to(device), torch.from_numpy(w).to(device)
    off = (torch.from_numpy(mu) @ torch.from_numpy(Wr)).to(device)   # mu @ W of the W represented
    # on the CPU 256 rows at a time, on every thread (their int32 products, 15 MB, stay in cache while
    # they are combined); on a GPU large chunks, one after another
    chunk = 8192 if device.type == "cuda" else 256

    def rows(i):
        x = torch.from_numpy(X[i:i + chunk]).to(device, torch.int8)
        P = int_matmul(x, Q)[:, :4 * n].view(len(x), 4, n)
        # digits in int32 pairs (|sum| <= K * 128 * 257), then the two pairs in float64: all exact
        hi = torch.add(P[:, 2], P[:, 3], alpha=256).to(torch.float64)
        lo = torch.add(P[:, 0], P[:, 1], alpha=256).to(torch.float64)
        y = hi.mul_(w[2]).addcmul_(lo, w[0]).sub_(off)
        norm = y.norm(dim=1, keepdim=True).clamp_min(1e-12)
        if device.type == "cuda":
            out[i:i + chunk] = (y / norm).cpu()
        else:                                                # float64 division, rounded as it is stored
            torch.div(y, norm, out=out[i:i + chunk])

    starts = range(0, V, chunk)
    if device.type == "cuda":
        for i in starts:
            rows(i)
    else:
        threaded(rows, starts)                               # chunks write disjoint rows of out
    return out
