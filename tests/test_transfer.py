"""Host/device transfers: on the CPU they are views, never copies."""

import warnings

import numpy as np
import torch

from semwatch.transfer import synchronize, to_device, to_host


def test_cpu_transfer_is_a_view_even_of_a_read_only_array():
    array = np.arange(12, dtype=np.uint8).reshape(3, 4)
    array.setflags(write=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tensor = to_device(array, torch.device("cpu"))
    assert np.shares_memory(tensor.numpy(), array)
    assert to_host(tensor) is tensor
    synchronize(torch.device("cpu"))  # nothing to wait for
