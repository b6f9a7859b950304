"""The end-to-end check of a LoRA GGUF: logits of llama.cpp (base GGUF + adapter GGUF) against
transformers + PEFT on the same tokens. Needs llama-cpp-python (optional extra `llamacpp`) and,
to convert a base, llama.cpp's convert_hf_to_gguf.py (path in $LLAMA_CPP_CONVERT).

llama.cpp's converter rejects locally trained byte-level BPE tokenizers, so the tiny base built
here for tests and the bench carries a SentencePiece tokenizer, which it converts cleanly.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

CORPUS = "def add(a, b):\n    return a + b\n\nfor i in range(10):\n    print(i * i)\n" * 40


def llamacpp_available() -> str | None:
    """None when the check can run, else why not."""
    try:
        import llama_cpp  # noqa: F401  # pyright: ignore[reportMissingImports]  (an optional extra)
    except ImportError:
        return "skipped: llama-cpp-python not installed (pip install 'learnloop[llamacpp]')"
    convert = os.environ.get("LLAMA_CPP_CONVERT")
    if not convert or not Path(convert).exists():
        return "skipped: set LLAMA_CPP_CONVERT to llama.cpp's convert_hf_to_gguf.py to convert the base"
    return None


def build_spm_llama(folder: Path, seed: int = 0) -> Path:
    """A tiny random Llama (4 heads, 2 kv heads) with a SentencePiece tokenizer llama.cpp converts."""
    import sentencepiece as spm
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, LlamaTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "corpus.txt").write_text(CORPUS)
    spm.SentencePieceTrainer.train(
        input=str(folder / "corpus.txt"),
        model_prefix=str(folder / "tokenizer"),
        vocab_size=64,
        model_type="bpe",
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        hard_vocab_limit=False,
        minloglevel=2,
    )
    (folder / "corpus.txt").unlink()
    (folder / "tokenizer.vocab").unlink()
    tok = LlamaTokenizer.from_pretrained(str(folder))  # converts tokenizer.model
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        bos_token_id=1,
        eos_token_id=2,
    )
    LlamaForCausalLM(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def convert_base(base_dir: Path, out: Path) -> Path:
    """Convert a base folder to an f32 GGUF with llama.cpp's own converter."""
    proc = subprocess.run(
        [sys.executable, os.environ["LLAMA_CPP_CONVERT"], str(base_dir), "--outfile", str(out), "--outtype", "f32"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"convert_hf_to_gguf.py failed: {proc.stderr[-2000:]}")
    return out


def compare_logits(
    base_dir: Path, adapter_dir: Path, base_gguf: Path, adapter_gguf: Path, ids: list[int]
) -> dict[str, Any]:
    """Max |logits| differences: llama.cpp base vs transformers base (the conversion itself), and
    llama.cpp base + adapter vs transformers + PEFT (the adapter export)."""
    import numpy as np
    import torch
    from llama_cpp import Llama  # pyright: ignore[reportMissingImports]  (an optional extra)
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    def run(lora: Path | None) -> np.ndarray:
        kwargs = {"lora_path": str(lora)} if lora else {}
        llm = Llama(
            model_path=str(base_gguf), n_ctx=len(ids) + 8, logits_all=True, verbose=False, n_threads=2, **kwargs
        )
        llm.eval(ids)
        out = np.array(llm.scores[: len(ids)], dtype=np.float32)
        llm.close()
        return out

    base = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32).eval()
    with torch.no_grad():
        hf_base = base(torch.tensor([ids])).logits[0].numpy()
        model = PeftModel.from_pretrained(base, str(adapter_dir)).eval()
        hf_lora = model(torch.tensor([ids])).logits[0].numpy()
    cpp_base, cpp_lora = run(None), run(adapter_gguf)
    cpp_effect, hf_effect = (cpp_lora - cpp_base).ravel(), (hf_lora - hf_base).ravel()
    return {
        "base_max_logit_diff": float(np.abs(cpp_base - hf_base).max()),
        "effect_correlation": float(np.corrcoef(cpp_effect, hf_effect)[0, 1]),
        "adapter_max_logit_diff": float(np.abs(cpp_lora - hf_lora).max()),
        "adapter_effect": float(np.abs(hf_lora - hf_base).max()),
        "tokens": len(ids),
    }


def main() -> None:  # python -m tests.support.llamacpp_check BASE_DIR ADAPTER_DIR BASE_GGUF ADAPTER_GGUF
    base_dir, adapter_dir, base_gguf, adapter_gguf = map(Path, sys.argv[1:5])
    print(json.dumps(compare_logits(base_dir, adapter_dir, base_gguf, adapter_gguf, list(range(3, 40)))))


if __name__ == "__main__":
    main()
