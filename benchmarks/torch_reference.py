"""Reference timing: the default experiment's model and batch in plain PyTorch (no hooks, no measures).

Not part of the lab and not installed by it; run it in an environment with torch:
    python -m venv /tmp/tvenv && /tmp/tvenv/bin/pip install torch && /tmp/tvenv/bin/python benchmarks/torch_reference.py
Compare with `python benchmarks/bench.py --no-phase --seeds 1 measures.enabled=false` run back to back.
"""
import math, time, torch
torch.manual_seed(0)
B, T, V, D, H, L = 64, 64, 65, 64, 4, 2
E = D // H
class Attn(torch.nn.Module):
    def __init__(s):
        super().__init__()
        s.WQ, s.WK, s.WV = (torch.nn.Parameter(0.02 * torch.randn(D, H, E)) for _ in range(3))
        s.WO = torch.nn.Parameter(0.02 * torch.randn(H, E, D))
        s.register_buffer("mask", torch.tril(torch.ones(T, T, dtype=torch.bool)))
    def forward(s, x):
        q = torch.einsum("btd,dhe->bhte", x, s.WQ); k = torch.einsum("btd,dhe->bhte", x, s.WK); v = torch.einsum("btd,dhe->bhte", x, s.WV)
        sc = (q @ k.transpose(-1, -2)) / math.sqrt(E)
        p = sc.masked_fill(~s.mask, float("-inf")).softmax(-1)
        return torch.einsum("bhqe,hed->bqd", p @ v, s.WO)
class M(torch.nn.Module):
    def __init__(s):
        super().__init__()
        s.emb = torch.nn.Embedding(V, D); s.pos = torch.nn.Parameter(0.02 * torch.randn(T, D))
        s.ln = torch.nn.ModuleList(torch.nn.LayerNorm(D) for _ in range(L)); s.attn = torch.nn.ModuleList(Attn() for _ in range(L))
        s.lnf = torch.nn.LayerNorm(D); s.U = torch.nn.Linear(D, V, bias=False)
    def forward(s, t):
        x = s.emb(t) + s.pos
        for ln, a in zip(s.ln, s.attn): x = x + a(ln(x))
        return s.U(s.lnf(x))
m = M(); opt = torch.optim.Adam(m.parameters(), 1e-3)
def step():
    t = torch.randint(0, V - 1, (B, T))
    loss = torch.nn.functional.cross_entropy(m(t)[:, :-1].reshape(-1, V), t[:, 1:].reshape(-1))
    opt.zero_grad(); loss.backward(); opt.step()
for _ in range(20): step()
for rep in range(3):
    t0 = time.perf_counter()
    for _ in range(100): step()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads: {100 / (time.perf_counter() - t0):.1f} steps/s")
