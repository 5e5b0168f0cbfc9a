"""Mount-table parsing: which filesystem holds a path, and whether it is a network one.

The queue refuses a SQLite file on a network filesystem, where its locking does not hold.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from semwatch.log import get_logger

log = get_logger(__name__)

# Filesystem types (mountinfo) served over a network; "fuse.<name>" counts as <name>.
NETWORK_FS_TYPES = frozenset(
    {
        "nfs",
        "nfs4",
        "cifs",
        "smb",
        "smb3",
        "smbfs",
        "9p",
        "sshfs",
        "ceph",
        "ceph-fuse",
        "glusterfs",
        "lustre",
        "gpfs",
        "afs",
        "ncpfs",
        "coda",
        "davfs",
        "beegfs",
        "s3fs",
        "rclone",
        "gcsfuse",
        "moosefs",
        "mfs",
        "orangefs",
    }
)


@dataclass(frozen=True)
class MountEntry:
    mount_point: str
    fs_type: str


_OCTAL_ESCAPE = re.compile(r"\\([0-7]{3})")


def parse_mountinfo(text: str) -> list[MountEntry]:
    """Mount points and filesystem types from /proc/<pid>/mountinfo (proc(5)), in order."""
    entries = []
    for line in text.splitlines():
        fields = line.split()
        # Optional fields between field 6 and the "-" separator vary in number.
        try:
            separator = fields.index("-", 6)
            mount_point, fs_type = fields[4], fields[separator + 1]
        except (ValueError, IndexError):
            log.debug("unparsable mountinfo line skipped", line=line)
            continue
        mount_point = _OCTAL_ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), mount_point)
        entries.append(MountEntry(mount_point=mount_point, fs_type=fs_type))
    return entries


def filesystem_type(path: Path, mountinfo: str | None = None) -> str | None:
    """Type of the filesystem holding `path` (which need not exist yet); None if unknown."""
    if mountinfo is None:
        try:
            mountinfo = Path("/proc/self/mountinfo").read_text(encoding="utf-8", errors="surrogateescape")
        except OSError as exc:
            log.warning(
                "cannot read /proc/self/mountinfo; filesystem type unknown",
                path=str(path),
                error=exc.strerror,
            )
            return None
    target = PurePosixPath(os.path.realpath(path))
    best: tuple[int, str] | None = None
    for entry in parse_mountinfo(mountinfo):
        mount = PurePosixPath(entry.mount_point)
        if mount == target or mount in target.parents:
            depth = len(mount.parts)
            # ">=": a later entry on the same mount point is mounted over the earlier one.
            if best is None or depth >= best[0]:
                best = (depth, entry.fs_type)
    return None if best is None else best[1]


def is_network_fs_type(fs_type: str) -> bool:
    name = fs_type.lower()
    if name.startswith("fuse."):
        name = name[len("fuse.") :]
    return name in NETWORK_FS_TYPES


def is_network_filesystem(path: Path) -> bool:
    """Whether `path` lives on a network filesystem (NFS, SMB, sshfs, ...), by mountinfo."""
    fs_type = filesystem_type(path)
    return fs_type is not None and is_network_fs_type(fs_type)
