"""Tests for lorakit.book.rlang: Chapter 1's R cells, real or skipped."""

import sys

from lorakit.book import rlang


class _Shell:
    """The one IPython method the stand-in path uses."""

    def __init__(self) -> None:
        self.cell_magics = {}

    def register_magic_function(self, func, magic_kind, magic_name):
        assert magic_kind == "cell"
        self.cell_magics[magic_name] = func


def test_without_rpy2_r_is_unavailable_and_r_cells_print_the_skip_line(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "rpy2", None)  # importing rpy2 now fails, as on a machine without it
    monkeypatch.setitem(sys.modules, "rpy2.robjects", None)
    assert rlang.r_available() is False
    shell = _Shell()
    assert rlang.load_r_magic(shell) is False
    shell.cell_magics["R"]("", "x <- 1\nprint(x)")
    assert capsys.readouterr().out.strip() == rlang.SKIP_MESSAGE


def test_with_a_working_r_the_answer_is_true(monkeypatch):
    class Robjects:
        calls = []

        @classmethod
        def r(cls, code):
            cls.calls.append(code)

    fake = type(sys)("rpy2")
    fake.robjects = Robjects
    monkeypatch.setitem(sys.modules, "rpy2", fake)
    monkeypatch.setitem(sys.modules, "rpy2.robjects", Robjects)
    assert rlang.r_available() is True and Robjects.calls == ["1"]  # it really asked R to evaluate something
