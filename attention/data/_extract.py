"""Shared pieces of the extraction scripts: head selection, assembly, command line."""

from __future__ import annotations

import argparse
import hashlib
import logging
import time
from importlib import metadata

import numpy as np

from ._format import AttentionSample, attention_entropy, save_npz

logger = logging.getLogger("attention.data")

DEFAULT_TEXT = "cc0-1.0"


def read_text(name_or_path: str | None) -> tuple[str, str]:
    """Return ``(text, label)`` for a shipped text name or a file path."""
    from . import available_texts, load_text

    if name_or_path is None:
        name_or_path = DEFAULT_TEXT
    if name_or_path in available_texts():
        body = load_text(name_or_path)
        label = f"shipped text {name_or_path!r}"
    else:
        try:
            with open(name_or_path, "rb") as f:
                body = f.read().decode("utf-8")
        except FileNotFoundError:
            raise FileNotFoundError(
                f"text {name_or_path!r} is neither a shipped text {list(available_texts())} "
                "nor a file"
            ) from None
        label = str(name_or_path)
    digest = hashlib.sha256(body.encode("utf-8")).hexdigest()[:16]
    return body, f"{label} (sha256 {digest}...)"


def package_version(dist: str) -> str:
    """Installed version of a distribution, or "unknown"."""
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "unknown"


def parse_heads(specs, n_layers: int, n_heads: int) -> np.ndarray:
    """Parse ``["L:H", ...]`` (or an (h, 2) array) into a checked (h, 2) int64 array."""
    if isinstance(specs, np.ndarray) or (len(specs) and not isinstance(next(iter(specs)), str)):
        heads = np.asarray(specs, dtype=np.int64).reshape(-1, 2)
    else:
        pairs = []
        for s in specs:
            try:
                layer, head = (int(t) for t in s.split(":"))
            except ValueError:
                raise ValueError(f"head {s!r} must be written LAYER:HEAD, e.g. 3:7") from None
            pairs.append((layer, head))
        heads = np.array(pairs, dtype=np.int64).reshape(-1, 2)
    bad = (heads[:, 0] < 0) | (heads[:, 0] >= n_layers) | (heads[:, 1] < 0)
    bad |= heads[:, 1] >= n_heads
    if heads.shape[0] == 0 or bad.any():
        raise ValueError(
            f"heads must be non-empty (layer, head) pairs with 0 <= layer < {n_layers} and "
            f"0 <= head < {n_heads}; got {heads.tolist()}"
        )
    return heads


def select_spread(entropy: np.ndarray, count: int) -> np.ndarray:
    """Return the indices of ``count`` heads whose entropies span the range (by rank).

    The heads are sorted by entropy and the ones at ranks
    ``round(linspace(0, H - 1, count))`` are kept, so the sharpest and the most diffuse
    head are always included.
    """
    order = np.argsort(entropy, kind="stable")
    count = min(count, entropy.size)
    ranks = np.unique(np.round(np.linspace(0, entropy.size - 1, count)).astype(np.int64))
    return np.sort(order[ranks])


def choose_heads(heads, layers, n_layers: int, n_heads: int) -> np.ndarray:
    """Heads to extract: the explicit ``heads`` or every head of ``layers`` (default all)."""
    if heads is not None:
        return parse_heads(heads, n_layers, n_heads)
    layer_list = range(n_layers) if layers is None else sorted({int(i) for i in layers})
    return parse_heads([(i, h) for i in layer_list for h in range(n_heads)], n_layers, n_heads)


def assemble(
    q: dict,
    k: dict,
    v: dict,
    ids: np.ndarray,
    heads: np.ndarray,
    *,
    group: int,
    causal: bool,
    scale: float,
    model: str,
    description: str,
) -> AttentionSample:
    """Stack the requested heads; query head ``h`` reads kv head ``h // group``."""
    Q = np.stack([q[layer][h] for layer, h in heads]).astype(np.float32)
    K = np.stack([k[layer][h // group] for layer, h in heads]).astype(np.float32)
    V = np.stack([v[layer][h // group] for layer, h in heads]).astype(np.float32)
    ent = attention_entropy(Q, K, scale=scale, causal=causal)
    listing = ", ".join(
        f"({int(layer)}, {int(h)}): {e:.2f}" for (layer, h), e in zip(heads, ent, strict=True)
    )
    n = len(ids)
    # the largest possible mean row entropy: uniform attention over the visible keys
    top = np.mean(np.log(np.arange(1, n + 1))) if causal else np.log(n)
    description = (
        f"{description} Mean row entropy of softmax(QK^T*scale) in nats (uniform "
        f"attention gives {top:.2f}) per (layer, head): {listing}."
    )
    return AttentionSample(
        Q=Q,
        K=K,
        V=V,
        heads=np.asarray(heads, dtype=np.int64),
        causal=causal,
        scale=scale,
        model=model,
        tokens=np.asarray(ids, dtype=np.int64),
        description=description,
    )


def all_entropies(q, k, heads, *, group, scale, causal) -> np.ndarray:
    """Mean row entropy of every (layer, head) in ``heads`` (float64 scores)."""
    out = np.empty(len(heads))
    for i, (layer, h) in enumerate(heads):
        out[i] = attention_entropy(
            q[layer][h][None], k[layer][h // group][None], scale=scale, causal=causal
        )[0]
    return out


def build_parser(prog: str, description: str, *, default_n: int) -> argparse.ArgumentParser:
    """Command-line interface shared by both extraction scripts."""
    p = argparse.ArgumentParser(prog=prog, description=description)
    p.add_argument("--out", required=True, help="output .npz file")
    p.add_argument(
        "--n-tokens", type=int, default=default_n, help=f"sequence length (default {default_n})"
    )
    p.add_argument(
        "--text",
        default=None,
        help=f"shipped text name or path of a UTF-8 file (default: {DEFAULT_TEXT!r})",
    )
    p.add_argument(
        "--layers", type=int, nargs="+", default=None, help="layers to keep (default: all)"
    )
    g = p.add_mutually_exclusive_group()
    g.add_argument("--heads", nargs="+", default=None, metavar="L:H", help="explicit heads")
    g.add_argument(
        "--select",
        type=int,
        default=None,
        metavar="COUNT",
        help="keep COUNT heads spanning sharp to diffuse attention (by row entropy)",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="log debug detail")
    return p


def run_cli(extract, parser, argv) -> int:
    """Parse ``argv``, call ``extract`` and write the file; returns the exit status."""
    args = parser.parse_args(argv)
    # The summary below is the command's output: it goes through logging (INFO), and -v
    # adds debug detail.
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s"
    )
    t0 = time.perf_counter()
    sample = extract(
        args.text,
        n_tokens=args.n_tokens,
        layers=args.layers,
        heads=args.heads,
        select=args.select,
    )
    save_npz(args.out, sample)
    logger.info(
        "wrote %s: Q %s, K %s, V %s in %.1f s\n%s",
        args.out,
        sample.Q.shape,
        sample.K.shape,
        sample.V.shape,
        time.perf_counter() - t0,
        sample.description,
    )
    return 0
