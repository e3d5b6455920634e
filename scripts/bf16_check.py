"""Does bf16 autocast pay on this CPU? The real training step in fp32 and in bf16, side by side.

    python scripts/bf16_check.py runs/photos --steps 8 --batch 4

Same initial weights, same batches (train/lite_long.toml's degradations), same optimiser: prints
the CPU-seconds per step of each and the loss after every step, so both questions of a bf16
candidate are answered at once: is a step cheaper, and does its loss keep up step for step.
"""

from __future__ import annotations

import argparse
import copy
import time

import torch

from streamsr.data.shake_dataset import ShakeDataset
from streamsr.models import DeblurSR, get_config
from streamsr.training.losses import joint_loss


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("photos")
    ap.add_argument("--model", default="lite")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--patch", type=int, default=48)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    ds = ShakeDataset(args.photos, "train", patch=args.patch, length=args.steps * args.batch,
                      seed=3, camera_motion=0.6, codec=0.7, crf=(8, 26))
    batches = [[torch.stack(t) for t in zip(*(ds[i * args.batch + j] for j in range(args.batch)), strict=True)]
               for i in range(args.steps)]
    base = DeblurSR(get_config(args.model))
    print(f"capability {torch.backends.cpu.get_cpu_capability()}, {args.threads} thread(s), "
          f"{args.model}, batch {args.batch} x {args.patch}px")
    results = {}
    for name, dtype in (("fp32", None), ("bf16", torch.bfloat16)):
        model = copy.deepcopy(base)
        opt = torch.optim.Adam(model.parameters(), lr=4e-4)
        losses, times = [], []
        for lr_blur, lr, hr in batches:
            t = time.process_time()
            with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
                out = model(lr_blur)
            loss = joint_loss(out, lr, hr, 0.5, 0.05).total
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            times.append(time.process_time() - t)
            losses.append(float(loss.detach()))
        results[name] = (losses, times)
        steady = times[1:] or times
        print(f"{name}: {sum(steady) / len(steady):.2f} CPU-s/step (first step {times[0]:.2f})")
    print("step  fp32 loss  bf16 loss  ratio")
    for i, (a, b) in enumerate(zip(results["fp32"][0], results["bf16"][0], strict=True), 1):
        print(f"{i:4d}  {a:.5f}    {b:.5f}    {b / a:.3f}")
    f, b = (sum(results[k][1][1:]) / max(1, len(results[k][1]) - 1) for k in ("fp32", "bf16"))
    print(f"bf16 step cost / fp32 step cost: {b / f:.2f}")


if __name__ == "__main__":
    main()
