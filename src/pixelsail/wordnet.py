"""WordNet 3.0 for NLTK (its METEOR needs synonyms) from Debian's packages, with no download.

NLTK reads WordNet from ``<nltk data dir>/corpora/wordnet/``: the WordNet 3.0 dict files plus ``lexnames`` and
``index.sense``. Debian's ``wordnet-base`` installs the dict files in /usr/share/wordnet (without ``lexnames``),
``wordnet-sense-index`` adds ``index.sense``. :func:`ensure_wordnet` copies those files (about 40 MB, once) into a
private NLTK data folder, writes ``lexnames`` (WordNet 3.0's fixed list of 45 lexicographer files, see ``man 5 lexnames``) and puts
the folder first on NLTK's search path. A WordNet that NLTK already finds (``nltk.download("wordnet")``) is used
as it is.
"""
from __future__ import annotations

import os
from pathlib import Path

DEBIAN_WORDNET = Path("/usr/share/wordnet")
APT_PACKAGES = "wordnet-base wordnet-sense-index"
# the files NLTK's WordNetCorpusReader opens, besides lexnames (which Debian does not ship)
DICT_FILES = ("cntlist.rev", "index.sense", "index.adj", "index.adv", "index.noun", "index.verb", "data.adj",
              "data.adv", "data.noun", "data.verb", "adj.exc", "adv.exc", "noun.exc", "verb.exc")
LEXNAMES = (
    "adj.all", "adj.pert", "adv.all", "noun.Tops", "noun.act", "noun.animal", "noun.artifact", "noun.attribute",
    "noun.body", "noun.cognition", "noun.communication", "noun.event", "noun.feeling", "noun.food", "noun.group",
    "noun.location", "noun.motive", "noun.object", "noun.person", "noun.phenomenon", "noun.plant",
    "noun.possession", "noun.process", "noun.quantity", "noun.relation", "noun.shape", "noun.state",
    "noun.substance", "noun.time", "verb.body", "verb.change", "verb.cognition", "verb.communication",
    "verb.competition", "verb.consumption", "verb.contact", "verb.creation", "verb.emotion", "verb.motion",
    "verb.perception", "verb.possession", "verb.social", "verb.stative", "verb.weather", "adj.ppl",
)
_POS_NUMBER = {"noun": 1, "verb": 2, "adj": 3, "adv": 4}


def lexnames_text() -> str:
    """WordNet's ``lexnames`` file: ``<2-digit number>\\t<name>\\t<syntactic category>`` per line."""
    return "".join(f"{i:02d}\t{name}\t{_POS_NUMBER[name.split('.')[0]]}\n" for i, name in enumerate(LEXNAMES))


def default_data_dir() -> Path:
    """Where the NLTK data folder is built: $PIXELSAIL_NLTK_DATA, else a pixelsail folder in the user cache."""
    if os.environ.get("PIXELSAIL_NLTK_DATA"):
        return Path(os.environ["PIXELSAIL_NLTK_DATA"])
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "pixelsail" / "nltk_data"


def build_nltk_wordnet(source: Path, data_dir: Path) -> Path:
    """Lay out ``data_dir/corpora/wordnet`` from the WordNet dict folder ``source``; return ``data_dir``.

    Safe to run from several processes at once: every file is replaced atomically.
    """
    missing = [f for f in DICT_FILES if not (source / f).is_file()]
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise RuntimeError(f"NLTK's METEOR needs WordNet 3.0, and {source} lacks {missing[0]}{more}: install it "
                           f"with `apt-get install {APT_PACKAGES}` (or run python -m nltk.downloader wordnet)")
    folder = data_dir / "corpora" / "wordnet"
    folder.mkdir(parents=True, exist_ok=True)
    for name in DICT_FILES:  # copies: NLTK refuses to open a link that leads out of its data folder
        if not _same_size(source / name, folder / name):
            _write_atomically(folder / name, (source / name).read_bytes())
    lexnames = folder / "lexnames"
    if not lexnames.is_file() or lexnames.read_text() != lexnames_text():
        _write_atomically(lexnames, lexnames_text().encode())
    return data_dir


def _same_size(a: Path, b: Path) -> bool:
    return b.is_file() and not b.is_symlink() and a.stat().st_size == b.stat().st_size


def _write_atomically(path: Path, data: bytes) -> None:
    """Readers (other processes building the same folder) see the old file or the whole new one."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


def nltk_finds_wordnet() -> bool:
    import nltk

    for resource in ("corpora/wordnet", "corpora/wordnet.zip"):
        try:
            nltk.data.find(resource)
            return True
        except LookupError:
            continue
    return False


def ensure_wordnet() -> None:
    """Make ``nltk.corpus.wordnet`` loadable offline (see the module docstring), or fail with what to install."""
    import nltk

    if nltk_finds_wordnet():
        return
    source = Path(os.environ.get("WNSEARCHDIR") or DEBIAN_WORDNET)
    data_dir = build_nltk_wordnet(source, default_data_dir())
    if str(data_dir) not in nltk.data.path:
        nltk.data.path.insert(0, str(data_dir))
