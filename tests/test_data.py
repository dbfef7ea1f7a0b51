"""Training data: the same crops in memory, streamed by workers and from tar shards; resume midway;
disjoint DDP shares; bad images; `flowsr shard`; memory flat as the folder grows (issue 17)."""

import json
import os
import subprocess
import sys
import tarfile

import numpy as np
import pytest
import torch
from conftest import make_image
from PIL import Image

from flowsr import shards
from flowsr.cli import main
from flowsr.data import Crops, crop_batches, find_images, list_items


def take(batches, n):
    return [next(batches) for _ in range(n)]


def same(a, b):
    return len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b))


def test_memory_streamed_and_sharded_crops_are_the_same_and_resume_midway(image_folder, tmp_path, capsys):
    memory, line = crop_batches(image_folder, 32, 3, seed=5, mode="memory")
    assert line == "data: 6 images, 0 MB decoded, in memory (data_mode=memory)"
    reference = take(memory, 8)  # 24 crops: four epochs of the six images
    streamed, line = crop_batches(image_folder, 32, 3, seed=5, mode="stream", num_workers=2)
    assert "streamed by 2 worker processes" in line
    assert same(take(streamed, 8), reference)
    assert main(["shard", str(image_folder), "-o", str(tmp_path / "shards"), "--shard-size", "1"]) == 0
    assert "6 images written, 0 failed" in capsys.readouterr().out
    sharded, _ = crop_batches(tmp_path / "shards", 32, 3, seed=5, mode="stream", num_workers=1)
    assert same(take(sharded, 8), reference)
    # a resumed run starts at crop number 9 (after three batches) and sees what the first run saw
    resumed, _ = crop_batches(image_folder, 32, 3, seed=5, mode="stream", num_workers=0, start=9)
    assert same(take(resumed, 5), reference[3:])
    other_seed, _ = crop_batches(image_folder, 32, 3, seed=6, mode="memory")
    assert not any(torch.equal(x, y) for x, y in zip(take(other_seed, 8), reference))


def test_each_epoch_visits_every_image_once_in_a_new_order(tmp_path):
    folder = tmp_path / "flat"
    folder.mkdir()
    for value in range(7):  # image k is the constant 10 k: a crop names its image
        Image.fromarray(np.full((40, 40, 3), 10 * value, np.uint8)).save(folder / f"{value}.png")
    crops = Crops(list_items(folder, 32)[0], 32, seed=0)
    epochs = [[int(crops[e * 7 + i][0, 0, 0]) // 10 for i in range(7)] for e in range(3)]
    assert all(sorted(epoch) == list(range(7)) for epoch in epochs)
    assert len({tuple(epoch) for epoch in epochs}) == 3
    assert all(crops[n].shape == (3, 32, 32) and crops[n].dtype == torch.uint8 for n in range(7))


def test_ranks_read_disjoint_shares(image_folder, tmp_path):
    every = [item.path for item in list_items(image_folder, 32)[0]]
    shares = [[item.path for item in list_items(image_folder, 32, rank, 3)[0]] for rank in range(3)]
    assert sorted(sum(shares, [])) == sorted(every) and all(len(share) == 2 for share in shares)
    assert main(["shard", str(image_folder), "-o", str(tmp_path / "shards")]) == 0
    names = [[item.name for item in list_items(tmp_path / "shards", 32, rank, 2)[0]] for rank in range(2)]
    assert not set(names[0]) & set(names[1]) and len(names[0]) + len(names[1]) == 6
    first, _ = crop_batches(image_folder, 32, 2, seed=0, rank=0, world=2, mode="memory")
    second, _ = crop_batches(image_folder, 32, 2, seed=0, rank=1, world=2, mode="memory")
    assert not same(take(first, 3), take(second, 3))


def test_unusable_images_are_skipped_or_replaced(image_folder, capsys):
    Image.fromarray(make_image(np.random.default_rng(1), 20, 64)).save(image_folder / "small.png")
    (image_folder / "text.png").write_bytes(b"not an image")
    truncated = (image_folder / "img0.png").read_bytes()
    (image_folder / "broken.png").write_bytes(truncated[: len(truncated) // 2])  # header fine, data cut
    memory, line = crop_batches(image_folder, 32, 4, seed=0, mode="memory")
    out = capsys.readouterr().out
    assert "6 images" in line and "small.png: smaller than the 32px crop" in out
    assert "text.png: not a readable image" in out and "broken.png: truncated or corrupt image" in out
    streamed, line = crop_batches(image_folder, 32, 4, seed=0, mode="stream", num_workers=0)
    assert "7 images" in line  # broken.png is found only when its crop is due ...
    take(streamed, 4)  # ... (a whole epoch) and replaced by the next image, with a warning
    assert "broken.png: truncated or corrupt image" in capsys.readouterr().out
    (image_folder / "more").mkdir()
    with pytest.raises(ValueError, match="no usable training images"):
        crop_batches(image_folder / "more", 32, 4, seed=0)


def test_auto_mode_keeps_small_sets_in_memory_and_streams_large_ones(image_folder):
    assert "in memory (data_mode=auto)" in crop_batches(image_folder, 32, 2, 0, mode="auto")[1]
    line = crop_batches(image_folder, 32, 2, 0, mode="auto", memory_mb=0.01, num_workers=1)[1]
    assert "streamed by 1 worker process (data_mode=auto)" in line
    with pytest.raises(ValueError, match="data_mode"):
        crop_batches(image_folder, 32, 2, 0, mode="disk")


def test_shards_are_plain_tar_with_an_exact_index(image_folder, tmp_path, capsys):
    (image_folder / "sub").mkdir()
    (image_folder / "img2.png").rename(image_folder / "sub" / "img2.png")
    (image_folder / "bad.jpg").write_bytes(b"nope")
    out = tmp_path / "shards"
    assert main(["shard", str(image_folder), "-o", str(out), "--shard-size", "1"]) == 1  # bad.jpg left out
    captured = capsys.readouterr()
    assert "bad.jpg: not a readable image" in captured.err and "6 images written, 1 failed" in captured.out
    entries = shards.read_index(out)
    assert [e["name"] for e in entries] == [p.relative_to(image_folder).as_posix()
                                            for p in find_images(image_folder) if p.name != "bad.jpg"]
    for entry in entries:
        with tarfile.open(out / entry["shard"]) as tar:  # any tar tool reads the members
            data = tar.extractfile(entry["name"]).read()
        assert data == (image_folder / entry["name"]).read_bytes()
        with open(out / entry["shard"], "rb") as handle:  # and the index points at their bytes
            handle.seek(entry["offset"])
            assert handle.read(entry["length"]) == data
        assert (entry["height"], entry["width"]) == Image.open(image_folder / entry["name"]).size[::-1]
    assert main(["shard", str(image_folder), "-o", str(out)]) == 1  # never over existing shards
    assert "already holds shards" in capsys.readouterr().err
    index = json.loads((out / "index.json").read_text())
    index["images"][0]["shard"] = "../elsewhere.tar"
    (out / "index.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match="not a file name in this folder"):
        list_items(out, 32)


PEAK_RSS = """
import json, resource, sys
from flowsr.data import crop_batches
batches, line = crop_batches(sys.argv[1], 64, 8, seed=0, mode=sys.argv[2], num_workers=2)
for _ in range(24):
    next(batches)
del batches  # joins the workers, so their peak counts in RUSAGE_CHILDREN
# this process's own peak from /proc (ru_maxrss would include the RSS of pytest, which forked us); the
# workers are forked from here, so RUSAGE_CHILDREN holds their peaks
status = dict(line.split(":", 1) for line in open("/proc/self/status") if ":" in line)
print(json.dumps({"main": int(status["VmHWM"].split()[0]) / 1024,
                  "worker": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))
"""


def test_streaming_memory_stays_flat_as_the_folder_grows_tenfold(tmp_path):
    small, large = tmp_path / "x1", tmp_path / "x10"
    small.mkdir()
    large.mkdir()
    rng = np.random.default_rng(0)
    for index in range(20):  # 20 images of 512x384: 11.25 MB decoded, 112.5 MB listed ten times
        Image.fromarray(make_image(rng, 384, 512)).save(small / f"{index}.png")
        for copy in range(10):
            (large / f"{copy}_{index}.png").symlink_to(small / f"{index}.png")

    def peak(folder, mode):
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        done = subprocess.run([sys.executable, "-c", PEAK_RSS, str(folder), mode], capture_output=True,
                              text=True, timeout=300, env=env)
        assert done.returncode == 0, done.stderr[-2000:]
        return json.loads(done.stdout.splitlines()[-1])

    streamed_small, streamed_large, memory_large = peak(small, "stream"), peak(large, "stream"), peak(large, "memory")
    assert streamed_large["worker"] > 0  # the workers were measured
    # streamed: main process within 32 MB, workers within 64 MB (their peaks vary by ~40 MB run to run), for
    # ten times the images, whose decoded size grows by 101 MB ...
    assert abs(streamed_large["main"] - streamed_small["main"]) < 32, (streamed_small, streamed_large)
    assert abs(streamed_large["worker"] - streamed_small["worker"]) < 64, (streamed_small, streamed_large)
    # ... while holding them in memory costs at least their 112 MB (the measurement sees it)
    assert memory_large["main"] - streamed_large["main"] > 100, (memory_large, streamed_large)
