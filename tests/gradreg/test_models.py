import pytest
import torch
from torch import nn

from gradreg.models import available_models, build_model, model_option_problems, model_options


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def logits(model: nn.Module, input_shape: tuple[int, ...], batch: int = 3) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(torch.randn(batch, *input_shape))


def test_available_models():
    assert set(available_models()) == {"mlp", "cnn", "resnet18", "resnet20"}


@pytest.mark.parametrize(
    ("name", "input_shape", "options"),
    [
        ("mlp", (13,), {}),
        ("mlp", (1, 8, 8), {"hidden": [32], "activation": "tanh"}),
        ("mlp", (1, 40), {"activation": "gelu"}),
        ("cnn", (1, 8, 8), {}),
        ("cnn", (1, 40), {}),
        ("cnn", (3, 7, 5), {"channels": (4, 4, 4), "kernel_size": 5, "hidden": 8}),
        ("resnet18", (3, 32, 32), {"width": 8}),
        ("resnet20", (3, 32, 32), {"width": 8}),
        ("resnet20", (1, 8, 8), {"width": 4}),
    ],
)
def test_output_is_batch_by_classes(name, input_shape, options):
    model = build_model(name, input_shape, 7, **options)
    out = logits(model, input_shape)
    assert out.shape == (3, 7)
    assert torch.isfinite(out).all()


def test_mlp_layers():
    model = build_model("mlp", (13,), 3)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(13, 128), (128, 128), (128, 3)]
    assert isinstance(model[0], nn.Flatten)
    relus = [m for m in model.modules() if isinstance(m, nn.ReLU)]
    assert len(relus) == 2 and not any(m.inplace for m in relus)


def test_mlp_without_hidden_layers_is_a_single_linear():
    model = build_model("mlp", (1, 8, 8), 10, hidden=())
    layers = [m for m in model.modules() if not isinstance(m, (nn.Sequential, nn.Flatten))]
    assert len(layers) == 1 and isinstance(layers[0], nn.Linear)
    assert (layers[0].in_features, layers[0].out_features) == (64, 10)


def test_cnn_uses_matching_conv_and_pools_only_while_large_enough():
    image = build_model("cnn", (1, 8, 8), 10, channels=(4, 4, 4))
    convs = [m for m in image.modules() if isinstance(m, nn.Conv2d)]
    pools = [m for m in image.modules() if isinstance(m, nn.MaxPool2d)]
    assert len(convs) == 3 and len(pools) == 2  # 8 -> 4 -> 2, then no further pooling
    assert all(c.padding == (1, 1) and c.groups == 1 and c.padding_mode == "zeros" for c in convs)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in image.modules())
    assert not any(m.inplace for m in image.modules() if isinstance(m, nn.ReLU))

    signal = build_model("cnn", (1, 40), 10)
    assert sum(isinstance(m, nn.Conv1d) for m in signal.modules()) == 2
    assert sum(isinstance(m, nn.MaxPool1d) for m in signal.modules()) == 2
    head = [m for m in signal.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in head] == [(32 * 10, 64), (64, 10)]


def test_resnet_parameter_counts_match_the_papers():
    assert 0.26e6 < n_params(build_model("resnet20", (3, 32, 32), 10)) < 0.28e6
    assert 11.1e6 < n_params(build_model("resnet18", (3, 32, 32), 10)) < 11.3e6


def test_resnets_have_batchnorm_and_projection_shortcuts():
    model = build_model("resnet20", (3, 32, 32), 10, width=4)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert convs[0].kernel_size == (3, 3) and convs[0].stride == (1, 1)
    projections = [c for c in convs if c.kernel_size == (1, 1)]
    assert [(c.in_channels, c.out_channels, c.stride) for c in projections] == [
        (4, 8, (2, 2)),
        (8, 16, (2, 2)),
    ]
    assert len(convs) == 1 + 3 * 3 * 2 + 2
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert not any(isinstance(m, nn.MaxPool2d) for m in model.modules())

    resnet18 = build_model("resnet18", (3, 32, 32), 10, width=2)
    assert (
        sum(isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3) for m in resnet18.modules()) == 17
    )
    assert resnet18[-1].in_features == 16


def test_resnet_trains_in_train_mode():
    model = build_model("resnet20", (3, 8, 8), 4, width=4)
    loss = model(torch.randn(4, 3, 8, 8)).logsumexp(1).mean()
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())


def test_unknown_model_lists_available():
    with pytest.raises(ValueError, match=r"unknown model 'vgg'.*mlp, cnn, resnet18, resnet20"):
        build_model("vgg", (3, 32, 32), 10)
    with pytest.raises(ValueError, match=r"unknown model 'vgg'.*mlp, cnn, resnet18, resnet20"):
        model_options("vgg")


def test_model_options_are_the_builders_keywords_with_defaults():
    assert model_options("mlp") == {"hidden": (128, 128), "activation": "relu"}
    assert model_options("resnet20") == {"width": 16}
    build_model("mlp", (4,), 3, **model_options("mlp"))


def test_every_option_of_every_model_is_checked_before_building():
    for name in available_models():
        defaults = model_options(name)
        assert model_option_problems(name, defaults) == {}, name
        for option in defaults:
            problems = model_option_problems(name, {option: "os.system"})
            assert option in problems, f"{name}.{option} accepts any string"
    problems = model_option_problems("mlp", {"hidden": [64, 0], "activation": "__import__"})
    assert problems == {
        "hidden": "hidden[1] must be a positive int, got 0",
        "activation": "unknown activation '__import__'; accepted: relu, tanh, gelu",
    }


@pytest.mark.parametrize(
    ("name", "option", "pattern"),
    [
        ("mlp", {"width": 3}, r"width for 'mlp'; accepted: hidden=\(128, 128\), activation='relu'"),
        ("cnn", {"depth": 2}, r"depth for 'cnn'; accepted: channels=.*hidden=64, kernel_size=3"),
        ("resnet20", {"hidden": 2}, r"hidden for 'resnet20'; accepted: width=16"),
    ],
)
def test_unknown_option_lists_accepted(name, option, pattern):
    with pytest.raises(TypeError, match=pattern):
        build_model(name, (3, 8, 8), 10, **option)


@pytest.mark.parametrize(
    ("name", "input_shape", "pattern"),
    [
        ("cnn", (13,), r"cnn needs input_shape \(C, H, W\) or \(C, L\), got \(13,\).*use 'mlp'"),
        ("cnn", (1, 2, 3, 4), r"cnn needs input_shape"),
        ("resnet18", (1, 40), r"resnet18 needs input_shape \(C, H, W\), got \(1, 40\)"),
        ("resnet20", (64,), r"resnet20 needs input_shape \(C, H, W\).*use 'mlp'"),
    ],
)
def test_input_shape_rank_not_accepted(name, input_shape, pattern):
    with pytest.raises(ValueError, match=pattern):
        build_model(name, input_shape, 10)


@pytest.mark.parametrize(
    ("args", "options", "error", "pattern"),
    [
        (("mlp", (4,), 1), {}, ValueError, r"n_classes must be >= 2, got 1"),
        (("mlp", (4,), 2.0), {}, TypeError, r"n_classes must be an int"),
        (("mlp", (0,), 3), {}, ValueError, r"input_shape\[0\] must be a positive int, got 0"),
        (("mlp", (), 3), {}, ValueError, r"input_shape must hold at least one size"),
        (("mlp", (4,), 3), {"hidden": (8, 0)}, ValueError, r"hidden\[1\] must be a positive int"),
        (("mlp", (4,), 3), {"hidden": 8}, TypeError, r"hidden must be a sequence"),
        (("mlp", (4,), 3), {"activation": "elu"}, ValueError, r"'elu'; accepted: relu, tanh, gelu"),
        (("cnn", (1, 8, 8), 3), {"channels": ()}, ValueError, r"channels must hold at least"),
        (("cnn", (1, 8, 8), 3), {"kernel_size": 0}, ValueError, r"kernel_size must be a positive"),
        (("cnn", (1, 8, 8), 3), {"hidden": -4}, ValueError, r"hidden must be a positive int"),
        (("resnet18", (3, 8, 8), 3), {"width": 0}, ValueError, r"width must be a positive int"),
        (("resnet20", (3, 8, 8), 3), {"width": 1.5}, TypeError, r"width must be a positive int"),
    ],
)
def test_bad_sizes(args, options, error, pattern):
    with pytest.raises(error, match=pattern):
        build_model(*args, **options)
