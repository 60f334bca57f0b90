import importlib.util

import pytest

from ria_kernels import RiaInputError
from ria_kernels.zero_shot import evaluate_zero_shot


@pytest.mark.skipif(importlib.util.find_spec("lm_eval") is not None, reason="lm_eval is installed here")
def test_missing_lm_eval_is_a_clear_error():
    with pytest.raises(RiaInputError, match="pip install lm-eval"):
        evaluate_zero_shot(None, None, ("rte",))
