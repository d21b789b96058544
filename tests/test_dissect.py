"""Feature maps and forgetting (fastdcgan.generate.dissect) on a generator trained for a few steps."""
import pytest
import torch

import fastdcgan
from fastdcgan.generate import dissect
from fastdcgan.generate.latent import seed_noise


@pytest.fixture(scope="module")
def G(tiny_run):
    return fastdcgan.load_generator(tiny_run)



def test_dropping_no_channels_is_plain_generation(G):
    z = seed_noise(range(6), G.nz)
    with dissect.dropped_channels(G.net, -1, []):
        assert torch.equal(G(z), G(z.clone()))
    with dissect.dropped_channels(G.net, 1, []):
        dropped = G(z)
    assert torch.equal(dropped, G(z))


def test_dropping_channels_changes_only_that_layer_on(G):
    z = seed_noise(range(6), G.nz)
    n_layers = len(dissect.hidden_layers(G.net))
    assert n_layers == 3  # 32x32: 4x4, 8x8, 16x16
    plain = dissect.activations(G.net, z)
    layer, channels = 1, [0, 3]
    with dissect.dropped_channels(G.net, layer, channels):
        dropped = dissect.activations(G.net, z)
        out = G(z)
    assert torch.equal(dropped[0], plain[0])  # before the layer: identical
    assert dropped[layer][:, channels].abs().max() == 0
    kept = [c for c in range(plain[layer].shape[1]) if c not in channels]
    assert torch.equal(dropped[layer][:, kept], plain[layer][:, kept])
    assert not torch.allclose(dropped[2], plain[2]) and not torch.allclose(out, G(z))
    assert torch.equal(G(z), G(z))  # the hook is gone after the block


def test_scores_find_the_channel_that_marks_the_positives():
    g = torch.Generator().manual_seed(0)
    neg = torch.randn(40, 12, generator=g)
    pos = torch.randn(5, 12, generator=g)
    pos[:, 7] += 3.0
    for method in dissect.SCORES:
        assert dissect.top_channels(dissect.score_channels(pos, neg, method), 1) == [7]


def test_diff_is_the_mean_difference_over_the_std_of_all_samples():
    """diff's scale is the channel's spread over positives and negatives together, as its docstring and
    --score's help say: one marked seed (no spread of its own) still scores, and a channel whose
    positives agree is not blown up by their small spread."""
    pos = torch.tensor([[2.0, 3.0], [4.0, 3.0]])
    neg = torch.tensor([[0.0, 0.0], [0.0, 1.0]])
    pooled = torch.tensor([[2.0, 4.0, 0.0, 0.0], [3.0, 3.0, 0.0, 1.0]]).std(1, unbiased=False)
    want = torch.tensor([3.0, 2.5]) / pooled
    torch.testing.assert_close(dissect.score_channels(pos, neg, "diff"), want)
    one = dissect.score_channels(pos[:1], neg, "diff")
    torch.testing.assert_close(one, torch.tensor([2.0, 2.5]) / torch.tensor(
        [[2.0, 0.0, 0.0], [3.0, 0.0, 1.0]]).std(1, unbiased=False))


def test_a_map_that_never_changes_is_never_dropped_however_large_k():
    """A dead map (zero for every seed: common after ReLU) scores exactly 0 by either method: it does
    not mark the feature, and dropping it would change nothing while forget's caption counted it among
    the maps dropped. Only positive scores are taken, even when --k asks for more."""
    g = torch.Generator().manual_seed(0)
    neg = torch.randn(40, 6, generator=g)
    pos = torch.randn(5, 6, generator=g)
    pos[:, 2] += 3.0  # the feature's map
    pos[:, 4] -= 3.0  # a map of its absence
    neg[:, 0] = pos[:, 0] = 0.0  # dead
    for method in dissect.SCORES:
        score = dissect.score_channels(pos, neg, method)
        assert score[0] == 0
        chosen = dissect.top_channels(score, 6)
        assert chosen[0] == 2 and 0 not in chosen and 4 not in chosen, (method, chosen)


def test_forget_finds_a_generator_channel_from_marked_seeds(G):
    """Mark the seeds where one feature map is strongest: scoring must point back at that map."""
    seeds = list(range(200))
    means = dissect.channel_means(G.net, seed_noise(seeds, G.nz), -1)
    target = int(means.std(0).argmax())
    order = torch.argsort(means[:, target], descending=True).tolist()
    pos, neg = means[order[:8]], means[order[-40:]]
    for method in dissect.SCORES:
        assert target in dissect.top_channels(dissect.score_channels(pos, neg, method), 3)


def test_box_scores_only_that_part_of_the_map(G):
    z = seed_noise(range(4), G.nz)
    maps = dissect.activations(G.net, z, [-1])[2]  # 32x32 images: layer 2 is 16x16
    assert torch.allclose(dissect.channel_means(G.net, z, -1, (0, 0, 1, 1)),
                          dissect.channel_means(G.net, z, -1))
    top_left = dissect.channel_means(G.net, z, -1, dissect.parse_box("0,0,0.5,0.25"))
    assert torch.allclose(top_left, maps[:, :, :4, :8].mean(dim=(2, 3)))
    for bad in ("0,0,1", "0.5,0,0.2,1", "a,b,c,d", "0,0,1,1.5"):
        with pytest.raises(ValueError, match="bad box"):
            dissect.parse_box(bad)


def test_a_box_anywhere_scores_the_rows_and_columns_it_covers_and_at_least_one(G):
    """A box's edges fall inside a map's pixels: it covers every pixel it touches, from the one its
    top-left corner is in, and a box thinner than a pixel still covers the one it is in."""
    z = seed_noise(range(3), G.nz)
    maps = dissect.activations(G.net, z, [-1])[2]  # 16x16
    for box, rows, cols in (("0.3,0.65,0.7,0.9", slice(10, 15), slice(4, 12)),  # the mouth of the help
                            ("0.25,0.5,1,1", slice(8, 16), slice(4, 16)),
                            ("0.5,0.5,0.52,0.52", slice(8, 9), slice(8, 9))):  # under a pixel: that pixel
        got = dissect.channel_means(G.net, z, -1, dissect.parse_box(box))
        assert torch.equal(got, maps[:, :, rows, cols].mean(dim=(2, 3))), box


def test_box_edges_may_touch_the_border_not_cross_it_and_no_box_is_empty():
    assert dissect.parse_box("0.2,0.3,1,1") == (0.2, 0.3, 1.0, 1.0)
    for empty in ("0.5,0,0.5,1", "0,0.5,1,0.5", "0,0,1.5,1"):
        with pytest.raises(ValueError, match="need 0 <= x0 < x1 <= 1"):
            dissect.parse_box(empty)


def test_layers_count_from_either_end_and_the_error_names_the_range(G):
    n = len(dissect.hidden_layers(G.net))
    assert [dissect.layer_index(G.net, i) for i in (-n, -1, 0, n - 1)] == [0, n - 1, 0, n - 1]
    for bad in (n, -n - 1):
        with pytest.raises(ValueError, match=rf"layer {bad} does not exist: this generator has hidden layers "
                                             rf"0\.\.{n - 1} \(or -{n}\.\.-1 from the top\)"):
            dissect.layer_index(G.net, bad)


def test_scoring_takes_one_sample_a_side_and_refuses_none_or_an_unknown_method():
    pos, neg = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    assert dissect.score_channels(pos, neg).tolist() == [2.0, -2.0]  # (1 - 0) / a spread of 0.5
    for p, n in ((pos[:0], neg), (pos, neg[:0])):
        with pytest.raises(ValueError, match="at least one positive and one negative"):
            dissect.score_channels(p, n)
    with pytest.raises(ValueError, match="unknown score 'mean': choose one of diff, logistic"):
        dissect.score_channels(pos, neg, "mean")


def test_top_channels_takes_any_positive_score_best_first_ties_in_channel_order():
    score = torch.tensor([0.5, 0.0, 0.5, 2.0, -1.0, 0.01])
    assert dissect.top_channels(score, 6) == [3, 0, 2, 5]
    assert dissect.top_channels(score, 2) == [3, 0]
    # a 64x64 generator's first layer has 512 maps: many equal scores still come in channel order
    many = torch.randint(1, 4, (512,), generator=torch.Generator().manual_seed(0)).float()
    top = dissect.top_channels(many, 512)
    assert top == sorted(range(512), key=lambda c: (-many[c].item(), c))


def test_logistic_weights_minimise_the_class_balanced_l2_regularised_loss():
    """At the weights returned, the loss the docstring names (each class weighing one half, whatever
    its size, plus 0.01 |w|^2) has no slope left in w or in the bias it fits beside them."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(72, 64, generator=g, dtype=torch.float64)  # as forget scores a layer of 64 maps
    x[:, 32:] += x[:, :32]  # correlated maps, as a layer's are
    x[:8, 1] += 1.5  # 8 positives against the 64 reference seeds
    x = (x - x.mean(0)) / x.std(0, unbiased=False)
    w = dissect._logistic_weights(x, 8)
    y = torch.zeros(72, dtype=torch.float64)
    y[:8] = 1

    def loss(w, b):
        bce = torch.nn.functional.binary_cross_entropy_with_logits(x @ w + b, y, reduction="none")
        return bce[:8].mean() / 2 + bce[8:].mean() / 2 + 0.01 * w.pow(2).sum()

    # the bias is not returned: the best one for these weights, then no slope in w either
    b = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([b], max_iter=100, line_search_fn="strong_wolfe")
    opt.step(lambda: (opt.zero_grad(), loss(w, b).backward(), loss(w, b))[2])
    w = w.clone().requires_grad_()
    grad_w, = torch.autograd.grad(loss(w, b.detach()), w)
    assert grad_w.abs().max() < 1e-5 and w[1] > 0.5
