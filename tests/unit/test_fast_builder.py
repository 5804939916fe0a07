"""engine.fast.builder: building C kernels with the system compiler, once, and saying why in one line when it can't."""

from __future__ import annotations

import ctypes

import pytest

from engine.fast import builder

ADD = "int add(int a, int b) { return a + b; }\n"


@pytest.fixture
def fresh_build(monkeypatch, tmp_path):
    """builder.build as a new process sees it, building into ``tmp_path / 'cache'``; returns the
    library, or the reason it gave up (checked to be one line)."""
    monkeypatch.setenv("MOE_TUI_CACHE", str(tmp_path / "cache"))

    def build(text: str = ADD, name: str = "add.c"):
        source = tmp_path / name
        source.write_text(text)
        builder.build.cache_clear()
        try:
            return builder.build(source)
        except builder.KernelUnavailable as exc:
            assert "\n" not in str(exc)
            return str(exc)
        finally:
            builder.build.cache_clear()

    return build


def test_a_build_runs_and_is_cached_per_source(fresh_build, tmp_path):
    lib = fresh_build()
    lib.add.argtypes, lib.add.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    assert lib.add(2, 3) == 5
    first = sorted(p.name for p in (tmp_path / "cache").iterdir())
    assert len(first) == 1 and first[0].startswith("add-")
    fresh_build()
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == first  # found, not built again
    fresh_build(ADD + "int twice(int a) { return 2 * a; }\n")
    assert len(list((tmp_path / "cache").iterdir())) == 2  # a changed source is another build


def test_a_missing_compiler_is_one_line(fresh_build, monkeypatch, tmp_path):
    monkeypatch.setenv("CC", "/nonexistent/cc")
    assert "C compiler '/nonexistent/cc' failed to run" in fresh_build()
    assert list((tmp_path / "cache").iterdir()) == []  # no half-built library left behind


def test_a_failed_build_is_not_tried_again_in_the_process(monkeypatch, tmp_path):
    monkeypatch.setenv("CC", "/nonexistent/cc")
    monkeypatch.setenv("MOE_TUI_CACHE", str(tmp_path / "cache"))
    source = tmp_path / "add.c"
    source.write_text(ADD)
    tries = []
    real = builder._build
    monkeypatch.setattr(builder, "_build", lambda *a: tries.append(a) or real(*a))
    builder.build.cache_clear()
    try:
        for _ in range(3):
            with pytest.raises(builder.KernelUnavailable, match="/nonexistent/cc"):
                builder.build(source)
    finally:
        builder.build.cache_clear()
    assert len(tries) == 1


def test_a_compile_error_is_one_line_and_leaves_nothing(fresh_build, tmp_path):
    assert "could not build bad.c" in fresh_build("this is not C\n", "bad.c")
    assert list((tmp_path / "cache").iterdir()) == []


def test_an_unwritable_cache_is_one_line(fresh_build, monkeypatch, tmp_path):
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("MOE_TUI_CACHE", str(tmp_path / "file" / "cache"))
    assert "set MOE_TUI_CACHE to a writable folder" in fresh_build()


def test_the_key_names_the_source_compiler_and_python(tmp_path):
    source = tmp_path / "add.c"
    source.write_text(ADD)
    key = builder.cache_key(source, ["cc"])
    assert builder.cache_key(source, ["cc"]) == key
    assert builder.cache_key(source, ["clang"]) != key
    source.write_text(ADD + "\n")
    assert builder.cache_key(source, ["cc"]) != key


def test_a_half_built_library_is_never_where_loaders_look(fresh_build, monkeypatch, tmp_path):
    """The compiler writes into a temporary folder; the cache gets the whole file by one rename."""
    seen = []
    real = builder.subprocess.run

    def compile_and_look(cmd, **kw):
        out = real(cmd, **kw)
        target = cmd[cmd.index("-o") + 1]
        seen.append((target, sorted(p.name for p in (tmp_path / "cache").iterdir())))
        return out

    monkeypatch.setattr(builder.subprocess, "run", compile_and_look)
    lib = fresh_build()
    assert lib.add(1, 1) == 2
    assert seen
    for target, cached_meanwhile in seen:
        assert not target.startswith(str(tmp_path / "cache")) and cached_meanwhile == []
    assert [p.suffix for p in (tmp_path / "cache").iterdir()] == [".so"]  # no temporary file left beside it
