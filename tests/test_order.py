"""The one sample order every input backend follows (data/order.py), and the seeded flips: what a
resumed or multi-process run relies on to see exactly the batches of the uninterrupted single run."""
import torch

from fastdcgan.data.base import Feed
from fastdcgan.data.order import HFlip, batches_per_epoch, epoch_batches, flip_masks


def test_an_epoch_is_whole_global_batches():
    assert batches_per_epoch(10, 3) == 3 and batches_per_epoch(10, 3, world=2) == 1
    assert batches_per_epoch(12, 3, world=2) == 2 and batches_per_epoch(5, 8) == 0


def test_an_epoch_is_a_permutation_cut_to_whole_batches():
    table = epoch_batches(23, 4, seed=1, epoch=0)
    assert table.shape == (5, 4) and table.dtype == torch.int64
    assert len(set(table.flatten().tolist())) == 20 and table.min() >= 0 and table.max() < 23
    assert torch.equal(table, epoch_batches(23, 4, seed=1, epoch=0))
    assert not torch.equal(table, epoch_batches(23, 4, seed=1, epoch=1))
    assert not torch.equal(table, epoch_batches(23, 4, seed=2, epoch=0))


def test_each_rank_gets_every_world_th_batch_of_the_single_process_order():
    """Batch b of rank r is batch b * world + r of one process: together the ranks see, step by step,
    the batches one process would, and a run may change its number of processes on resume."""
    one = epoch_batches(50, 3, seed=4, epoch=2)
    for world in (2, 3):
        for rank in range(world):
            mine = epoch_batches(50, 3, seed=4, epoch=2, rank=rank, world=world)
            assert mine.shape == (50 // (3 * world), 3)
            assert torch.equal(mine, one[rank::world][: len(mine)])


def test_the_order_is_pinned_across_versions():
    """Checkpoints store (seed, epoch, batch), not the order: a resume with a later version of the code
    must draw the same batches. A change of these values (ours, or torch's generator) breaks that."""
    assert epoch_batches(10, 2, seed=3, epoch=1).tolist() == PINNED_ORDER
    assert flip_masks(2, 6, seed=3, epoch=1, rank=1).tolist() == PINNED_FLIPS


PINNED_ORDER = [[1, 9], [5, 6], [4, 3], [8, 0], [2, 7]]
PINNED_FLIPS = [[False, False, False, True, False, False], [True, True, True, False, False, True]]


def test_flips_are_a_seeded_half_per_rank_and_epoch():
    masks = flip_masks(200, 50, seed=0, epoch=0)
    assert masks.shape == (200, 50) and masks.dtype == torch.bool
    assert 0.47 < masks.float().mean() < 0.53
    assert torch.equal(masks, flip_masks(200, 50, seed=0, epoch=0))
    for other in (flip_masks(200, 50, 0, 1), flip_masks(200, 50, 1, 0), flip_masks(200, 50, 0, 0, rank=1)):
        assert 0.4 < (other != masks).float().mean() < 0.6  # independent draws


def test_flips_leave_the_global_random_stream_alone():
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    flip_masks(4, 4, seed=1, epoch=0)
    assert torch.equal(torch.rand(3), expected)


class Counting:
    """A stand-in backend: NHWC uint8 batches whose pixel (0, x) holds x + 10 b + 40 epoch, so a
    mirror shows, and so does a batch of another epoch."""
    name = "counting"

    def __init__(self, batches=3, batch_size=8, width=5, seed=7, rank=1):
        self.batches, self.batch_size, self.width = batches, batch_size, width
        self.feed = Feed([], 2, batch_size, seed=seed, rank=rank)  # what HFlip takes its seed and rank from

    def __len__(self):
        return self.batches

    def epoch(self, epoch, start_batch=0):
        row = torch.arange(self.width, dtype=torch.uint8).view(1, 1, self.width, 1)
        for b in range(start_batch, self.batches):
            yield (row + 10 * b + 40 * epoch).expand(self.batch_size, 2, self.width, 3).clone()


def test_hflip_mirrors_exactly_the_masked_images_and_a_resume_gets_the_same_flips():
    loader = HFlip(Counting(seed=7, rank=1))
    assert loader.name == "counting" and len(loader) == 3
    masks = flip_masks(3, 8, seed=7, epoch=4, rank=1)
    whole = list(loader.epoch(4))
    assert len(whole) == 3
    for b, batch in enumerate(whole):
        plain = next(Counting().epoch(4, b))
        for i in range(8):
            want = plain[i].flip(1) if masks[b, i] else plain[i]  # HWC: the width is dim 1 of an image
            assert torch.equal(batch[i], want), (b, i)
    resumed = list(HFlip(Counting(seed=7, rank=1)).epoch(4, start_batch=1))
    assert all(torch.equal(a, b) for a, b in zip(resumed, whole[1:], strict=True))
