"""Inductor weight freezing on the CPU: 10 MLP-shaped blocks (576 -> 1536 -> 576) + the 576 x 49,152 head,
timed eager, compiled, and compiled with freezing set around the call (what ForwardFn does), at 1 / 9 / 16 rows.
Measured 2026-12-03 on a 2-core AMX Xeon (docs/results.md): 9 rows 34.6 / 34.3 / 16.7 ms.

    python benchmarks/freezing_gemm.py
"""
import torch, time
import torch._inductor.config as ic
def t(f, n=30):
    f(); f(); ts=[]
    for _ in range(n):
        s=time.perf_counter(); f(); ts.append(time.perf_counter()-s)
    ts.sort(); return ts[len(ts)//2]*1e3
torch.manual_seed(0)
blocks = [torch.nn.Sequential(torch.nn.Linear(576,1536,bias=False), torch.nn.SiLU(), torch.nn.Linear(1536,576,bias=False)) for _ in range(10)]
head = torch.nn.Linear(576,49152,bias=False)
m = torch.nn.Sequential(*blocks, head).eval()
with torch.no_grad():
  for rows in (1,9,16):
    x = torch.randn(rows,576)
    torch._dynamo.reset(); ic.freezing=False
    c0 = torch.compile(m, dynamic=False)
    e = t(lambda: m(x)); a = t(lambda: c0(x))
    torch._dynamo.reset(); ic.freezing=True
    c1 = torch.compile(m, dynamic=False)
    b = t(lambda: c1(x))
    print(rows, "eager %.2f compiled %.2f frozen %.2f" % (e,a,b), (c1(x)-m(x)).abs().max().item(), flush=True)
