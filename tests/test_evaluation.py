import math

import pytest
import torch
import torch.nn.functional as F

from ria_kernels import RiaInputError
from ria_kernels.evaluation import perplexity
from conftest import make_calibration, make_tiny_model


@torch.no_grad()
def test_perplexity_matches_manual_protocol():
    model = make_tiny_model("llama")
    ids = make_calibration(1, 100, seed=2).reshape(-1)
    seqlen = 24  # 4 windows, 4 trailing tokens dropped
    nll, count = 0.0, 0
    for w in ids[: 4 * seqlen].reshape(4, seqlen):
        logits = model(input_ids=w[None]).logits[0].double()
        nll += float(F.cross_entropy(logits[:-1], w[1:], reduction="sum"))
        count += seqlen - 1
    assert perplexity(model, ids, seqlen, batch_size=3) == pytest.approx(math.exp(nll / count), rel=1e-5)


def test_too_short_text():
    with pytest.raises(RiaInputError, match="fewer than one window"):
        perplexity(make_tiny_model("llama"), torch.arange(10), 32)
