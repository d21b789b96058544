"""DiffAugment (data.augment): each operation against a picture worked out by hand, the random draws'
ranges, determinism under the seed, and the same policy for every image D sees."""
import pytest
import torch

from conftest import tiny_state
from fastdcgan.augment import augment, color, cut_out, cutout, parse, translate, translation
from fastdcgan.model import build_models
from fastdcgan.step import GANStep, StepOptions

ALL = parse("translation,color,cutout")


def test_policy_names_are_applied_in_one_order_and_unknown_ones_refused():
    assert parse("cutout, translation") == ("translation", "cutout")
    assert ALL == ("color", "translation", "cutout")
    assert parse("") == ()
    with pytest.raises(ValueError, match="flip"):
        parse("translation,flip")


def test_translate_moves_a_known_image_by_the_offset_and_fills_zeros():
    x = torch.arange(1.0, 17.0).view(1, 1, 4, 4)  # rows 1-4, 5-8, 9-12, 13-16
    down1_left2 = torch.tensor([[0, 0, 0, 0], [3, 4, 0, 0], [7, 8, 0, 0], [11, 12, 0, 0]], dtype=torch.float)
    assert torch.equal(translate(x, torch.tensor([1]), torch.tensor([-2]))[0, 0], down1_left2)
    up1_right1 = torch.tensor([[0, 5, 6, 7], [0, 9, 10, 11], [0, 13, 14, 15], [0, 0, 0, 0]],
                              dtype=torch.float)
    assert torch.equal(translate(x, torch.tensor([-1]), torch.tensor([1]))[0, 0], up1_right1)
    # each image of a batch by its own offset, every channel alike
    three = torch.arange(1.0, 17.0).view(1, 1, 4, 4).expand(2, 3, 4, 4)
    moved = translate(three, torch.tensor([0, 1]), torch.tensor([0, -2]))
    assert torch.equal(moved[0], three[0]) and all(torch.equal(moved[1, c], down1_left2) for c in range(3))


def test_random_translation_shifts_by_up_to_an_eighth_of_the_side():
    torch.manual_seed(0)
    x = torch.zeros(1000, 1, 32, 32)
    x[:, :, 16, 16] = 1.0  # one lit pixel: where it lands is the shift
    out = translation(x)
    assert out.sum() == 1000  # each image keeps its pixel (a shift of 4 cannot push it out)
    where = out[:, 0].flatten(1).argmax(1)
    dy, dx = where // 32 - 16, where % 32 - 16
    assert ({(a, b) for a, b in zip(dy.tolist(), dx.tolist(), strict=True)}
            == {(a, b) for a in range(-4, 5) for b in range(-4, 5)})


def test_cut_out_zeroes_the_rectangle_clipped_at_the_edges():
    x = torch.ones(2, 3, 4, 4)
    out = cut_out(x, torch.tensor([1, -1]), torch.tensor([0, 2]), (2, 2))
    first = torch.ones(4, 4)
    first[1:3, 0:2] = 0
    second = torch.ones(4, 4)
    second[0, 2:4] = 0  # its top row is outside the image
    assert torch.equal(out[0], first.expand(3, 4, 4)) and torch.equal(out[1], second.expand(3, 4, 4))


def test_random_cutout_is_a_square_of_half_the_side_centred_anywhere():
    torch.manual_seed(0)
    holes = cutout(torch.ones(1000, 1, 32, 32))[:, 0] == 0
    rows, cols = holes.any(2), holes.any(1)
    tops = rows.float().argmax(1)  # each hole's first row
    for hole, r, c in zip(holes, rows, cols, strict=True):
        assert hole.sum() == r.sum() * c.sum()  # a rectangle
        assert r.sum() <= 16 and c.sum() <= 16
        inside = r.sum() == 16 and c.sum() == 16
        touches = r[0] or r[-1] or c[0] or c[-1]
        assert inside or touches  # smaller only where the image's edge clips it
    # centres 0..32: the square reaches from the top edge (8 rows left) to the bottom (8 rows)
    assert set(rows.sum(1).tolist()) == set(range(8, 17)) and tops.max() == 24


def test_color_shifts_a_grey_image_by_a_brightness_in_half_a_unit():
    torch.manual_seed(0)
    grey = torch.full((500, 3, 8, 8), 0.2)  # saturation and contrast leave a flat grey image as it is
    shift = color(grey) - grey
    per_image = shift.flatten(1)
    assert torch.allclose(per_image, per_image[:, :1].expand_as(per_image), atol=1e-6)
    assert per_image.min() >= -0.5 and per_image.max() <= 0.5 and per_image.std() > 0.2  # U(-0.5, 0.5)


def test_color_scales_saturation_and_contrast_about_the_means():
    x = torch.tensor([0.5, -0.5, 0.0]).view(1, 3, 1, 1).expand(1, 3, 2, 2).contiguous()
    torch.manual_seed(1)
    b, s, c = torch.rand(3)
    torch.manual_seed(1)
    out = color(x)[0, :, 0, 0]
    y = x[0, :, 0, 0] + (b - 0.5)  # brightness
    y = (y - y.mean()) * 2 * s + y.mean()  # saturation, about each pixel's mean over channels
    y = (y - y.mean()) * (c + 0.5) + y.mean()  # contrast, about the image's mean
    assert torch.allclose(out, y, atol=1e-6)


def test_augmentations_repeat_under_the_seed_and_are_differentiable():
    x = torch.rand(8, 3, 32, 32) * 2 - 1
    torch.manual_seed(3)
    a = augment(x, ALL)
    torch.manual_seed(3)
    b = augment(x, ALL)
    torch.manual_seed(4)
    c = augment(x, ALL)
    assert torch.equal(a, b) and not torch.equal(a, c)
    x.requires_grad_(True)
    augment(x, ALL).square().sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_every_image_d_sees_gets_the_policy_with_its_own_draw():
    """Real, detached fake and the G phase's fake all reach D with a cutout hole. A zero never
    occurs otherwise: reals are k / 127.5 - 1 for whole k, fakes are tanh of a float."""
    torch.manual_seed(0)
    G, D = build_models(16, 8, 8, 32)
    opt_g, opt_d = (torch.optim.Adam(m.parameters(), lr=2e-4) for m in (G, D))
    gan = GANStep(G, D, opt_g, opt_d, StepOptions(nz=16, augment="cutout"))
    seen = []
    D.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach()))
    gan.step(torch.randint(0, 256, (8, 32, 32, 3), dtype=torch.uint8))
    assert len(seen) == 3
    for x in seen:
        holes = (x == 0).all(1)  # every channel zero
        assert ((x == 0).any(1) == holes).all()
        sizes = holes.flatten(1).sum(1)
        assert ((sizes > 0) & (sizes <= 256)).all()
        assert holes.any(2).sum(1).max() == 16  # at least one full 16-row hole in 8 draws
    assert not torch.equal(seen[1] == 0, seen[2] == 0)  # the G phase draws its own holes


def d_inputs(policy: tuple[str, ...]) -> list[torch.Tensor]:
    """What D is given in one step of a run with data.augment = policy (the trainer's state, seeded)."""
    s = tiny_state(f"data.augment={','.join(policy)}")
    seen = []
    s.D.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach()))
    batch = torch.randint(0, 256, (8, 32, 32, 3), dtype=torch.uint8,
                          generator=torch.Generator().manual_seed(0))
    s.gan.step(batch)
    return seen


# (more, fewer): each operation left out of the whole policy, and each alone against none
LEAVE_ONE_OUT = {**{f"all but {op}": (ALL, tuple(a for a in ALL if a != op)) for op in ALL},
                 **{f"{op} alone": ((op,), ()) for op in ALL}}


@pytest.mark.parametrize("case", LEAVE_ONE_OUT)
def test_every_operation_of_the_policy_reaches_what_d_sees(case):
    """A run with an operation and one without it give D other images, in each call of the step: an
    operation of data.augment the step drops (the first only, the last only, one by name) fails."""
    more, fewer = (d_inputs(policy) for policy in LEAVE_ONE_OUT[case])
    assert len(more) == len(fewer) == 3
    assert all(not torch.equal(a, b) for a, b in zip(more, fewer, strict=True)), case
