"""Output file names: the source's name with the output format's extension."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import PurePath
from types import MappingProxyType

from semwatch.imaging.source import SUPPORTED_SUFFIXES

FORMAT_EXTENSIONS: Mapping[str, str] = MappingProxyType({"tiff": ".tif", "png": ".png", "jpeg": ".jpg"})


def check_format(fmt: str) -> None:
    """ValueError unless ``fmt`` is an output format (a key of FORMAT_EXTENSIONS)."""
    if fmt not in FORMAT_EXTENSIONS:
        raise ValueError(f"unknown output format {fmt!r} (one of {', '.join(FORMAT_EXTENSIONS)})")


def output_name(src_name: str, fmt: str, *, sibling_names: Iterable[str] = ()) -> str:
    """Output file name for a source: extension replaced by the format's.

    Sources in one folder whose stems are equal ignoring case would share an output name
    (on a case-insensitive share too). One keeps the plain name: a source with the output's
    own extension (x.tif for TIFF), else one with it in another case (x.TIF), the first by
    name; every other keeps its own extension before the new one:
    x.tif + x.TIF + x.png -> x.tif, x.TIF.tif and x.png.tif.
    """
    check_format(fmt)
    if not src_name or PurePath(src_name).name != src_name:
        raise ValueError(f"output_name needs a bare file name, got {src_name!r}")
    extension = FORMAT_EXTENSIONS[fmt]
    source = PurePath(src_name)
    if not source.suffix:
        return src_name + extension
    if _yields_plain_name(source, extension, sibling_names):
        return src_name + extension
    return source.stem + extension


def _plain_name_rank(name: str, extension: str) -> int:
    """0: the output's own extension; 1: it in another case; 2: another extension."""
    suffix = PurePath(name).suffix
    return 0 if suffix == extension else 1 if suffix.lower() == extension else 2


def _yields_plain_name(source: PurePath, extension: str, sibling_names: Iterable[str]) -> bool:
    stem = source.stem.lower()
    mine = (_plain_name_rank(source.name, extension), source.name)
    for name in sibling_names:
        other = PurePath(name)
        if (
            name == source.name
            or other.suffix.lower() not in SUPPORTED_SUFFIXES
            or other.stem.lower() != stem
        ):
            continue
        if mine[0] == 2:
            return True  # another extension never takes the plain name from a sibling
        rank = _plain_name_rank(name, extension)
        if rank < 2 and (rank, name) < mine:
            return True
    return False
