"""Train MyNet for one pass over 6,000 Fashion-MNIST training images and save its state dict, as a
PyTorch user would: torch.save(model.state_dict(), ...)."""

import sys

import torch
from my_model import MyNet

import robench

torch.manual_seed(0)
images, labels = robench.load_split("fashion-mnist", "train").batch(torch.arange(6000))
model = MyNet()
optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
for start in range(0, 6000, 100):
    loss = torch.nn.functional.cross_entropy(model(images[start : start + 100]), labels[start : start + 100])
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
torch.save(model.state_dict(), sys.argv[1])
print(f"Saved {sys.argv[1]} (last batch loss {loss.item():.2f})")
