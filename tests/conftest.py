"""Shared test fixtures."""
import math

import pytest
import torch

from multiproc import gloo  # noqa: F401 - fixture: skips where the machine cannot host two gloo ranks


@pytest.fixture(scope="module")
def one_thread():
    """For modules of tiny tensors (mixture scores): thread start-up costs more than it saves on 2 cores."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def inception_net():
    """Random weights with He-scaled convs and non-trivial batch-norm statistics (features stay O(1))."""
    torch.manual_seed(0)
    from score_sde import inception

    net = inception.FIDInceptionV3().eval()
    with torch.no_grad():
        for mod in net.modules():
            if isinstance(mod, torch.nn.Conv2d):
                fan_in = mod.weight[0].numel()
                mod.weight.normal_(0.0, math.sqrt(2.0 / fan_in))
            elif isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.1, 0.1)
                mod.running_var.uniform_(0.5, 1.5)
                mod.weight.uniform_(0.5, 1.5)
                mod.bias.uniform_(-0.1, 0.1)
    return net


@pytest.fixture(scope="session")
def inception_file(tmp_path_factory, inception_net) -> str:
    """inception_net saved as pytorch-fid's file is laid out (with its unused fc layer)."""
    sd = {k: v for k, v in inception_net.state_dict().items() if not k.endswith("num_batches_tracked")}
    sd["fc.weight"], sd["fc.bias"] = torch.zeros(1008, 2048), torch.zeros(1008)
    path = str(tmp_path_factory.mktemp("inception") / "pt_inception.pth")
    torch.save(sd, path)
    return path
