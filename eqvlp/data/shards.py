"""Image-text shards in the webdataset layout (img2dataset, DataComp, LAION), random access.

A shard is a tar file; a sample is the run of adjacent members sharing one key:
`KEY.jpg|jpeg|png|webp` (the image), `KEY.txt` (the caption) and/or `KEY.json` (metadata with a
caption field), and optionally `KEY.cls` (an integer label). Shards are named by brace patterns
(`shards/{00000..00099}.tar`), globs (`shards/*.tar`), comma-separated lists, or Python lists.

Each tar is indexed once (member offsets and sizes, by reading headers only) and the index is
cached beside the shard (`NAME.tar.eqvlp-index.json`) or, where that directory is not writable,
in a cache directory. With the index a sample is two or three `pread`s: grain can shuffle the
whole dataset globally and decode in worker processes.

Samples that cannot be used are kept in the index with the reason (a truncated member, no image,
an unknown image extension) so that the pipeline counts them every time it meets them instead of
losing them silently.
"""

import dataclasses
import glob
import hashlib
import io
import json
import os
import re
import tarfile
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
TEXT_EXTENSIONS = ("txt", "json", "cls")
INDEX_SUFFIX = ".eqvlp-index.json"
INDEX_VERSION = 1
_BRACE = re.compile(r"\{(\d+)\.\.(\d+)\}")


def expand_braces(pattern: str) -> list[str]:
    """webdataset brace notation: `a/{000..002}.tar` -> `a/000.tar a/001.tar a/002.tar`.

    Zero padding follows the left bound's width; several ranges expand as a product.
    """
    match = _BRACE.search(pattern)
    if match is None:
        return [pattern]
    lo, hi = match.group(1), match.group(2)
    if int(hi) < int(lo):
        raise ValueError(f"shard pattern {pattern!r}: range {{{lo}..{hi}}} runs backwards")
    head, tail = pattern[: match.start()], pattern[match.end() :]
    out = []
    for n in range(int(lo), int(hi) + 1):
        out.extend(expand_braces(f"{head}{n:0{len(lo)}d}{tail}"))
    return out


def resolve_shards(spec: str | Sequence[str]) -> list[str]:
    """Shard paths from a brace pattern, a glob, a comma-separated list or a list of these.

    Every path must exist: a pattern that matches nothing, or a listed shard that is missing,
    is an error naming it (a typo should not train on nothing).
    """
    items = [spec] if isinstance(spec, (str, os.PathLike)) else list(spec)
    if not items:
        raise ValueError("no shards given: pass a pattern such as 'shards/{00000..00009}.tar'")
    paths = []
    for item in items:
        for part in str(item).split(","):
            part = part.strip()
            if not part:
                continue
            expanded = expand_braces(part)
            missing = [p for p in expanded if not glob.has_magic(p) and not os.path.isfile(p)]
            if missing:
                shown = ", ".join(missing[:3]) + (", ..." if len(missing) > 3 else "")
                raise FileNotFoundError(
                    f"{len(missing)} of the {len(expanded)} shards named by {part!r} do not "
                    f"exist ({shown}): check the path, or the range of a brace pattern such "
                    "as 'shards/{00000..00009}.tar'"
                )
            for path in expanded:
                if glob.has_magic(path):
                    matches = sorted(glob.glob(path))
                    if not matches:
                        raise FileNotFoundError(
                            f"shard pattern {part!r} matches no file: check the directory and "
                            "the pattern (e.g. 'shards/*.tar' or 'shards/{00000..00009}.tar')"
                        )
                    paths.extend(matches)
                else:
                    paths.append(path)
    if not paths:
        raise ValueError(f"shard spec {spec!r} names no shard")
    return paths


@dataclasses.dataclass(frozen=True)
class SampleEntry:
    """Where one sample's members lie in its tar: `members[ext] = (offset, size)`."""

    key: str
    members: dict[str, tuple[int, int]]
    problem: str | None = None


def _split_name(name: str) -> tuple[str, str]:
    """`dir/000123.jpg` -> (`dir/000123`, `jpg`); webdataset keys end at the first dot of the
    base name."""
    directory, base = os.path.split(name)
    stem, _, ext = base.partition(".")
    return (f"{directory}/{stem}" if directory else stem), ext.lower()


def index_tar(path: str) -> tuple[list[SampleEntry], bool]:
    """Reads the member headers of one tar: its samples and whether the tar is truncated.

    A member whose data run past the end of the file, or a header that cannot be read, ends the
    index; the sample it belongs to is kept with problem `truncated_tar`.
    """
    size = os.path.getsize(path)
    samples: list[SampleEntry] = []
    key, members, truncated, end = None, {}, False, 0

    def close(problem=None):
        if key is not None:
            samples.append(SampleEntry(key, dict(members), problem) if problem
                           else _entry(key, members))

    try:
        with tarfile.open(path, "r:") as tar:
            for info in tar:
                end = info.offset_data + info.size
                if not info.isfile():
                    continue
                sample_key, ext = _split_name(info.name)
                if sample_key != key:
                    close()
                    key, members = sample_key, {}
                if end > size:
                    truncated = True
                    break
                members[ext] = (info.offset_data, info.size)
    except (tarfile.ReadError, EOFError) :
        truncated = True
    # A complete tar ends with two zero blocks after the last member (rounded up to 512);
    # a file cut at a header boundary reads as a shorter tar without them.
    if not truncated and size < -(-end // 512) * 512 + 1024:
        truncated = True
    close("truncated_tar" if truncated else None)
    if truncated and not any(s.problem == "truncated_tar" for s in samples):
        reason = "truncated_tar" if samples or end else "unreadable_tar"
        samples.append(SampleEntry(f"{os.path.basename(path)}@{end}", {}, reason))
    return samples, truncated


def _entry(key: str, members: dict[str, tuple[int, int]]) -> SampleEntry:
    images = [e for e in members if e in IMAGE_EXTENSIONS]
    unknown = [e for e in members if e not in IMAGE_EXTENSIONS + TEXT_EXTENSIONS]
    if not images:
        return SampleEntry(key, members, "unknown_extension" if unknown else "missing_image")
    return SampleEntry(key, members)


def _cache_path(shard: str, cache_dir: str | None) -> list[Path]:
    """Where the index may live: beside the shard first, then in the cache directory."""
    beside = Path(shard + INDEX_SUFFIX)
    cache = Path(cache_dir or os.environ.get("EQVLP_CACHE", Path.home() / ".cache" / "eqvlp"))
    digest = hashlib.sha1(os.path.abspath(shard).encode()).hexdigest()[:16]
    return [beside, cache / "tar-index" / f"{Path(shard).name}.{digest}{INDEX_SUFFIX}"]


def load_index(shard: str, *, cache_dir: str | None = None) -> list[SampleEntry]:
    """The shard's index, read from a cache that matches its size and mtime, else built and
    cached (beside the shard, or in `cache_dir` / `$EQVLP_CACHE` / `~/.cache/eqvlp`)."""
    stat = os.stat(shard)
    stamp = {"version": INDEX_VERSION, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    candidates = _cache_path(shard, cache_dir)
    for path in candidates:
        try:
            cached = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if cached.get("stamp") == stamp:
            return [SampleEntry(s["key"], {k: tuple(v) for k, v in s["members"].items()},
                                s.get("problem")) for s in cached["samples"]]
    samples, truncated = index_tar(shard)
    payload = json.dumps({
        "stamp": stamp, "truncated": truncated,
        "samples": [dataclasses.asdict(s) for s in samples],
    })
    for path in candidates:
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(payload)
            os.replace(tmp, path)
            break
        except OSError:
            tmp.unlink(missing_ok=True)
    return samples


class ShardSource:
    """A random-access source over the samples of many shards (grain's `RandomAccessDataSource`).

    `source[i]` is a record `{"key", "shard", "index", "image" (bytes), "image_ext", "text"
    (caption or None), "label" (int, -1 without one), "problem" (reason or None)}`; decoding is
    left to the pipeline's workers. Files are opened lazily per process, so the source pickles
    into grain's worker processes.

    **Arguments:**
    - `spec`: shard pattern(s), see `resolve_shards`.
    - `caption_field`: the caption's field in `KEY.json` when there is no `KEY.txt`.
    - `label_field`: the label's field in `KEY.json` when there is no `KEY.cls`.
    - `cache_dir`: where tar indexes go when the shard directory is not writable.
    """

    def __init__(self, spec: str | Sequence[str], *, caption_field: str = "caption",
                 label_field: str = "label", cache_dir: str | None = None):
        self.shards = resolve_shards(spec)
        self.caption_field, self.label_field = caption_field, label_field
        self._entries = [load_index(s, cache_dir=cache_dir) for s in self.shards]
        self._starts = np.cumsum([0] + [len(e) for e in self._entries])
        self._files: dict[str, int] = {}
        self._pid = None

    def __len__(self) -> int:
        return int(self._starts[-1])

    def __repr__(self) -> str:
        return f"ShardSource({len(self.shards)} shards, {len(self)} samples)"

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_files"], state["_pid"] = {}, None
        return state

    def locate(self, index: int) -> tuple[int, SampleEntry]:
        """(shard number, entry) of global sample `index`."""
        if not 0 <= index < len(self):
            raise IndexError(f"sample {index} out of range for {len(self)} samples")
        shard = int(np.searchsorted(self._starts, index, side="right") - 1)
        return shard, self._entries[shard][index - self._starts[shard]]

    def _read(self, shard: int, span: tuple[int, int]) -> bytes:
        if self._pid != os.getpid():  # a fresh process (grain worker): open our own files
            self._files, self._pid = {}, os.getpid()
        path = self.shards[shard]
        fd = self._files.get(path)
        if fd is None:
            fd = self._files[path] = os.open(path, os.O_RDONLY)
        offset, size = span
        data = os.pread(fd, size, offset)
        if len(data) != size:
            raise EOFError(f"{path}: wanted {size} bytes at {offset}, got {len(data)}")
        return data

    def __getitem__(self, index: int) -> dict:
        index = int(index)
        shard, entry = self.locate(index)
        record = {"key": entry.key, "shard": self.shards[shard], "index": index, "image": None,
                  "image_ext": None, "text": None, "label": -1, "problem": entry.problem}
        if entry.problem is not None:
            return record
        try:
            ext = next(e for e in IMAGE_EXTENSIONS if e in entry.members)
            record["image"], record["image_ext"] = self._read(shard, entry.members[ext]), ext
            meta = None
            if "json" in entry.members:
                meta = json.loads(self._read(shard, entry.members["json"]).decode("utf-8"))
            if "txt" in entry.members:
                record["text"] = self._read(shard, entry.members["txt"]).decode("utf-8").strip()
            elif isinstance(meta, dict) and isinstance(meta.get(self.caption_field), str):
                record["text"] = meta[self.caption_field].strip()
            if "cls" in entry.members:
                record["label"] = int(self._read(shard, entry.members["cls"]).decode().strip())
            elif isinstance(meta, dict) and self.label_field in meta:
                record["label"] = int(meta[self.label_field])
        except (UnicodeDecodeError, ValueError, TypeError) as error:
            record["problem"] = "bad_metadata"
            record["error"] = str(error)[:200]
        except OSError as error:
            record["problem"] = "read_error"
            record["error"] = str(error)[:200]
        return record


def write_shards(samples: Iterable[dict], directory: str | os.PathLike, *,
                 samples_per_shard: int = 1000, image_format: str = "jpg", quality: int = 95,
                 prefix: str = "") -> list[str]:
    """Writes samples as img2dataset-style shards `DIR/{prefix}00000.tar, ...`; returns paths.

    Each sample is a dict with `image` (uint8 (h, w, 3) array, a PIL image, or encoded bytes
    with `image_ext`), `text` (the caption), and optionally `key`, `label` (written as
    `KEY.cls`) and `meta` (extra `KEY.json` fields). Keys default to img2dataset's
    `SSSSSIIII` (shard number, then the index in the shard).
    """
    from PIL import Image

    if image_format not in IMAGE_EXTENSIONS:
        raise ValueError(f"image_format {image_format!r}: use one of {IMAGE_EXTENSIONS}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths: list[str] = []
    tar, count = None, 0

    def add(name: str, data: bytes):
        info = tarfile.TarInfo(name)
        info.size, info.mtime = len(data), 0
        tar.addfile(info, io.BytesIO(data))

    for sample in samples:
        if tar is None or count == samples_per_shard:
            if tar is not None:
                tar.close()
            paths.append(str(directory / f"{prefix}{len(paths):05d}.tar"))
            tar, count = tarfile.open(paths[-1], "w", format=tarfile.USTAR_FORMAT), 0
        key = sample.get("key") or f"{len(paths) - 1:05d}{count:04d}"
        image, ext = sample["image"], sample.get("image_ext", image_format)
        if not isinstance(image, bytes):
            pil = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image))
            buffer = io.BytesIO()
            fmt = {"jpg": "JPEG", "jpeg": "JPEG", "png": "PNG", "webp": "WEBP"}[image_format]
            pil.convert("RGB").save(buffer, format=fmt, quality=quality)
            image, ext = buffer.getvalue(), image_format
        add(f"{key}.{ext}", image)
        text = sample.get("text")
        if text is not None:
            add(f"{key}.txt", text.encode("utf-8"))
        meta = {"key": key, "caption": text, **sample.get("meta", {})}
        add(f"{key}.json", json.dumps(meta).encode("utf-8"))
        if sample.get("label") is not None and sample.get("label", -1) >= 0:
            add(f"{key}.cls", str(int(sample["label"])).encode())
        count += 1
    if tar is not None:
        tar.close()
    return paths
