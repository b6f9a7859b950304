"""Checking a GGUF before importing it, and finding an imported base (no model loaded), plus the
refusal of an architecture transformers cannot read (a real job). The import of a real model is
tests/test_real_model.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from learning.errors import Conflict, InvalidInput
from learning.jobs import manage as jobs
from learning.models import gguf_base


def write_gguf(path: Path, arch: str = "llama", kind: str = "model") -> Path:
    import gguf
    import numpy as np

    writer = gguf.GGUFWriter(str(path), arch=arch)
    writer.add_type(kind)
    writer.add_name("tiny test model")
    writer.add_array("tokenizer.ggml.tokens", ["a", "b"])
    writer.add_tensor("token_embd.weight", np.zeros((2, 4), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_the_header_is_read_without_parsing_the_vocabulary(tmp_path):
    path, header = gguf_base.check_gguf(str(write_gguf(tmp_path / "m.gguf")))
    assert path == (tmp_path / "m.gguf").resolve()
    assert header["general.architecture"] == "llama" and header["general.name"] == "tiny test model"


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda d: write_gguf(d / "a.gguf", kind="adapter"), "GGUF adapter, not a model"),
        (lambda d: (d / "x.gguf").write_bytes(b"PK\x03\x04 not a gguf") and d / "x.gguf", "not a GGUF file"),
        (lambda d: write_gguf(d / "m.bin"), "No GGUF file"),
        (lambda d: d / "missing.gguf", "No GGUF file"),
        (lambda d: (d / "t.gguf").write_bytes(b"GGUF\x03\x00") and d / "t.gguf", "truncated"),
    ],
)
def test_what_is_not_a_model_gguf_is_refused_at_once(tmp_path, make, message):
    with pytest.raises(InvalidInput, match=message):
        gguf_base.check_gguf(str(make(tmp_path)))


def test_ids_come_from_the_file_name_and_are_looked_up(store, tmp_path):
    assert gguf_base.default_base_id(Path("/m/SmolLM2-135M-Instruct.Q4_1.gguf")) == "SmolLM2-135M-Instruct.Q4_1"
    assert gguf_base.default_base_id(Path("/m/..my model (v2).gguf")) == "my-model-v2-"
    source = write_gguf(tmp_path / "m.gguf")
    folder = store.home / "bases" / "m"
    folder.mkdir(parents=True)
    (folder / "gguf_base.json").write_text(json.dumps({"id": "m", "gguf_path": str(source)}))
    assert gguf_base.find_imported(store.home, "m") == (folder, None)
    assert gguf_base.find_imported(store.home, str(source)) == (folder, None)
    assert gguf_base.find_imported(store.home, "../bases/m") == (None, None)  # not an id: never joined
    assert gguf_base.gguf_origin(folder) == str(source) and gguf_base.gguf_origin(tmp_path) is None
    other = write_gguf(tmp_path / "other.gguf")
    folder_problem = gguf_base.find_imported(store.home, str(other))[1]
    assert folder_problem and "learnloop base import" in folder_problem
    # Another file under an id in use is refused; a bad name too.
    with pytest.raises(Conflict, match="pass another name"):
        gguf_base.import_base(store, str(other), name="m")
    with pytest.raises(InvalidInput, match="Invalid base name"):
        gguf_base.import_base(store, str(other), name="../escape")


@pytest.mark.slow
def test_an_architecture_transformers_cannot_read_fails_with_what_works(store, tmp_path):
    started = gguf_base.import_base(store, str(write_gguf(tmp_path / "b.gguf", arch="bert")), wait_s=0)
    assert started.job_id is not None
    status = jobs.wait_job(store, started.job_id, timeout=300)
    assert status.status == "failed" and "cannot read GGUF files of architecture 'bert'" in (status.error or "")
    assert "Hugging Face folder" in (status.error or "")
    assert not (store.home / "bases" / "b").exists()
    assert [p.name for p in (store.home / "bases").iterdir()] == []  # no partial folder left
