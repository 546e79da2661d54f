#!/usr/bin/env python3
"""Writes a tiny llama-architecture GGUF model with random weights, for pool-managerd's
real-engine tests: llama.cpp's llama-server loads it in well under a second and generates
(nonsense, as it should). No model hub is involved.

    tiny_llama_gguf.py OUT.gguf [--seed N] [--name NAME]

The model: a byte-fallback vocabulary (<unk>, <s>, </s>, the 256 byte tokens and a few
words), an embedding of 64, 2 layers, 4 attention heads, a feed-forward width of 128, a context
of 256, all tensors in F32. `--name` sets general.name, so that two files with different names
are two different models (a reload test needs a second model).

Needs the `gguf` and `numpy` packages (scripts/get-llama-server.sh installs them in a venv).
"""

import argparse
import sys

import numpy as np
import gguf

N_EMBD = 64
N_LAYER = 2
N_HEAD = 4
N_FF = 128
N_CTX = 256
WORDS = ["▁the", "▁a", "▁pool", "▁engine", "▁is", "▁ready", "▁hello", "▁world", "."]


def vocabulary():
    tokens, scores, types = [], [], []

    def add(text, score, kind):
        tokens.append(text)
        scores.append(score)
        types.append(kind)

    add("<unk>", 0.0, gguf.TokenType.UNKNOWN)
    add("<s>", 0.0, gguf.TokenType.CONTROL)
    add("</s>", 0.0, gguf.TokenType.CONTROL)
    for byte in range(256):
        add(f"<0x{byte:02X}>", 0.0, gguf.TokenType.BYTE)
    for i, word in enumerate(WORDS):
        add(word, -float(i + 1), gguf.TokenType.NORMAL)
    return tokens, scores, types


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--name", default="pool-managerd tiny llama")
    args = parser.parse_args(argv)

    rng = np.random.default_rng(args.seed)
    tokens, scores, types = vocabulary()
    n_vocab = len(tokens)

    def weights(*shape):
        # numpy shape (rows, cols) is ggml's (cols, rows): (n_out, n_in) for a projection.
        return (rng.standard_normal(shape) * 0.02).astype(np.float32)

    writer = gguf.GGUFWriter(args.out, "llama")
    writer.add_name(args.name)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_context_length(N_CTX)
    writer.add_embedding_length(N_EMBD)
    writer.add_block_count(N_LAYER)
    writer.add_feed_forward_length(N_FF)
    writer.add_head_count(N_HEAD)
    writer.add_head_count_kv(N_HEAD)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_dimension_count(N_EMBD // N_HEAD)
    writer.add_vocab_size(n_vocab)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)

    writer.add_tensor("token_embd.weight", weights(n_vocab, N_EMBD))
    for layer in range(N_LAYER):
        block = f"blk.{layer}"
        writer.add_tensor(f"{block}.attn_norm.weight", np.ones(N_EMBD, dtype=np.float32))
        writer.add_tensor(f"{block}.attn_q.weight", weights(N_EMBD, N_EMBD))
        writer.add_tensor(f"{block}.attn_k.weight", weights(N_EMBD, N_EMBD))
        writer.add_tensor(f"{block}.attn_v.weight", weights(N_EMBD, N_EMBD))
        writer.add_tensor(f"{block}.attn_output.weight", weights(N_EMBD, N_EMBD))
        writer.add_tensor(f"{block}.ffn_norm.weight", np.ones(N_EMBD, dtype=np.float32))
        writer.add_tensor(f"{block}.ffn_gate.weight", weights(N_FF, N_EMBD))
        writer.add_tensor(f"{block}.ffn_up.weight", weights(N_FF, N_EMBD))
        writer.add_tensor(f"{block}.ffn_down.weight", weights(N_EMBD, N_FF))
    writer.add_tensor("output_norm.weight", np.ones(N_EMBD, dtype=np.float32))
    writer.add_tensor("output.weight", weights(n_vocab, N_EMBD))

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
