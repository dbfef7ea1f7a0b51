"""DDP with the MeanFlow loss: the JVP runs on the unwrapped module, gradients still sync (2 gloo ranks)."""

import copy
import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file

from flowsr.nets import NetConfig, UNet
from flowsr.objectives import meanflow_loss

TINY = NetConfig(channels=16, channel_mult=(1, 2), num_blocks=1, attention_levels=())


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(0)
    student = UNet(TINY)
    with torch.no_grad():
        for p in student.interval_mlp.parameters():  # a trained-looking student: h matters
            p.add_(0.05 * torch.randn_like(p))
    teacher = copy.deepcopy(student).requires_grad_(False).eval()
    net = torch.nn.parallel.DistributedDataParallel(student)
    torch.manual_seed(100 + rank)  # each rank its own data and times
    gt = torch.rand(4, 3, 16, 16) * 2 - 1
    batch = {"gt": gt, "cond": (gt + 0.2 * torch.randn_like(gt)).clamp(-1, 1)}
    optimizer = torch.optim.SGD(student.parameters(), lr=0.5)
    loss, logs = meanflow_loss(net, batch, teacher=teacher, guidance=1.5, p_equal=0.5)
    loss.backward()
    optimizer.step()
    tensors = {k: v.detach().contiguous() for k, v in student.state_dict().items()}
    tensors["loss"] = loss.detach().reshape(1)
    save_file(tensors, os.path.join(out, f"rank{rank}.safetensors"))
    dist.destroy_process_group()


def test_meanflow_gradients_are_synchronised_across_ranks(tmp_path):
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    rank0, rank1 = (load_file(str(tmp_path / f"rank{r}.safetensors")) for r in (0, 1))
    assert not torch.equal(rank0.pop("loss"), rank1.pop("loss"))  # different data per rank...
    torch.manual_seed(0)
    initial = UNet(TINY).state_dict()
    changed = [k for k in rank0 if not k.startswith("interval") and not torch.equal(rank0[k], initial[k])]
    assert changed  # ...a real step happened...
    for key in rank0:  # ...and both ranks hold identical parameters afterwards
        assert torch.equal(rank0[key], rank1[key]), key
