"""litellm's own log lines go through the proxy's logging, in its format, and its per-call
INFO chatter only at DEBUG."""

from __future__ import annotations

import logging

import pytest

from proxy.upstream.litellm_upstream import _own_logs

LEVELS = [(logging.INFO, logging.WARNING), (logging.DEBUG, logging.NOTSET)]


@pytest.mark.parametrize("root_level, expected", LEVELS)
def test_litellms_loggers_write_through_ours(root_level: int, expected: int) -> None:
    root, logger = logging.getLogger(), logging.getLogger("LiteLLM")
    saved = (root.level, logger.level, list(logger.handlers))
    try:
        root.setLevel(root_level)
        logger.setLevel(logging.NOTSET)
        logger.addHandler(logging.StreamHandler())  # what litellm attaches at import
        _own_logs()
        assert logger.handlers == [] and logger.propagate
        assert logger.level == expected
    finally:
        root.setLevel(saved[0])
        logger.setLevel(saved[1])
        logger.handlers[:] = saved[2]
