"""Train a LeNet5 for one pass over 6000 Fashion-MNIST images (a few seconds on a CPU) and save it as a
robench checkpoint: something real to try `robench info` and `robench eval` on until `robench train`
and the shipped zoo exist.

    .venv/bin/python examples/train_tiny.py lenet5-splash.pt --activation splash
"""
import argparse

import torch
import torch.nn.functional as F

import robench

parser = argparse.ArgumentParser()
parser.add_argument("out")
parser.add_argument("--activation", default="relu")
parser.add_argument("--images", type=int, default=6000)
args = parser.parse_args()

torch.manual_seed(0)
data = robench.load_split("fashion-mnist", "train")
model = robench.create_model("lenet5", args.activation, in_channels=1, input_size=28, mean=[0.286], std=[0.353])
opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
model.train()
for i in range(0, args.images, 64):
    x, y = data.batch(torch.arange(i, min(i + 64, args.images)))
    loss = F.cross_entropy(model(x), y)
    opt.zero_grad()
    loss.backward()
    opt.step()
meta = robench.model_meta("lenet5", args.activation, "fashion-mnist", name=f"lenet5-{args.activation}-tiny",
                          recipe={"method": "standard", "images": args.images, "optimizer": "sgd 0.05 m0.9",
                                  "seed": 0})
robench.save_checkpoint(model.eval(), args.out, meta)
print(f"saved {args.out}")
