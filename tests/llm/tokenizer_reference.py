"""Test helpers for tests/llm/test_tokenizer.py: GGUF tokenizer metadata in and out, and llama.cpp's
tokenizers re-implemented in plain Python as an independent reference.

The reference follows src/llama-vocab.cpp's algorithms, not Loom's code: special tokens are cut out
longest first (tokenizer_st_partition); byte-level BPE applies llama.cpp's regex list for the file's
pre-tokenizer (each regex cuts every piece into matches and gaps), then merges the lowest-ranked pair
first; SentencePiece ("llama") prefixes a space at the start and after every special token, turns spaces
into U+2581, merges the adjacent pair forming the highest-scoring token (leftmost on ties) and spells
leftover characters as <0xXX> byte tokens.
"""
import heapq

import gguf
import numpy as np
import regex


def gguf_metadata(path):
    """GGUF metadata as loom.formats.gguf gives it: strings lists as lists, number arrays as ndarrays."""
    reader = gguf.GGUFReader(str(path))
    metadata = {}
    for key, field in reader.fields.items():
        if field.types[0] == gguf.GGUFValueType.ARRAY:
            value = field.contents()
            metadata[key] = value if field.types[-1] == gguf.GGUFValueType.STRING else np.asarray(value)
        else:
            metadata[key] = field.contents()
    return metadata


def write_gguf(path, tokens, types, model, **fields):
    """A GGUF holding tokenizer metadata (and the few llama keys transformers needs to open it)."""
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_tokenizer_model(model)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    for name, value in fields.items():
        getattr(writer, f"add_{name}")(value)
    writer.add_block_count(1)
    writer.add_context_length(64)
    writer.add_embedding_length(8)
    writer.add_feed_forward_length(16)
    writer.add_head_count(2)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def gpt2_byte_chars():
    """GPT-2's bytes_to_unicode, written out again so the reference shares nothing with Loom."""
    printable = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
    chars, extra = dict(zip(printable, map(chr, printable))), 0
    for b in range(256):
        if b not in chars:
            chars[b], extra = chr(256 + extra), extra + 1
    return chars


GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
LLAMA_CPP_SPLITS = {   # llama-vocab.cpp's regex_exprs, in its own adapted spelling
    "gpt2": [GPT2],
    "smollm": [r"\p{N}", GPT2],
    "llama-bpe": [r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                  r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"],
    "qwen2": [r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
              r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"],
    "default": [r"[\p{P}\$\+<=>\^~\|]+", GPT2, r"\p{N}+", r"[0-9][0-9][0-9]"],
}


def partition(text, specials):
    """llama.cpp's tokenizer_st_partition: cut out special tokens, longest first (no empty pieces)."""
    pieces = [(text, False)] if text else []
    for special in sorted(specials, key=len, reverse=True):
        out = []
        for piece, is_token in pieces:
            if is_token or special not in piece:
                out.append((piece, is_token))
                continue
            parts = piece.split(special)
            for k, part in enumerate(parts):
                if part:
                    out.append((part, False))
                if k < len(parts) - 1:
                    out.append((special, True))
        pieces = out
    return pieces


def regex_split(text, patterns):
    """Each regex cuts every piece into matches and the gaps between them (llama.cpp unicode_regex_split)."""
    pieces = [text]
    for pattern in patterns:
        out = []
        for piece in pieces:
            pos = 0
            for match in regex.finditer(pattern, piece):
                if match.start() > pos:
                    out.append(piece[pos:match.start()])
                if match.end() > match.start():
                    out.append(match.group())
                pos = match.end()
            if pos < len(piece):
                out.append(piece[pos:])
        pieces = out
    return pieces


def llama_cpp_bpe(metadata, text):
    tokens = list(metadata["tokenizer.ggml.tokens"])
    types = list(metadata["tokenizer.ggml.token_type"])
    vocab = {t: i for i, t in enumerate(tokens)}
    ranks = {(m[:m.index(" ", 1)], m[m.index(" ", 1) + 1:]): r for r, m in enumerate(metadata["tokenizer.ggml.merges"])}
    pre = metadata.get("tokenizer.ggml.pre", "default")
    chars = gpt2_byte_chars()
    specials = [t for t, ty in zip(tokens, types) if ty in (3, 4)]
    out = []
    for piece, is_token in partition(text, specials):
        if is_token:
            out.append(vocab[piece])
            continue
        for word in regex_split(piece, LLAMA_CPP_SPLITS[pre]):
            symbols = [chars[b] for b in word.encode("utf-8")]
            if pre == "llama-bpe" and "".join(symbols) in vocab:    # llama.cpp's ignore_merges
                out.append(vocab["".join(symbols)])
                continue
            while True:
                best = min(((ranks[pair], i) for i, pair in enumerate(zip(symbols, symbols[1:])) if pair in ranks),
                           default=None)
                if best is None:
                    break
                i = best[1]
                symbols[i:i + 2] = [symbols[i] + symbols[i + 1]]
            out.extend(vocab[s] for s in symbols)
    return out


def llama_cpp_spm(metadata, text, add_special=True):
    tokens = list(metadata["tokenizer.ggml.tokens"])
    types = list(metadata["tokenizer.ggml.token_type"])
    scores = [float(s) for s in metadata["tokenizer.ggml.scores"]]
    vocab = {t: i for i, t in enumerate(tokens)}
    out = [int(metadata["tokenizer.ggml.bos_token_id"])] if add_special else []
    prev_special = True
    for piece, is_token in partition(text, [t for t, ty in zip(tokens, types) if ty in (2, 3, 4)]):
        if is_token:
            out.append(vocab[piece])
            prev_special = True
            continue
        symbols = list(((" " if prev_special else "") + piece).replace(" ", "\u2581"))
        prev_special = False
        nxt, prv, heap = list(range(1, len(symbols))) + [-1], list(range(-1, len(symbols) - 1)), []

        def push(left, right):
            if left >= 0 and right >= 0 and symbols[left] + symbols[right] in vocab:
                heapq.heappush(heap, (-scores[vocab[symbols[left] + symbols[right]]], left, right,
                                      symbols[left] + symbols[right]))
        for i in range(len(symbols) - 1):
            push(i, i + 1)
        while heap:      # highest score first, leftmost on ties
            _, left, right, text_ = heapq.heappop(heap)
            if not symbols[left] or not symbols[right] or nxt[left] != right or symbols[left] + symbols[right] != text_:
                continue
            symbols[left], symbols[right] = text_, ""
            nxt[left] = nxt[right]
            if nxt[right] >= 0:
                prv[nxt[right]] = left
            push(prv[left], left)
            push(left, nxt[left])
        for symbol in filter(None, symbols):
            out.extend([vocab[symbol]] if symbol in vocab else
                       [vocab[f"<0x{b:02X}>"] for b in symbol.encode("utf-8")])
    return out
