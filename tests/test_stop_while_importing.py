"""A Ctrl-C or SIGTERM that lands while a module is being imported mid-run is still an interruption."""

from __future__ import annotations

import pytest

from llmkit.cli.errors import describe_error
from llmkit.errors import EXIT_INTERRUPTED, EXIT_TERMINATED, Terminated


def _made_while(stop: BaseException) -> BaseException:
    """What a class statement raises when ``stop`` arrives in a field's ``__set_name__`` (as while a
    dataclass of a lazily imported module is made)."""

    class Field:
        def __set_name__(self, owner: type, name: str) -> None:
            raise stop

    try:

        class Result:
            files = Field()

    except BaseException as e:  # RuntimeError caused by ``stop`` on 3.11, ``stop`` itself on 3.12
        return e
    raise AssertionError("the class was made")


@pytest.mark.parametrize(("stop", "code"), [(KeyboardInterrupt(), EXIT_INTERRUPTED), (Terminated(), EXIT_TERMINATED)])
def test_a_signal_while_a_class_is_made_exits_as_interrupted_not_internal(stop, code):
    failure = describe_error(_made_while(stop))
    assert failure.exit_code == code
    assert "internal error" not in failure.message


def test_a_runtime_error_of_its_own_is_still_an_internal_error():
    failure = describe_error(RuntimeError("boom"))
    assert failure.exit_code == 3 and failure.message == "internal error: RuntimeError: boom"
