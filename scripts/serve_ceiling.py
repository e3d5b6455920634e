"""The most a shared engine can win on this CPU, without any I/O: `lite` on 160x90 frames
(padded to 160x96 as the engine pads), model calls only, in interleaved rounds of
- one process, 2 torch threads, batch 4: the shape of `streamsr serve`'s engine with 4 streams;
- 2 processes x 1 thread, batch 1;
- 4 processes x 1 thread, batch 1: the shape of `streamsr bench --streams 4`'s other side.
If "one" is not above "four" here, no batching across streams can make `serve` beat separate
processes on this machine: the model is compute-bound and a batch only splits the same work
differently. Run: `python scripts/serve_ceiling.py` (about 3 minutes on 2 cores)."""
import json
import subprocess
import sys

CHILD = r'''
import time, torch, sys, json
from streamsr.bench.model import bench_model
threads, batch, calls = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
torch.set_num_threads(threads)
m, _ = bench_model("lite"); m = m.eval().to(memory_format=torch.channels_last)
x = torch.rand(batch, 3, 96, 160).contiguous(memory_format=torch.channels_last)
with torch.inference_mode():
    m(x)
    t = time.perf_counter()
    for _ in range(calls): m(x)
print(json.dumps({"s": time.perf_counter() - t, "frames": batch * calls}))
'''


def run(args_list: list[tuple[int, int, int]]) -> float:
    """Aggregate model fps of processes started together, one per (threads, batch, calls)."""
    procs = [subprocess.Popen([sys.executable, "-c", CHILD, *map(str, a)], stdout=subprocess.PIPE, text=True) for a in args_list]
    outs = [json.loads(p.communicate()[0].strip().splitlines()[-1]) for p in procs]
    return sum(o["frames"] for o in outs) / max(o["s"] for o in outs)


for r in range(3):
    one = run([(2, 4, 6)])
    two = run([(1, 1, 12), (1, 1, 12)])
    four = run([(1, 1, 6)] * 4)
    print(f"round {r+1}: one process 2 threads batch 4: {one:.3f} fps; 2 procs x 1 thread: {two:.3f} fps; 4 procs x 1 thread: {four:.3f} fps; one/four {one/four:.2f}", flush=True)
