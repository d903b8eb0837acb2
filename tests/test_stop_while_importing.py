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


def _raised_while_unwinding(stop: BaseException) -> BaseException:
    """An OSError raised by a clean-up block that ``stop`` set off (its ``__context__``)."""
    try:
        try:
            raise stop
        finally:
            raise OSError(9, "Bad file descriptor")
    except BaseException as e:
        return e
    raise AssertionError("nothing was raised")


@pytest.mark.parametrize(("stop", "code"), [(KeyboardInterrupt(), EXIT_INTERRUPTED), (Terminated(), EXIT_TERMINATED)])
def test_an_error_of_the_clean_up_a_signal_started_exits_as_that_signal(stop, code):
    failure = describe_error(_raised_while_unwinding(stop))
    assert failure.exit_code == code and "Bad file descriptor" not in failure.message


def test_an_os_error_of_its_own_keeps_its_message():
    failure = describe_error(OSError(9, "Bad file descriptor"))
    assert failure.exit_code != EXIT_TERMINATED and "Bad file descriptor" in failure.message
