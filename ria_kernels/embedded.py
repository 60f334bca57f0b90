"""The embedded default model: a small LLaMA-architecture (GQA) causal LM trained by
``scripts/train_embedded.py`` on the Python standard library's documentation and
shipped with the package, with held-out calibration and evaluation text built the
same way. It lets ``ria-prune`` show dense vs pruned perplexity offline.

Corpus: the plain-text pydoc page of every module in the fixed, sorted list
``CORPUS_MODULES`` (cross-platform modules present in CPython 3.10-3.13), keeping
only the NAME / DESCRIPTION / CLASSES / FUNCTIONS sections (DATA and FILE hold
machine-specific values such as paths and ``os.environ``), without the blocks a
class inherits from another class, with memory addresses scrubbed. Each module
goes wholly to one split (``split_of``), so calibration and evaluation text is
held out from training.

Nothing here imports transformers at import time.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from ._errors import RiaInputError

ASSETS_DIR = Path(__file__).resolve().parent / "assets"
EMBEDDED_DIR = ASSETS_DIR / "embedded"
SPLITS = ("calib", "eval")

# Fixed and sorted. Cross-platform, no GUI, no import side effects, not removed in 3.12/3.13.
CORPUS_MODULES: tuple[str, ...] = tuple(sorted((
    "abc", "argparse", "array", "ast", "asyncio", "base64", "bdb", "binascii", "bisect", "builtins", "bz2",
    "cProfile", "calendar", "cmath", "cmd", "code", "codecs", "codeop", "collections", "collections.abc",
    "colorsys", "compileall", "concurrent.futures", "configparser", "contextlib", "contextvars", "copy",
    "copyreg", "csv", "ctypes", "dataclasses", "datetime", "dbm", "decimal", "difflib", "dis", "doctest",
    "email.message", "email.parser", "email.utils", "enum", "errno", "faulthandler", "filecmp", "fileinput",
    "fnmatch", "fractions", "ftplib", "functools", "gc", "getopt", "getpass", "gettext", "glob", "graphlib",
    "gzip", "hashlib", "heapq", "hmac", "html", "html.parser", "http", "http.client", "http.cookiejar",
    "http.cookies", "http.server", "imaplib", "importlib", "importlib.abc", "importlib.machinery",
    "importlib.metadata", "importlib.util", "inspect", "io", "ipaddress", "itertools", "json", "keyword",
    "linecache", "locale", "logging", "logging.handlers", "lzma", "mailbox", "marshal", "math", "mimetypes",
    "mmap", "modulefinder", "multiprocessing", "netrc", "numbers", "operator", "optparse", "os", "os.path",
    "pathlib", "pdb", "pickle", "pickletools", "pkgutil", "platform", "plistlib", "poplib", "pprint", "profile",
    "pstats", "py_compile", "pyclbr", "pydoc", "queue", "quopri", "random", "re", "reprlib", "rlcompleter",
    "runpy", "sched", "secrets", "select", "selectors", "shelve", "shlex", "shutil", "signal", "smtplib",
    "socket", "socketserver", "sqlite3", "ssl", "stat", "statistics", "string", "stringprep", "struct",
    "subprocess", "symtable", "sys", "sysconfig", "tabnanny", "tarfile", "tempfile", "textwrap", "threading",
    "time", "timeit", "token", "tokenize", "trace", "traceback", "tracemalloc", "types", "typing",
    "unicodedata", "unittest", "unittest.mock", "urllib.error", "urllib.parse", "urllib.request",
    "urllib.robotparser", "uuid", "venv", "warnings", "wave", "weakref", "webbrowser", "wsgiref.simple_server",
    "wsgiref.util", "xml.dom", "xml.dom.minidom", "xml.etree.ElementTree", "xml.sax", "xml.sax.handler",
    "xmlrpc.client", "xmlrpc.server", "zipapp", "zipfile", "zipimport", "zlib", "zoneinfo",
)))
KEEP_SECTIONS = ("NAME", "DESCRIPTION", "CLASSES", "FUNCTIONS")
MAX_CHARS_PER_MODULE = 60_000


def split_of(module: str) -> str:
    """``"train"``, ``"calib"`` or ``"eval"`` for a module: a fixed function of its name
    (first byte of its SHA-256: ``< 24`` -> eval, ``< 48`` -> calib, else train), so the
    split does not depend on which modules happen to import on a machine."""
    b = hashlib.sha256(module.encode()).digest()[0]
    return "eval" if b < 24 else "calib" if b < 48 else "train"


def clean_pydoc(text: str) -> str:
    """Keep the ``KEEP_SECTIONS`` of a plain-text pydoc page, drop inherited-member
    blocks and the class gutters (``" |  "``), scrub memory addresses."""
    import re
    out: list[str] = []
    keep = False
    skipping_inherited = False
    for line in text.splitlines():
        if re.fullmatch(r"[A-Z][A-Z ]*", line):  # a section header
            keep = line in KEEP_SECTIONS
            skipping_inherited = False
            if keep:
                out.append(line)
            continue
        if not keep:
            continue
        gutter = re.match(r"[ |]*", line).group()
        body = line[len(gutter):]
        if "|" in gutter:
            if re.match(r"-{20,}$", body):  # separator between member blocks
                skipping_inherited = False
                continue
            if re.match(r"(\w+ )+inherited from ", body):
                skipping_inherited = True
            if skipping_inherited:
                continue
        else:
            skipping_inherited = False
        line = (gutter.replace("|", " ") + body).rstrip()
        out.append(line)
    text = "\n".join(out)
    text = re.sub(r" at 0x[0-9a-fA-F]+", "", text)
    text = re.sub(r"\n{3,}", "\n\n", text)
    return text.strip() + "\n"


def scrub_machine_paths(text: str) -> str:
    """Replace this machine's interpreter path, prefixes, working and home directory
    (which appear in some default argument values) with neutral placeholders."""
    import os
    import sys
    subs = [(sys.executable, "python"), (sys.prefix, "<prefix>"), (sys.base_prefix, "<prefix>"),
            (sys.exec_prefix, "<prefix>"), (os.getcwd(), "<cwd>"), (os.path.expanduser("~"), "~")]
    for real, placeholder in sorted(subs, key=lambda s: -len(s[0] or "")):
        if real and len(real) > 3:
            text = text.replace(real, placeholder)
    return text


def render_module(name: str) -> str | None:
    """Cleaned plain-text pydoc page of ``name``, or ``None`` if it cannot be imported."""
    import contextlib
    import importlib
    import io
    import pydoc
    import warnings
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
                contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            mod = importlib.import_module(name)
            text = pydoc.render_doc(mod, renderer=pydoc.plaintext)
    except Exception:  # noqa: BLE001 - a module that fails to import or render is skipped
        return None
    text = scrub_machine_paths(clean_pydoc(text))
    if len(text) > MAX_CHARS_PER_MODULE:  # cut at a blank line so the page ends cleanly
        cut = text.rfind("\n\n", 0, MAX_CHARS_PER_MODULE)
        text = text[: cut if cut > 0 else MAX_CHARS_PER_MODULE] + "\n"
    return text


def build_corpus(modules: tuple[str, ...] = CORPUS_MODULES) -> dict[str, list[tuple[str, str]]]:
    """``{"train"|"calib"|"eval": [(module, text), ...]}`` in the order of ``modules``;
    modules that fail to import are left out."""
    parts: dict[str, list[tuple[str, str]]] = {"train": [], "calib": [], "eval": []}
    for name in modules:
        text = render_module(name)
        if text:
            parts[split_of(name)].append((name, text))
    return parts


def embedded_text_path(split: str) -> Path:
    """Held-out text shipped with the embedded model: ``"calib"`` or ``"eval"``."""
    if split not in SPLITS:
        raise RiaInputError(f"split must be one of {SPLITS}, got {split!r}")
    path = ASSETS_DIR / f"{split}.txt"
    if not path.is_file():
        raise RiaInputError(f"embedded {split} text missing at {path}; reinstall ria-kernels")
    return path


def load_embedded(dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"):
    """``(model, tokenizer)`` of the embedded default model, loaded offline."""
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise RiaInputError(f"dtype must be a floating torch.dtype, got {dtype!r}")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise RiaInputError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {device!r}") from None
    if dev.type not in ("cpu", "cuda"):
        raise RiaInputError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RiaInputError(f"device {device!r}: no CUDA device is available")
    if not (EMBEDDED_DIR / "config.json").is_file() or not (EMBEDDED_DIR / "model.safetensors").is_file():
        raise RiaInputError(f"embedded model missing at {EMBEDDED_DIR}; reinstall ria-kernels "
                            "or run scripts/train_embedded.py")
    from transformers import AutoTokenizer, LlamaForCausalLM
    model = LlamaForCausalLM.from_pretrained(EMBEDDED_DIR, dtype=dtype, local_files_only=True)
    model = model.to(device).eval()
    tok = AutoTokenizer.from_pretrained(EMBEDDED_DIR, local_files_only=True)
    return model, tok
