import pytest

from edge_runtime.durable_files import write_atomically, write_new_durably


def test_an_atomic_write_replaces_the_content_and_leaves_no_temporary_file(tmp_path):
    target = tmp_path / "state" / "state.json"
    write_atomically(target, b"old")
    write_atomically(target, b"new")
    assert target.read_bytes() == b"new"
    assert sorted(path.name for path in target.parent.iterdir()) == ["state.json"]


def test_a_failed_atomic_write_keeps_the_old_content(tmp_path):
    target = tmp_path / "state.json"
    write_atomically(target, b"old")
    with pytest.raises(TypeError):
        write_atomically(target, "not bytes")  # type: ignore[arg-type]
    assert target.read_bytes() == b"old"
    assert [path.name for path in tmp_path.iterdir()] == ["state.json"]


def test_a_new_durable_file_refuses_to_overwrite(tmp_path):
    target = tmp_path / "manifest.json"
    write_new_durably(target, b"first")
    with pytest.raises(FileExistsError):
        write_new_durably(target, b"second")
    assert target.read_bytes() == b"first"
