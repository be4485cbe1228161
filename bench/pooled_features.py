"""How much of each view do globally pooled features of an nnU-Net encoder keep?

Draws random views from phantoms, runs a freshly initialised encoder (instance norm, as nnU-Net
plans it) and prints, per stage, the spread of the mean-pooled and max-pooled features across
views (relative standard deviation and summed variance) and the RankMe of the centred features.

    python bench/pooled_features.py [--views-per-case 4] [--cases 16] [--seed 0]
"""
from __future__ import annotations

import argparse

import numpy as np
import torch


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", type=int, default=16)
    p.add_argument("--views-per-case", type=int, default=4)
    p.add_argument("--view", type=int, nargs=3, default=(16, 32, 32))
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    from dynamic_network_architectures.architectures.unet import PlainConvUNet

    from nnunet_ssl.desd.rankme import rankme
    from nnunet_ssl.phantom import make_stroke_phantom

    torch.manual_seed(args.seed)
    net = PlainConvUNet(1, 4, [8, 16, 32, 64], torch.nn.Conv3d, 3, [1, 2, 2, 2], 2, 2, 2, True,
                        torch.nn.InstanceNorm3d, {"eps": 1e-5, "affine": True},
                        nonlin=torch.nn.LeakyReLU, nonlin_kwargs={"inplace": True})
    encoder = net.encoder.eval()
    rng = np.random.default_rng(args.seed)
    shape = (32, 48, 48)
    views = []
    for i in range(args.cases):
        ph = make_stroke_phantom(shape, side=("left", "right", "none")[i % 3], seed=100 + i, lesion_drop_hu=20.0)
        brain = ph.image[ph.brain]
        x = (np.clip(ph.image, *np.percentile(brain, [0.5, 99.5])) - brain.mean()) / brain.std()
        for _ in range(args.views_per_case):
            z, y, w = (int(rng.integers(0, s - v + 1)) for s, v in zip(shape, args.view))
            views.append(x[z:z + args.view[0], y:y + args.view[1], w:w + args.view[2]])
    batch = torch.tensor(np.stack(views)[:, None], dtype=torch.float32)
    with torch.no_grad():
        stages = encoder(batch)
    print(f"{len(views)} views of {tuple(args.view)}; encoder 8-16-32-64, instance norm, fresh (seed {args.seed})")
    print("stage  channels  pooling  rel.spread  summed var  RankMe(centred)")
    for i, f in enumerate(stages):
        flat = f.flatten(2)
        for name, t in (("mean", flat.mean(2)), ("max", flat.amax(2))):
            spread = float((t.std(0) / t.abs().mean(0).clamp_min(1e-8)).mean())
            c = t - t.mean(0)
            print(f"{i:>5}  {f.shape[1]:>8}  {name:>7}  {spread:>10.3f}  {float(c.var(0).sum()):>10.3g}  {rankme(c):>15.2f}")


if __name__ == "__main__":
    main()
