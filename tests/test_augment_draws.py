"""DiffAugment beyond the square image: a policy applies exactly its operations in the fixed order,
the images keep their dtype, shifts larger than the image, non-square holes, and where cutout's
holes may sit on an image whose sides differ (one side even, the other odd)."""
import pytest
import torch

from fastdcgan.augment import augment, color, cut_out, cutout, translate, translation


def seeded(fn, x, seed=5):
    torch.manual_seed(seed)
    return fn(x)


@pytest.mark.parametrize("policy, ops", [
    ((), []),
    (("color",), [color]),
    (("translation",), [translation]),
    (("cutout",), [cutout]),
    (("color", "translation", "cutout"), [color, translation, cutout]),
])
def test_a_policy_applies_its_operations_and_no_others(policy, ops):
    x = torch.rand(4, 3, 16, 16) * 2 - 1

    def by_hand(y):
        for op in ops:
            y = op(y)
        return y
    assert torch.equal(seeded(lambda y: augment(y, policy), x), seeded(by_hand, x))


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_the_images_keep_their_dtype(dtype):
    x = (torch.rand(4, 3, 16, 16) * 2 - 1).to(dtype)
    assert augment(x, ("color", "translation", "cutout")).dtype == dtype


def test_a_shift_past_the_edge_leaves_an_empty_image():
    x = torch.ones(2, 3, 4, 5)
    assert not translate(x, torch.tensor([7, 0]), torch.tensor([0, 9])).any()


def test_cut_out_takes_height_then_width():
    out = cut_out(torch.ones(1, 1, 6, 6), torch.tensor([1]), torch.tensor([2]), (2, 3))[0, 0]
    expected = torch.ones(6, 6)
    expected[1:3, 2:5] = 0
    assert torch.equal(out, expected)


@pytest.mark.parametrize("h, w", [(16, 18), (18, 16)])
def test_cutout_centres_cover_the_image_on_both_axes(h, w):
    """Half the side, rounded: 8 for 16, 9 for 18. A side of 16 takes an 8-line hole centred on any of
    lines 0..16 (an even side has one more place), so its first line runs from -4 to 12; a side of
    18 takes a 9-line hole centred on any of lines 0..17, first line -4..13. Recovered from each hole:
    its first line, or for a hole clipped at the top/left its last one minus the side."""
    torch.manual_seed(0)
    holes = cutout(torch.ones(3000, 1, h, w))[:, 0] == 0
    rows, cols = holes.any(2), holes.any(1)
    assert torch.equal(holes, rows.unsqueeze(2) & cols.unsqueeze(1))  # each hole a rectangle

    def starts(lines: torch.Tensor, side: int) -> set[int]:
        idx = torch.arange(lines.shape[1])
        first = torch.where(lines, idx, 10**6).min(1).values
        last = torch.where(lines, idx, -1).max(1).values
        return set(torch.where(first > 0, first, last - side + 1).tolist())
    hole = {16: 8, 18: 9}
    expected = {16: set(range(-4, 13)), 18: set(range(-4, 14))}
    assert starts(rows, hole[h]) == expected[h] and starts(cols, hole[w]) == expected[w]
    assert rows.sum(1).max() == hole[h] and cols.sum(1).max() == hole[w]


@pytest.mark.parametrize("h, w", [(16, 40), (40, 16)])
def test_translation_shifts_each_axis_by_up_to_an_eighth_of_that_axis(h, w):
    """Where the sides differ, each shift is bounded by its own side (16 -> 2 pixels, 40 -> 5), every
    shift in range drawn: not one side's range for both (too far along the short side, never far
    enough along the long one)."""
    torch.manual_seed(0)
    x = torch.zeros(2000, 1, h, w)
    x[:, :, h // 2, w // 2] = 1.0  # one lit pixel: where it lands is the shift
    out = translation(x)
    assert out.sum() == 2000
    where = out[:, 0].flatten(1).argmax(1)
    dy, dx = (where // w - h // 2).tolist(), (where % w - w // 2).tolist()
    reach = {16: 2, 40: 5}
    assert set(dy) == set(range(-reach[h], reach[h] + 1)) and set(dx) == set(range(-reach[w], reach[w] + 1))


def test_unknown_names_are_listed_with_the_known_ones():
    from fastdcgan.augment import parse
    with pytest.raises(ValueError) as e:
        parse("translation,flip,blur")
    assert str(e.value) == "unknown augmentation blur, flip (choose from color, translation, cutout)"
